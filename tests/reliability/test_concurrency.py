"""Two writers, odd files and geometries (issue 21, items 1, 3, 8 and 9; RELIABILITY.md rows "two processes
writing into one output folder", "an output name that is one of the inputs", "FIFO, socket, device or directory
given as an input, model or manifest", "geometry that evaluates no window").

The concurrency tests run a few real ``rlp-heatmap`` processes into one folder at the same time, each with its
own bundle (the three differ only in the fill of the box, so every output tells which run made it), and check
that every output set is complete, made by one run (its summary's bundle, its heatmap and its overlay agree),
and that nothing temporary is left behind.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from helpers.runtime import assert_clean_failure, make_bundle, phantom, run_heatmap, write_nifti
from rlp.runtime.core import atomic
from rlp.runtime.core.atomic import file_lock
from rlp.runtime.core.errors import EX_CANTCREAT, EX_DATAERR, EX_OK, BadInput
from rlp.runtime.core.manifest import load_bundle_manifest
from rlp.runtime.heatmap import Bundle

N_PROCS = 3
STEMS = ("a", "b", "c", "d", "e", "f")  # more sets, more chances for two runs to publish one at once
KINDS = ("heatmap.nii.gz", "overlay.png", "summary.json")
TIMEOUT = 180  # a child that hangs fails the test instead of hanging it


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    env.update(OMP_NUM_THREADS="1")
    return env


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "rlp.runtime.cli", *map(str, args)]


def _run(*args, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run(_cli(*args), env=_env(), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """N bundles whose heatmaps differ, three small slices, and each bundle's outputs made alone (the reference)."""
    root = tmp_path_factory.mktemp("concurrency")
    bundles = [make_bundle(root / f"bundle{i}", fill=1.0 + i) for i in range(N_PROCS)]
    (root / "in").mkdir()
    inputs = [write_nifti(root / "in" / f"{s}.nii.gz", phantom((28, 28), seed=k)) for k, s in enumerate(STEMS)]
    refs = []
    for i, b in enumerate(bundles):
        out = root / f"ref{i}"
        r = _run(*inputs, "--bundle", b, "--out", out, "--quiet", "--threads", "1")
        assert r.returncode == EX_OK, r.stderr
        refs.append({s: (_voxels(out / f"{s}_heatmap.nii.gz"), (out / f"{s}_overlay.png").read_bytes())
                     for s in STEMS})
    for s in STEMS:  # the three runs are told apart by their outputs
        assert not np.array_equal(refs[0][s][0], refs[1][s][0])
        assert refs[0][s][1] != refs[1][s][1]
    return {"bundles": bundles, "inputs": inputs, "refs": refs,
            "paths": [str(Path(b).resolve()) for b in bundles]}


def _voxels(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


def _made_by(setup, out: Path, stem: str) -> int:
    """Which run made ``stem``'s set in ``out``: its summary names the bundle; the heatmap and overlay must agree."""
    summary = json.loads((out / f"{stem}_summary.json").read_text())
    i = setup["paths"].index(summary["bundle"]["path"])
    heat, png = setup["refs"][i][stem]
    assert np.array_equal(_voxels(out / f"{stem}_heatmap.nii.gz"), heat), f"{stem}: heatmap not from run {i}"
    assert (out / f"{stem}_overlay.png").read_bytes() == png, f"{stem}: overlay not from run {i}"
    return i


def _only_the_outputs(out: Path) -> None:
    """Every set complete and nothing else: no temporary file, no lock file."""
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{s}_{k}" for s in STEMS for k in KINDS)


def _together(setup, out: Path, *extra) -> list[subprocess.Popen]:
    procs = [subprocess.Popen(_cli(*setup["inputs"], "--bundle", b, "--out", out, "--quiet", "--threads", "1", *extra),
                              env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for b in setup["bundles"]]
    results = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=TIMEOUT)
            results.append((p.returncode, stdout, stderr))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return results


# --------------------------------------------------------------------------- item 1: two writers, one folder
@pytest.mark.parametrize("trial", range(3))
def test_concurrent_forced_runs_leave_complete_sets_each_from_one_run(setup, tmp_path, trial):
    out = tmp_path / "out"
    results = _together(setup, out, "--force")
    assert [rc for rc, _, _ in results] == [EX_OK] * N_PROCS, [err for _, _, err in results]
    _only_the_outputs(out)
    for s in STEMS:
        _made_by(setup, out, s)


@pytest.mark.parametrize("trial", range(2))
def test_concurrent_runs_without_force_keep_the_first_set_and_report_the_others(setup, tmp_path, trial):
    out = tmp_path / "out"
    results = _together(setup, out, "--json")
    _only_the_outputs(out)
    reports = [json.loads(stdout) for _, stdout, _ in results]
    for rc, _, err in results:
        assert rc in (EX_OK, EX_CANTCREAT) and "Traceback" not in err, err
    for k, s in enumerate(STEMS):
        ok = [i for i, rep in enumerate(reports) if rep[k]["ok"]]
        assert len(ok) == 1, f"{s}: made by runs {ok}"  # exactly one run made it...
        assert _made_by(setup, out, s) == ok[0]  # ...and the set in the folder is that run's, whole
        for i, rep in enumerate(reports):
            if i != ok[0]:  # the others said it exists, and took nothing away
                assert rep[k]["exit_code"] == EX_CANTCREAT and "exists; pass --force" in rep[k]["error"], rep[k]


def test_publishing_waits_for_the_lock_of_the_output_set(setup, tmp_path):
    """Outputs appear only once the process owns the set's lock (held here by the test)."""
    out = tmp_path / "out"
    out.mkdir()
    inp = setup["inputs"][0]
    with file_lock(out / ".a.lock"):
        proc = subprocess.Popen(_cli(inp, "--bundle", setup["bundles"][1], "--out", out, "--quiet", "--threads", "1"),
                                env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + TIMEOUT
            while not any(p.name.startswith(".a_summary.json.") for p in out.iterdir()):  # written, waiting
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
                time.sleep(0.05)
            time.sleep(0.5)
            assert proc.poll() is None and not any(p.name.startswith("a_") for p in out.iterdir())
        except BaseException:
            proc.kill()
            raise
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == EX_OK, err
    assert sorted(p.name for p in out.iterdir()) == [f"a_{k}" for k in ("heatmap.nii.gz", "overlay.png",
                                                                         "summary.json")]
    assert _made_by(setup, out, "a") == 1


def test_a_lock_held_too_long_is_a_clean_error_that_leaves_nothing(setup, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with file_lock(out / ".a.lock"):
        env = {**_env(), "RLP_LOCK_TIMEOUT": "0.5"}
        r = subprocess.run(_cli(setup["inputs"][0], "--bundle", setup["bundles"][0], "--out", out, "--quiet"),
                           env=env, capture_output=True, text=True, timeout=TIMEOUT)
        assert sorted(p.name for p in out.iterdir()) == [".a.lock"]  # no output, no temporary file
    assert r.returncode == EX_CANTCREAT
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "another process has held this lock" in lines[0] and "Traceback" not in r.stderr
    assert list(out.iterdir()) == []  # the lock file goes with its holder


def test_a_stale_lock_file_of_a_killed_run_is_reused_and_removed(capsys, setup, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".a.lock").write_bytes(b"")  # left by a SIGKILL: nobody holds it
    code, _, err = run_heatmap(capsys, setup["inputs"][0], "--bundle", setup["bundles"][0], "--out", out, "--quiet")
    assert code == EX_OK, err
    assert sorted(p.name for p in out.iterdir()) == [f"a_{k}" for k in KINDS]


@pytest.mark.parametrize("swap", ["exchange", "move-aside"])
def test_a_failed_forced_write_puts_the_previous_set_back(capsys, monkeypatch, setup, tmp_path, swap):
    """A rollback removes only this process's files: the set another run made is back, whole, byte for byte."""
    out = tmp_path / "out"
    inp = setup["inputs"][0]
    assert run_heatmap(capsys, inp, "--bundle", setup["bundles"][0], "--out", out, "--quiet")[0] == EX_OK
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_exchange, real_replace = atomic._exchange, os.replace

    def exchange(new, old):
        if swap == "move-aside":
            return False  # a system without renameat2: old files are moved aside, then put back
        if str(old).endswith("_overlay.png"):
            raise OSError(28, "No space left on device")
        return real_exchange(new, old)

    failed = []

    def replace(src, dst):
        if swap == "move-aside" and str(dst).endswith("_overlay.png") and not failed:  # once: the undo works
            failed.append(dst)
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(atomic, "_exchange", exchange)
    monkeypatch.setattr(atomic.os, "replace", replace)
    code, _, err = run_heatmap(capsys, inp, "--bundle", setup["bundles"][1], "--out", out, "--quiet", "--force")
    assert_clean_failure(code, err, EX_CANTCREAT, "a_overlay.png")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing lost, nothing mixed, no temp


# --------------------------------------------------------------------------- item 3: FIFOs and other non-files
def test_a_fifo_input_is_refused_without_hanging(setup, tmp_path):
    fifo = tmp_path / "x.nii.gz"
    os.mkfifo(fifo)
    out = tmp_path / "out"
    r = _run(fifo, setup["inputs"][0], "--bundle", setup["bundles"][0], "--out", out, "--quiet", timeout=60)
    assert r.returncode == EX_DATAERR, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"rlp-heatmap: {fifo}: not a regular file"), lines
    assert "FIFO" in lines[0] and "Traceback" not in r.stderr
    assert sorted(p.name for p in out.iterdir()) == [f"a_{k}" for k in KINDS]  # the good input still ran


def test_a_directory_input_is_not_a_regular_file(capsys, setup, tmp_path):
    d = tmp_path / "d.nii.gz"
    d.mkdir()
    code, _, err = run_heatmap(capsys, d, "--bundle", setup["bundles"][0], "--out", tmp_path / "out", "--quiet")
    assert_clean_failure(code, err, EX_DATAERR, str(d))
    assert "not a regular file (it is a directory)" in err


def test_check_header_and_load_refuse_a_fifo_in_process(tmp_path):
    """The loader itself (not only the CLI): run in a child so that a regression fails on the timeout."""
    fifo = tmp_path / "y.nii"
    os.mkfifo(fifo)
    code = ("import sys\nfrom rlp.runtime.core.nifti import check_header, load_nifti\n"
            "from rlp.runtime.core.errors import BadInput\n"
            "for f in (check_header, load_nifti):\n    try:\n        f(sys.argv[1])\n    except BadInput as e:\n"
            "        print(e)\n")
    r = subprocess.run([sys.executable, "-c", code, str(fifo)], env=_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"{fifo}: not a regular file (it is a FIFO (named pipe)); expected a .nii or "
                                     ".nii.gz file"] * 2


def _fifo_in_bundle(tmp_path, name: str) -> Path:
    b = make_bundle(tmp_path / "b")
    (b / name).unlink()
    os.mkfifo(b / name)
    return b


@pytest.mark.parametrize("name", ["manifest.json", "r.onnx"])
def test_a_fifo_manifest_or_model_fails_cleanly_without_hanging(setup, tmp_path, name):
    b = _fifo_in_bundle(tmp_path, name)
    r = _run(setup["inputs"][0], "--bundle", b, "--out", tmp_path / "out", "--quiet", timeout=60)
    assert r.returncode != EX_OK
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rlp-heatmap: ") and "Traceback" not in r.stderr, lines


@pytest.mark.parametrize("name", ["manifest.json", "r.onnx"])
def test_a_fifo_manifest_or_model_is_reported_as_not_a_regular_file(setup, tmp_path, name):
    b = _fifo_in_bundle(tmp_path, name)
    r = _run(setup["inputs"][0], "--bundle", b, "--out", tmp_path / "out", "--quiet", timeout=60)
    assert "not a regular file" in r.stderr and "missing" not in r.stderr, r.stderr


# --------------------------------------------------------------------------- item 8: geometries that score nothing
@pytest.mark.parametrize("size,window,stride,words", [
    (128, 16, 1000, "geometry.stride 1000 is larger than size - window = 112"),  # the case: corners only
    (128, 16, 112, "places no window over the centre of the slice"),  # 0 and 112: the same corners
    (256, 16, 100, "places no window over the centre of the slice"),  # 0, 100, 200, 240: a gap over the centre
])
def test_a_geometry_that_cannot_score_the_brain_is_refused_at_load(capsys, tmp_path, size, window, stride, words):
    b = make_bundle(tmp_path / "b", size=size, window=window, stride=stride)
    with pytest.raises(BadInput, match=words):
        Bundle.load(b)
    f = write_nifti(tmp_path / "x.nii.gz", phantom((40, 40)))
    out = tmp_path / "out"
    code, _, err = run_heatmap(capsys, f, "--bundle", b, "--out", out, "--path", "g", "--quiet")
    assert code == EX_DATAERR and words in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


@pytest.mark.parametrize("size,window,stride", [(128, 16, 16), (256, 16, 60), (32, 32, 7), (31, 6, 4), (128, 8, 2)])
def test_geometries_that_reach_the_centre_still_load(tmp_path, size, window, stride):
    """Tiling grids (the centre between two windows), sparse grids with a window on the centre, one window."""
    assert load_bundle_manifest(make_bundle(tmp_path / "b", size=size, window=window, stride=stride)).geometry.stride \
        == stride


# --------------------------------------------------------------------------- item 9: never write over an input
@pytest.mark.parametrize("order", ["heatmap-named-first", "heatmap-named-last"])
def test_an_input_is_never_overwritten_even_with_force(capsys, setup, tmp_path, order):
    d = tmp_path / "d"
    d.mkdir()
    victim = write_nifti(d / "y_heatmap.nii.gz", phantom((28, 28), seed=7))  # an input that has a heatmap's name
    y = write_nifti(d / "y.nii.gz", phantom((28, 28), seed=8))
    before = victim.read_bytes()
    inputs = [victim, y] if order == "heatmap-named-first" else [y, victim]
    code, _, err = run_heatmap(capsys, "--force", "--out", d, "--bundle", setup["bundles"][0], *inputs)
    assert victim.read_bytes() == before
    assert code == EX_CANTCREAT
    refused = [ln for ln in err.splitlines() if ln.startswith(f"rlp-heatmap: {y}: ")]
    assert len(refused) == 1 and f"would overwrite the input {victim}" in refused[0] and "--force" in refused[0], err
    assert "Traceback" not in err
    names = sorted(p.name for p in d.iterdir())  # the other input still ran; y made nothing
    assert names == sorted(["y.nii.gz", "y_heatmap.nii.gz"] + [f"y_heatmap_{k}" for k in KINDS])
    warning = f"rlp-heatmap: {victim}: warning: this looks like an rlp heatmap"
    assert any(ln.startswith(warning) for ln in err.splitlines())


@pytest.mark.parametrize("link", ["hard", "symbolic"])
def test_an_output_name_that_is_a_link_to_an_input_is_refused(capsys, setup, tmp_path, link):
    (tmp_path / "in").mkdir()
    src = write_nifti(tmp_path / "in" / "a.nii.gz", phantom((28, 28)))
    z = write_nifti(tmp_path / "in" / "z.nii.gz", phantom((28, 28), seed=2))
    out = tmp_path / "out"
    out.mkdir()
    (os.link if link == "hard" else os.symlink)(src, out / "z_heatmap.nii.gz")
    before = src.read_bytes()
    code, _, err = run_heatmap(capsys, "--force", "--quiet", "--out", out, "--bundle", setup["bundles"][0], src, z)
    assert code == EX_CANTCREAT and src.read_bytes() == before
    assert_clean_failure(code, err, EX_CANTCREAT, f"{z}: its output")
    assert (out / "a_summary.json").is_file()


def test_rerunning_over_a_folder_with_earlier_heatmaps_says_so(capsys, setup, tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    x = write_nifti(d / "x.nii.gz", phantom((28, 28)))
    assert run_heatmap(capsys, x, "--out", d, "--bundle", setup["bundles"][0], "--quiet")[0] == EX_OK
    inputs = sorted(d.glob("*.nii.gz"))  # what `rlp-heatmap --out d d/*.nii.gz` gets
    assert [p.name for p in inputs] == ["x.nii.gz", "x_heatmap.nii.gz"]
    for extra in ([], ["--force"]):
        code, out, err = run_heatmap(capsys, *inputs, "--out", d, "--bundle", setup["bundles"][0], "--json", *extra)
        assert code == EX_CANTCREAT  # x: its outputs exist (without --force) or would overwrite an input (with it)
        warned = [ln for ln in err.splitlines() if "warning: this looks like an rlp heatmap" in ln]
        assert len(warned) == 1 and warned[0].startswith(f"rlp-heatmap: {inputs[1]}: "), err
        reports = json.loads(out)
        assert any("looks like an rlp heatmap" in w for w in reports[1]["warnings"])
        assert any("looks like an rlp heatmap" in w
                   for w in json.loads((d / "x_heatmap_summary.json").read_text())["warnings"])
    # a renamed heatmap is still recognised (by the description rlp writes in its header)
    e = tmp_path / "e"
    e.mkdir()
    shutil.copy(d / "x_heatmap.nii.gz", e / "renamed.nii.gz")
    code, _, err = run_heatmap(capsys, e / "renamed.nii.gz", "--out", e, "--bundle", setup["bundles"][0])
    assert code == EX_OK and "warning: this looks like an rlp heatmap (its header says" in err
