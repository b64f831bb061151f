"""Helpers for the reliability tests: crash injection and resource limits in child processes.

:func:`run_child` runs ``python -m MODULE ARGS`` in a subprocess that, before the
command starts, wraps some functions (``"module:attr.path"``) with a counter. With
``kill_at=n`` the child SIGKILLs itself on entering the n-th wrapped call: a crash at
a chosen write boundary (before a rename, an fsync, a dataset write...), repeatable,
with no timing involved. ``kill_at=0`` only counts, so a test can first learn how
many such points a command passes and then pick some at random with a fixed seed.
``fsize`` caps the size of any file the child writes (``RLIMIT_FSIZE``): writes past
it fail as on a full disk (``EFBIG``), without root or a special file system.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]

_CHILD = """
import runpy, sys
sys.path.insert(0, {tests!r})
from helpers.reliability import _install
_install({kill_at!r}, {targets!r}, {count_file!r}, {fsize!r})
sys.argv = [{module!r}, *{argv!r}]
runpy.run_module({module!r}, run_name="__main__")
"""


def _install(kill_at: int, targets: list[str], count_file: str | None, fsize: int | None) -> None:
    """(In the child) wrap ``targets``; SIGKILL on entering call number ``kill_at``; count calls."""
    import atexit
    import importlib
    import resource
    import signal

    if fsize is not None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    count = [0]
    for target in targets:
        mod, attr = target.split(":")
        owner = importlib.import_module(mod)
        *parents, name = attr.split(".")
        for p in parents:
            owner = getattr(owner, p)
        real = getattr(owner, name)

        def wrapper(*args, _real=real, **kwargs):
            count[0] += 1
            if count[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return _real(*args, **kwargs)

        setattr(owner, name, wrapper)
    if count_file:
        atexit.register(lambda: Path(count_file).write_text(str(count[0])))


def run_child(module: str, argv: list, *, targets: list[str] = (), kill_at: int = 0, count_file: Path | None = None,
              fsize: int | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    code = _CHILD.format(tests=str(TESTS), kill_at=kill_at, targets=list(targets), module=module,
                         argv=[str(a) for a in argv], count_file=None if count_file is None else str(count_file),
                         fsize=fsize)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)


def killed(proc: subprocess.CompletedProcess) -> bool:
    return proc.returncode == -9


# --------------------------------------------------------------------------- small writers to crash
def _replace_dir(path: str, value: str) -> None:
    """Replace folder ``path`` by one holding files a and b with ``value`` (rlp.runtime.core.atomic.atomic_dir)."""
    from rlp.runtime.core.atomic import atomic_dir

    with atomic_dir(path, force=True) as tmp:
        for name in ("a", "b"):
            (tmp / name).write_text(value)


def _save_checkpoint(path: str, step: str) -> None:
    import torch

    from rlp.train.checkpoint import save_checkpoint

    save_checkpoint(path, {"step": int(step), "w": torch.full((256,), float(step))})


if __name__ == "__main__":
    {"replace-dir": _replace_dir, "save-checkpoint": _save_checkpoint}[sys.argv[1]](*sys.argv[2:])
