"""Bundles are untrusted files: manifest, hashes, paths, ONNX structure; and the backend contract."""

from __future__ import annotations

import json
import os
import types

import numpy as np
import pytest

from helpers.runtime import (
    assert_clean_failure,
    assert_refused,
    custom_domain_model,
    edit_manifest,
    external_bundle,
    make_bundle,
    phantom,
    r_model,
    replace_model,
    run_slice,
    write_nifti,
)
from rlp.runtime import backends
from rlp.runtime.backends import Backend, check_model, create_backend
from rlp.runtime.core.errors import EX_DATAERR, EX_NOINPUT, EX_NOPERM, EX_SOFTWARE, EX_USAGE, RlpError, Unavailable
from rlp.runtime.core.manifest import sha256_file
from rlp.runtime.heatmap import Bundle


@pytest.fixture()
def bundle(tmp_path):
    return make_bundle(tmp_path / "bundle")


@pytest.fixture()
def slice_file(tmp_path):
    return write_nifti(tmp_path / "in.nii.gz", phantom((30, 30)))


# --------------------------------------------------------------------------- manifest and hashes
def test_a_valid_bundle_runs(capsys, slice_file, bundle):
    code, err, out = run_slice(capsys, slice_file, bundle)
    assert code == 0, err
    summary = json.loads((out / "in_summary.json").read_text())
    assert summary["bundle"]["manifest_sha256"] == sha256_file(bundle / "manifest.json")
    assert summary["bundle"]["model_sha256"] == sha256_file(bundle / "r.onnx")


def test_model_hash_mismatch_is_refused(capsys, slice_file, bundle):
    raw = bytearray((bundle / "r.onnx").read_bytes())
    raw[-1] ^= 1
    (bundle / "r.onnx").write_bytes(bytes(raw))
    assert_refused(capsys, slice_file, bundle, EX_NOPERM, "sha256")


def test_model_size_mismatch_is_refused(capsys, slice_file, bundle):
    with open(bundle / "r.onnx", "ab") as fh:
        fh.write(b"\0")
    assert_refused(capsys, slice_file, bundle, EX_NOPERM, "bytes, the manifest says")


@pytest.mark.parametrize("mutate, code, words", [
    (lambda d: d.update(schema_version=99), EX_DATAERR, "schema version 99"),
    (lambda d: d.update(schema="something.else"), EX_DATAERR, "not an rlp bundle"),
    (lambda d: d.update(models=[1, 2]), EX_DATAERR, "malformed manifest"),
    (lambda d: d["geometry"].update(window=-3), EX_DATAERR, "malformed manifest"),
    (lambda d: d["models"]["r"].pop("sha256"), EX_DATAERR, "malformed manifest"),
    (lambda d: d["preprocessing"].update(size=64), EX_DATAERR, "preprocessing size"),
    (lambda d: d["models"]["r"].update(input_kind="volume"), EX_DATAERR, "unknown input_kind"),
    (lambda d: d["models"]["r"].update(role="g"), EX_DATAERR, "has role 'g'"),
    (lambda d: d["models"]["r"]["inputs"][0].update(dtype="int8"), EX_DATAERR, "unsupported dtype"),
])
def test_malformed_manifests_are_refused(capsys, slice_file, bundle, mutate, code, words):
    edit_manifest(bundle, mutate, rehash=False)
    assert_refused(capsys, slice_file, bundle, code, words)


def test_manifest_that_is_not_json(capsys, slice_file, bundle):
    (bundle / "manifest.json").write_text("{not json")
    assert_refused(capsys, slice_file, bundle, EX_DATAERR, "not valid JSON")


def test_missing_bundle_and_missing_files(capsys, slice_file, bundle, tmp_path):
    assert_refused(capsys, slice_file, tmp_path / "nowhere", EX_NOINPUT, "not found")
    (bundle / "r.onnx").unlink()
    assert_refused(capsys, slice_file, bundle, EX_NOINPUT, "missing")
    (bundle / "manifest.json").unlink()
    assert_refused(capsys, slice_file, bundle, EX_NOINPUT, "no manifest.json")


@pytest.mark.parametrize("where", ["dotdot", "absolute", "symlink", "symlinked_manifest", "hardlink"])
def test_model_paths_leaving_the_bundle_are_refused(capsys, slice_file, bundle, tmp_path, where):
    outside = tmp_path / "outside.onnx"
    outside.write_bytes((bundle / "r.onnx").read_bytes())
    if where == "dotdot":
        edit_manifest(bundle, lambda d: d["models"]["r"].update(file="../outside.onnx"), rehash=False)
    elif where == "absolute":
        edit_manifest(bundle, lambda d: d["models"]["r"].update(file=str(outside)), rehash=False)
    elif where == "symlink":
        (bundle / "r.onnx").unlink()
        (bundle / "r.onnx").symlink_to(outside)
    elif where == "hardlink":
        (bundle / "r.onnx").unlink()
        os.link(outside, bundle / "r.onnx")
    else:
        real = tmp_path / "manifest_elsewhere.json"
        os.replace(bundle / "manifest.json", real)
        (bundle / "manifest.json").symlink_to(real)
    assert_refused(capsys, slice_file, bundle, EX_NOPERM,
                   {"dotdot": "leaves the bundle", "absolute": "must be relative",
                                                     "symlink": "symbolic link", "hardlink": "hard link",
                                                     "symlinked_manifest": "symbolic link"}[where])


# --------------------------------------------------------------------------- ONNX structure
def test_external_data_inside_the_bundle_and_listed_is_accepted(capsys, slice_file, bundle):
    external_bundle(bundle, "g_weights.bin")
    code, err, out = run_slice(capsys, slice_file, bundle, "--path", "g")
    assert code == 0, err
    # ...and gives the same heatmap as the self-contained model
    ref = make_bundle(bundle.parent / "ref")
    code, err, out2 = run_slice(capsys, slice_file, ref, "--path", "g", "--out", slice_file.parent / "out2")
    assert code == 0, err
    a = json.loads((out / "in_summary.json").read_text())
    b = json.loads((out2 / "in_summary.json").read_text())
    assert a["max_score"] == b["max_score"] and a["top_windows"] == b["top_windows"]


def test_external_data_with_a_changed_hash_is_refused(capsys, slice_file, bundle):
    external_bundle(bundle, "g_weights.bin")
    raw = bytearray((bundle / "g_weights.bin").read_bytes())
    raw[0] ^= 1
    (bundle / "g_weights.bin").write_bytes(bytes(raw))
    assert_refused(capsys, slice_file, bundle, EX_NOPERM, "sha256", "--path", "g")


@pytest.mark.parametrize("case", ["dotdot", "absolute", "symlink", "hardlink", "unlisted", "missing"])
def test_external_data_outside_the_bundle_is_refused(capsys, slice_file, bundle, tmp_path, case):
    outside = tmp_path / "stolen.bin"
    if case == "dotdot":
        external_bundle(bundle, "../stolen.bin", write_to=outside, listed=None)
    elif case == "absolute":
        external_bundle(bundle, str(outside), write_to=outside, listed=None)
    elif case in ("symlink", "hardlink"):
        external_bundle(bundle, "w.bin", write_to=outside, listed=None)
        (bundle / "w.bin").symlink_to(outside) if case == "symlink" else os.link(outside, bundle / "w.bin")
    elif case == "unlisted":
        external_bundle(bundle, "w.bin", listed=None)
    else:
        external_bundle(bundle, "w.bin", listed=None)
        (bundle / "w.bin").unlink()
    assert_refused(capsys, slice_file, bundle, EX_NOPERM, {"dotdot": "leaves", "absolute": "not a relative path",
                                                     "symlink": "symbolic link", "hardlink": "hard link",
                                                     "unlisted": "not listed", "missing": "not listed"}[case],
             "--path", "g")


def test_listed_external_data_behind_a_link_is_refused_by_the_manifest_check(capsys, slice_file, bundle, tmp_path):
    outside = tmp_path / "stolen.bin"
    external_bundle(bundle, "w.bin", write_to=outside, listed=None)
    (bundle / "w.bin").symlink_to(outside)
    edit_manifest(bundle, lambda d: d["models"]["g"].update(
        external_data=[{"file": "w.bin", "sha256": sha256_file(outside)}]))
    assert_refused(capsys, slice_file, bundle, EX_NOPERM, "symbolic link", "--path", "g")


def test_custom_domain_operators_are_refused(capsys, slice_file, bundle):
    replace_model(bundle, "r", custom_domain_model(32))
    assert_refused(capsys, slice_file, bundle, EX_NOPERM, "com.example.evil::Evil")


def test_local_functions_of_standard_operators_are_allowed(bundle):
    from onnx import helper

    fn = helper.make_function("local.fns", "MeanOf", ["x"], ["y"],
                              [helper.make_node("ReduceMean", ["x"], ["y"], axes=[2, 3], keepdims=0)],
                              [helper.make_opsetid("", 17)])
    proto = r_model(32)
    proto.graph.node[0].CopyFrom(helper.make_node("MeanOf", ["image"], ["loss"], domain="local.fns"))
    proto.functions.append(fn)
    proto.opset_import.append(helper.make_opsetid("local.fns", 1))
    replace_model(bundle, "r", proto)
    with Bundle.load(bundle, backend="ort-cpu") as b:
        assert b.heatmap_slice(phantom((32, 32))).n_evaluated > 0
    evil = helper.make_function("local.fns", "MeanOf", ["x"], ["y"],
                                [helper.make_node("Evil", ["x"], ["y"], domain="com.example.evil")],
                                [helper.make_opsetid("com.example.evil", 1)])
    proto.functions[0].CopyFrom(evil)
    replace_model(bundle, "r", proto)
    with pytest.raises(RlpError, match="com.example.evil::Evil") as exc:
        Bundle.load(bundle, backend="ort-cpu").backend("r")
    assert exc.value.code == EX_NOPERM


@pytest.mark.parametrize("content, words", [(b"", "empty"), (np.random.default_rng(0).bytes(400), "rebuild"),
                                            (b"\x08\x07", "ONNX checker")])
def test_garbage_or_empty_onnx_is_refused(capsys, slice_file, bundle, content, words):
    replace_model(bundle, "r", content)
    assert_refused(capsys, slice_file, bundle, EX_DATAERR, words)


def test_graph_io_must_match_the_manifest(capsys, slice_file, bundle):
    edit_manifest(bundle, lambda d: d["models"]["r"]["inputs"][0].update(name="x"))
    assert_refused(capsys, slice_file, bundle, EX_DATAERR, "do not match the manifest")
    edit_manifest(bundle, lambda d: d["models"]["r"]["inputs"][0].update(name="image", shape=["batch", 1, 16, 16]))
    assert_refused(capsys, slice_file, bundle, EX_DATAERR, "shape")


def test_manifest_shapes_must_fit_the_geometry(bundle):
    replace_model(bundle, "r", r_model(16))
    edit_manifest(bundle, lambda d: d["models"]["r"]["inputs"][0].update(shape=["batch", 1, 16, 16]))
    with pytest.raises(RlpError, match="does not fit the geometry"):
        Bundle.load(bundle).backend("r")


def test_unknown_target_transform_and_missing_path(bundle):
    edit_manifest(bundle, lambda d: d["models"]["r"].update(target_transform="exp"))
    with pytest.raises(RlpError, match="target_transform 'exp'"):
        Bundle.load(bundle).backend("r")
    b = make_bundle(bundle.parent / "r_only", g=None)
    with pytest.raises(RlpError, match="no model for path g"):
        Bundle.load(b).backend("g")


def test_non_finite_model_output_is_an_error(capsys, slice_file, bundle):
    replace_model(bundle, "r", r_model(32, "nan"))
    code, err, out = run_slice(capsys, slice_file, bundle)
    assert_clean_failure(code, err, EX_DATAERR, "r.onnx")
    assert "non-finite" in err and not out.exists()  # nothing written, not even the folder this call made


def test_without_onnx_the_hashes_are_still_checked(monkeypatch, bundle):
    monkeypatch.setattr(backends.checks, "_import_onnx", lambda: None)
    with Bundle.load(bundle, backend="ort-cpu") as b:
        be = b.backend("r")
        assert any("onnx package is not installed" in n for n in be.notes)
        assert b.heatmap_slice(phantom((32, 32))).n_evaluated > 0
    raw = bytearray((bundle / "r.onnx").read_bytes())
    raw[-1] ^= 1
    (bundle / "r.onnx").write_bytes(bytes(raw))
    with pytest.raises(RlpError, match="sha256"):
        Bundle.load(bundle)


# --------------------------------------------------------------------------- the backend contract
def test_backend_validates_its_input_and_records_latency(bundle):
    with Bundle.load(bundle, backend="ort-cpu", threads=1) as b:
        be = b.backend("r")
        assert isinstance(be, Backend) and be.name == "ort-cpu" and be.details["threads"] == 1
        x = np.zeros((3, 1, 32, 32), np.float32)
        y = be.run(x)
        assert y.shape == (3, 1) and len(be.latencies) == 1 and be.latencies[0] > 0
        for bad in (x.astype(np.float64), x[:, 0], np.zeros((3, 1, 16, 16), np.float32),
                    np.zeros((0, 1, 32, 32), np.float32), x.tolist()):
            with pytest.raises(RlpError) as exc:
                be.run(bad)
            assert exc.value.code == EX_SOFTWARE
        assert len(be.latencies) == 1
    with pytest.raises(RlpError, match="closed"):
        be.run(x)


def test_gpu_backends_are_unavailable_here_with_a_clear_message(bundle):
    model = check_model(bundle, "r", Bundle.load(bundle).manifest.models["r"])
    available = backends.ort_providers()
    for kind in ("ort-cuda", "ort-trt", "trt"):
        if kind in backends.available_backends():
            pytest.skip(f"{kind} is available on this machine")
        with pytest.raises(Unavailable) as exc:
            create_backend(kind, model)
        assert exc.value.code == EX_SOFTWARE
        if kind != "trt":
            assert all(p in str(exc.value) for p in available)
    auto = create_backend("auto", model)
    assert auto.name == "ort-cpu"
    assert set(auto.details["auto"]["skipped"]) == {"trt", "ort-cuda"}
    with pytest.raises(RlpError) as exc:
        create_backend("tpu", model)
    assert exc.value.code == EX_USAGE


# --------------------------------------------------------------------------- TensorRT engines (no GPU: a fake)
def _fake_trt(deserialized=None):
    trt = types.SimpleNamespace(__version__="10.0.0")
    trt.Logger = type("Logger", (), {"ERROR": 0, "__init__": lambda self, level: None})
    trt.Runtime = type("Runtime", (), {"__init__": lambda self, logger: None,
                                       "deserialize_cuda_engine": lambda self, blob: deserialized})
    cudart = types.SimpleNamespace(
        cudaGetDeviceCount=lambda: (0, 1),
        cudaGetDeviceProperties=lambda dev: (0, types.SimpleNamespace(major=9, minor=0)))
    return trt, cudart


def _with_engine(bundle, **over):
    plan = bundle / "r.plan"
    plan.write_bytes(b"not really an engine")
    engine = {"model": "r", "file": "r.plan", "sha256": sha256_file(plan), "size": plan.stat().st_size,
              "precision": "fp32", "tensorrt_version": "10.0.0", "compute_capability": "9.0", **over}
    edit_manifest(bundle, lambda d: d.update(engines=[engine]))
    return plan


def test_trt_engine_that_does_not_deserialise_asks_for_a_rebuild(monkeypatch, bundle):
    monkeypatch.setattr(backends.trt, "_import_trt", lambda: _fake_trt(None))
    _with_engine(bundle)
    with pytest.raises(RlpError, match="rebuild with rlp-export --trt") as exc:
        Bundle.load(bundle, backend="trt").backend("r")
    assert exc.value.code == EX_DATAERR and "deserialise" in str(exc.value)


@pytest.mark.parametrize("over, words", [({"tensorrt_version": "8.6.1"}, "TensorRT 8.6.1 sm 9.0"),
                                         ({"compute_capability": "8.0"}, "sm 8.0"),
                                         ({"model": "g"}, "no TensorRT engine for model 'r'")])
def test_trt_engines_for_another_gpu_or_version_are_not_loaded(monkeypatch, bundle, over, words):
    monkeypatch.setattr(backends.trt, "_import_trt", lambda: _fake_trt(object()))
    _with_engine(bundle, **over)
    with pytest.raises(Unavailable, match="rebuild with rlp-export --trt") as exc:
        Bundle.load(bundle, backend="trt").backend("r")
    assert words in str(exc.value)
    # auto skips it and falls back to the CPU
    assert Bundle.load(bundle, backend="auto").backend("r").name in ("ort-cpu", "ort-cuda")


def test_trt_engine_with_other_tensors_is_refused(monkeypatch, bundle):
    names = ["input", "loss"]
    engine = types.SimpleNamespace(num_io_tensors=2, get_tensor_name=names.__getitem__)
    monkeypatch.setattr(backends.trt, "_import_trt", lambda: _fake_trt(engine))
    _with_engine(bundle)
    with pytest.raises(RlpError, match=r"engine tensors \['input', 'loss'\] do not match") as exc:
        Bundle.load(bundle, backend="trt").backend("r")
    assert exc.value.code == EX_DATAERR


def test_trt_engine_with_a_wrong_hash_is_refused_before_loading(monkeypatch, bundle):
    monkeypatch.setattr(backends.trt, "_import_trt", lambda: _fake_trt(object()))
    plan = _with_engine(bundle)
    plan.write_bytes(b"tampered engine bytes")
    with pytest.raises(RlpError) as exc:
        Bundle.load(bundle, backend="trt")
    assert exc.value.code == EX_NOPERM


# --------------------------------------------------------------------------- on a GPU (skipped here)
def _has(kind: str) -> bool:
    try:
        return kind in backends.available_backends()
    except Exception:
        return False


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["ort-cuda", "ort-trt"])
def test_gpu_backend_matches_the_cpu(tmp_path, kind):
    if not _has(kind):
        pytest.skip(f"{kind} is not available (needs onnxruntime-gpu and a CUDA GPU)")
    b = make_bundle(tmp_path / "b")
    img = phantom((40, 36))
    with Bundle.load(b, backend="ort-cpu") as cpu, Bundle.load(b, backend=kind, precision="fp32") as gpu:
        for path in ("r", "g"):
            a = cpu.heatmap_slice(img, head=path).window_map
            c = gpu.heatmap_slice(img, head=path).window_map
            np.testing.assert_allclose(c, a, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
def test_native_trt_engine_matches_the_cpu(tmp_path):
    if not _has("trt"):
        pytest.skip("tensorrt and cuda-python are not installed")
    trt, cudart = backends._import_trt()
    b = make_bundle(tmp_path / "b")
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse((b / "r.onnx").read_bytes())
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("image", (1, 1, 32, 32), (16, 1, 32, 32), (64, 1, 32, 32))
    config.add_optimization_profile(profile)
    plan = bytes(builder.build_serialized_network(network, config))
    (b / "r.plan").write_bytes(plan)
    cc = backends.compute_capability(cudart)
    engine = {"model": "r", "file": "r.plan", "sha256": sha256_file(b / "r.plan"), "size": len(plan),
              "precision": "fp32", "tensorrt_version": trt.__version__, "compute_capability": cc,
              "max_batch": 64}
    edit_manifest(b, lambda d: d.update(engines=[engine]))
    img = phantom((40, 36))
    with Bundle.load(b, backend="ort-cpu") as cpu, Bundle.load(b, backend="trt") as gpu:
        assert gpu.backend("r").name == "trt"
        np.testing.assert_allclose(gpu.heatmap_slice(img).window_map, cpu.heatmap_slice(img).window_map,
                                   rtol=1e-4, atol=1e-5)
