"""Atomic writes: a temporary file in the same folder, fsync, then ``os.replace``.

A killed process leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

from . import tempfiles
from .errors import CannotCreate, RlpError
from .tempfiles import ident as _ident

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no locking (and no second process to fear, usually)
    fcntl = None

#: how long a writer waits for another process that holds an output set's lock
LOCK_TIMEOUT_S = float(os.environ.get("RLP_LOCK_TIMEOUT", 600))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _exchange(new: Path, old: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where that is unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # glibc older than 2.28, or another libc
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(new), at_fdcwd, os.fsencode(old), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # e.g. a file system without the flag
        return False
    raise OSError(err, os.strerror(err), str(old))


#: the longest file name most file systems take (ext4, xfs, btrfs, APFS: 255 bytes)
NAME_MAX = 255


def temp_prefix(name: str, suffix: str = "") -> str:
    """The start of a temporary name beside ``name``: ``.name.``, shortened (with a hash of the whole name, so
    that two long names stay apart) where the temporary name (``.name.~rlp-XXXXXXXX<suffix>``,
    :mod:`rlp.runtime.core.tempfiles`) would pass :data:`NAME_MAX` although ``name`` itself fits."""
    # mkstemp's 8 random characters, the two dots and the mark
    room = NAME_MAX - len(os.fsencode(suffix)) - 8 - 2 - len(tempfiles.MARK)
    if len(os.fsencode(name)) <= room:
        return f".{name}."
    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:8]
    cut = name
    while len(os.fsencode(cut)) > max(1, room - 9):
        cut = cut[:-1]
    return f".{cut}~{digest}."


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _raise_for(exc: OSError, path: Path) -> None:
    if exc.errno == errno.ENOSPC:
        raise CannotCreate("no space left on device", path) from None
    raise CannotCreate(exc.strerror or str(exc), path) from None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, force: bool = True, suffix: str = ".partial") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``.

    On any exception (KeyboardInterrupt included) the temporary file is removed
    and ``path`` is left untouched. ``suffix`` ends the temporary name (libraries
    that choose a format by extension need the real one, e.g. ``".nii.gz"``).
    """
    path = Path(path)
    if tempfiles.owned(path):  # already a temporary file of this process's (e.g. a file of an atomic_set)
        yield path
        return
    if os.path.lexists(path) and not force:
        raise CannotCreate("exists; pass --force to overwrite", path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp_path, held = tempfiles.make(path.parent, temp_prefix(path.name, suffix), suffix)
    except OSError as exc:
        _raise_for(exc, path)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, _umask_mode())  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        _raise_for(exc, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    finally:
        tempfiles.release(held)  # the lock that tells reapers this writer is alive (tempfiles)


def write_bytes(path: str | os.PathLike, data: bytes, *, force: bool = True) -> Path:
    with atomic_path(path, force=force) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str, *, force: bool = True) -> Path:
    return write_bytes(path, text.encode("utf-8"), force=force)


def write_json(path: str | os.PathLike, obj, *, force: bool = True) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n", force=force)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, force: bool = False) -> Iterator[Path]:
    """Build a folder under a temporary name and move it into place when complete.

    With ``force`` an existing folder is replaced: swapped with the new one in a
    single step where the system can (Linux), so that a kill at any moment leaves
    the old folder or the new one at ``path``; elsewhere moved aside first. The old
    folder is deleted once the new one is in place.
    """
    path = Path(path)
    if path.exists() and not force:
        raise CannotCreate("exists; pass --force to overwrite", path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp, fd = tempfiles.make(path.parent, temp_prefix(path.name, ".partial"), ".partial", folder=True)
    except OSError as exc:
        _raise_for(exc, path)
    held = [fd]
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~(~_umask_mode() & 0o666))  # mkdtemp makes 0700
        old = None
        held.append(tempfiles.hold_existing(path))  # the old folder stays locked under its temporary name
        if path.exists() and _exchange(tmp, path):
            old = tmp  # the old folder, now under the temporary name
        elif path.exists():
            old, fd = tempfiles.make(path.parent, temp_prefix(path.name, ".old"), ".old", folder=True)
            held.append(fd)
            os.replace(path, old / "x")
        if old is not tmp:
            os.replace(tmp, path)
        _fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        _raise_for(exc, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        _release(held)


def _release(fds) -> None:
    for fd in fds:
        tempfiles.release(fd)


# --------------------------------------------------------------------------- sets of outputs
class OutputExists(CannotCreate):
    """An output that already exists where overwriting was not asked for (``path``: that output)."""

    def __init__(self, path):
        super().__init__("exists; pass --force to overwrite", path)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, *, timeout: float | None = None) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the file ``path`` (created for it, removed again on release).

    Another process that wants the same lock waits (up to ``timeout`` seconds, then a
    :class:`CannotCreate`). The lock dies with its process, so a killed holder never blocks
    anyone; a lock file it leaves is an empty file that the next holder reuses and removes.
    Removing the file while holding the lock is safe: a waiter that then gets the lock on the
    removed file sees that the name no longer points at it and locks the new one.
    """
    path = Path(path)
    if fcntl is None:  # pragma: no cover
        yield
        return
    timeout = LOCK_TIMEOUT_S if timeout is None else timeout
    deadline, delay = time.monotonic() + timeout, 0.002
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0),
                         0o666)
        except OSError as exc:
            _raise_for(exc, path)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise CannotCreate(f"another process has held this lock for {timeout:g} s (set "
                                           "RLP_LOCK_TIMEOUT to wait longer)", path) from None
                    time.sleep(delay)
                    delay = min(0.05, delay * 2)
                except OSError as exc:  # a file system without locks (ENOLCK, EOPNOTSUPP): work unlocked
                    if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                        raise
                    os.close(fd)
                    fd = -1
                    break
            if fd < 0:
                break
            st = os.fstat(fd)
            if _ident(path) == (st.st_dev, st.st_ino):
                if st.st_size == 0:  # what tells reapers (tempfiles) that this is one of rlp's lock files
                    with contextlib.suppress(OSError):  # (without it, a lock file left behind is only reused)
                        os.write(fd, tempfiles.LOCK_CONTENT)
                break
            # the holder removed the file (or it was replaced) while we waited: lock what the name is now
        except BaseException:
            if fd >= 0:
                os.close(fd)
            raise
        os.close(fd)
    try:
        yield
    finally:
        if fd >= 0:
            try:
                os.unlink(path)  # while still holding it (see above)
            except OSError:
                pass
            os.close(fd)


def _suffix_of(name: str) -> str:
    low = name.lower()
    if low.endswith(".nii.gz"):
        return name[-7:]
    return Path(name).suffix or ".partial"


class StagedSet:
    """Temporary files of one output set (see :func:`atomic_set`): ``path(key)`` makes the one for ``key``."""

    def __init__(self, outputs: dict[str, Path]):
        self.outputs = {k: Path(p) for k, p in outputs.items()}
        self.temps: dict[str, Path] = {}
        self.last: str | None = None  # the output being written (named by errors without a file name)
        self.consumed: set[str] = set()  # keys whose temporary file became the output
        self.held: list[int | None] = []  # locked fds of the temporary files (tempfiles), closed at the end

    def path(self, key: str, suffix: str | None = None) -> Path:
        out = self.outputs[key]
        if key in self.temps:
            return self.temps[key]
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            sfx = suffix or _suffix_of(out.name)
            tmp, fd = tempfiles.make(out.parent, temp_prefix(out.name, sfx), sfx)
        except OSError as exc:
            _raise_for(exc, out)
        self.held.append(fd)
        self.temps[key] = tmp
        self.last = key
        return self.temps[key]


@contextlib.contextmanager
def atomic_set(outputs: dict[str, str | os.PathLike], *, force: bool = False,
               lock: str | os.PathLike | None = None) -> Iterator[StagedSet]:
    """Write several files as one set: all of them, from this process, or none.

    The body writes each output to ``staged.path(key)`` (a temporary file beside it). When
    it returns, the files are synced, then published under ``lock`` (an exclusive lock file,
    e.g. one per output set): without ``force`` the existence check is made under the lock, so
    a set another process published meanwhile is reported (:class:`OutputExists`) and never
    touched; with ``force`` every file is swapped in, so two writers of one set leave one
    complete set, the last one's, never a mix. A failure or interrupt at any point removes
    the temporary files and, while publishing, puts the previous files back: only files this
    process created are ever removed (a replaced file only once the whole set is in place).
    """
    staged = StagedSet({k: Path(p) for k, p in outputs.items()})
    try:
        try:
            yield staged
        except OSError as exc:
            _raise_for(exc, staged.outputs[staged.last] if staged.last else next(iter(staged.outputs.values())))
        except RlpError as exc:  # a writer that named its temporary file: name the output instead
            for k, t in staged.temps.items():
                if exc.path == os.fspath(t):
                    exc.path = os.fspath(staged.outputs[k])
            raise
        key = None
        try:
            mode = _umask_mode()
            for key, tmp in staged.temps.items():  # noqa: B007 (key: the file the except below names)
                with open(tmp, "rb+") as fh:
                    os.fsync(fh.fileno())
                os.chmod(tmp, mode)  # mkstemp makes 0600; give the file the usual mode
        except OSError as exc:
            _raise_for(exc, staged.outputs[key])
        with file_lock(lock) if lock is not None else contextlib.nullcontext():
            _publish(staged, force)
    finally:
        for key, tmp in staged.temps.items():
            if key not in staged.consumed:
                tmp.unlink(missing_ok=True)
        _release(staged.held)


def _publish(staged: StagedSet, force: bool) -> None:
    """Move the staged files into place (the caller holds the set's lock); undo it all on failure."""
    outs = staged.outputs
    for out in outs.values():
        if os.path.lexists(out):
            if not force:
                raise OutputExists(out)
            if out.is_dir() and not out.is_symlink():
                raise CannotCreate("is a folder; refusing to replace it", out)
    done: list[tuple] = []  # (how, output, where the old file is, identity of our file)
    old: list[Path] = []  # replaced files, now under temporary names: removed once all is in place
    key = None
    try:
        for key in reversed(list(staged.temps)):  # the reverse of the order they were staged in
            tmp, out = staged.temps[key], outs[key]
            ours = _ident(tmp)
            staged.held.append(tempfiles.hold_existing(out))  # the old file stays locked under its temporary name
            if os.path.lexists(out) and _exchange(tmp, out):
                done.append(("exchanged", out, tmp, ours))  # the old file is now at tmp (removed in the cleanup)
                continue
            aside = None
            if os.path.lexists(out):  # no atomic swap on this system: move the old file aside first
                aside, fd = tempfiles.make(out.parent, temp_prefix(out.name, ".old"), ".old")
                staged.held.append(fd)
                try:
                    os.replace(out, aside)
                except BaseException:
                    aside.unlink(missing_ok=True)
                    raise
                old.append(aside)
                done.append(("aside", out, aside, None))
            os.replace(tmp, out)
            staged.consumed.add(key)
            if aside is not None:
                done[-1] = ("aside", out, aside, ours)
            else:
                done.append(("new", out, None, ours))
        _fsync_dir(next(iter(outs.values())).parent)
    except BaseException as exc:
        for how, out, other, ours in reversed(done):
            try:
                if how == "exchanged":
                    _exchange(other, out)  # the old file back; ours, now at the temporary name, goes in the cleanup
                elif how == "aside" and (ours is None or _ident(out) == ours):
                    os.replace(other, out)  # the old file back over ours
                    old.remove(other)
                elif how == "new" and _ident(out) == ours:
                    out.unlink()  # only a file that is still the one this process put there
            except OSError:
                pass
        if isinstance(exc, OSError):
            _raise_for(exc, outs[key] if key is not None else next(iter(outs.values())))
        raise
    for p in old:
        p.unlink(missing_ok=True)


def write_set(outputs: dict[str, str | os.PathLike], writers: dict[str, Callable[[Path], object]], *,
              force: bool = False, lock: str | os.PathLike | None = None,
              owner: str | os.PathLike | None = None) -> None:
    """Write several outputs all or nothing (:func:`atomic_set`): ``writers[key](temporary path)`` writes each,
    in the order given; then all are published together, from this process only.

    An output that exists without ``force`` (found under the lock, so also one another process
    published meanwhile) is left alone and reported as a :class:`CannotCreate` on ``owner`` (the
    input the set is made from, say) naming it, with the way to overwrite it.
    """
    try:
        with atomic_set(outputs, force=force, lock=lock) as staged:
            for key, write in writers.items():
                write(staged.path(key))
    except OutputExists as exc:
        raise CannotCreate(f"output {exc.path} exists; pass --force to overwrite", owner) from None
