"""Crash injection (RELIABILITY.md, "How to test it" 3): SIGKILL writers at chosen points.

Each writer runs in a child that kills itself on entering the k-th call of a set of
write-boundary functions (see ``helpers.reliability``); k is drawn with a fixed seed
from the points a full run passes, so every run tests the same, repeatable crashes.
Afterwards the previous dataset, checkpoint or bundle must still load, unchanged,
and nothing half-written may look complete. (Resuming a SIGKILLed training run and
matching an uninterrupted one: tests/train/test_train.py.)
"""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest

from helpers.reliability import killed, run_child
from helpers.runtime import synthetic_volume, write_nifti
from rlp.runtime.core.errors import RlpError


def _sample_points(n: int, k: int, seed: int, always=()) -> list[int]:
    """``k`` crash points out of 1..n (fixed seed), plus the ``always`` ones."""
    rng = random.Random(seed)
    return sorted(set(rng.sample(range(1, n + 1), min(k, n))) | {p for p in always if 1 <= p <= n})


# --------------------------------------------------------------------------- rlp-train prepare
PREPARE_POINTS = ["rlp.runtime.core.nifti:load_nifti", "h5py:Dataset.resize", "h5py:Dataset.__setitem__",
                  "h5py:File.flush", "os:fsync", "os:replace"]


def test_prepare_killed_at_random_points_keeps_the_previous_dataset(tmp_path):
    pytest.importorskip("h5py")
    from rlp.train.data import SliceData, prepare

    for i in range(3):
        write_nifti(tmp_path / "src" / f"s{i}.nii.gz", synthetic_volume(shape=(24, 26, 8), seed=i)[0])
    out = tmp_path / "d" / "slices.h5"
    prepare(str(tmp_path / "src"), out, size=16, quiet=True)
    before = SliceData(out).images
    argv = ["prepare", tmp_path / "src", "--out", out, "--size", "16", "--force", "--quiet"]
    count = tmp_path / "points"
    r = run_child("rlp.train.cli", argv, targets=PREPARE_POINTS, count_file=count)
    assert r.returncode == 0, r.stderr
    n = int(count.read_text())
    assert n > 10  # volumes read, datasets grown and written, fsync, rename
    partial = out.with_name(out.name + ".partial")
    for k in _sample_points(n, 3, seed=3, always=[n]):  # n: killed just before the rename
        r = run_child("rlp.train.cli", argv, targets=PREPARE_POINTS, kill_at=k)
        assert killed(r), (k, r.returncode, r.stderr)
        np.testing.assert_array_equal(SliceData(out).images, before)  # the previous dataset, whole
        assert sorted(p.name for p in out.parent.iterdir()) in (["slices.h5"], ["slices.h5", "slices.h5.partial"])
        if partial.exists():  # a dead writer's file is refused, unless it had been completed
            try:
                left = SliceData(partial)
            except RlpError:
                continue
            assert k == n and int(left.attrs["complete"]) == 1
            np.testing.assert_array_equal(left.images, before)
    # the next run takes over the dead writer's partial file
    prepare(str(tmp_path / "src"), out, size=16, quiet=True, force=True)
    assert not partial.exists() and len(SliceData(out).images) == len(before)


# --------------------------------------------------------------------------- folders (bundles) replaced
DIR_POINTS = ["pathlib:Path.write_text", "os:chmod", "rlp.runtime.core.atomic:_exchange", "os:replace", "os:fsync",
              "shutil:rmtree"]


def _dir_state(path):
    return {p.name: p.read_text() for p in path.iterdir()} if path.is_dir() else None


def test_folder_replacement_killed_at_every_point_leaves_old_or_new(tmp_path):
    """``atomic_dir`` (how rlp-export replaces a bundle): at every point, the old folder or the new one."""
    from helpers.reliability import _replace_dir

    path = tmp_path / "bundle"
    count = tmp_path / "points"
    _replace_dir(path, "old")
    r = run_child("helpers.reliability", ["replace-dir", path, "new"], targets=DIR_POINTS, count_file=count)
    assert r.returncode == 0, r.stderr
    n = int(count.read_text())
    seen = set()
    for k in range(1, n + 1):
        shutil.rmtree(path)
        _replace_dir(path, "old")
        for p in tmp_path.iterdir():
            if p.name.startswith(".bundle."):
                shutil.rmtree(p)
        r = run_child("helpers.reliability", ["replace-dir", path, "new"], targets=DIR_POINTS, kill_at=k)
        assert killed(r), (k, r.stderr)
        state = _dir_state(path)
        assert state in ({"a": "old", "b": "old"}, {"a": "new", "b": "new"}), (k, state)
        seen.add(state["a"])
        # leftovers are hidden temporary folders, never a second "bundle"
        assert all(p.name == "bundle" or p.name.startswith(".bundle.") for p in tmp_path.iterdir() if p.is_dir())
    assert seen == {"old", "new"}  # the kills landed on both sides of the swap


def test_rlp_export_killed_at_the_swap_keeps_the_previous_bundle(tmp_path):
    pytest.importorskip("torch")
    from helpers.runs import make_run, tiny_r
    from helpers.runtime import make_bundle, phantom
    from rlp.runtime.core.manifest import load_bundle_manifest
    from rlp.runtime.heatmap import Bundle

    run = make_run(tmp_path / "run", r=tiny_r(), n_slices=1)
    out = make_bundle(tmp_path / "bundle")
    before = (out / "manifest.json").read_bytes()
    argv = [run, "--out", out, "--force", "--quiet", "--parity-slices", "1", "--parity-windows", "2"]
    r = run_child("rlp.export.cli", argv, targets=["rlp.runtime.core.atomic:_exchange"], kill_at=1)
    assert killed(r), r.stderr
    assert (out / "manifest.json").read_bytes() == before
    load_bundle_manifest(out)  # every hash still matches
    with Bundle.load(out, backend="ort-cpu", threads=1) as b:
        assert b.heatmap_slice(phantom((32, 32))).n_evaluated > 0
    # the new bundle, complete, waits under a hidden temporary name: nothing there is called a bundle
    (tmp,) = [p for p in tmp_path.iterdir() if p.name.startswith(".bundle.")]
    assert tmp.name.endswith(".partial") and json.loads((tmp / "manifest.json").read_text())["models"]["r"]


# --------------------------------------------------------------------------- checkpoints
def test_checkpoint_save_killed_keeps_the_previous_checkpoint(tmp_path):
    pytest.importorskip("torch")
    from helpers.reliability import _save_checkpoint
    from rlp.train.checkpoint import load_checkpoint

    last = tmp_path / "checkpoints" / "gan_last.pt"
    last.parent.mkdir()
    _save_checkpoint(last, "1")
    points = ["rlp.train.checkpoint:torch.save", "os:fsync", "os:replace"]  # temp created / written / synced
    k = random.Random(5).randint(2, 3)
    r = run_child("helpers.reliability", ["save-checkpoint", last, "2"], targets=points, kill_at=k)
    assert killed(r), r.stderr
    st = load_checkpoint(last)
    assert st["step"] == 1 and float(st["w"][0]) == 1.0
    others = [p for p in last.parent.iterdir() if p != last]
    assert others and all(p.name.startswith(".gan_last.pt.") and p.name.endswith(".partial") for p in others)
    assert list(last.parent.glob("*.pt")) == [last]  # nothing else looks like a checkpoint
