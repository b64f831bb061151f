"""Atomic writes (``runtime/core/atomic.py``) pinned where mutation testing found them loose (issue 23,
tests/MUTATION.md): what is left on disk after success, refusal and failure, file modes, temporary
names, the lock and the set writer's messages. Public functions only, in-process (fast)."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
import sys
from pathlib import Path

import pytest

from rlp.runtime.core import atomic
from rlp.runtime.core.atomic import (
    NAME_MAX,
    OutputExists,
    atomic_dir,
    atomic_path,
    atomic_set,
    file_lock,
    temp_prefix,
    write_bytes,
    write_json,
    write_text,
)
from rlp.runtime.core.errors import BadInput, CannotCreate
from rlp.runtime.core.tempfiles import MARK


@pytest.fixture()
def umask022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_temp_prefix():
    assert temp_prefix("a.nii.gz") == ".a.nii.gz." and temp_prefix("a", ".partial") == ".a."
    room = NAME_MAX - len(".partial") - 10 - len(MARK)  # the temporary name: prefix, MARK, 8 random characters, suffix
    fits = "x" * room
    assert temp_prefix(fits, ".partial") == f".{fits}."
    over = "x" * (room + 1)
    p = temp_prefix(over, ".partial")
    assert p.startswith(".x") and p.endswith(".") and p[-10] == "~"
    assert len(p) + len(MARK) + 8 + len(".partial") == NAME_MAX  # cut to fill the room exactly
    assert temp_prefix(over + "y", ".partial") != temp_prefix(over + "z", ".partial")
    # an odd number cut too
    assert len(temp_prefix(over + "w", ".partial")) + len(MARK) + 8 + len(".partial") == NAME_MAX
    bare = temp_prefix("n" * 250)  # no suffix: the room is the whole name less mkstemp's characters
    assert len(bare) + len(MARK) + 8 == NAME_MAX
    uni = "é" * 200  # 400 bytes: the room is counted in bytes
    q = temp_prefix(uni, ".nii.gz")
    assert len(os.fsencode(q)) + len(MARK) + 8 + len(".nii.gz") <= NAME_MAX


def test_atomic_path_writes_with_the_usual_mode_and_no_leftover(tmp_path, umask022):
    out = tmp_path / "sub" / "f.nii.gz"
    with atomic_path(out, suffix=".nii.gz") as tmp:
        assert tmp.parent == out.parent and tmp.name.startswith(".f.nii.gz.") and tmp.name.endswith(".nii.gz")
        assert tmp.exists() and not out.exists()
        tmp.write_bytes(b"new")
    assert out.read_bytes() == b"new" and _names(out.parent) == ["f.nii.gz"] and _mode(out) == 0o644
    with atomic_path(out) as tmp:
        assert tmp.name.endswith(".partial")
        tmp.write_bytes(b"newer")
    assert out.read_bytes() == b"newer" and _names(out.parent) == ["f.nii.gz"]


def test_atomic_path_refuses_or_leaves_the_old_file(tmp_path):
    out = tmp_path / "f"
    out.write_bytes(b"old")
    with pytest.raises(CannotCreate) as exc:
        with atomic_path(out, force=False):
            pytest.fail("the body must not run")
    assert str(exc.value) == f"{out}: exists; pass --force to overwrite"
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    with pytest.raises(CannotCreate, match="exists"):
        with atomic_path(tmp_path / "dangling", force=False):
            pass
    for err in (KeyboardInterrupt, ValueError):
        with pytest.raises(err):
            with atomic_path(out) as tmp:
                tmp.write_bytes(b"half")
                raise err()
        assert out.read_bytes() == b"old" and _names(tmp_path) == ["dangling", "f"]


def test_os_errors_become_one_cannot_create(tmp_path, monkeypatch):
    out = tmp_path / "f"
    with pytest.raises(CannotCreate) as exc:
        with atomic_path(out):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert str(exc.value) == f"{out}: no space left on device" and _names(tmp_path) == []
    with pytest.raises(CannotCreate) as exc:
        with atomic_path(out):
            raise OSError(errno.EIO, "Input/output error")
    assert str(exc.value) == f"{out}: Input/output error"
    with pytest.raises(CannotCreate) as exc:
        with atomic_path(out):
            raise OSError("no errno")
    assert str(exc.value) == f"{out}: no errno"
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(CannotCreate) as exc:  # the parent cannot be made
        with atomic_path(tmp_path / "file" / "x"):
            pass
    assert exc.value.path == str(tmp_path / "file" / "x")


def test_write_helpers(tmp_path):
    assert write_bytes(tmp_path / "b", b"\x00\x01") == tmp_path / "b"
    assert (tmp_path / "b").read_bytes() == b"\x00\x01"
    assert write_text(str(tmp_path / "t"), "é") == tmp_path / "t" and (tmp_path / "t").read_bytes() == "é".encode()
    write_json(tmp_path / "j", {"b": 1, "a": [1]})
    assert (tmp_path / "j").read_text() == '{\n  "b": 1,\n  "a": [\n    1\n  ]\n}\n'
    with pytest.raises(CannotCreate, match="exists"):
        write_json(tmp_path / "j", {}, force=False)
    with pytest.raises(CannotCreate, match="exists"):
        write_text(tmp_path / "t", "x", force=False)
    with pytest.raises(CannotCreate, match="exists"):
        write_bytes(tmp_path / "b", b"x", force=False)
    assert json.loads((tmp_path / "j").read_text()) == {"b": 1, "a": [1]}
    write_text(tmp_path / "new", "x", force=False)
    assert (tmp_path / "new").read_text() == "x"


@pytest.mark.parametrize("exchange", [True, False])
def test_atomic_dir(tmp_path, umask022, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(sys, "platform", "darwin")  # no renameat2: the old folder is moved aside first
    out = tmp_path / "d"
    with atomic_dir(out) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".d.") and tmp.name.endswith(".partial")
        (tmp / "a").write_text("1")
    assert _names(out) == ["a"] and _mode(out) == 0o755 and _names(tmp_path) == ["d"]
    with pytest.raises(CannotCreate) as exc:
        with atomic_dir(out):
            pytest.fail("the body must not run")
    assert str(exc.value) == f"{out}: exists; pass --force to overwrite"
    with atomic_dir(out, force=True) as tmp:
        (tmp / "b").write_text("2")
    assert _names(out) == ["b"] and _names(tmp_path) == ["d"]
    with pytest.raises(RuntimeError):
        with atomic_dir(out, force=True) as tmp:
            (tmp / "c").write_text("3")
            raise RuntimeError
    assert _names(out) == ["b"] and _names(tmp_path) == ["d"]
    with pytest.raises(CannotCreate, match="no space left on device"):
        with atomic_dir(tmp_path / "e"):
            raise OSError(errno.ENOSPC, "full")
    assert _names(tmp_path) == ["d"]


def test_file_lock_creates_and_removes_its_file(tmp_path):
    lock = tmp_path / "set.lock"
    with file_lock(lock, timeout=5):
        assert lock.is_file()
        fd = os.open(lock, os.O_RDWR)
        try:  # held: another open file cannot take it
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    assert not lock.exists()
    lock.write_bytes(b"")  # a file a killed holder left: reused and removed
    with file_lock(lock, timeout=5):
        pass
    assert not lock.exists()


def test_a_held_lock_times_out_with_a_clear_error(tmp_path, monkeypatch):
    lock = tmp_path / "set.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(CannotCreate) as exc:
            with file_lock(lock, timeout=0.05):
                pytest.fail("the lock is held")
        assert str(exc.value) == (f"{lock}: another process has held this lock for 0.05 s (set RLP_LOCK_TIMEOUT to "
                                  "wait longer)")
        monkeypatch.setattr(atomic, "LOCK_TIMEOUT_S", 0.01)  # the default timeout is read at each call
        with pytest.raises(CannotCreate, match="held this lock for 0.01 s"):
            with file_lock(lock):
                pass
    finally:
        os.close(fd)
    assert lock.exists()  # not removed by a waiter that never got it
    with pytest.raises(CannotCreate) as exc:
        with file_lock(tmp_path / "no" / "such" / "lock", timeout=1):
            pass
    assert exc.value.path == str(tmp_path / "no" / "such" / "lock")


def test_file_lock_without_flock_support_works_unlocked(tmp_path, monkeypatch):
    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    ran = []
    with file_lock(tmp_path / "l", timeout=1):
        ran.append(1)
    assert ran == [1]

    def broken(fd, op):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(fcntl, "flock", broken)
    with pytest.raises(OSError, match="I/O error"):
        with file_lock(tmp_path / "l2", timeout=1):
            pass


def test_atomic_set_writes_all_or_nothing(tmp_path, umask022):
    outs = {"heat": tmp_path / "o" / "x_heatmap.NII.GZ", "sum": tmp_path / "o" / "x_summary.json",
            "raw": tmp_path / "o" / "x"}
    with atomic_set(outs, lock=tmp_path / "o.lock") as st:
        h = st.path("heat")
        assert h.name.startswith(".x_heatmap.NII.GZ.") and h.name.endswith(".NII.GZ") and st.path("heat") == h
        # the mark and mkstemp's 8 characters between
        assert len(h.name) == len(".x_heatmap.NII.GZ.") + len(MARK) + 8 + len(".NII.GZ")
        assert h.parent == outs["heat"].parent
        assert st.path("sum").name.endswith(".json") and st.last == "sum"
        assert st.path("raw").name.endswith(".partial")
        assert st.path("raw", ".bin") == st.path("raw")  # made once
        for k in outs:
            st.path(k).write_text(k)
    assert {k: p.read_text() for k, p in outs.items()} == {k: k for k in outs}
    assert _names(tmp_path / "o") == ["x", "x_heatmap.NII.GZ", "x_summary.json"]
    assert all(_mode(p) == 0o644 for p in outs.values()) and not (tmp_path / "o.lock").exists()
    with pytest.raises(OutputExists) as exc:
        with atomic_set(outs) as st:
            st.path("heat").write_text("new")
    assert exc.value.path == str(outs["heat"]) and str(exc.value).endswith("exists; pass --force to overwrite")
    assert outs["heat"].read_text() == "heat" and len(_names(tmp_path / "o")) == 3
    with atomic_set(outs, force=True) as st:
        st.path("sum", ".txt").write_text("new")  # a set may write only some of its outputs
    assert outs["sum"].read_text() == "new" and outs["heat"].read_text() == "heat"
    assert len(_names(tmp_path / "o")) == 3


@pytest.mark.parametrize("exchange", [True, False])
def test_a_forced_set_replaces_files_in_one_set(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(sys, "platform", "darwin")
    outs = {"a": tmp_path / "a.txt", "b": tmp_path / "b.txt"}
    for p in outs.values():
        p.write_text("old")
    with atomic_set(outs, force=True) as st:
        st.path("a").write_text("A")
        st.path("b").write_text("B")
    assert outs["a"].read_text() == "A" and outs["b"].read_text() == "B" and _names(tmp_path) == ["a.txt", "b.txt"]


def test_a_folder_in_the_way_is_never_replaced(tmp_path):
    (tmp_path / "a").mkdir()
    with pytest.raises(CannotCreate) as exc:
        with atomic_set({"a": tmp_path / "a"}, force=True) as st:
            st.path("a").write_text("x")
    assert str(exc.value) == f"{tmp_path / 'a'}: is a folder; refusing to replace it"
    assert _names(tmp_path) == ["a"] and _names(tmp_path / "a") == []


def test_errors_in_the_body_name_the_output(tmp_path):
    outs = {"a": tmp_path / "a.nii", "b": tmp_path / "b.json"}
    with pytest.raises(CannotCreate) as exc:
        with atomic_set(outs) as st:
            st.path("a").write_text("x")
            raise OSError(errno.ENOSPC, "full")
    assert str(exc.value) == f"{outs['a']}: no space left on device" and _names(tmp_path) == []
    with pytest.raises(CannotCreate) as exc:
        with atomic_set(outs):
            raise OSError(errno.EACCES, "Permission denied")
    assert str(exc.value) == f"{outs['a']}: Permission denied"  # nothing staged yet: the first output
    with pytest.raises(BadInput) as exc:
        with atomic_set(outs) as st:
            st.path("a")
            t = st.path("b")
            raise BadInput("cannot write", t)
    assert exc.value.path == str(outs["b"]) and _names(tmp_path) == []
    with pytest.raises(BadInput) as exc:
        with atomic_set(outs) as st:
            st.path("a")
            raise BadInput("elsewhere", tmp_path / "in.nii")
    assert exc.value.path == str(tmp_path / "in.nii") and _names(tmp_path) == []
    with pytest.raises(KeyboardInterrupt):
        with atomic_set(outs) as st:
            st.path("a").write_text("x")
            raise KeyboardInterrupt
    assert _names(tmp_path) == []


def test_write_helpers_overwrite_by_default(tmp_path):
    for write, value in ((write_bytes, b"x"), (write_text, "x"), (write_json, ["x"])):
        out = tmp_path / write.__name__
        out.write_text("old")
        write(out, value)
        assert out.read_text() != "old"


def test_a_set_creates_the_folders_it_needs(tmp_path):
    out = tmp_path / "a" / "b" / "f.json"
    with atomic_set({"f": out}) as st:
        st.path("f").write_text("1")
    assert out.read_text() == "1"


def _layout(tmp_path):
    """a (new, published last), b (new), c (existing): published c, b, then a."""
    outs = {"a": tmp_path / "a.txt", "b": tmp_path / "b.txt", "c": tmp_path / "c.txt"}
    outs["c"].write_text("old c")
    return outs


@pytest.fixture(params=[True, False], ids=["exchange", "aside"])
def layout(request, tmp_path, monkeypatch):
    """(swapped in one step?, the outputs of :func:`_layout`); without the swap, old files are moved aside."""
    if not request.param:
        monkeypatch.setattr(sys, "platform", "darwin")
    return request.param, _layout(tmp_path)


def test_a_failed_publish_removes_new_files_and_puts_old_ones_back(tmp_path, monkeypatch, layout):
    exchange, outs = layout
    real = os.replace
    moved = []

    def failing(src, dst):
        if Path(dst) == outs["a"]:
            raise OSError(errno.EIO, "Input/output error")
        moved.append((Path(src), Path(dst)))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(CannotCreate) as exc:
        with atomic_set(outs, force=True) as st:
            for k in outs:
                st.path(k).write_text(f"new {k}")
    assert str(exc.value) == f"{outs['a']}: Input/output error"
    assert _names(tmp_path) == ["c.txt"] and outs["c"].read_text() == "old c"  # b removed, c's old file back
    if not exchange:  # the old c went aside under a hidden temporary name beside it, ending .old
        aside = [d for s_, d in moved if s_ == outs["c"]]
        assert len(aside) == 1 and aside[0].parent == tmp_path
        assert aside[0].name.startswith(".c.txt.") and aside[0].name.endswith(".old")


def test_a_failure_replacing_an_existing_file_puts_it_back(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")  # moved aside, then the new file fails to go in
    outs = {"c": tmp_path / "c.txt"}
    outs["c"].write_text("old c")
    real = os.replace

    def failing(src, dst):
        if Path(dst) == outs["c"] and not Path(src).name.endswith(".old"):
            raise OSError(errno.EIO, "Input/output error")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(CannotCreate, match="Input/output error"):
        with atomic_set(outs, force=True) as st:
            st.path("c").write_text("new c")
    assert _names(tmp_path) == ["c.txt"] and outs["c"].read_text() == "old c"


def test_a_failed_publish_never_touches_what_another_writer_put_there(tmp_path, monkeypatch, layout):
    exchange, outs = layout
    real = os.replace

    def failing(src, dst):
        if Path(dst) == outs["a"]:  # meanwhile another writer replaced b and c
            for k in ("b", "c"):
                (tmp_path / f"other_{k}").write_text(f"other {k}")
                real(tmp_path / f"other_{k}", outs[k])
            raise OSError(errno.EIO, "Input/output error")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(CannotCreate):
        with atomic_set(outs, force=True) as st:
            for k in outs:
                st.path(k).write_text(f"new {k}")
    assert outs["b"].read_text() == "other b"
    if not exchange:
        assert outs["c"].read_text() == "other c"


def test_a_failure_on_the_first_file_published_names_it(tmp_path, monkeypatch):
    outs = {"a": tmp_path / "a.txt", "b": tmp_path / "b.txt"}  # b is published first
    real = os.replace

    def failing(src, dst):
        if Path(dst) == outs["b"]:
            raise OSError(errno.ENOSPC, "full")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(CannotCreate) as exc:
        with atomic_set(outs) as st:
            st.path("a").write_text("a")
            st.path("b").write_text("b")
    assert str(exc.value) == f"{outs['b']}: no space left on device" and _names(tmp_path) == []


def test_on_linux_existing_files_are_swapped_in_one_step(tmp_path, monkeypatch):
    if not sys.platform.startswith("linux"):
        pytest.skip("renameat2 is Linux's")
    monkeypatch.chdir(tmp_path)  # relative names: renameat2 resolves them from the working folder
    outs = {"a": "a.txt", "b": "b.txt"}
    for p in outs.values():
        Path(p).write_text("old")
    real = os.replace
    moved = []
    monkeypatch.setattr(os, "replace", lambda src, dst: moved.append(Path(dst).name) or real(src, dst))
    with atomic_set(outs, force=True) as st:
        st.path("a").write_text("A")
        st.path("b").write_text("B")
    assert moved == []  # never moved aside: the name always points at a complete file
    assert Path("a.txt").read_text() == "A" and Path("b.txt").read_text() == "B"
    assert _names(tmp_path) == ["a.txt", "b.txt"]
    Path("d").mkdir()
    with atomic_dir("d", force=True) as tmp:
        (tmp / "x").write_text("1")
    assert moved == [] and _names(tmp_path / "d") == ["x"]


def test_a_long_output_name_of_a_set_keeps_its_suffix(tmp_path):
    name = "n" * (NAME_MAX - len(".nii.gz")) + ".nii.gz"  # the longest name: its temporary name is shortened
    with atomic_set({"a": tmp_path / name}) as st:
        t = st.path("a")
        assert t.name.endswith(".nii.gz") and len(os.fsencode(t.name)) <= NAME_MAX
        t.write_text("x")
    assert (tmp_path / name).read_text() == "x"


def test_a_set_whose_folder_cannot_be_made_names_the_output(tmp_path):
    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "x.json"
    with pytest.raises(CannotCreate) as exc:
        with atomic_set({"a": out}) as st:
            st.path("a")
    assert exc.value.path == str(out)


def test_a_folder_removed_while_it_is_being_replaced(tmp_path, monkeypatch):
    import pathlib

    out = tmp_path / "d"  # another process removes it between the check and the swap
    real = pathlib.Path.exists
    monkeypatch.setattr(pathlib.Path, "exists", lambda self: True if self == out else real(self))
    with pytest.raises(CannotCreate) as exc:
        with atomic_dir(out, force=True) as tmp:
            (tmp / "x").write_text("1")
    assert str(exc.value) == f"{out}: No such file or directory" and _names(tmp_path) == []


def test_the_longest_names_can_be_moved_aside(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    out = tmp_path / ("n" * 240 + ".txt")  # its .old temporary name must be shortened
    out.write_text("old")
    with atomic_set({"a": out}, force=True) as st:
        st.path("a").write_text("new")
    assert out.read_text() == "new" and _names(tmp_path) == [out.name]
