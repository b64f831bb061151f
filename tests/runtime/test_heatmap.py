"""The heatmap pipeline value by value (against a window-by-window numpy reference), and the CLI's behaviour."""

from __future__ import annotations

import json
import os
import queue
import signal
import stat
import subprocess
import sys
import threading
import time

import nibabel as nib
import numpy as np
import pytest

from helpers.runtime import (
    assert_clean_failure,
    make_bundle,
    outputs_of,
    phantom,
    reference_scores,
    run_heatmap,
    write_nifti,
)
from rlp.runtime import Bundle, score_windows
from rlp.runtime.core.errors import EX_CANTCREAT, EX_DATAERR, EX_INTERRUPTED, EX_USAGE
from rlp.runtime.core.geometry import WindowGeometry
from rlp.runtime.core.preprocess import preprocess_slice


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    """A valid bundle (size 32, window 8, stride 4: 7 x 7 windows) for the tests that do not change it."""
    return make_bundle(tmp_path_factory.mktemp("bundle") / "b")


IMG = phantom((32, 32), seed=3)


def _prepared(bundle: Bundle, img=IMG, spacing=(1.0, 1.0)):
    return preprocess_slice(img, bundle.manifest.preprocessing, spacing)


# --------------------------------------------------------------------------- values
@pytest.mark.parametrize("path, context, g_kind, r_kind_input", [
    ("r", None, "mean", "crop"),
    ("g", None, "mean", "crop"),
    ("g", None, "sigmoid", "crop"),
    ("r", 16, "mean", "crop"),
    ("g", 16, "mean", "crop"),
    ("r", 16, "mean", "image"),  # R reads whole slices while G reads context crops
])
def test_window_map_matches_the_reference(tmp_path, path, context, g_kind, r_kind_input):
    b = make_bundle(tmp_path / "b", context=context, g=g_kind, r_input_kind=r_kind_input)
    with Bundle.load(b, backend="ort-cpu", batch=5) as bundle:
        res = bundle.heatmap_slice(IMG, head=path, all_windows=True)
        prep = _prepared(bundle)
        want = reference_scores(prep.image, bundle.manifest.geometry, path, g_kind, r_kind_input)
    np.testing.assert_allclose(res.window_map, want, rtol=1e-5, atol=1e-6)
    assert res.evaluated.all() and res.n_evaluated == res.n_windows == 49


def test_skip_background_scores_only_windows_with_tissue(bundle_dir):
    img = np.zeros((32, 32), np.float32)
    img[4:14, 6:20] = phantom((10, 14), lesion=False) + 1
    with Bundle.load(bundle_dir, backend="ort-cpu") as bundle:
        res = bundle.heatmap_slice(img)
        full = bundle.heatmap_slice(img, all_windows=True)
        prep = _prepared(bundle, img)
        ev = bundle.manifest.geometry.evaluated(prep.brain)
    assert np.array_equal(res.evaluated, ev) and 0 < res.n_evaluated < res.n_windows
    assert np.all(res.window_map[~ev] == 0)
    np.testing.assert_allclose(res.window_map[ev], full.window_map[ev], rtol=1e-6)
    # the pixel map is built from the evaluated windows only
    np.testing.assert_allclose(res.model_map, bundle.manifest.geometry.pixel_map(res.window_map, ev), rtol=1e-6)


def test_batch_size_does_not_change_the_result(bundle_dir):
    maps = []
    for batch in (1, 7, 64):
        with Bundle.load(bundle_dir, backend="ort-cpu", batch=batch) as bundle:
            maps.append(bundle.heatmap_slice(IMG, head="g").window_map)
    np.testing.assert_array_equal(maps[0], maps[1])
    np.testing.assert_array_equal(maps[0], maps[2])


def test_model_calls_follow_the_batch_size(bundle_dir):
    with Bundle.load(bundle_dir, backend="ort-cpu", batch=10) as bundle:
        res = bundle.heatmap_slice(IMG)
        assert len(bundle.backend("r").latencies) == -(-res.n_evaluated // 10)
        assert res.timings["model_s"] == pytest.approx(sum(bundle.backend("r").latencies))


def test_pixel_map_goes_back_on_the_input_grid(bundle_dir):
    img = phantom((50, 23))
    with Bundle.load(bundle_dir, backend="ort-cpu") as bundle:
        res = bundle.heatmap_slice(img, spacing=(0.8, 2.0))
        same = bundle.heatmap_slice(IMG)  # already 32 x 32 at 1 mm: the resampling is the identity
    assert res.pixel_map.shape == img.shape and res.pixel_map.dtype == np.float32
    assert np.isfinite(res.pixel_map).all() and res.pixel_map.max() > 0
    np.testing.assert_allclose(same.pixel_map, same.model_map, rtol=1e-5, atol=1e-7)
    # the input-grid map is the model-grid map resampled: its range cannot grow
    assert res.pixel_map.max() <= res.model_map.max() + 1e-6


def test_top_windows_are_the_highest_scores_and_located(bundle_dir):
    with Bundle.load(bundle_dir, backend="ort-cpu") as bundle:
        res = bundle.heatmap_slice(IMG, top_k=4)
        geom = bundle.manifest.geometry
    scores = np.sort(res.window_map[res.evaluated])[::-1]
    assert [w.score for w in res.top] == pytest.approx(scores[:4].tolist())
    assert [w.rank for w in res.top] == [1, 2, 3, 4]
    for w in res.top:
        i, j = w.grid
        assert res.window_map[i, j] == pytest.approx(w.score)
        r0, c0, r1, c1 = w.box_model
        assert (r0, c0) == (geom.positions[i], geom.positions[j]) and (r1 - r0, c1 - c0) == (8, 8)
        # identity resampling: input edges are the model edges, the centre is in the middle
        assert w.box == pytest.approx((r0 - 0.5, c0 - 0.5, r1 - 0.5, c1 - 0.5))
        assert w.centre == pytest.approx((r0 + 3.5, c0 + 3.5))


def test_an_empty_slice_gives_zeros_and_a_warning_without_running_the_model(bundle_dir):
    with Bundle.load(bundle_dir, backend="ort-cpu") as bundle:
        res = bundle.heatmap_slice(np.zeros((20, 30)))
        assert bundle.backend("r").latencies == []
    assert res.empty and res.n_evaluated == 0 and res.top == [] and res.max_score == 0.0
    assert not res.pixel_map.any() and res.pixel_map.shape == (20, 30)
    assert any("no brain tissue" in w for w in res.warnings)


def test_score_windows_takes_any_predictor():
    g = WindowGeometry(16, 4, 4, context=8)
    img = np.arange(256, dtype=np.float32).reshape(16, 16) / 256
    boxes = g.window_boxes()
    seen = []

    def predict(x):
        seen.append(x.shape)
        return x.mean(axis=(2, 3))

    r = score_windows(img, g, boxes, predict, head="r", batch=3)
    assert seen[0] == (3, 1, 8, 8) and sum(s[0] for s in seen) == 16
    np.testing.assert_allclose(r, reference_scores(img, g, "r").ravel(), rtol=1e-6)
    ident = score_windows(img, g, boxes, lambda x: x, head="g")
    np.testing.assert_allclose(ident,
                               np.abs(g.fill - img.reshape(4, 4, 4, 4).transpose(0, 2, 1, 3)).mean((2, 3)).ravel(),
                               rtol=1e-6)


def test_bundle_options_are_validated(bundle_dir):
    from rlp.runtime.core.errors import RlpError

    for kw in (dict(batch=0), dict(threads=0), dict(precision="int8")):
        with pytest.raises(RlpError) as exc:
            Bundle.load(bundle_dir, **kw)
        assert exc.value.code == EX_USAGE
    with Bundle.load(bundle_dir) as bundle:
        with pytest.raises(RlpError):
            bundle.heatmap_slice(IMG, head="x")
        with pytest.raises(RlpError):
            bundle.heatmap_slice(IMG, nonfinite="maybe")


# --------------------------------------------------------------------------- the command
def test_cli_writes_the_outputs(capsys, tmp_path, bundle_dir):
    aff = np.array([[-1.0, 0, 0, 10], [0, 1.2, 0, -5], [0, 0, 2.0, 3], [0, 0, 0, 1]])
    vol = phantom((30, 26, 5))
    f = write_nifti(tmp_path / "sub-01_T1w.nii.gz", vol, aff)
    out = tmp_path / "results"
    code, stdout, err = run_heatmap(capsys, f, "--bundle", bundle_dir, "--out", out, "--save-window-map",
                                "--top-k", "3", "--json", "--threads", "1", "--batch", "16")
    assert code == 0, err
    names = [p.name for p in outputs_of(out, "sub-01_T1w")]
    assert names == ["sub-01_T1w_heatmap.nii.gz", "sub-01_T1w_overlay.png", "sub-01_T1w_summary.json",
                     "sub-01_T1w_windows.npy"]
    umask = os.umask(0)
    os.umask(umask)
    for p in outputs_of(out, "sub-01_T1w"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask
    assert (out / "sub-01_T1w_overlay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "sub-01_T1w_summary.json").read_text())
    assert json.loads(stdout) == [summary | {"ok": True}]
    assert summary["path"] == "r" and summary["backend"]["backend"] == "ort-cpu"
    assert summary["backend"]["threads"] == 1 and summary["batch"] == 16
    assert summary["windows"]["total"] == 5 * 49 and 0 < summary["windows"]["evaluated"] <= 5 * 49
    assert len(summary["top_windows"]) == 3 and summary["max_score"] == summary["top_windows"][0]["score"]
    for w in summary["top_windows"]:
        np.testing.assert_allclose(nib.affines.apply_affine(aff, w["voxel"]), w["world_mm"], atol=2e-3)
        assert 0 <= w["slice"] < 5
    assert len(summary["per_slice"]) == 5 and set(summary["timings"]) >= {"load_s", "model_s", "total_s"}
    maps = np.load(out / "sub-01_T1w_windows.npy", allow_pickle=False)
    assert maps.shape == (5, 7, 7) == tuple(summary["window_map"]["shape"])
    assert maps.max() == pytest.approx(summary["max_score"])
    heat = np.asarray(nib.load(str(out / "sub-01_T1w_heatmap.nii.gz")).dataobj)
    assert heat.shape == vol.shape and heat.max() > 0


def test_no_overlay_leaves_out_the_png_and_nothing_else(capsys, tmp_path, bundle_dir):
    f = write_nifti(tmp_path / "v.nii.gz", phantom((30, 26, 3)), np.eye(4))
    runs = {}
    for name, extra in (("with", ()), ("without", ("--no-overlay",))):
        code, _, err = run_heatmap(capsys, f, "--bundle", bundle_dir, "--out", tmp_path / name, "--quiet", *extra)
        assert code == 0, err
        runs[name] = tmp_path / name
    assert sorted(p.name for p in runs["without"].iterdir()) == ["v_heatmap.nii.gz", "v_summary.json"]
    summary = json.loads((runs["without"] / "v_summary.json").read_text())
    assert "overlay" not in summary["outputs"]
    maps = [np.asarray(nib.load(str(runs[n] / "v_heatmap.nii.gz")).dataobj) for n in ("with", "without")]
    np.testing.assert_array_equal(*maps)  # the same heatmap: only the picture is left out


def test_cli_g_path_and_a_single_slice(capsys, tmp_path, bundle_dir):
    f = write_nifti(tmp_path / "v.nii", phantom((24, 24, 6)), np.diag([1, 1, 3, 1.0]))
    out = tmp_path / "o"
    code, _, err = run_heatmap(capsys, f, "--bundle", bundle_dir, "--out", out, "--path", "g", "--slice", "3",
                           "--save-window-map", "--quiet")
    assert code == 0, err
    summary = json.loads((out / "v_summary.json").read_text())
    assert summary["path"] == "g" and summary["slices"]["processed"] == 1
    assert [s["slice"] for s in summary["per_slice"]] == [3]
    assert np.load(out / "v_windows.npy").shape == (7, 7)
    heat = np.asarray(nib.load(str(out / "v_heatmap.nii.gz")).dataobj)
    assert heat[..., 3].any() and not np.delete(heat, 3, axis=2).any()
    code, _, err = run_heatmap(capsys, f, "--bundle", bundle_dir, "--out", tmp_path / "o2", "--slice", "6")
    assert_clean_failure(code, err, EX_DATAERR, "v.nii")
    assert "out of range" in err


def test_existing_outputs_need_force(capsys, tmp_path, bundle_dir):
    f = write_nifti(tmp_path / "a.nii.gz", phantom((24, 24)))
    out = tmp_path / "o"
    assert run_heatmap(capsys, f, "--bundle", bundle_dir, "--out", out, "--quiet")[0] == 0
    before = {p.name: p.read_bytes() for p in outputs_of(out, "a")}
    code, _, err = run_heatmap(capsys, f, "--bundle", bundle_dir, "--out", out, "--quiet")
    assert_clean_failure(code, err, EX_CANTCREAT, "a.nii.gz")
    assert "--force" in err
    assert {p.name: p.read_bytes() for p in outputs_of(out, "a")} == before
    code, _, err = run_heatmap(capsys, f, "--bundle", bundle_dir, "--out", out, "--quiet", "--force", "--top-k", "1")
    assert code == 0, err
    assert len(json.loads((out / "a_summary.json").read_text())["top_windows"]) == 1


def test_two_inputs_with_the_same_stem_do_not_overwrite_each_other(capsys, tmp_path, bundle_dir):
    (tmp_path / "x").mkdir()
    f1 = write_nifti(tmp_path / "a.nii.gz", phantom((24, 24)))
    f2 = write_nifti(tmp_path / "x" / "a.nii", phantom((24, 24), seed=5))
    out = tmp_path / "o"
    code, _, err = run_heatmap(capsys, f1, f2, "--bundle", bundle_dir, "--out", out, "--quiet", "--out-layout", "flat")
    assert_clean_failure(code, err, EX_CANTCREAT, str(f2))
    assert json.loads((out / "a_summary.json").read_text())["input"] == str(f1)
    # the default layout (auto) mirrors the inputs' folders when two share a name: both made, apart
    code, _, err = run_heatmap(capsys, f1, f2, "--bundle", bundle_dir, "--out", tmp_path / "m", "--quiet")
    assert code == 0, err
    assert json.loads((tmp_path / "m" / "a_summary.json").read_text())["input"] == str(f1)
    assert json.loads((tmp_path / "m" / "x" / "a_summary.json").read_text())["input"] == str(f2)


def test_usage_errors_are_one_line(capsys, tmp_path, bundle_dir, monkeypatch):
    f = write_nifti(tmp_path / "a.nii.gz", phantom((24, 24)))
    for args in (["--batch", "0"], ["--path", "x"], ["--axis", "oblique"], ["--bogus"]):
        code, _, err = run_heatmap(capsys, f, "--bundle", bundle_dir, *args)
        assert code == EX_USAGE and len(err.strip().splitlines()) == 1 and err.startswith("rlp-heatmap: "), err
    # an install without the embedded demo bundle needs --bundle
    monkeypatch.setattr("rlp.runtime.cli.default_bundle", lambda: None)
    monkeypatch.chdir(tmp_path)
    code, _, err = run_heatmap(capsys, f)
    assert code == EX_USAGE and "--bundle" in err and "no embedded demo bundle" in err
    assert not (tmp_path / "rlp-out").exists()


def test_help_documents_outputs_force_and_exit_codes(capsys):
    code, out, _ = run_heatmap(capsys, "--help")
    assert code == 0
    for words in ("--force", "_heatmap.nii.gz", "_windows.npy", "exit status", "--nonfinite", "130"):
        assert words in out


def test_interrupt_while_writing_leaves_nothing(capsys, monkeypatch, tmp_path, bundle_dir):
    from rlp.runtime import outputs

    f = write_nifti(tmp_path / "a.nii.gz", phantom((24, 24)))
    out = tmp_path / "o"
    real = outputs.save_like

    def save_then_interrupt(*args, **kw):
        real(*args, **kw)
        assert any(out.iterdir())  # the heatmap's temporary file exists at this point
        raise KeyboardInterrupt

    monkeypatch.setattr(outputs, "save_like", save_then_interrupt)
    code, _, err = run_heatmap(capsys, f, "--bundle", bundle_dir, "--out", out, "--quiet")
    assert code == EX_INTERRUPTED and err.strip() == "rlp-heatmap: interrupted"
    assert not out.exists()  # nothing left, not even the folder this call made


def test_a_failure_while_moving_files_into_place_removes_the_moved_ones(capsys, monkeypatch, tmp_path, bundle_dir):
    from rlp.runtime.core import atomic

    f = write_nifti(tmp_path / "a.nii.gz", phantom((24, 24)))
    out = tmp_path / "o"
    real_replace = os.replace
    calls = []

    def flaky_replace(src, dst):
        calls.append(dst)
        if str(dst).endswith("_overlay.png"):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", flaky_replace)
    code, _, err = run_heatmap(capsys, f, "--bundle", bundle_dir, "--out", out, "--quiet")
    assert_clean_failure(code, err, EX_CANTCREAT, "a_overlay.png")
    assert any(str(c).endswith("_summary.json") for c in calls)  # moved before the failure...
    assert not out.exists()  # ...and removed again, with the folder this call made


@pytest.mark.parametrize("sig, code, last", [(signal.SIGINT, EX_INTERRUPTED, "rlp-heatmap: interrupted"),
                                             (signal.SIGTERM, 143, "rlp-heatmap: terminated (SIGTERM)")])
def test_sigint_exits_130_and_leaves_no_partial_files(tmp_path, sig, code, last):
    """A real Ctrl-C (or the SIGTERM of kill, timeout and schedulers: the same cleanup, exit 143) on a long
    run, in a subprocess."""
    b = make_bundle(tmp_path / "b", size=64, window=8, stride=2)
    small = write_nifti(tmp_path / "small.nii.gz", phantom((24, 24)))
    f = write_nifti(tmp_path / "big.nii.gz", phantom((64, 64, 200)))
    out = tmp_path / "o"
    # every window of 200 slices, one per model call: minutes of work, so the signal lands mid-run.
    # A terminal's Ctrl-C reaches a command whose SIGINT is at its default; a test run as a background
    # job (`pytest &`, nohup) hands its children SIGINT ignored, and Python then installs no handler for
    # it, rightly: so the child gets the default back, as from an interactive shell.
    proc = subprocess.Popen([sys.executable, "-m", "rlp.runtime.cli", str(small), str(f), "--bundle", str(b), "--out",
                             str(out), "--batch", "1", "--threads", "1", "--all-windows", "--path", "g"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # wait (on its stderr, with a deadline) for the line saying the small input is done: the run is then on
    # the big one, mid-run
    lines: queue.Queue = queue.Queue()
    reader = threading.Thread(target=lambda: ([lines.put(ln) for ln in proc.stderr], lines.put(None)), daemon=True)
    reader.start()
    err, deadline = [], time.monotonic() + 120
    while not any("small.nii.gz: max score" in ln for ln in err):
        try:
            ln = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            ln = None
        assert ln is not None, f"the run ended (or stalled) before it reached the big input: {err}"
        err.append(ln)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(sig)
    proc.wait(timeout=30)
    reader.join(timeout=30)
    err += [ln for ln in iter(lines.get_nowait, None)]
    err = "".join(err)
    assert proc.returncode == code, err
    assert err.strip().splitlines()[-1] == last and "Traceback" not in err
    # the finished input's outputs stay; the interrupted one leaves nothing, not even a temporary file
    assert sorted(p.name for p in out.iterdir()) == ["small_heatmap.nii.gz", "small_overlay.png", "small_summary.json"]
