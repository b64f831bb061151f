"""Helpers for the runtime tests: tiny torch-free bundles (onnx.helper) and NIfTI files.

The bundles follow the export contract (``runtime/core/manifest.py``): G maps an
inpainted model input (N, 1, S, S) to a reconstruction of the same shape, R maps
it to a predicted window loss (N, 1). The models are simple enough to have exact
numpy references (:func:`reference_scores`), so the tests check the whole
heatmap pipeline value by value.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from scipy import ndimage

from rlp.runtime.core.geometry import WindowGeometry
from rlp.runtime.core.manifest import Manifest, ModelEntry, TensorSpec, sha256_file
from rlp.runtime.core.preprocess import Preprocessing

OPSET = 17


def _model(nodes, s_in: int, out_name: str, out_shape: list, initializers=(), *, dtype=TensorProto.FLOAT,
           opset: int = OPSET, extra_opsets=()) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "rlp_test",
        [helper.make_tensor_value_info("image", dtype, ["batch", 1, s_in, s_in])],
        [helper.make_tensor_value_info(out_name, dtype, out_shape)],
        list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), *extra_opsets],
                              producer_name="rlp-tests")
    model.ir_version = 8
    return model


def g_model(s_in: int, kind: str = "mean") -> onnx.ModelProto:
    """G: a 3x3 mean filter (zero padding), optionally through a sigmoid; or the identity."""
    if kind == "identity":
        return _model([helper.make_node("Identity", ["image"], ["recon"])], s_in, "recon", ["batch", 1, s_in, s_in])
    w = numpy_helper.from_array(np.full((1, 1, 3, 3), 1.0 / 9.0, np.float32), "w")
    out = "recon" if kind == "mean" else "conv"
    nodes = [helper.make_node("Conv", ["image", "w"], [out], pads=[1, 1, 1, 1])]
    if kind == "sigmoid":
        nodes.append(helper.make_node("Sigmoid", ["conv"], ["recon"]))
    return _model(nodes, s_in, "recon", ["batch", 1, s_in, s_in], [w])


def r_model(s_in: int, kind: str = "mean") -> onnx.ModelProto:
    """R: the mean of the inpainted input (N, 1); ``"nan"`` divides by zero somewhere, ``"log"`` of zero."""
    nodes = [helper.make_node("ReduceMean", ["image"], ["loss" if kind == "mean" else "m"], axes=[2, 3], keepdims=0)]
    inits = []
    if kind == "nan":  # 0/0 = NaN for every window
        inits.append(numpy_helper.from_array(np.zeros((1,), np.float32), "zero"))
        nodes += [helper.make_node("Mul", ["m", "zero"], ["z"]), helper.make_node("Div", ["z", "z"], ["loss"])]
    return _model(nodes, s_in, "loss", ["batch", 1], inits)


def custom_domain_model(s_in: int) -> onnx.ModelProto:
    node = helper.make_node("Evil", ["image"], ["loss"], domain="com.example.evil")
    return _model([node], s_in, "loss", ["batch", 1], extra_opsets=[helper.make_opsetid("com.example.evil", 1)])


def entry_for(role: str, file: str, path: Path, s_in: int, *, input_kind: str = "crop", **kw) -> ModelEntry:
    out_shape = ["batch", 1] if role == "r" else ["batch", 1, s_in, s_in]
    return ModelEntry(role=role, file=file, sha256=sha256_file(path), size=path.stat().st_size,
                      inputs=[TensorSpec("image", ["batch", 1, s_in, s_in])],
                      outputs=[TensorSpec("loss" if role == "r" else "recon", out_shape)],
                      opset=OPSET, input_kind=input_kind, **kw)


def make_bundle(root: str | Path, *, size: int = 32, window: int = 8, stride: int = 4, context: int | None = None,
                fill: float = 1.0, g: str | None = "mean", r: str | None = "mean", r_input_kind: str = "crop",
                preprocessing: dict | None = None, models: dict[str, onnx.ModelProto] | None = None) -> Path:
    """Write a valid bundle: manifest.json plus r.onnx and g.onnx (either may be left out)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    geom = WindowGeometry(size=size, window=window, stride=stride, fill=fill, context=context)
    prep = Preprocessing(size=size, **(preprocessing or {}))
    s_crop = geom.input_size
    s_r = size if r_input_kind == "image" else s_crop
    protos = {}
    if g is not None:
        protos["g"] = (g_model(s_crop, g), s_crop, "crop")
    if r is not None:
        protos["r"] = (r_model(s_r, r), s_r, r_input_kind)
    for key, proto in (models or {}).items():
        protos[key] = (proto, s_r if key.startswith("r") else s_crop, r_input_kind if key.startswith("r") else "crop")
    entries = {}
    for key, (proto, s_in, kind) in protos.items():
        f = root / f"{key}.onnx"
        onnx.save_model(proto, str(f))
        entries[key] = entry_for(key.split("_")[0], f.name, f, s_in, input_kind=kind)
    man = Manifest(preprocessing=prep, geometry=geom, models=entries, rlp_version="test", created="test")
    (root / "manifest.json").write_text(json.dumps(man.to_dict(), indent=2))
    return root


def edit_manifest(root: str | Path, mutate: Callable[[dict], None], *, rehash: bool = True) -> None:
    """Change manifest.json; with ``rehash`` refresh every model's sha256 and size afterwards."""
    root = Path(root)
    d = json.loads((root / "manifest.json").read_text())
    mutate(d)
    if rehash:
        for m in d["models"].values():
            f = root / m["file"]
            if f.is_file():
                m["sha256"], m["size"] = sha256_file(f), f.stat().st_size
    (root / "manifest.json").write_text(json.dumps(d, indent=2))


def replace_model(root: str | Path, key: str, proto_or_bytes, *, rehash: bool = True) -> None:
    """Overwrite a bundle model's file (and, by default, its manifest hash)."""
    f = Path(root) / f"{key}.onnx"
    data = proto_or_bytes if isinstance(proto_or_bytes, bytes) else proto_or_bytes.SerializeToString()
    f.write_bytes(data)
    if rehash:
        edit_manifest(root, lambda d: None)


# --------------------------------------------------------------------------- references
def reference_scores(image: np.ndarray, geom: WindowGeometry, path: str, g_kind: str = "mean",
                     r_input_kind: str = "crop") -> np.ndarray:
    """Window map computed window by window in plain numpy, for the models above."""
    pos = geom.positions
    w, s = geom.window, geom.input_size
    m = geom.margin
    padded = np.pad(image.astype(np.float64), m) if m else image.astype(np.float64)
    out = np.zeros(geom.grid_shape)
    for i, r0 in enumerate(pos):
        for j, c0 in enumerate(pos):
            if path == "r" and r_input_kind == "image":
                x = image.astype(np.float64).copy()
                x[r0:r0 + w, c0:c0 + w] = geom.fill
                out[i, j] = x.mean()
                continue
            crop = padded[r0:r0 + s, c0:c0 + s].copy() if geom.context else padded.copy()
            br, bc = (m, m) if geom.context else (r0, c0)
            orig = crop.copy()
            crop[br:br + w, bc:bc + w] = geom.fill
            if path == "r":
                out[i, j] = crop.mean()
            else:
                rec = crop if g_kind == "identity" else ndimage.uniform_filter(crop, 3, mode="constant", cval=0.0)
                if g_kind == "sigmoid":
                    rec = 1.0 / (1.0 + np.exp(-rec))
                out[i, j] = np.abs(rec - orig)[br:br + w, bc:bc + w].mean()
    return out


# --------------------------------------------------------------------------- images
def phantom(shape: tuple[int, ...], *, lesion: bool = True, seed: int = 0) -> np.ndarray:
    """A skull-stripped-looking image: a textured ellipsoid on a zero background, with a bright blob."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r2 = sum((g / 0.8) ** 2 for g in grids)
    img = np.where(r2 < 1.0, 100.0 + 20.0 * np.cos(6 * grids[0]) + rng.normal(0, 3, shape), 0.0)
    if lesion:
        c = [0.3] + [0.0] * (len(shape) - 1)
        d2 = sum((g - ci) ** 2 for g, ci in zip(grids, c))
        img = np.where(r2 < 1.0, img + 150.0 * np.exp(-d2 / 0.01), 0.0)
    return img.astype(np.float32)


def synthetic_volume(shape=(40, 44, 20), seed=0, dtype=np.int16):
    """A skull-stripped-looking volume: an ellipsoid 'brain' with texture, 0 outside."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = (zz / 0.8) ** 2 + (yy / 0.75) ** 2 + (xx / 0.9) ** 2
    brain = r < 1
    tex = 600 + 300 * np.sin(6 * zz) * np.cos(5 * yy) + rng.normal(0, 20, shape)
    vol = np.where(brain, tex, 0).astype(dtype)
    return vol, brain


def write_nifti(path: str | Path, data: np.ndarray, affine: np.ndarray | None = None, *, dtype=None,
                qform_code: int = 1, sform_code: int = 1, qform: np.ndarray | None = None, nifti2: bool = False,
                **fields) -> Path:
    """Save ``data`` (stored as ``dtype``) as NIfTI; ``fields`` set raw header fields afterwards
    (``scl_slope=2.0``, ``pixdim=[...]``, ``dim=[...]``, ``datatype=32``...), bypassing nibabel's fixes.
    A ``.nii.gz`` name is gzip-compressed; missing parent folders are made."""
    aff = np.eye(4) if affine is None else np.asarray(affine, float)
    klass = nib.Nifti2Image if nifti2 else nib.Nifti1Image
    arr = np.asarray(data) if dtype is None else np.asarray(data).astype(dtype)
    img = klass(arr, aff)
    img.set_qform(aff if qform is None else qform, qform_code)
    img.set_sform(aff, sform_code)
    img.header.set_slope_inter(1.0, 0.0)
    raw = img.to_bytes()
    n = 540 if nifti2 else 348
    hdr = klass.header_class(raw[:n], check=False)
    for k, v in fields.items():
        hdr[k] = v
    raw = hdr.binaryblock + raw[n:]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


# --------------------------------------------------------------------------- fixtures and the CLI
def run_heatmap(capsys, *args) -> tuple[int, str, str]:
    """Run ``rlp-heatmap`` in-process; return (exit code, stdout, stderr)."""
    from rlp.runtime.cli import main

    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_clean_failure(code: int, err: str, want_code: int, name: str) -> None:
    """A user error: the expected exit code, one line on stderr naming the file, no traceback."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == want_code, err
    assert "Traceback" not in err
    failures = [ln for ln in lines if name in ln and "warning" not in ln]
    assert len(failures) == 1, lines
    assert failures[0].startswith("rlp-heatmap: ")


def outputs_of(out_dir: Path, stem: str) -> list[Path]:
    """Files in ``out_dir`` belonging to input ``stem``, temporary ones included."""
    if not out_dir.exists():
        return []
    return sorted(p for p in out_dir.iterdir() if p.name.startswith((f"{stem}_", f".{stem}_")))


ORIENTATIONS = {
    "RAS": np.diag([1.2, 1.0, 3.0, 1.0]),
    "LAS": np.array([[-1.0, 0, 0, 40], [0, 1.1, 0, -20], [0, 0, 2.5, -10], [0, 0, 0, 1]]),
    # file axes: posterior, superior, left
    "PSL": np.array([[0, 0, -1.5, 30], [-1.0, 0, 0, 25], [0, 2.0, 0, -12], [0, 0, 0, 1]]),
}


def oblique_affine(deg: float = 20.0) -> np.ndarray:
    t = np.deg2rad(deg)
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    rot = rot @ np.array([[1, 0, 0], [0, np.cos(t / 2), -np.sin(t / 2)], [0, np.sin(t / 2), np.cos(t / 2)]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([1.1, 0.9, 2.0])
    aff[:3, 3] = [-20, 15, 7]
    return aff


ORIENTATIONS["oblique"] = oblique_affine()


# --------------------------------------------------------------------------- refusals and external data
def run_slice(capsys, slice_file, bundle, *extra):
    """rlp-heatmap on ``slice_file`` into ``out`` beside it; return (exit code, stderr, out folder)."""
    out = slice_file.parent / "out"
    code, stdout, err = run_heatmap(capsys, slice_file, "--bundle", bundle, "--out", out, "--quiet", *extra)
    return code, err, out


def assert_refused(capsys, slice_file, bundle, want_code, words, *extra):
    """rlp-heatmap refuses ``bundle`` cleanly (one line naming it, with ``words``) and writes nothing."""
    code, err, out = run_slice(capsys, slice_file, bundle, *extra)
    assert_clean_failure(code, err, want_code, str(bundle))
    assert words.lower() in err.lower(), err
    assert not out.exists() or not any(out.iterdir())


def externalize(proto: onnx.ModelProto, location: str) -> tuple[onnx.ModelProto, bytes]:
    """Move every initializer's bytes to external data at ``location`` (written by the caller)."""
    blob = b""
    for t in proto.graph.initializer:
        raw = t.raw_data
        t.ClearField("raw_data")
        t.data_location = onnx.TensorProto.EXTERNAL
        for k, v in (("location", location), ("offset", str(len(blob))), ("length", str(len(raw)))):
            e = t.external_data.add()
            e.key, e.value = k, v
        blob += raw
    return proto, blob


def external_bundle(bundle, location: str, *, write_to=None, listed: str | None = "same"):
    """Give ``bundle``'s G its weights as external data at ``location`` (listed in the manifest unless
    ``listed=None``)."""
    proto, blob = externalize(g_model(32), location)
    target = write_to if write_to is not None else bundle / location
    target.write_bytes(blob)
    replace_model(bundle, "g", proto)
    if listed is not None:
        rel = location if listed == "same" else listed
        edit_manifest(bundle, lambda d: d["models"]["g"].update(
            external_data=[{"file": rel, "sha256": sha256_file(target), "size": len(blob)}]))
