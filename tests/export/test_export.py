"""rlp-export: bicubic rewrite, ONNX export, parity gate, bundle atomicity, CLI behaviour.

Tiny models on synthetic brain-like slices keep the whole file to a few tens of
seconds on 2 cores; the first ONNX export in a process costs a few seconds of
exporter start-up, so the exported bundle is shared by a module fixture.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch.nn import functional as F

from helpers.runs import GEOMETRY, leftovers, make_run, randomise_batchnorm, synthetic_slices, tiny_g, tiny_r
from rlp.export import parity as parity_mod
from rlp.export.bicubic import Bicubic2x, swap_bicubic, upsample_matrix
from rlp.export.cli import main
from rlp.export.onnx_export import STANDARD_DOMAINS, fold_conv_bn, get_metadata, prepare_for_export
from rlp.runtime.core.errors import EX_CANTCREAT, EX_DATAERR, EX_NOINPUT, EX_NOPERM, EX_SOFTWARE, EX_USAGE
from rlp.runtime.core.geometry import WindowGeometry
from rlp.runtime.core.manifest import load_bundle_manifest, sha256_file
from rlp.train.models import PaperR, UNetG, Upsample


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("run") / "run", g=tiny_g(), r=tiny_r())


@pytest.fixture(scope="module")
def bundle(tiny_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "tiny"
    assert main([str(tiny_run), "--out", str(out), "--fp16", "--quiet"]) == 0
    return out


# ---------------------------------------------------------- bicubic rewrite
@pytest.mark.parametrize("shape", [(2, 3, 3, 3), (1, 1, 1, 1), (2, 4, 6, 6), (1, 2, 5, 7), (2, 8, 24, 24)])
def test_bicubic_rewrite_equals_interpolate(shape):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0)) * 4 - 2  # beyond [0, 1]: overshoot matters
    ref = F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False)
    out = Bicubic2x()(x)
    assert out.shape == ref.shape
    assert (out - ref).abs().max().item() <= 1e-5


def test_bicubic_rewrite_on_real_slices():
    images, _ = synthetic_slices(2, 32)
    x = torch.from_numpy(images[:, None])
    for side in (32, 16, 6, 3):  # the sizes a U-Net decoder upsamples from
        xs = F.adaptive_avg_pool2d(x, side)
        ref = F.interpolate(xs, scale_factor=2, mode="bicubic", align_corners=False)
        assert (Bicubic2x()(xs) - ref).abs().max().item() <= 1e-5


def test_upsample_matrix_is_banded_and_normalised():
    u = upsample_matrix(12)
    assert u.shape == (24, 12)
    assert np.allclose(u.sum(1), 1.0, atol=1e-12)  # Keys' weights sum to one, clamping keeps them
    rows, cols = np.nonzero(u)
    assert np.abs(cols - rows // 2).max() <= 2  # output 2i / 2i+1 reads source pixels i-2 .. i+2 only
    assert not u.flags.writeable  # cached: nobody may change it


def test_swap_bicubic_copies_and_replaces():
    g = UNetG(width=4, depth=3)
    swapped, n = swap_bicubic(g)
    assert n == 3
    assert not any(isinstance(m, Upsample) for m in swapped.modules())
    assert sum(isinstance(m, Upsample) for m in g.modules()) == 3  # the original is untouched
    x = torch.rand(2, 1, 48, 48)  # bottom 6x6 -> 12 -> 24 -> 48
    with torch.no_grad():
        assert (swapped.eval()(x) - g.eval()(x)).abs().max().item() <= 1e-5


def test_prepare_folds_batchnorm_exactly():
    g = tiny_g()
    prepared, info = prepare_for_export(g)
    assert info == {"bicubic_rewritten": 2, "batchnorm_folded": 10}
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in prepared.modules())
    x = torch.rand(3, 1, 16, 16)
    with torch.no_grad():
        assert (prepared(x) - g(x)).abs().max().item() <= 1e-5
    paper = PaperR().eval()
    assert fold_conv_bn(paper) == 0  # its BatchNorm follows an activation: not foldable exactly


# ----------------------------------------------------------------- bundle
def test_bundle_manifest_and_files(bundle, tiny_run):
    man = load_bundle_manifest(bundle)  # verifies every listed file's size and sha256
    assert set(man.models) == {"g", "r", "g_fp16", "r_fp16"}
    for key, entry in man.models.items():
        path = bundle / entry.file
        assert sha256_file(path) == entry.sha256 and path.stat().st_size == entry.size
        model = onnx.load(str(path))
        onnx.checker.check_model(model, full_check=True)
        assert {n.domain for n in model.graph.node} <= STANDARD_DOMAINS
        assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
        assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # io stays float32
        meta = get_metadata(model)
        assert meta["rlp.role"] == entry.role and meta["rlp.model"] == key and meta["rlp.precision"] == entry.precision
        assert json.loads(meta["rlp.geometry"])["context"] == GEOMETRY.context
        assert "Resize" not in {n.op_type for n in model.graph.node}
    g, r = man.models["g"], man.models["r"]
    assert (g.inputs[0].name, g.inputs[0].shape, g.outputs[0].name, g.outputs[0].shape) == (
        "image", ["batch", 1, 16, 16], "recon", ["batch", 1, 16, 16])
    assert (r.outputs[0].name, r.outputs[0].shape, r.input_kind) == ("loss", ["batch", 1], "crop")
    assert man.models["g_fp16"].precision == "fp16" and man.models["g_fp16"].io_dtype == "float32"
    assert man.geometry == GEOMETRY and man.loss["region"] == "window"
    assert man.training["config"]["preset"] == "test" and man.data["path"] == "synthetic"
    assert man.parity["passed"] and man.engines == []
    assert not leftovers(bundle.parent)


def test_parity_results_in_manifest(bundle):
    parity = load_bundle_manifest(bundle).parity
    rows = {(c["model"], c["quantity"]): c for c in parity["checks"]}
    assert rows[("g", "recon pixels")]["max_abs"] <= 1e-5 and rows[("g", "recon pixels")]["reference"] == "torch"
    assert rows[("g", "window loss")]["max_abs"] <= 1e-5
    assert rows[("r", "prediction")]["max_abs"] <= 1e-5
    for key in ("g_fp16", "r_fp16"):
        m = next(c for (model, q), c in rows.items() if model == key and q.startswith("window map"))
        assert m["passed"] and m["top_window_same"] is not None and m["n"] > 10
    assert parity["data"]["windows"] >= 3 * 8
    assert all(c["passed"] for c in parity["checks"])


def test_onnxruntime_matches_torch_on_inpainted_crops(bundle, tiny_run):
    import onnxruntime as ort

    images, _ = synthetic_slices(1, GEOMETRY.size, seed=5)
    padded = GEOMETRY.pad(images[0])
    boxes = GEOMETRY.window_boxes()[::7]
    x = GEOMETRY.crops(padded, boxes, inpaint=True)
    sess = ort.InferenceSession(str(bundle / "g.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"image": x})[0]
    with torch.no_grad():
        ref = tiny_g()(torch.from_numpy(x)).numpy()
    assert np.abs(got - ref).max() <= 1e-5


def test_existing_bundle_needs_force(bundle, tiny_run, capsys):
    before = (bundle / "manifest.json").read_bytes()
    assert main([str(tiny_run), "--out", str(bundle), "--quiet"]) == EX_CANTCREAT
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"rlp-export: {bundle}: ") and "--force" in err and "\n" not in err
    assert (bundle / "manifest.json").read_bytes() == before


def test_force_replaces_bundle(tiny_run, tmp_path):
    out = tmp_path / "b"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    assert main([str(tiny_run), "--out", str(out), "--models", "r", "--force", "--quiet"]) == 0
    assert not (out / "stale.txt").exists()
    assert set(load_bundle_manifest(out).models) == {"r"}
    assert not leftovers(tmp_path)


def test_broken_model_fails_gate_and_leaves_nothing(tmp_path, capsys):
    g = tiny_g()
    with torch.no_grad():
        g.head.weight[0, 0, 0, 0] = float("nan")
    run = make_run(tmp_path / "run", g=g)
    out = tmp_path / "bundles" / "broken"
    assert main([str(run), "--out", str(out), "--quiet"]) == EX_DATAERR
    err = capsys.readouterr().err
    assert "parity gate failed" in err and "non-finite" in err and err.count("\n") == 1
    assert not out.exists() and not leftovers(out.parent)


def test_failed_gate_keeps_the_old_bundle(tiny_run, tmp_path, monkeypatch, capsys):
    out = tmp_path / "b"
    assert main([str(tiny_run), "--out", str(out), "--models", "r", "--quiet"]) == 0
    before = (out / "manifest.json").read_bytes()
    real = parity_mod.ParityGate._evaluate

    def tampered(self, role, kind, runners, *args, **kw):  # the ONNX model drifts by 1e-3
        res = real(self, role, kind, runners, *args, **kw)
        res["r"] = {k: v + 1e-3 for k, v in res["r"].items()}
        return res

    monkeypatch.setattr(parity_mod.ParityGate, "_evaluate", tampered)
    assert main([str(tiny_run), "--out", str(out), "--models", "r", "--force"]) == EX_DATAERR
    err = capsys.readouterr().err
    assert "FAIL" in err and "max_abs 1e-03 > 1e-05" in err.replace("0.001", "1e-03")
    assert (out / "manifest.json").read_bytes() == before
    assert not leftovers(tmp_path)


def test_pickled_code_checkpoint_is_refused(tmp_path, capsys):
    run = make_run(tmp_path / "run", r=tiny_r())
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"format": "rlp.ckpt", "version": 1, "x": Evil()}, run / "checkpoints/predictor_best.pt",
               pickle_protocol=2)
    out = tmp_path / "b"
    assert main([str(run), "--out", str(out), "--quiet"]) == EX_NOPERM
    assert "refused" in capsys.readouterr().err
    assert not marker.exists() and not out.exists()


def test_user_errors_are_one_line(tmp_path, capsys):
    run = make_run(tmp_path / "run", r=tiny_r())
    cases = [
        ([str(tmp_path / "nope"), "--out", str(tmp_path / "o")], EX_NOINPUT, "run folder not found"),
        ([str(run), "--out", str(tmp_path / "o"), "--models", "g"], EX_NOINPUT, "gan_best.pt"),
        ([str(run), "--out", str(tmp_path / "o"), "--opset", "11"], EX_USAGE, "opset"),
        ([str(run), "--out", str(tmp_path / "o"), "--trt"], EX_SOFTWARE, "--trt"),
    ]
    for argv, code, text in cases:
        if "--trt" in argv and _has_tensorrt_gpu():
            continue
        assert main(argv + ["--quiet"]) == code, argv
        err = capsys.readouterr().err
        assert err.startswith("rlp-export: ") and text in err and err.count("\n") == 1, err
    (run / "heldout.npz").write_bytes(b"not a zip")
    assert main([str(run), "--out", str(tmp_path / "o"), "--quiet"]) == EX_DATAERR
    assert "heldout.npz" in capsys.readouterr().err
    assert main([str(run), "--out", str(tmp_path / "o"), "--models", "x"]) == EX_USAGE
    err = capsys.readouterr().err  # one line naming the option and where help is, not argparse's usage block
    assert err.startswith("rlp-export: ") and "--models" in err and "rlp-export --help" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists() and not leftovers(tmp_path)


def test_interrupt_removes_partial_output(tiny_run, tmp_path, monkeypatch, capsys):
    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(parity_mod.ParityGate, "check", interrupt)
    out = tmp_path / "b"
    assert main([str(tiny_run), "--out", str(out), "--quiet"]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert not out.exists() and not leftovers(tmp_path)


def test_progress_table_and_next_command(tiny_run, tmp_path, capsys):
    out = tmp_path / "b"
    assert main([str(tiny_run), "--out", str(out), "--models", "r", "--parity-slices", "1"]) == 0
    err = capsys.readouterr().err
    assert "parity gate: passed" in err and f"rlp-heatmap SLICE.nii.gz --bundle {out}" in err


def test_paper_r_at_256(tmp_path):
    geometry = WindowGeometry(size=256, window=16, stride=60)  # 5x5 windows keep the test fast
    torch.manual_seed(3)
    r = randomise_batchnorm(PaperR())
    run = make_run(tmp_path / "run", geometry=geometry, r=r, n_slices=1)
    out = tmp_path / "b"
    assert main([str(run), "--out", str(out), "--quiet", "--fp16", "--parity-windows", "2"]) == 0
    man = load_bundle_manifest(out)
    assert set(man.models) == {"r", "r_fp16"}
    entry = man.models["r"]
    assert entry.input_kind == "image" and entry.inputs[0].shape == ["batch", 1, 256, 256]
    assert entry.architecture["kind"] == "paper"
    ops = {n.op_type for n in onnx.load(str(out / "r.onnx")).graph.node}
    assert "BatchNormalization" in ops  # behind an activation: kept, not folded


# --------------------------------------------------------------- parity units
def test_map_comparison_judges_ranks_and_ties():
    tol = parity_mod.Tolerances()
    ref = np.linspace(0, 0.1, 50)
    good = parity_mod.compare_maps(parity_mod.Check("x", "y", "map", 50, tol.limits("fp16", "y")), ref + 1e-4, ref, tol)
    assert good.passed and good.spearman > 0.999 and good.top_window_same
    shuffled = np.random.default_rng(0).permutation(ref)
    bad = parity_mod.compare_maps(parity_mod.Check("x", "y", "map", 50, tol.limits("fp16", "y")), shuffled, ref, tol)
    assert not bad.passed
    nan = parity_mod.compare_maps(parity_mod.Check("x", "y", "map", 50, tol.limits("fp16", "y")),
                                  np.where(ref > 0.05, np.nan, ref), ref, tol)
    assert not nan.passed and "non-finite" in nan.problem


# ----------------------------------------------------------------- TensorRT
def _has_tensorrt_gpu() -> bool:
    try:
        import tensorrt  # noqa: F401
    except Exception:  # noqa: BLE001 (a broken wheel raises FileNotFoundError/OSError, not only ImportError)
        return False
    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _has_tensorrt_gpu(), reason="needs tensorrt and a CUDA GPU")
def test_tensorrt_engines(tiny_run, tmp_path):
    out = tmp_path / "b"
    assert main([str(tiny_run), "--out", str(out), "--fp16", "--trt", "--quiet"]) == 0
    man = load_bundle_manifest(out)
    assert {e.model for e in man.engines} == {"g_fp16", "r_fp16"}
    for e in man.engines:
        assert e.precision == "fp16" and e.file.endswith(".plan")
        assert f"sm{e.compute_capability.replace('.', '')}" in e.file
        assert (e.min_batch, e.opt_batch, e.max_batch) == (1, 64, 256)
    assert (out / "timing.cache").stat().st_size > 0
    assert any(c["model"].endswith(".plan") for c in man.parity["checks"])
