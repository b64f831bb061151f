"""What every rlp command does at its top: user errors as one line, exit codes, Ctrl-C.

Modelled on Polygraphy's ``_main``: the command returns a status; an
:class:`RlpError` prints ``prog: path: problem`` to stderr with no traceback and
exits with its sysexits code; Ctrl-C exits 130 (callers remove partial outputs
in their own ``finally``/``except`` blocks, which run before this). SIGTERM (what
``kill``, ``timeout``, schedulers and container runtimes send) takes the same
path: it raises :class:`Terminated`, a ``KeyboardInterrupt``, so every cleanup that
handles Ctrl-C handles it too, and the command exits 143 (128 + 15).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import Callable, Sequence

from .errors import EX_INTERRUPTED, EX_SOFTWARE, EX_USAGE, RlpError


EX_TERMINATED = 128 + signal.SIGTERM
#: optional dependencies, and how to install them (the README's Install table)
_TRAIN = "pip install torch==2.13.0 && pip install -e '.[cpu,train]'"
EXTRAS = {"torch": _TRAIN, "h5py": _TRAIN, "nilearn": _TRAIN,
          "onnx": "pip install -e '.[cpu]' (or '.[gpu]'); to export, also '.[export]'",
          "onnxscript": "pip install -e '.[export]' (with torch: " + _TRAIN + ")",
          "onnxruntime": "pip install -e '.[cpu]' (or '.[gpu]' for NVIDIA GPUs)"}


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so that the cleanups written for Ctrl-C run."""


def _terminate(signum, frame):
    raise Terminated()


def run_main(prog: str, body: Callable[[], int | None]) -> int:
    previous = None
    if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread only
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        rc = body()
        return 0 if rc is None else int(rc)
    except RlpError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return exc.code
    except Terminated:
        print(f"{prog}: terminated (SIGTERM)", file=sys.stderr)
        return EX_TERMINATED
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EX_INTERRUPTED
    except MemoryError:
        print(f"{prog}: out of memory", file=sys.stderr)
        return EX_SOFTWARE
    except ModuleNotFoundError as exc:  # an optional dependency of this command, on a lighter install
        extra = EXTRAS.get((exc.name or "").split(".")[0])
        if extra is None:
            raise  # not an optional dependency: a bug, with its traceback
        print(f"{prog}: this command needs the Python package {exc.name.split('.')[0]!r}, which is not installed: "
              f"{extra}", file=sys.stderr)
        return EX_SOFTWARE
    except BrokenPipeError:
        # Output closed early (e.g. piped into head): not an error of ours.
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def exit_with(prog: str, body: Callable[[], int | None]) -> None:
    sys.exit(run_main(prog, body))


class UsageError(RlpError):
    """A command-line usage error (exit 2), raised by :class:`OneLineParser`; :func:`run_main` prints it."""

    def __init__(self, message: str):
        super().__init__(message, code=EX_USAGE)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (raised as :class:`UsageError`, naming the command's ``--help``)
    instead of a usage dump. Subcommands' parsers are of this class too."""

    def error(self, message):
        raise UsageError(f"{message} (see {self.prog} --help)")


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``low``."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {v}")
        return v

    return parse


def comma_subset(allowed: Sequence[str], pattern=None, also: str = "") -> Callable[[str], tuple[str, ...]]:
    """An argparse type: a comma-separated, non-empty subset of ``allowed`` (order kept, duplicates dropped).

    With ``pattern`` (a compiled regex), names it matches in full are allowed too; ``also`` describes them.
    """

    def parse(text: str) -> tuple[str, ...]:
        items = tuple(dict.fromkeys(x.strip().lower() for x in text.split(",") if x.strip()))
        bad = [x for x in items if x not in allowed and not (pattern is not None and pattern.fullmatch(x))]
        if not items or bad:
            raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {','.join(allowed)}{also}, got {text!r}")
        return items

    return parse
