"""Atomic writes: a temporary file in the same folder, fsync, then ``os.replace``.

A killed process leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import CannotCreate


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
    if path.exists() and not force:
        raise CannotCreate("exists; pass --force to overwrite", path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
        os.close(fd)
    except OSError as exc:
        _raise_for(exc, path)
    tmp_path = Path(tmp)
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
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    except OSError as exc:
        _raise_for(exc, path)
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~(~_umask_mode() & 0o666))  # mkdtemp makes 0700
        old = None
        if path.exists() and _exchange(tmp, path):
            old = tmp  # the old folder, now under the temporary name
        elif path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
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
