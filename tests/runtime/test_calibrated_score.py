"""The calibrated window score (a Laplace G's |x - mu| / b), G's two outputs through training, export
and the runtime, the stronger augmentation, and the paper's raw L1 still reachable."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from helpers.process import run_python
from rlp.runtime.core.errors import EX_USAGE
from rlp.runtime.core.geometry import WindowGeometry
from rlp.runtime.heatmap import Bundle

torch = pytest.importorskip("torch")

from rlp.train import models  # noqa: E402
from rlp.train.augment import AugmentConfig, _intensity_curve, augment  # noqa: E402


def test_box_score_by_hand():
    g = WindowGeometry(size=8, window=2, stride=2, context=4)  # crops of 4, the box at rows/cols 1..2
    target = np.zeros((1, 1, 4, 4), np.float32)
    target[0, 0, 1:3, 1:3] = [[1.0, 0.5], [0.25, 0.0]]
    recon = np.zeros((1, 2, 4, 4), np.float32)
    recon[0, 0, 1:3, 1:3] = [[0.5, 0.5], [0.75, 0.5]]  # mu: errors 0.5, 0, 0.5, 0.5
    recon[0, 1] = 9.0  # b outside the box is never read
    recon[0, 1, 1:3, 1:3] = [[0.5, 1.0], [0.25, 2.0]]  # b: z = 1, 0, 2, 0.25
    boxes = np.array([[0, 0]])
    assert g.box_score(recon, target, boxes, "l1")[0] == pytest.approx((0.5 + 0 + 0.5 + 0.5) / 4)
    assert g.box_score(recon, target, boxes, "z")[0] == pytest.approx((1 + 0 + 2 + 0.25) / 4)
    assert g.box_l1(recon[:, :1], target, boxes)[0] == pytest.approx(0.375)  # a one-channel G: its reconstruction
    with pytest.raises(ValueError, match="mean and scale"):
        g.box_score(recon[:, :1], target, boxes, "z")
    with pytest.raises(ValueError, match="unknown window score"):
        g.box_score(recon, target, boxes, "ssim")


def test_a_laplace_g_gives_a_mean_and_a_floored_scale():
    G = models.UNetG(width=4, depth=2, output="laplace").eval()
    with torch.no_grad():
        G.head.bias.fill_(-30.0)  # a scale far below the floor before it
        y = G(torch.rand(3, 1, 16, 16))
    assert y.shape == (3, 2, 16, 16)
    assert float(y[:, 1].min()) == pytest.approx(models.LAPLACE_MIN_SCALE, abs=1e-6)
    assert float(y[:, 0].max()) < 0  # the mean is not squashed into [0, 1]: it can follow values above the range
    assert G.arch["output"] == "laplace"
    assert "output" not in models.UNetG(width=4, depth=2).arch  # a paper G's arch (and checkpoints) as before
    rebuilt = models.build(dict(G.arch))
    rebuilt.load_state_dict(G.state_dict())
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x), G(x))


def test_the_intensity_curve_is_monotone_and_keeps_0_and_1():
    gen = torch.Generator().manual_seed(0)
    x = torch.linspace(0, 2, 201).repeat(4, 1, 1, 1).view(4, 1, 1, 201)
    y = _intensity_curve(x, 0.5, 6, gen)
    assert (y[..., 1:] - y[..., :-1] >= -1e-6).all()
    torch.testing.assert_close(y[..., 0], torch.zeros(4, 1, 1))
    torch.testing.assert_close(y[..., 100], torch.ones(4, 1, 1))  # x = 1
    assert not torch.allclose(y[0], y[1])  # a curve per image


def test_strong_augmentation_keeps_background_zero_and_the_range():
    gen = torch.Generator().manual_seed(1)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    brain = ((yy**2 + xx**2) < 0.6).float().expand(6, 1, 32, 32).clone()
    img = brain * (0.5 + 0.5 * torch.rand(6, 1, 32, 32, generator=gen))
    img[:, :, 14:17, 14:17] = 1.8  # above the healthy range: kept, never clipped at 1
    cfg = AugmentConfig(rotate_deg=15, scale=0.15, aniso=0.1, shear=0.1, elastic=0.03, elastic_fine=0.01,
                        contrast=0.3, gamma=0.3, gain=0.15, bias=0.3, noise=0.03, lowres_p=1.0, lowres_max=2.0)
    a, b = augment(img, brain, cfg, gen, ceiling=4.0)
    assert (a[b == 0] == 0).all() and float(a.min()) >= 0 and float(a.max()) <= 4.0
    assert float(a.max()) > 1.2
    c, _ = augment(img, brain, cfg, torch.Generator().manual_seed(1), ceiling=1.0)
    assert float(c.max()) <= 1.0  # version-1 data keeps its range


@pytest.fixture(scope="module")
def z_bundle(tiny_run, tmp_path_factory):
    from rlp.export.cli import main as export_main

    out = tmp_path_factory.mktemp("zb") / "b"
    assert export_main([str(tiny_run), "--out", str(out), "--quiet"]) == 0
    return out


def test_the_tiny_run_exports_a_z_bundle(z_bundle):
    m = json.loads((z_bundle / "manifest.json").read_text())
    assert m["loss"]["kind"] == "z" and m["loss"]["alternatives"] == ["l1", "z"]
    assert m["preprocessing"]["version"] == 2 and m["preprocessing"]["ceiling"] == 4.0
    assert m["models"]["g"]["outputs"][0]["shape"][1] == 2
    assert m["models"]["r"]["architecture"].get("output_scale") == models.target_scale("z")


def test_g_path_scores_are_the_z_score_of_gs_outputs(z_bundle, tiny_run):
    from rlp.runtime.core.preprocess import preprocess_slice

    with np.load(tiny_run / "heldout.npz") as z:
        image = z["images"][int(np.argmax(z["brains"].reshape(len(z["brains"]), -1).sum(1)))]
    rng = np.random.default_rng(3)
    image = image + (image > 0) * rng.uniform(0, 0.3, image.shape).astype(np.float32)  # not what G saw in training
    with Bundle.load(z_bundle, backend="ort-cpu", threads=1) as b:
        assert b.score == "z"
        res_z = b.heatmap_slice(image, head="g")
        geom, prep = b.manifest.geometry, b.manifest.preprocessing
    with Bundle.load(z_bundle, backend="ort-cpu", threads=1, score="l1") as b:
        res_l1 = b.heatmap_slice(image, head="g")
    # independently: G's two outputs from onnxruntime, the box read by hand (the slice is on the model grid)
    x = preprocess_slice(image, prep).image
    boxes = geom.window_boxes()[res_z.evaluated.ravel()]
    padded = geom.pad(x)
    crops, orig = geom.crops(padded, boxes, inpaint=True), geom.crops(padded, boxes, inpaint=False)
    sess = ort.InferenceSession(str(z_bundle / "g.onnx"), providers=["CPUExecutionProvider"])
    y = sess.run(None, {sess.get_inputs()[0].name: crops})[0]
    m, w = geom.margin, geom.window
    box = (slice(None), slice(m, m + w), slice(m, m + w))
    d = np.abs(y[:, 0][box].astype(np.float64) - orig[:, 0][box])
    np.testing.assert_allclose(res_z.window_map[res_z.evaluated], (d / y[:, 1][box]).mean((1, 2)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res_l1.window_map[res_l1.evaluated], d.mean((1, 2)), rtol=1e-5, atol=1e-6)
    assert (y[:, 1] >= models.LAPLACE_MIN_SCALE - 1e-6).all()


def test_score_l1_is_for_the_g_path_only(z_bundle, tmp_path):
    from helpers.runtime import write_nifti

    vol = np.zeros((32, 32, 1), np.int16)
    vol[6:26, 6:26] = 500
    f = write_nifti(tmp_path / "s.nii.gz", vol)
    r = run_python(["-m", "rlp.runtime.cli", str(f), "--bundle", str(z_bundle), "--path", "r", "--score", "l1",
                 "--out", str(tmp_path / "o")])
    assert r.returncode == EX_USAGE and "G path only" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run_python(["-m", "rlp.runtime.cli", str(f), "--bundle", str(z_bundle), "--path", "g", "--score", "l1",
                 "--out", str(tmp_path / "o"), "--quiet"])
    assert r.returncode == 0
    summary = json.loads(next((tmp_path / "o").glob("*_summary.json")).read_text())
    assert summary["score"] == "l1"
