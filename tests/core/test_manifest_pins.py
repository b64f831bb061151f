"""The bundle manifest contract (``runtime/core/manifest.py``) pinned where mutation testing found it loose
(issue 23, tests/MUTATION.md): every boundary of the schema check, the messages a user reads, the
paths a bundle serves, and the file checks. Everything goes through the public functions."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from helpers.runtime import make_bundle
from rlp.runtime.core.errors import BadInput, InputMissing, SecurityRefusal
from rlp.runtime.core.geometry import WindowGeometry
from rlp.runtime.core.manifest import (
    MANIFEST,
    Manifest,
    ModelEntry,
    TensorSpec,
    file_entry_fields,
    head_role,
    json_depth,
    load_bundle_manifest,
    model_head,
    model_key,
    model_shapes,
    resolve_inside,
    sha256_file,
    verify_file,
)
from rlp.runtime.core.preprocess import Preprocessing


def _entry(role="r", file="r.onnx", **kw) -> ModelEntry:
    return ModelEntry(role=role, file=file, sha256="0" * 64, size=1, inputs=[TensorSpec("image", ["batch", 1, 8, 8])],
                      outputs=[TensorSpec("loss", ["batch", 1])], opset=17, **kw)


def _dict(**geom) -> dict:
    g = dict(size=32, window=8, stride=4)
    g.update(geom)
    man = Manifest(preprocessing=Preprocessing(size=32), geometry=WindowGeometry(**g), models={"r": _entry()},
                   rlp_version="9.9", created="today")
    return json.loads(json.dumps(man.to_dict()))


def _problem(d: dict) -> str:
    with pytest.raises(BadInput) as exc:
        Manifest.from_dict(d, "the/manifest.json")
    assert exc.value.path == "the/manifest.json"
    return str(exc.value)


def test_a_manifest_round_trips_through_its_dict():
    d = _dict()
    d["engines"] = [dict(model="r", file="r.plan", sha256="1" * 64, size=3, precision="fp16", tensorrt_version="10",
                         compute_capability="9.0")]
    d["training"], d["data"], d["parity"] = {"steps": 5}, {"n": 2}, {"max_abs": 0.1}
    d["loss"] = {"kind": "l1", "region": "window"}
    man = Manifest.from_dict(d)
    assert man.rlp_version == "9.9" and man.created == "today"
    assert man.training == {"steps": 5} and man.data == {"n": 2} and man.parity == {"max_abs": 0.1}
    assert man.engines[0].max_batch == 256 and man.engines[0].opt_batch == 64 and man.engines[0].min_batch == 1
    assert man.models["r"].inputs[0] == TensorSpec("image", ["batch", 1, 8, 8])
    assert man.models["r"].outputs[0].dtype == "float32"
    d["engines"][0].update(min_batch=1, opt_batch=64, max_batch=256)
    assert man.to_dict() == d
    assert list(man.to_dict()) == ["schema", "schema_version", "rlp_version", "created", "preprocessing", "geometry",
                                   "loss", "models", "engines", "training", "data", "parity"]


def test_missing_optional_fields_take_their_defaults():
    d = _dict()
    for k in ("loss", "training", "data", "parity", "engines", "rlp_version", "created"):
        d.pop(k)
    man = Manifest.from_dict(d)
    assert (man.loss, man.training, man.data, man.parity, man.engines, man.rlp_version, man.created) == \
        ({}, {}, {}, {}, [], "", "")
    assert Manifest(preprocessing=man.preprocessing, geometry=man.geometry, models={}).loss == \
        {"kind": "l1", "region": "window"}
    d["models"]["r"].pop("inputs"), d["models"]["r"].pop("outputs")
    d["models"]["r"]["unknown_field"] = 1  # a newer exporter's field is ignored
    e = Manifest.from_dict(d).models["r"]
    assert e.inputs == [] and e.outputs == [] and e.precision == "fp32" and e.input_kind == "crop"


def test_schema_and_version_are_refused_with_their_values():
    d = _dict()
    d["schema"] = "x.y"
    assert "not an rlp bundle manifest (schema 'x.y'); rebuild the bundle with rlp-export" in _problem(d)
    d = _dict()
    d.pop("schema")
    assert "(schema None)" in _problem(d)
    d = _dict()
    d["schema_version"] = 2
    msg = _problem(d)
    assert "manifest schema version 2 is not supported by this rlp (reads version 1); rebuild the bundle with " \
           "rlp-export or upgrade rlp" in msg


def test_unknown_preprocessing_version_and_score_are_named():
    d = _dict()
    d["preprocessing"]["version"] = 9
    assert "the bundle's preprocessing version 9 is not known to this rlp (it knows 1, 2); upgrade rlp" in _problem(d)
    d = _dict()
    d["loss"] = {"kind": "ssim"}
    msg = _problem(d)
    assert "the bundle's window score 'ssim' is not known to this rlp (it knows l1, " in msg and "upgrade rlp" in msg
    d = _dict()
    d["loss"] = {}
    assert Manifest.from_dict(d).loss == {}  # no kind: l1
    d["loss"] = None
    assert "malformed manifest (loss is None, not an object with a string kind)" in _problem(d)
    d = _dict()
    d["preprocessing"].pop("version")
    assert Manifest.from_dict(d).preprocessing.version == 1


@pytest.mark.parametrize("where, key, value, shown", [
    ("preprocessing", "size", True, "preprocessing.size is True"),
    ("preprocessing", "size", 32.0, "preprocessing.size is 32.0"),
    ("preprocessing", "percentile", float("nan"), "preprocessing.percentile is nan"),
    ("preprocessing", "antialias", 1, "preprocessing.antialias is 1"),
    ("preprocessing", "nonfinite", 0, "preprocessing.nonfinite is 0"),
    ("geometry", "fill", float("inf"), "geometry.fill is inf"),
    ("geometry", "context", "8", "geometry.context is '8'"),
    ("geometry", "paint", 1, "geometry.paint is 1"),
])
def test_a_field_of_the_wrong_type_is_named(where, key, value, shown):
    d = _dict()
    d[where][key] = value
    assert f"malformed manifest ({shown}); rebuild the bundle with rlp-export" in _problem(d)


def test_fields_of_the_right_type_pass():
    d = _dict()
    d["preprocessing"]["percentile"] = 99  # an int is a number
    d["geometry"]["fill"] = 1  # so is this
    d["geometry"]["min_tissue"] = 0.5
    d["preprocessing"]["antialias"] = True  # a bool where a bool is expected
    man = Manifest.from_dict(d)
    assert man.preprocessing.percentile == 99 and man.geometry.fill == 1 and man.preprocessing.antialias is True
    d["geometry"]["context"] = None
    assert Manifest.from_dict(d).geometry.context is None


@pytest.mark.parametrize("section", ["preprocessing", "geometry"])
def test_a_section_that_is_not_an_object_is_named(section):
    d = _dict()
    d[section] = [1]
    assert f"malformed manifest ({section} is not an object)" in _problem(d)


@pytest.mark.parametrize("loss", [[1], {"kind": 1}])
def test_a_bad_loss_is_named(loss):
    d = _dict()
    d["loss"] = loss
    assert f"loss is {loss!r}, not an object with a string kind" in _problem(d)


@pytest.mark.parametrize("where, key, bad", [
    ("preprocessing", "size", 0), ("preprocessing", "size", 8193),
    ("geometry", "size", 0), ("geometry", "size", 8193), ("geometry", "window", 0), ("geometry", "stride", 0),
    ("geometry", "stride", 8193), ("geometry", "context", 0), ("geometry", "context", 8193),
])
def test_sides_outside_1_to_8192_are_refused(where, key, bad):
    d = _dict()
    d[where][key] = bad
    assert f"{where}.{key} {bad} outside 1..8192" in _problem(d)


def test_sides_at_the_limits_pass_the_side_check():
    d = _dict(size=8192, window=8192, stride=8192)
    d["preprocessing"]["size"] = 8192
    d["geometry"]["context"] = 8192
    man = Manifest.from_dict(d)
    assert man.geometry.size == 8192 and man.preprocessing.size == 8192
    d = _dict(size=1, window=1, stride=1)
    d["preprocessing"]["size"] = 1
    assert Manifest.from_dict(d).geometry.size == 1


def test_a_stride_that_leaves_windows_only_at_the_edges_is_refused():
    d = _dict(size=32, window=16, stride=16)  # size - window = 16: still fits
    assert Manifest.from_dict(d).geometry.stride == 16
    d["geometry"]["stride"] = 17
    msg = _problem(d)
    assert ("geometry.stride 17 is larger than size - window = 16 (size 32, window 16): windows fit only at the "
            "slice's edges, so the heatmap would be (nearly) all zero") in msg
    d = _dict(size=32, window=32, stride=100)  # one window covers the slice: any stride
    assert Manifest.from_dict(d).geometry.stride == 100


def test_a_grid_that_misses_the_centre_is_refused():
    # size 40, window 8, stride 16: positions 0, 16, 32; the windows at 16 cover 16..23, the centre 19, 20
    assert Manifest.from_dict(_dict(size=40, window=8, stride=16)).geometry.size == 40
    # size 40, window 4, stride 18: positions 0, 18, 36 cover 0..3, 18..21 (centre 19, 20 touched), 36..39
    assert Manifest.from_dict(_dict(size=40, window=4, stride=18)).geometry.window == 4
    # size 40, window 4, stride 21: positions 0, 21, 36: 21..24 misses 19 and 20
    msg = _problem(_dict(size=40, window=4, stride=21))
    assert ("geometry (size 40, window 4, stride 21) places no window over the centre of the slice, where the "
            "brain is; use a stride of at most the window") in msg
    # the window ending exactly at the centre pixel counts: size 41 (centre 20), window 4 at 17 covers 17..20
    assert Manifest.from_dict(_dict(size=41, window=4, stride=17)).geometry.size == 41
    # and the one starting exactly on it: size 41, window 4, stride 20: 20..23
    assert Manifest.from_dict(_dict(size=41, window=4, stride=20)).geometry.size == 41
    # size 42 (centre 20, 21), window 4, stride 22: 0..3, 22..25, 38..41 miss both
    assert "places no window over the centre" in _problem(_dict(size=42, window=4, stride=22))
    # size 42, window 4, stride 17: 17..20 touches 20 only
    assert Manifest.from_dict(_dict(size=42, window=4, stride=17)).geometry.size == 42


def test_geometry_defaults_are_used_when_a_side_is_missing():
    d = _dict(size=64, window=16, stride=8)
    d["geometry"].pop("stride")  # WindowGeometry's default stride (8 at window 16)
    assert Manifest.from_dict(d).geometry.stride == WindowGeometry.stride


@pytest.mark.parametrize("key, value, ok", [
    ("percentile", 0, False), ("percentile", 0.001, True), ("percentile", 100, True), ("percentile", 100.5, False),
    ("interpolation_order", -1, False), ("interpolation_order", 0, True), ("interpolation_order", 5, True),
    ("interpolation_order", 6, False), ("min_brain_pixels", -1, False), ("min_brain_pixels", 0, True),
    ("nonfinite", "zero", True), ("nonfinite", "error", True), ("nonfinite", "drop", False),
])
def test_preprocessing_ranges(key, value, ok):
    d = _dict()
    d["preprocessing"][key] = value
    if ok:
        assert getattr(Manifest.from_dict(d).preprocessing, key) == value
    else:
        assert "malformed manifest (preprocessing holds a value out of range)" in _problem(d)


@pytest.mark.parametrize("models", [{}, [], None])
def test_models_must_be_a_non_empty_object(models):
    d = _dict()
    d["models"] = models
    assert "malformed manifest (models is not a non-empty object)" in _problem(d)


@pytest.mark.parametrize("change, shown", [
    (lambda m: m.update(size="1"), "models.r.size is '1'"),
    (lambda m: m.update(opset=True), "models.r.opset is True"),
    (lambda m: m.update(architecture=[]), "models.r.architecture is []"),
    (lambda m: m["inputs"][0].update(name=1), "models.r.inputs.name is 1"),
    (lambda m: m["outputs"][0].update(dtype=None), "models.r.outputs.dtype is None"),
    (lambda m: m["outputs"].append(7), "models.r.outputs is not an object"),
    (lambda m: m["inputs"][0].update(shape=["batch", 1.5]),
     "models.r.inputs shape ['batch', 1.5] holds something other than sizes and names"),
    (lambda m: m["outputs"][0].update(shape=[True]), "models.r.outputs shape [True] holds something other"),
    (lambda m: m.update(external_data=[{"file": "x", "sha256": "0", "size": "3"}]),
     "models.r.external_data.size is '3'"),
])
def test_a_bad_model_entry_is_named(change, shown):
    d = _dict()
    change(d["models"]["r"])
    assert shown in _problem(d)


def test_engines_are_checked():
    d = _dict()
    d["engines"] = {}
    assert "malformed manifest (engines is not a list);" in _problem(d)
    d["engines"] = [{"model": "r", "max_batch": "9"}]
    assert "engines[].max_batch is '9'" in _problem(d)
    d["engines"] = [{"model": "r"}]  # the right types but fields missing: refused by the constructor
    assert "malformed manifest (TypeError: " in _problem(d)


def test_heads_and_roles():
    d = _dict()
    e = d["models"]["r"]
    d["models"] = {"r-zeta": e, "r_fp16": e, "g": e, "r-alpha_fp16": e, "r": e, "Bad": e, "r-": e}
    assert Manifest.from_dict(d).heads() == ("g", "r", "r-alpha", "r-zeta")
    d["models"] = {"r-b": e, "r-a": e}
    assert Manifest.from_dict(d).heads() == ("r-a", "r-b")
    assert model_head("r-x_fp16_more") == "r-x" and model_head("g") == "g"
    assert head_role("g") == "g" and head_role("r-x1") == "r" and head_role("r") == "r"
    for bad in ("R", "r-", "r-X", "gr", "r_fp16", 3, None):
        with pytest.raises(ValueError, match=r"is not a heatmap path \(g, r or r-NAME\)"):
            head_role(bad)


def test_sha256_of_a_file_read_in_chunks(tmp_path):
    data = os.urandom(3000)
    f = tmp_path / "f"
    f.write_bytes(data)
    want = hashlib.sha256(data).hexdigest()
    assert sha256_file(f) == want and sha256_file(f, chunk=7) == want and sha256_file(f, chunk=3000) == want
    assert file_entry_fields(f) == {"sha256": want, "size": 3000}
    (tmp_path / "empty").write_bytes(b"")
    assert sha256_file(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()


def test_json_depth_of_escapes_and_closing_brackets():
    assert json_depth(r'["a\\", [1]]') == 2  # an escaped backslash ends the escape: the quote closes the string
    assert json_depth(r'["a\"[[", 1]') == 1  # an escaped quote does not
    assert json_depth("[[1], [2], [[3]]]") == 3  # depth goes down again at each closing bracket
    assert json_depth("{}[]{}") == 1 and json_depth("") == 0


def test_resolve_inside_refusals_name_the_bundle_and_the_path(tmp_path):
    b = tmp_path / "b"
    b.mkdir()
    cases = [("", "file path '' must be relative to the bundle"),
             (None, "file path None must be relative to the bundle"),
             ("/abs/x", "file path '/abs/x' must be relative"),
             ("a\\b", "file path 'a\\\\b' must be relative"),
             ("a\x00b", "file path 'a\\x00b' holds a NUL byte"),
             ("a/../../x", "file path 'a/../../x' leaves the bundle")]
    for rel, words in cases:
        with pytest.raises(SecurityRefusal) as exc:
            resolve_inside(b, rel)
        assert words in str(exc.value) and exc.value.path == str(b)
    (tmp_path / "out").mkdir()
    (b / "sub").mkdir()
    (b / "sub" / "link").symlink_to(tmp_path / "out")
    with pytest.raises(SecurityRefusal, match=r"model 'sub/link/x' is a symbolic link; refused"):
        resolve_inside(b, "sub/link/x", "model")
    (b / "f").write_bytes(b"1")
    os.link(b / "f", b / "g")
    with pytest.raises(SecurityRefusal, match=r"file 'g' is a hard link; refused"):
        resolve_inside(b, "g")
    (b / "h").write_bytes(b"2")
    assert resolve_inside(b, "h") == b / "h" and resolve_inside(b, "sub/new") == b / "sub" / "new"
    assert resolve_inside(b, "./h") == b / "h"


def test_verify_file(tmp_path):
    b = tmp_path / "b"
    b.mkdir()
    (b / "m").write_bytes(b"abc")
    sha = hashlib.sha256(b"abc").hexdigest()
    assert verify_file(b, "m", sha, 3) == b / "m" and verify_file(b, "m", sha, None) == b / "m"
    assert verify_file(b, "m", sha, "3") == b / "m"
    with pytest.raises(SecurityRefusal, match=r": m has 3 bytes, the manifest says 4; rebuild the bundle"):
        verify_file(b, "m", sha, 4)
    with pytest.raises(SecurityRefusal) as exc:
        verify_file(b, "m", "f" * 64, 3)
    assert f"m sha256 {sha[:12]}... does not match the manifest (ffffffffffff...); rebuild" in str(exc.value)
    with pytest.raises(InputMissing, match=r": bundle file n is missing; rebuild the bundle with rlp-export"):
        verify_file(b, "n", sha, 3)
    (b / "d").mkdir()
    with pytest.raises(BadInput, match=r": bundle file d is not a regular file; rebuild the bundle"):
        verify_file(b, "d", sha, 3)


def test_load_without_verifying_skips_the_hashes(tmp_path):
    b = make_bundle(tmp_path / "b")
    (b / "r.onnx").write_bytes(b"changed")
    assert load_bundle_manifest(b, verify=False).heads() == ("g", "r")
    with pytest.raises(SecurityRefusal):
        load_bundle_manifest(b)
    with pytest.raises(SecurityRefusal):
        load_bundle_manifest(str(b))


def test_load_refusals_name_the_manifest(tmp_path):
    b = make_bundle(tmp_path / "b")
    mpath = b / MANIFEST
    d = json.loads(mpath.read_text())
    mpath.write_text("[1, 2]")
    with pytest.raises(BadInput, match=r": manifest is not a JSON object; rebuild") as exc:
        load_bundle_manifest(b)
    assert exc.value.path == str(mpath)
    mpath.write_bytes(b"\xff\xfe")
    with pytest.raises(BadInput, match=r": manifest is not valid JSON \(") as exc:
        load_bundle_manifest(b)
    assert exc.value.path == str(mpath)
    d["schema"] = "other"
    mpath.write_text(json.dumps(d))
    with pytest.raises(BadInput, match="not an rlp bundle") as exc:
        load_bundle_manifest(b)
    assert exc.value.path == str(mpath)
    mpath.unlink()
    mpath.mkdir()
    with pytest.raises(BadInput, match=r": manifest.json is not a regular file; rebuild") as exc:
        load_bundle_manifest(b)
    assert exc.value.path == str(mpath)
    with pytest.raises(InputMissing, match=r": bundle folder not found") as exc:
        load_bundle_manifest(tmp_path / "nowhere")
    assert exc.value.path == str(tmp_path / "nowhere")


def test_a_manifest_nested_exactly_to_the_limit_loads(tmp_path):
    b = make_bundle(tmp_path / "b")
    d = json.loads((b / MANIFEST).read_text())
    d["training"] = {"x": json.loads("[" * 30 + "]" * 30)}  # the manifest object, training, x, 30 lists: 32
    (b / MANIFEST).write_text(json.dumps(d))
    assert len(load_bundle_manifest(b).models) == 2
    d["training"] = {"x": json.loads("[" * 31 + "]" * 31)}
    (b / MANIFEST).write_text(json.dumps(d))
    with pytest.raises(BadInput, match=r": manifest nests 33 levels deep, more than the 32 a manifest can; rebuild"):
        load_bundle_manifest(b)


def test_external_data_entries_are_checked_and_verified(tmp_path):
    b = make_bundle(tmp_path / "b")
    (b / "w.bin").write_bytes(b"weights")
    sha = hashlib.sha256(b"weights").hexdigest()
    d = json.loads((b / MANIFEST).read_text())
    d["models"]["r"]["external_data"] = [{"file": "w.bin", "sha256": sha}]  # no size: only the hash is checked
    (b / MANIFEST).write_text(json.dumps(d))
    assert load_bundle_manifest(b).models["r"].external_data[0]["file"] == "w.bin"
    d["models"]["r"]["external_data"] = [{"file": "w.bin"}]
    (b / MANIFEST).write_text(json.dumps(d))
    with pytest.raises(BadInput, match=r": malformed external_data entry \{'file': 'w.bin'\}; rebuild"):
        load_bundle_manifest(b)
    d["models"]["r"]["external_data"] = [{"file": "w.bin", "sha256": sha, "size": 8}]
    (b / MANIFEST).write_text(json.dumps(d))
    with pytest.raises(SecurityRefusal, match="w.bin has 7 bytes, the manifest says 8"):
        load_bundle_manifest(b)


def test_engines_are_verified_when_loading(tmp_path):
    b = make_bundle(tmp_path / "b")
    (b / "r.plan").write_bytes(b"plan")
    d = json.loads((b / MANIFEST).read_text())
    d["engines"] = [dict(model="r", file="r.plan", sha256=hashlib.sha256(b"plan").hexdigest(), size=5,
                         precision="fp16", tensorrt_version="10", compute_capability="9.0")]
    (b / MANIFEST).write_text(json.dumps(d))
    with pytest.raises(SecurityRefusal, match="r.plan has 4 bytes, the manifest says 5"):
        load_bundle_manifest(b)
    d["engines"][0]["size"] = 4
    (b / MANIFEST).write_text(json.dumps(d))
    assert load_bundle_manifest(b).engines[0].file == "r.plan"


def test_centre_coverage_at_odd_sizes_and_one_pixel_windows():
    # size 41: the centre is pixel 20 alone; a window over 16..19 ends one short of it
    msg = _problem(_dict(size=41, window=4, stride=16))
    assert "geometry (size 41, window 4, stride 16) places no window over the centre" in msg
    # size 40: the centre is 19 and 20; a window over 14..17 ends two short of it
    assert "places no window over the centre" in _problem(_dict(size=40, window=4, stride=14))
    # one-pixel windows are checked like any other
    assert "geometry.stride 32 is larger than size - window = 31" in _problem(_dict(size=32, window=1, stride=32))


def test_manifest_file_problems_name_the_manifest(tmp_path, monkeypatch):
    from rlp.runtime.core import manifest as manifest_mod

    b = make_bundle(tmp_path / "b")
    size = (b / MANIFEST).stat().st_size
    monkeypatch.setattr(manifest_mod, "MAX_MANIFEST_BYTES", size)  # exactly the limit: read
    assert load_bundle_manifest(b).heads() == ("g", "r")
    monkeypatch.setattr(manifest_mod, "MAX_MANIFEST_BYTES", size - 1)
    with pytest.raises(BadInput) as exc:
        load_bundle_manifest(b)
    assert exc.value.path == str(b / MANIFEST)
    monkeypatch.undo()
    text = (b / MANIFEST).read_text()
    (b / MANIFEST).unlink()
    with pytest.raises(InputMissing) as exc:
        load_bundle_manifest(b)
    assert str(exc.value) == f"{b}: no manifest.json; is this an rlp bundle? rebuild the bundle with rlp-export"
    (tmp_path / "real.json").write_text(text)
    (b / MANIFEST).symlink_to(tmp_path / "real.json")
    with pytest.raises(SecurityRefusal) as exc:
        load_bundle_manifest(b)
    assert str(exc.value) == f"{b}: manifest 'manifest.json' is a symbolic link; refused"


def test_a_hash_mismatch_names_the_bundle(tmp_path):
    b = tmp_path / "b"
    b.mkdir()
    (b / "m").write_bytes(b"abc")
    with pytest.raises(SecurityRefusal) as exc:
        verify_file(b, "m", "f" * 64, 3)
    assert exc.value.path == str(b)


def test_a_model_of_another_size_is_refused_by_its_size(tmp_path):
    b = make_bundle(tmp_path / "b")
    n = (b / "r.onnx").stat().st_size
    with open(b / "r.onnx", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(SecurityRefusal, match=f"r.onnx has {n + 1} bytes, the manifest says {n}; rebuild"):
        load_bundle_manifest(b)


def test_the_size_limit_is_16_mib(tmp_path):
    b = make_bundle(tmp_path / "b")
    os.truncate(b / MANIFEST, (16 << 20) + 1)  # sparse: never read
    with pytest.raises(BadInput) as exc:
        load_bundle_manifest(b)
    assert str(exc.value) == (f"{b / MANIFEST}: manifest is {(16 << 20) + 1} bytes, more than the 16 MiB a manifest "
                              "can be; rebuild the bundle with rlp-export")


def test_an_unreadable_manifest_is_an_io_error(tmp_path, monkeypatch):
    import errno
    import pathlib

    from rlp.runtime.core.errors import EX_IOERR, RlpError

    b = make_bundle(tmp_path / "b")
    for exc_in, words in ((OSError(errno.EACCES, "Permission denied"), "Permission denied"), (OSError("boom"), "boom")):
        def refuse(self, *a, exc_in=exc_in, **k):
            raise exc_in

        monkeypatch.setattr(pathlib.Path, "read_text", refuse)
        with pytest.raises(RlpError) as exc:
            load_bundle_manifest(b)
        assert str(exc.value) == f"{b / MANIFEST}: cannot read the manifest ({words})"
        assert exc.value.code == EX_IOERR and exc.value.path == str(b / MANIFEST)


def test_a_path_that_cannot_be_resolved_is_refused(tmp_path, monkeypatch):
    import pathlib

    b = tmp_path / "b"
    b.mkdir()
    real = pathlib.Path.resolve

    def resolve(self, strict=False):
        if self.name == "loop":
            raise OSError("Too many levels of symbolic links")
        return real(self, strict=strict)

    monkeypatch.setattr(pathlib.Path, "resolve", resolve)
    with pytest.raises(SecurityRefusal) as exc:
        resolve_inside(b, "loop", "model")
    assert str(exc.value) == f"{b}: cannot resolve model 'loop' (Too many levels of symbolic links)"
    assert exc.value.path == str(b)


def test_a_link_inside_the_bundle_is_refused_naming_the_bundle(tmp_path):
    b = tmp_path / "b"
    b.mkdir()
    (b / "f").write_bytes(b"1")
    (b / "l").symlink_to(b / "f")
    with pytest.raises(SecurityRefusal) as exc:
        resolve_inside(b, "l")
    assert exc.value.path == str(b) and str(exc.value).endswith("file 'l' is a symbolic link; refused")


@pytest.mark.parametrize("key", ["percentile", "interpolation_order", "min_brain_pixels", "nonfinite"])
def test_optional_preprocessing_fields_may_be_missing(key):
    d = _dict()
    d["preprocessing"].pop(key)
    assert getattr(Manifest.from_dict(d).preprocessing, key) == getattr(Preprocessing(size=32), key)


def test_a_path_resolving_outside_or_onto_the_bundle(tmp_path, monkeypatch):
    import pathlib

    b = tmp_path / "b"
    b.mkdir()
    with pytest.raises(BadInput, match=r": bundle file \. is not a regular file"):  # the bundle itself
        verify_file(b, ".", "0" * 64, 1)
    real = pathlib.Path.resolve

    def resolve(self, strict=False):  # as if a component were swapped for a link after it was checked
        return tmp_path / "elsewhere" if self.name == "away" else real(self, strict=strict)

    monkeypatch.setattr(pathlib.Path, "resolve", resolve)
    with pytest.raises(SecurityRefusal) as exc:
        resolve_inside(b, "away", "model")
    assert str(exc.value) == f"{b}: model 'away' resolves outside the bundle" and exc.value.path == str(b)


def test_a_hard_link_is_refused_naming_the_bundle(tmp_path):
    b = tmp_path / "b"
    b.mkdir()
    (b / "f").write_bytes(b"1")
    os.link(b / "f", b / "g")
    with pytest.raises(SecurityRefusal) as exc:
        resolve_inside(b, "f")
    assert exc.value.path == str(b)


def test_a_tensor_without_a_shape_is_malformed_and_external_data_is_optional():
    d = _dict()
    d["models"]["r"].pop("external_data")
    assert Manifest.from_dict(d).models["r"].external_data == []
    d["models"]["r"]["inputs"][0].pop("shape")
    assert "malformed manifest (TypeError: " in _problem(d)


def test_json_depth_counts_only_brackets():
    assert json_depth("X[[1]]X") == 2  # letters (of broken JSON) outside strings are not brackets
    assert json_depth("[1]X[2]") == 1


# -- found by the re-run after issue 19's reorganisation: the domain section, model_key's default, model_shapes
def _domain() -> dict:
    import numpy as np

    from rlp.runtime.core.domain import training_domain

    images = np.random.default_rng(0).random((6, 32, 32)).astype(np.float32)
    brains = np.zeros((6, 32, 32), bool)
    brains[:, 8:24, 8:24] = True
    return json.loads(json.dumps(training_domain(images, brains, "axial").to_dict()))


def test_the_domain_section_round_trips_and_is_left_out_when_absent():
    d = _dict()
    assert "domain" not in d and Manifest.from_dict(d).domain is None
    d["domain"] = _domain()
    man = Manifest.from_dict(d)
    assert man.domain == d["domain"] and man.to_dict()["domain"] == d["domain"]


@pytest.mark.parametrize("bad, words", [(5, "domain is not an object"),
                                        ({"version": 99}, "domain.version 99 is not 1")])
def test_a_malformed_domain_section_is_refused(bad, words):
    d = _dict()
    d["domain"] = bad
    assert words in _problem(d)


def test_model_keys_and_shapes():
    assert model_key("r") == "r" and model_key("r-x", "fp16") == "r-x_fp16"
    assert model_head(model_key("g", "fp16")) == "g"
    assert model_shapes("g", "crop", 64, (8, 8)) == ((1, 64, 64), (1, 64, 64))  # one image unless told
    assert model_shapes("g", "crop", 64, (8, 8), g_channels=2)[1] == (2, 64, 64)  # a Laplace G: mean and scale
    assert model_shapes("r", "dense", 128, (29, 31)) == ((1, 128, 128), (1, 29, 31))  # the window map
    assert model_shapes("r", "crop", 64, (29, 29)) == ((1, 64, 64), (1,))  # one loss per window

