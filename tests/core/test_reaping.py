"""Leftovers of dead writers are reaped by the next run; a live writer's temporary files never (#21, item 4).

A writer child opens, in one folder, what rlp's commands leave when killed: a temporary file of an atomic
write, one of an output set, a ``.partial`` bundle folder and a set's lock file, says so on its stdout,
and waits on its stdin. The test waits for that line (no sleeps), SIGKILLs one writer, keeps another
alive, and runs an atomic write in the folder as the next run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from rlp.runtime.core import tempfiles
from rlp.runtime.core.atomic import write_text

pytestmark = pytest.mark.skipif(tempfiles.fcntl is None, reason="no flock on this system")


def _writer(folder: str, tag: str) -> None:
    """(in the child) Hold every kind of temporary file rlp makes in ``folder``, then wait on stdin."""
    import contextlib

    from rlp.runtime.core.atomic import atomic_dir, atomic_path, atomic_set, file_lock

    d = Path(folder)
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(atomic_path(d / f"{tag}_heatmap.nii.gz", suffix=".nii.gz"))
        tmp.write_bytes(b"half a heatmap")
        staged = stack.enter_context(atomic_set({"png": d / f"{tag}_overlay.png"}))
        staged.path("png").write_bytes(b"half a png")
        (stack.enter_context(atomic_dir(d / f"bundle-{tag}")) / "manifest.json").write_text("{")
        stack.enter_context(file_lock(d / f".{tag}.lock"))
        print(" ".join(sorted(p.name for p in d.iterdir() if tag in p.name)), flush=True)
        sys.stdin.readline()  # until the test lets go (or kills this process)


def _start(folder: Path, tag: str) -> tuple[subprocess.Popen, set[str]]:
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_reaping as t; "
            f"t._writer({str(folder)!r}, {tag!r})")
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    names = set(p.stdout.readline().split())  # blocks until the child holds its files
    assert len(names) == 4, names
    return p, names


def test_a_killed_writers_leftovers_are_reaped_and_a_live_writers_kept(tmp_path):
    d = tmp_path / "out"
    d.mkdir()
    live, live_names = _start(d, "live")
    dead, dead_names = _start(d, "dead")
    try:
        assert all(n.startswith(".") for n in live_names | dead_names)  # hidden: no output name is taken
        dead.send_signal(signal.SIGKILL)
        dead.wait()
        assert dead_names <= set(os.listdir(d))  # the kill left them all
        mine = {".notes.lock", ".x.abcdefgh.png", ".y.~rlp-abcdefgh.nii.gz"}  # a user's own; a link that looks ours
        (d / ".notes.lock").write_text("mine")
        (d / ".x.abcdefgh.png").write_bytes(b"png")
        (d / ".y.~rlp-abcdefgh.nii.gz").symlink_to(tmp_path / "elsewhere")
        code = f"from rlp.runtime.core.atomic import write_text; write_text({str(d / 'next.txt')!r}, 'next run')"
        subprocess.run([sys.executable, "-c", code], check=True)
        left = set(os.listdir(d))
        assert not dead_names & left, dead_names & left  # the dead writer's leftovers are gone
        assert live_names | mine | {"next.txt"} <= left  # the live writer's files and the user's are untouched
        live.communicate("\n", timeout=120)  # the live writer finishes: its outputs are whole
        assert live.returncode == 0
        assert sorted(os.listdir(d)) == sorted(mine | {"next.txt", "live_heatmap.nii.gz", "live_overlay.png",
                                                       "bundle-live"})
        assert (d / "live_heatmap.nii.gz").read_bytes() == b"half a heatmap"
    finally:
        for p in (live, dead):
            if p.poll() is None:
                p.kill()
                p.wait()


def test_a_temporary_file_reaped_before_its_writer_locked_it_is_made_again(tmp_path, monkeypatch):
    """The instant between mkstemp and flock: a reaper that takes the file there does not take the write."""
    real, calls = tempfiles.hold, []

    def hold(fd, **kw):
        if not calls:  # the first file: a reaper of another process gets to it first
            calls.append(fd)
            assert [p.name for p in tempfiles.reap(tmp_path)] and not os.listdir(tmp_path)
        return real(fd, **kw)

    monkeypatch.setattr(tempfiles, "hold", hold)
    write_text(tmp_path / "a.txt", "whole")
    assert calls and os.listdir(tmp_path) == ["a.txt"] and (tmp_path / "a.txt").read_text() == "whole"
