"""Predictor variants: the dense predictor, G targets cached with provenance, named variants in one bundle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from helpers.process import run_python  # noqa: E402
from rlp.export.cli import main as export_main  # noqa: E402
from rlp.runtime.core.errors import EX_DATAERR, EX_USAGE, BadInput  # noqa: E402
from rlp.runtime.core.geometry import WindowGeometry  # noqa: E402
from rlp.runtime.core.manifest import load_bundle_manifest  # noqa: E402
from rlp.runtime.core.preprocess import Preprocessing, preprocess_slice  # noqa: E402
from rlp.runtime.heatmap import Bundle  # noqa: E402
from rlp.runtime.scorers import score_windows  # noqa: E402
from rlp.train import models  # noqa: E402
from rlp.train.checkpoint import load_checkpoint  # noqa: E402
from rlp.train.config import resolve  # noqa: E402
from rlp.train.loop import dense_loss, train_predictor  # noqa: E402
from rlp.train.targets import CACHE, window_loss_maps  # noqa: E402


@pytest.mark.parametrize("size,window,stride", [(128, 8, 2), (256, 16, 4), (32, 4, 4)])
def test_dense_predictor_gives_the_window_grid(size, window, stride):
    geom = WindowGeometry(size=size, window=window, stride=stride)
    r = models.DenseR(size, window, stride, width=4, n_context=2 if size == 32 else 3)
    y = r(torch.rand(2, 1, size, size))
    assert tuple(y.shape) == (2, 1) + geom.grid_shape
    assert (y >= 0).all()  # a loss is never negative


def test_dense_predictor_refuses_an_irregular_grid():
    with pytest.raises(ValueError, match="multiples of the stride"):
        models.DenseR(100, 16, 4)  # 100 - 16 = 84 is a multiple of 4, but 100 is not a multiple of 4 * 8
    with pytest.raises(ValueError, match="power-of-two"):
        models.DenseR(96, 6, 3)


def test_dense_predictor_window_is_the_mean_of_its_cells():
    """A window's predicted loss only depends on the cells it covers: a change far away leaves it alone."""
    torch.manual_seed(0)
    r = models.DenseR(64, 8, 2, width=4, n_context=1).eval()
    x = torch.rand(1, 1, 64, 64)
    y = x.clone()
    y[..., 50:, 50:] = 0  # bottom-right corner
    with torch.no_grad():
        a, b = r(x)[0, 0], r(y)[0, 0]
    assert torch.equal(a[:5, :5], b[:5, :5])  # top-left windows: far outside the receptive field
    assert not torch.equal(a[-3:, -3:], b[-3:, -3:])


def test_dense_loss_ignores_unscored_windows_and_rewards_ranking():
    t = torch.tensor([[[0.1, 0.2], [0.3, float("nan")]]])
    good = torch.tensor([[[0.1, 0.2], [0.3, 5.0]]], requires_grad=True)
    flat = torch.full((1, 2, 2), 0.2, requires_grad=True)
    reversed_ = torch.tensor([[[0.3, 0.2], [0.1, 0.0]]], requires_grad=True)
    lg, _ = dense_loss(good, t, 0.5)
    lf, _ = dense_loss(flat, t, 0.5)
    lr, _ = dense_loss(reversed_, t, 0.5)
    lg, lf = float(lg.detach()), float(lf.detach())
    assert lg < 1e-6  # the unscored (NaN) window's wild value costs nothing
    assert lg < lf < float(lr.detach())
    lr.backward()
    assert torch.isfinite(reversed_.grad).all()


def test_dense_loss_does_not_reward_a_flat_map_with_the_right_ripples():
    """A near-constant map whose tiny ripples rank the windows right must not pass: it did, and R collapsed."""
    t = torch.linspace(0.01, 0.3, 50).reshape(1, 5, 10)
    ripples = t.median() + 1e-4 * (t - t.mean())
    flat, parts = dense_loss(ripples, t, 0.5)
    right, _ = dense_loss(t.clone(), t, 0.5)
    assert parts["corr"] < 0.01  # judged with the target's spread, not its own
    assert float(right) < 1e-6 < float(flat) - 0.4


def test_targets_are_what_the_g_heatmap_computes(tiny_run):
    """The cached targets are G's window losses exactly as the runtime's G path scores them."""
    st = load_checkpoint(tiny_run / "checkpoints" / "gan_best.pt")
    G = models.build(st["arch"]["g"])
    G.load_state_dict(st["models"]["g"])
    G.eval()
    geom = WindowGeometry.from_dict(st["geometry"])
    z = np.load(tiny_run / "heldout.npz")
    img, brain = z["images"][:2], z["brains"][:2]
    maps = window_loss_maps(G, img, brain, geom)
    for k in range(2):
        ev = geom.evaluated(brain[k])
        boxes = geom.window_boxes()[ev.ravel()]
        with torch.no_grad():
            ref = score_windows(img[k], geom, boxes, lambda x: G(torch.from_numpy(x)).numpy(), head="g")
        np.testing.assert_allclose(maps[k][ev], ref, rtol=1e-5, atol=1e-7)
        assert np.isnan(maps[k][~ev]).all()
    sub = window_loss_maps(G, img[:1], brain[:1], geom, fraction=0.5, rng=np.random.default_rng(0))
    n_ev = int(geom.evaluated(brain[0]).sum())
    assert int(np.isfinite(sub).sum()) == round(0.5 * n_ev)


@pytest.fixture(scope="module")
def dense_run(tiny_run, mni_tiny, tmp_path_factory) -> Path:
    """The tiny run plus a dense predictor variant (``predictor-dense``) trained on cached G targets."""
    run = tmp_path_factory.mktemp("dense") / "run"
    shutil.copytree(tiny_run, run)
    cfg = resolve("tiny", None, {"predictor": {"kind": "dense", "variant": "dense", "n_context": 2, "steps": 12,
                                               "target_copies": 2, "target_fraction": 0.5}})
    res = train_predictor(cfg, str(mni_tiny), run, quiet=True)
    assert res["steps"] == 12 and np.isfinite(res["val_mae"])
    return run


def test_dense_variant_training_writes_its_own_checkpoints_and_cache(dense_run, mni_tiny):
    ck = dense_run / "checkpoints"
    assert (ck / "predictor-dense_best.pt").is_file() and (ck / "predictor-dense_last.pt").is_file()
    assert load_checkpoint(ck / "predictor_best.pt")["arch"]["r"]["kind"] == "crop"  # the default R is untouched
    assert load_checkpoint(ck / "predictor-dense_best.pt")["arch"]["r"]["kind"] == "dense"
    assert json.loads((dense_run / "config.json").read_text())["predictor"]["kind"] == "crop"  # the run's own config
    assert json.loads((dense_run / "config-dense.json").read_text())["predictor"]["kind"] == "dense"
    stages = {json.loads(line)["stage"] for line in (dense_run / "metrics.jsonl").read_text().splitlines()}
    assert {"gan", "predictor", "predictor-dense"} <= stages  # the variant kept the default predictor's records
    with np.load(dense_run / CACHE, allow_pickle=False) as z:
        prov = json.loads(str(z["provenance"]))
        n_train = len(z["train_images"])
    assert prov["copies"] == 2 and prov["fraction"] == 0.5 and len(prov["g_checkpoint_sha256"]) == 64
    assert n_train == 2 * int((np.asarray(__import__("h5py").File(mni_tiny)["split"]) == 0).sum())


def test_target_cache_is_reused_only_when_its_provenance_matches(dense_run, mni_tiny, monkeypatch):
    from rlp.train import targets

    calls = []
    real = targets.window_loss_maps
    monkeypatch.setattr(targets, "window_loss_maps", lambda *a, **k: calls.append(1) or real(*a, **k))
    cfg = resolve("tiny", None, {"predictor": {"kind": "dense", "variant": "again", "n_context": 2, "steps": 2,
                                               "target_copies": 2, "target_fraction": 0.5}})
    train_predictor(cfg, str(mni_tiny), dense_run, quiet=True)
    assert calls == []  # same G, data, geometry and sampling: read from the cache
    cfg["predictor"]["target_fraction"] = 0.25
    cfg["predictor"]["variant"] = "again2"
    train_predictor(cfg, str(mni_tiny), dense_run, quiet=True)
    assert len(calls) == 2  # train and val maps rebuilt for the new sampling


@pytest.fixture(scope="module")
def dense_bundle(dense_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "dense"
    assert export_main([str(dense_run), "--out", str(out), "--models", "g,r,r-dense", "--quiet"]) == 0
    return out


def test_bundle_holds_named_variants_with_their_contract(dense_bundle):
    man = load_bundle_manifest(dense_bundle)
    assert set(man.models) == {"g", "r", "r-dense"}
    d = man.models["r-dense"]
    assert d.role == "r" and d.input_kind == "dense" and d.file == "r-dense.onnx"
    assert d.outputs[0].shape == ["batch", 1, *man.geometry.grid_shape]
    assert d.inputs[0].shape == ["batch", 1, man.geometry.size, man.geometry.size]
    assert man.models["r"].input_kind == "crop"
    assert any(c["model"] == "r-dense" and c["passed"] for c in man.parity["checks"])


def test_dense_heatmap_matches_pytorch(dense_bundle, dense_run):
    st = load_checkpoint(dense_run / "checkpoints" / "predictor-dense_best.pt")
    r = models.build(st["arch"]["r"])
    r.load_state_dict(st["models"]["r"])
    r.eval()
    z = np.load(dense_run / "heldout.npz")
    img = z["images"][0]
    with Bundle.load(dense_bundle, backend="ort-cpu") as b:
        assert b.manifest.heads() == ("g", "r", "r-dense")
        res = b.heatmap_slice(img, head="r-dense")
        geom = b.manifest.geometry
        x = preprocess_slice(img, b.manifest.preprocessing).image  # the heatmap normalises the slice again
    with torch.no_grad():
        ref = r(torch.from_numpy(x)[None, None])[0, 0].numpy()
    assert res.evaluated.any()
    np.testing.assert_allclose(res.window_map[res.evaluated], ref[res.evaluated], rtol=1e-5, atol=1e-6)
    assert (res.window_map[~res.evaluated] == 0).all()
    assert res.window_map.shape == geom.grid_shape


def test_heatmap_cli_runs_a_variant_and_names_missing_ones(dense_bundle, dense_run, tmp_path):
    import nibabel as nib

    img = np.load(dense_run / "heldout.npz")["images"][0]
    f = tmp_path / "s.nii.gz"
    nib.save(nib.Nifti1Image(img[:, :, None].astype(np.float32), np.eye(4)), f)
    ok = run_python(["-m", "rlp.runtime.cli", str(f), "--bundle", str(dense_bundle), "--path", "r-dense",
                  "--out", str(tmp_path / "o"), "--quiet"])
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "o" / "s_heatmap.nii.gz").is_file()
    missing = run_python(["-m", "rlp.runtime.cli", str(f), "--bundle", str(dense_bundle), "--path", "r-paper",
                       "--out", str(tmp_path / "o2"), "--quiet"])
    assert missing.returncode == EX_DATAERR
    assert "no model for path r-paper" in missing.stderr and "Traceback" not in missing.stderr
    bad = run_python(["-m", "rlp.runtime.cli", str(f), "--bundle", str(dense_bundle), "--path", "R_x"])
    assert bad.returncode == EX_USAGE and "not a heatmap path" in bad.stderr
    assert not (tmp_path / "o2").exists()


def test_corrupted_target_copies_change_the_targets_and_their_provenance(dense_run, mni_tiny):
    """predictor.target_corrupt: a share of the augmented copies get smooth noise over their tissue before G scores
    them, so that a dense predictor also learns G's response to abnormal tissue; the cache records it."""
    over = {"augment": {"context_noise": 0.3}, "predictor": {"kind": "dense", "variant": "noisy", "n_context": 2,
                                                             "steps": 2, "target_copies": 2, "target_fraction": 0.5}}
    plain = train_predictor(resolve("tiny", None, over), str(mni_tiny), dense_run, quiet=True)
    with np.load(dense_run / CACHE, allow_pickle=False) as z:
        clean_imgs, prov = z["train_images"], json.loads(str(z["provenance"]))
    assert "corrupt" not in prov and np.isfinite(plain["val_mae"])
    over["predictor"].update(target_corrupt=1.0, variant="noisy2")
    train_predictor(resolve("tiny", None, over), str(mni_tiny), dense_run, quiet=True)
    with np.load(dense_run / CACHE, allow_pickle=False) as z:
        imgs, prov = z["train_images"], json.loads(str(z["provenance"]))
    assert prov["corrupt"] == 1.0
    n = len(imgs) // 2
    np.testing.assert_array_equal(imgs[:n], clean_imgs[:n])  # the original slices stay as they are
    assert not np.array_equal(imgs[n:], clean_imgs[n:])  # the augmented copies are corrupted
    # tissue stays tissue, in the preprocessing's range
    assert (imgs[n:][clean_imgs[n:] > 0] > 0).all() and imgs.max() <= Preprocessing().ceiling
    bad = {"predictor": {**over["predictor"], "target_corrupt": 0.5}}  # no context_noise to corrupt with
    with pytest.raises(BadInput, match="target_corrupt"):
        train_predictor(resolve("tiny", None, bad), str(mni_tiny), dense_run, quiet=True)
