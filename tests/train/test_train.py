import json
import shutil
import signal
import subprocess

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from helpers.child_hooks import start_until  # noqa: E402
from helpers.process import run_python  # noqa: E402
from rlp.runtime.core.cliutil import UsageError  # noqa: E402
from rlp.runtime.core.errors import RlpError  # noqa: E402
from rlp.train import models  # noqa: E402
from rlp.train.augment import AugmentConfig, corrupt_context, crops_and_inpaint  # noqa: E402
from rlp.train.checkpoint import load_checkpoint  # noqa: E402
from rlp.train.config import resolve  # noqa: E402
from rlp.train.data import SliceData  # noqa: E402
from rlp.train.loop import make_geometry, train_gan  # noqa: E402


def test_a_few_steps_lower_the_inpainting_loss(mni_tiny):
    torch.manual_seed(0)
    d = SliceData(mni_tiny)
    geom = make_geometry(resolve("tiny", None, {}), d.size)
    imgs = torch.from_numpy(d.images[d.indices("train")[:16]]).unsqueeze(1)
    boxes = torch.full((16, 2), d.size // 2 - geom.window // 2)
    inp, orig, mask = crops_and_inpaint(imgs, boxes, geom)
    g = models.UNetG(width=8, depth=2, max_width=16)
    opt = torch.optim.Adam(g.parameters(), 2e-3)

    def box_l1():
        return ((g(inp) - orig).abs() * mask).sum() / mask.sum()

    first = float(box_l1().detach())
    for _ in range(60):
        opt.zero_grad()
        loss = box_l1()
        loss.backward()
        opt.step()
    assert float(box_l1().detach()) < 0.5 * first


@pytest.mark.parametrize("paint", [{}, {"fill": -1.0, "paint": "tissue"}])
def test_crops_match_the_runtime_contract(mni_tiny, paint):
    """Training's torch crops equal the runtime's numpy crops (no train/deploy drift), however the box is painted."""
    d = SliceData(mni_tiny)
    geom = make_geometry(resolve("tiny", None, {"geometry": paint}), d.size)
    img = d.images[d.indices("val")[0]]
    ev = geom.tissue_fraction(d.brains[d.indices("val")[0]]).ravel()
    boxes = geom.window_boxes()[[0, 5, int(np.flatnonzero((ev > 0) & (ev < 1))[0]), -1]]  # one across the outline
    inp, orig, _ = crops_and_inpaint(torch.from_numpy(np.stack([img] * len(boxes))).unsqueeze(1),
                                     torch.from_numpy(boxes), geom)
    padded = geom.pad(img)
    np.testing.assert_array_equal(inp.numpy(), geom.crops(padded, boxes, inpaint=True))
    np.testing.assert_array_equal(orig.numpy(), geom.crops(padded, boxes, inpaint=False))


def test_context_noise_corrupts_tissue_only_and_only_when_asked():
    g = torch.Generator().manual_seed(0)
    imgs = torch.zeros(8, 1, 32, 32)
    imgs[:, :, 8:24, 8:24] = torch.rand(8, 1, 16, 16, generator=g) * 0.8 + 0.1
    brains = (imgs > 0).float()
    assert corrupt_context(imgs, brains, AugmentConfig(), g) is imgs  # off by default
    assert corrupt_context(imgs, brains, AugmentConfig(enabled=False, context_noise=0.3), g) is imgs
    out = corrupt_context(imgs, brains, AugmentConfig(context_noise=0.3, context_noise_p=1.0), g)
    assert torch.equal(out[brains == 0], imgs[brains == 0])  # background stays 0
    tissue = out[brains > 0]
    assert (tissue > 0).all() and (tissue <= 1).all()  # still tissue by the paint rule, still in range
    assert ((out - imgs).abs().flatten(1).amax(1) > 1e-3).float().mean() > 0.5  # most slices really changed
    some = corrupt_context(imgs, brains, AugmentConfig(context_noise=0.3, context_noise_p=0.5),
                           torch.Generator().manual_seed(1))
    changed = (some != imgs).flatten(1).any(1)
    assert 0 < changed.sum() < len(imgs)  # a share of the slices


def test_tiny_run_writes_the_run_folder(tiny_run):
    for f in ("config.json", "metrics.jsonl", "heldout.npz", "checkpoints/gan_best.pt", "checkpoints/gan_last.pt",
              "checkpoints/predictor_best.pt", "checkpoints/predictor_last.pt"):
        assert (tiny_run / f).is_file(), f
    assert list((tiny_run / "samples").glob("*.png"))
    recs = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    assert any("val_l1" in r for r in recs) and any("val_mae" in r for r in recs)
    r = load_checkpoint(tiny_run / "checkpoints" / "predictor_best.pt")
    assert r["stage"] == "predictor" and "val_spearman" in r["metrics"]
    # better than predicting 0 for every window, whose MAE is the mean target (window losses are >= 0),
    # and not 0: R only approximates G
    m = r["metrics"]
    assert np.isfinite(m["val_mae"]) and 0 < m["val_mae"] < m["val_target_mean"], m
    with np.load(tiny_run / "heldout.npz", allow_pickle=False) as h:
        assert h["images"].shape[1:] == (32, 32) and h["brains"].dtype == bool


def _weights(path):
    st = load_checkpoint(path)
    return st["step"], {k: v for m in st["models"].values() for k, v in m.items()}


def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path, mni_tiny):
    args = ["--preset", "tiny", "--data", str(mni_tiny), "--gan-steps", "30", "--adv", "0.01", "--quiet", "--threads",
            "1"]
    ref = tmp_path / "ref"
    r = run_python(["-m", "rlp.train.cli", "gan", "--run", str(ref), *args])
    assert r.returncode == 0, r.stderr
    run = tmp_path / "killed"
    last = run / "checkpoints" / "gan_last.pt"
    # the child holds still as soon as its first gan_last.pt is in place (an atomic write ends in os.replace)
    hook = ("_replace = os.replace\n"
            "def _hooked(src, dst, *a, **k):\n    _replace(src, dst, *a, **k)\n"
            "    if os.fspath(dst).endswith('gan_last.pt'):\n        _reached()\n"
            "os.replace = _hooked\n")
    proc, saved = start_until("rlp.train.cli", ["gan", "--run", run, *args], hook,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert saved, "the run saved no checkpoint (or ended) before the kill: nothing would be resumed"
    assert proc.returncode == -signal.SIGKILL
    killed_at, _ = _weights(last)
    assert 0 < killed_at < 30  # killed mid-run: the resume below has steps left to do
    r = run_python(["-m", "rlp.train.cli", "gan", "--run", str(run), "--resume", *args])
    assert r.returncode == 0, r.stderr
    s1, w1 = _weights(ref / "checkpoints" / "gan_last.pt")
    s2, w2 = _weights(last)
    assert s1 == s2 == 30 and killed_at <= 30
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], rtol=0, atol=1e-6, msg=k)
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if "val_l1" in json.loads(line)]
    assert steps == sorted(set(steps))  # no duplicated records after the resume


def test_resume_errors_never_start_fresh(tmp_path, mni_tiny, tiny_run):
    cfg = resolve("tiny", None, {})
    with pytest.raises(RlpError, match="no gan checkpoint"):
        train_gan(cfg, str(mni_tiny), tmp_path / "empty", resume=True, quiet=True)
    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run)
    other = resolve("tiny", None, {"gan": {"width": 8}})
    with pytest.raises(RlpError, match="different model/geometry"):
        train_gan(other, str(mni_tiny), run, resume=True, quiet=True)
    with pytest.raises(RlpError, match="--resume"):
        train_gan(cfg, str(mni_tiny), run, resume=False, quiet=True)


def test_pickled_code_checkpoint_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    bad = tmp_path / "evil.pt"
    torch.save({"format": "rlp.ckpt", "version": 1, "x": Evil()}, bad)
    assert not marker.exists()
    with pytest.raises(RlpError) as e:
        load_checkpoint(bad)
    assert e.value.code == 77 and "evil.pt" in str(e.value)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"garbage" * 10])
def test_corrupt_checkpoint_is_a_clean_error(tmp_path, content):
    p = tmp_path / "c.pt"
    p.write_bytes(content)
    with pytest.raises(RlpError, match="c.pt"):
        load_checkpoint(p)


def test_truncated_checkpoint_is_a_clean_error(tmp_path, tiny_run):
    raw = (tiny_run / "checkpoints" / "gan_last.pt").read_bytes()
    p = tmp_path / "t.pt"
    p.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(RlpError, match="t.pt"):
        load_checkpoint(p)


def test_cli_reports_user_errors_in_one_line(tmp_path):
    r = run_python(["-m", "rlp.train.cli", "gan", "--data", str(tmp_path / "none.h5"), "--run", str(tmp_path / "r"),
                    "--preset", "tiny"])
    assert r.returncode == 66
    assert "none.h5" in r.stderr and "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0
    # a usage error too: one line naming the option and the subcommand's help, not argparse's usage block
    r = run_python(["-m", "rlp.train.cli", "gan", "--data", "x.h5", "--run", str(tmp_path / "r"), "--gan-steps",
                    "many"])
    assert r.returncode == 2 and not (tmp_path / "r").exists()
    assert r.stderr.startswith("rlp-train: ") and "--gan-steps" in r.stderr and "rlp-train gan --help" in r.stderr
    assert r.stderr.strip().count("\n") == 0


def test_paper_predictor_needs_256(tmp_path, mni_tiny, tiny_run):
    from rlp.train.loop import train_predictor

    cfg = resolve("tiny", None, {"predictor": {"kind": "paper"}})
    before = (tiny_run / "config.json").read_bytes()
    with pytest.raises(RlpError, match="256x256"):  # a one-line user error, not a traceback
        train_predictor(cfg, str(mni_tiny), tiny_run, quiet=True)
    assert (tiny_run / "config.json").read_bytes() == before  # a stage that never started leaves the run's config


def test_ddp_two_gloo_processes(tmp_path, mni_tiny):
    pytest.importorskip("torch.distributed")
    run = tmp_path / "ddp"
    r = run_python(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "rlp.train.cli",
                    "gan",
                 "--preset", "tiny", "--data", str(mni_tiny), "--run-dir", str(run), "--gan-steps", "6", "--threads",
                 "1", "--quiet"],
                env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    st = load_checkpoint(run / "checkpoints" / "gan_last.pt")
    assert st["step"] == 6 and not any(k.startswith("module.") for k in st["models"]["g"])


def test_predictor_does_not_collapse_to_a_constant(tiny_run):
    """The sigmoid head starts at the mean target and stays off the rails (the paper's R collapsed to 0)."""
    st = load_checkpoint(tiny_run / "checkpoints" / "predictor_best.pt")
    m = st["metrics"]
    r = models.build(st["arch"]["r"])
    r.load_state_dict(st["models"]["r"])
    r.eval()
    with np.load(tiny_run / "heldout.npz", allow_pickle=False) as h:
        imgs = torch.from_numpy(h["images"][:4]).unsqueeze(1)
    geom = make_geometry(st["config"], imgs.shape[-1])
    boxes = torch.from_numpy(geom.window_boxes()[::7][: len(imgs)])
    inp, _, _ = crops_and_inpaint(imgs[: len(boxes)], boxes, geom)
    with torch.no_grad():
        pred = r(inp).flatten() * models.target_scale(st["score"])  # a sigmoid R learns the score / its scale
    assert 0.2 * m["val_target_mean"] < float(pred.mean()) < 5 * m["val_target_mean"]
    assert m["val_mae_rel"] < 0.9  # a collapsed head gives 1.0 (it predicts 0)


def test_geometry_and_target_flags_reach_the_config():
    from rlp.train.cli import _overrides, _parser

    a = _parser().parse_args(["predictor", "--data", "x.h5", "--run", "r", "--fill", "-1", "--paint", "tissue",
                              "--target-corrupt", "0.5"])
    o = _overrides(a)
    assert o["geometry"] == {"fill": -1.0, "paint": "tissue"} and o["predictor"]["target_corrupt"] == 0.5
    with pytest.raises(UsageError, match="--paint"):
        _parser().parse_args(["gan", "--data", "x.h5", "--run", "r", "--paint", "everything"])
    cfg = resolve("demo", None, {})
    assert cfg["geometry"]["paint"] == "tissue" and cfg["geometry"]["fill"] == -1.0
    assert cfg["augment"]["context_noise"] > 0 and cfg["predictor"]["target_corrupt"] > 0
    assert resolve("paper", None, {})["geometry"]["paint"] == "box"  # the paper's box stays reachable
