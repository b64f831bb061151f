"""Temporary files and folders that a dead writer leaves are removed by the next run; a live writer's never.

Every temporary name rlp makes holds the mark ``~rlp-`` (``.<name>.~rlp-XXXXXXXX<suffix>``), and its
writer holds an exclusive ``flock`` on it from its creation until it is renamed into place or removed.
The lock dies with its process, however that process dies (SIGKILL, OOM killer, power loss), so a
temporary file whose lock can be taken has no live writer: :func:`reap`, run once per process in each
folder where rlp first writes, removes exactly those. A writer that loses its fresh file to a reaper in
the instant between creating and locking it sees that (the name no longer points at its file) and makes
another. Lock files (``.<stem>.lock``, :func:`rlp.runtime.atomic.file_lock`) are reaped the same way,
recognised by their content. Symbolic links, other users' files and files on a file system without
locks are never reaped (nothing proves their writer dead).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no locks, no reaping
    fcntl = None

#: in every temporary name, before mkstemp's 8 random characters
MARK = "~rlp-"
_TEMP = re.compile(r"\..+\.~rlp-[a-z0-9_]{8}")
#: what a lock file holds (so that a user's own ``.something.lock`` is never taken for one)
LOCK_CONTENT = b"rlp lock\n"
_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
_reaped: set[str] = set()
_own: dict[str, int] = {}  # this process's temporary files and the fds that hold their locks


def ident(path) -> tuple[int, int] | None:
    """(device, inode) of ``path`` itself (a link is not followed), or None where there is nothing."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _same(fd: int, path) -> bool:
    st = os.fstat(fd)
    return ident(path) == (st.st_dev, st.st_ino)


def hold(fd: int, *, wait: bool = True) -> bool:
    """Take the exclusive lock on ``fd``; False if another holds it (``wait=False``). No locks here: True."""
    if fcntl is None:  # pragma: no cover
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    except OSError:  # a file system without locks (ENOLCK, EOPNOTSUPP): unlocked, and then never reaped either
        return True
    return True


def make(parent: Path, prefix: str, suffix: str, *, folder: bool = False) -> tuple[Path, int]:
    """Create a temporary file (or ``folder``) in ``parent`` and lock it; return its path and the locked fd
    (closing it releases the lock). ``parent``'s leftovers of dead writers are reaped first."""
    reap_once(parent)
    while True:
        if folder:
            name = tempfile.mkdtemp(prefix=prefix + MARK, suffix=suffix, dir=parent)
            try:
                fd = os.open(name, _FLAGS)
            except OSError:
                if os.path.lexists(name):  # not reaped meanwhile: a real failure (e.g. out of file descriptors)
                    os.rmdir(name)
                    raise
                continue  # reaped before it could be opened: make another
        else:
            fd, name = tempfile.mkstemp(prefix=prefix + MARK, suffix=suffix, dir=parent)
        try:
            hold(fd)
            if _same(fd, name):
                _own[os.path.abspath(name)] = fd
                return Path(name), fd
        except BaseException:  # e.g. Ctrl-C while waiting for the lock
            os.close(fd)
            with contextlib.suppress(OSError):
                (os.rmdir if folder else os.unlink)(name)
            raise
        os.close(fd)  # a reaper took it between its creation and our lock: make another


def owned(path) -> bool:
    """Is ``path`` a temporary file this process made (and holds)? Writing to it needs no temporary file
    of its own: one would replace it under its name by a file without the lock."""
    return os.path.abspath(path) in _own


def release(fd: int | None) -> None:
    """Close ``fd`` (from :func:`make` or :func:`hold_existing`), releasing its lock."""
    if fd is None:
        return
    for k in [k for k, v in _own.items() if v == fd]:
        del _own[k]
    os.close(fd)


def hold_existing(path) -> int | None:
    """Lock an existing file or folder (not a link) that is about to get a temporary name: its fd, or None."""
    try:
        fd = os.open(path, _FLAGS)
    except OSError:
        return None
    if hold(fd, wait=False):
        return fd
    os.close(fd)
    return None


def reap_once(folder) -> None:
    key = os.path.abspath(folder)
    if key not in _reaped:
        _reaped.add(key)
        reap(folder)


def reap(folder) -> list[Path]:
    """Remove the temporary files, folders and lock files in ``folder`` whose writer is dead; return them."""
    removed: list[Path] = []
    if fcntl is None:  # pragma: no cover
        return removed
    try:
        entries = [e.path for e in os.scandir(folder) if _TEMP.match(e.name) or
                   (e.name.startswith(".") and e.name.endswith(".lock"))]
    except OSError:
        return removed
    for path in entries:
        try:
            fd = os.open(path, _FLAGS)
        except OSError:
            continue  # a link (ELOOP), gone already, another user's: left alone
        try:
            mode = os.fstat(fd).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                continue
            if not _TEMP.match(os.path.basename(path)) and (
                    not stat.S_ISREG(mode) or os.pread(fd, len(LOCK_CONTENT) + 1, 0) != LOCK_CONTENT):
                continue  # a .lock file that is not one of rlp's
            if not _locked_free(fd) or not _same(fd, path):
                continue  # a live writer holds it, or the name moved on meanwhile
            if stat.S_ISDIR(mode):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.unlink(path)
            removed.append(Path(path))
        except OSError:
            continue
        finally:
            os.close(fd)  # the lock is released only after the removal
    return removed


def _locked_free(fd: int) -> bool:
    """Take ``fd``'s lock without waiting: True when no live process holds it (and locks work here)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held (EWOULDBLOCK), or no locks on this file system: not provably dead
        return False
    return True
