"""Disk full, Ctrl-C and a second writer (RELIABILITY.md: "disk full", "Ctrl-C", "second writer or reader").

A full disk is simulated two ways without root: a child process whose file-size limit
(``RLIMIT_FSIZE``) makes every write past it fail (EFBIG, as ENOSPC would), and
in-process writers that raise ``OSError(ENOSPC)`` half-way through a file. Either
way: one line naming the file, exit 73 (cannot create output), no partial file.
"""

from __future__ import annotations

import errno
import subprocess
import sys

import numpy as np
import pytest

from helpers.reliability import run_child
from helpers.runtime import make_bundle, phantom, synthetic_volume, write_nifti
from rlp.runtime.core.errors import EX_CANTCREAT, EX_DATAERR, EX_INTERRUPTED, RlpError


def _one_clean_line(err: str, prog: str, *words: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: ") and "Traceback" not in err, err
    assert all(w in lines[0] for w in words), lines[0]


def _half_then(exc: BaseException):
    """A writer standing in for ``torch.save``/``np.save``: half the bytes reach the file, then ``exc``."""
    def write(obj, path, *a, **k):
        with open(path, "wb") as fh:
            fh.write(b"\0" * 4096)
        raise exc
    return write


# --------------------------------------------------------------------------- disk full
def test_disk_full_during_heatmap_writes_is_a_clean_error(tmp_path):
    bundle = make_bundle(tmp_path / "b")
    slice_file = write_nifti(tmp_path / "in.nii.gz", phantom((40, 40)))
    out = tmp_path / "out"
    r = run_child("rlp.runtime.cli", [slice_file, "--bundle", bundle, "--out", out, "--quiet"], fsize=3000)
    assert r.returncode == EX_CANTCREAT
    _one_clean_line(r.stderr, "rlp-heatmap", str(out / "in_"), "File too large")
    assert not out.exists()  # nothing written, not even the folder this call made


def test_disk_full_during_prepare_is_a_clean_error(tmp_path):
    pytest.importorskip("h5py")
    vol, _ = synthetic_volume(shape=(30, 30, 12))
    write_nifti(tmp_path / "src" / "a.nii.gz", vol)
    out = tmp_path / "d" / "slices.h5"
    r = run_child("rlp.train.cli", ["prepare", tmp_path / "src", "--out", out, "--size", "32", "--quiet"],
                  fsize=20000)
    assert r.returncode == EX_CANTCREAT
    _one_clean_line(r.stderr, "rlp-train", str(out), "cannot write the dataset (File too large); nothing was written")
    assert list(out.parent.iterdir()) == []


def test_disk_full_during_a_checkpoint_save_keeps_the_previous_one(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    from rlp.train import checkpoint

    last = tmp_path / "gan_last.pt"
    checkpoint.save_checkpoint(last, {"step": 1, "w": torch.ones(3)})
    monkeypatch.setattr(checkpoint.torch, "save", _half_then(OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(RlpError) as exc:
        checkpoint.save_checkpoint(last, {"step": 2, "w": torch.ones(3)})
    assert exc.value.code == EX_CANTCREAT and str(exc.value) == f"{last}: no space left on device"
    monkeypatch.undo()
    assert checkpoint.load_checkpoint(last)["step"] == 1 and [p.name for p in tmp_path.iterdir()] == [last.name]


def test_disk_full_during_export_leaves_no_bundle(tmp_path, monkeypatch, capsys):
    pytest.importorskip("torch")
    from pathlib import Path

    from helpers.runs import leftovers, make_run, tiny_r
    from rlp.export.cli import main

    run = make_run(tmp_path / "run", r=tiny_r(), n_slices=1)
    real = Path.write_bytes

    def full(self, data):
        if self.suffix == ".onnx":
            real(self, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", full)
    out = tmp_path / "bundles" / "b"
    assert main([str(run), "--out", str(out), "--quiet"]) == EX_CANTCREAT
    _one_clean_line(capsys.readouterr().err, "rlp-export", str(out), "no space left on device")
    assert not out.exists() and not leftovers(out.parent)


# --------------------------------------------------------------------------- Ctrl-C
def test_ctrl_c_during_prepare_exits_130_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    pytest.importorskip("h5py")
    from rlp.train import data
    from rlp.train.cli import main

    for i in range(3):
        write_nifti(tmp_path / "src" / f"s{i}.nii.gz", synthetic_volume(shape=(24, 24, 6), seed=i)[0])
    calls = []
    real = data.preprocess_slice

    def interrupt_later(*a, **k):
        calls.append(1)
        if len(calls) == 10:  # second volume, rows of the first already in the file
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(data, "preprocess_slice", interrupt_later)
    out = tmp_path / "d" / "slices.h5"
    with pytest.raises(SystemExit) as exc:
        main(["prepare", str(tmp_path / "src"), "--out", str(out), "--size", "16", "--quiet"])
    assert exc.value.code == EX_INTERRUPTED and len(calls) == 10
    assert capsys.readouterr().err.strip() == "rlp-train: interrupted"
    assert list(out.parent.iterdir()) == []


def test_ctrl_c_during_training_exits_130_and_keeps_the_last_complete_checkpoint(tmp_path, monkeypatch, capsys,
                                                                                   mni_tiny):
    pytest.importorskip("torch")
    from rlp.train import checkpoint
    from rlp.train.cli import main

    saves = []
    real = checkpoint.torch.save

    def save(obj, path, *a, **k):
        saves.append(obj["step"])
        if len(saves) == 3:  # step 20's gan_last.pt, half written
            return _half_then(KeyboardInterrupt())(obj, path)
        return real(obj, path, *a, **k)

    monkeypatch.setattr(checkpoint.torch, "save", save)
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        main(["gan", "--preset", "tiny", "--data", str(mni_tiny), "--run", str(run), "--threads", "1", "--quiet"])
    # the interrupt's own save (#20: Ctrl-C saves the steps done) writes step 20 again, completely
    assert exc.value.code == EX_INTERRUPTED and saves == [10, 10, 20, 20]
    assert capsys.readouterr().err.strip().splitlines()[-1] == "rlp-train: interrupted"
    monkeypatch.undo()
    ck = run / "checkpoints"
    assert sorted(p.name for p in ck.iterdir()) == ["gan_best.pt", "gan_last.pt"]  # no temporary file left
    assert checkpoint.load_checkpoint(ck / "gan_last.pt")["step"] == 20
    assert checkpoint.load_checkpoint(ck / "gan_best.pt")["step"] == 10  # best: the last validated one


# --------------------------------------------------------------------------- a second writer or reader
_HOLDER = """
import sys, h5py, numpy as np
f = h5py.File(sys.argv[1], "w")
f.create_dataset("images", data=np.arange(1000, dtype=np.float32))
f.flush()
print("writing", flush=True)
sys.stdin.readline()
assert (f["images"][:] == np.arange(1000)).all()  # nobody truncated it meanwhile
f.close()
"""


def test_a_second_prepare_or_reader_during_a_write_is_a_clean_error(tmp_path):
    h5py = pytest.importorskip("h5py")
    from rlp.train.data import SliceData, prepare

    write_nifti(tmp_path / "src" / "a.nii.gz", synthetic_volume(shape=(24, 24, 6))[0])
    out = tmp_path / "slices.h5"
    partial = out.with_name(out.name + ".partial")
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(partial)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "writing"
        with pytest.raises(RlpError) as exc:
            prepare(str(tmp_path / "src"), out, size=16, quiet=True)
        assert exc.value.code == EX_CANTCREAT and "another process is writing it" in str(exc.value)
        with pytest.raises(RlpError) as exc:
            SliceData(partial)
        assert exc.value.code == EX_DATAERR and "locked by a writer" in str(exc.value)
        _, err = holder.communicate("go\n", timeout=60)
        assert holder.returncode == 0, err
    finally:
        holder.kill()
    assert not out.exists()
    with h5py.File(partial, "r") as f:  # the first writer's file, whole
        np.testing.assert_array_equal(f["images"][:], np.arange(1000))


def test_an_interrupt_right_after_the_partial_file_is_created_removes_it(tmp_path, monkeypatch):
    """A Ctrl-C (or SIGTERM) landing between the .partial file's creation and the code that cleans it up."""
    pytest.importorskip("h5py")
    from rlp.train import data

    vol, _ = synthetic_volume(shape=(30, 30, 12))
    write_nifti(tmp_path / "src" / "a.nii.gz", vol)
    out = tmp_path / "d" / "slices.h5"
    create = data._create_partial

    def create_then_interrupt(h5py, partial):
        f = create(h5py, partial)
        f.close()
        raise KeyboardInterrupt
    monkeypatch.setattr(data, "_create_partial", create_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        data.prepare(str(tmp_path / "src"), out, size=32, quiet=True)
    assert list(out.parent.iterdir()) == []


def test_hdf5_failing_to_close_is_a_clean_error_that_leaves_nothing(tmp_path, monkeypatch):
    """h5py raises RuntimeError from a close that cannot flush (a file-size limit hit at close)."""
    h5py = pytest.importorskip("h5py")
    from rlp.train import data

    vol, _ = synthetic_volume(shape=(30, 30, 12))
    write_nifti(tmp_path / "src" / "a.nii.gz", vol)
    out = tmp_path / "d" / "slices.h5"
    close = h5py.File.close
    calls = []

    def failing_close(self):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("Can't decrement id ref count (unable to flush file's cached information)")
        return close(self)
    monkeypatch.setattr(h5py.File, "close", failing_close)
    with pytest.raises(RlpError, match="cannot write the dataset") as exc:
        data.prepare(str(tmp_path / "src"), out, size=32, quiet=True)
    assert "\n" not in str(exc.value) and "nothing was written" in str(exc.value)
    assert list(out.parent.iterdir()) == []
