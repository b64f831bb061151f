"""What every rlp command does at its top: user errors as one line, exit codes, Ctrl-C.

Modelled on Polygraphy's ``_main``: the command returns a status; an
:class:`RlpError` prints ``prog: path: problem`` to stderr with no traceback and
exits with its sysexits code (a usage error, from :class:`OneLineParser`, exits 2);
Ctrl-C exits 130 (callers remove partial outputs
in their own ``finally``/``except`` blocks, which run before this). SIGTERM (what
``kill``, ``timeout``, schedulers and container runtimes send) takes the same
path: it raises :class:`Terminated`, a ``KeyboardInterrupt``, so every cleanup that
handles Ctrl-C handles it too, and the command exits 143 (128 + 15). Any other
exception is a bug: one line ``prog: internal error: Type: message; rerun with
RLP_TRACEBACK=1 (or --traceback) for the traceback``, exit 70, and the traceback
only when asked for. All four commands' ``main`` are :func:`run_main` around their body.
"""

from __future__ import annotations

import argparse
import contextvars
import os
import signal
import sys
import threading
import traceback
from typing import Callable, Sequence

from .errors import EX_INTERRUPTED, EX_SOFTWARE, EX_USAGE, RlpError

EX_TERMINATED = 128 + signal.SIGTERM
#: optional dependencies, and how to install them (the README's Install table)
_TRAIN = "pip install torch==2.13.0 && pip install -e '.[cpu,train]'"
EXTRAS = {"torch": _TRAIN, "h5py": _TRAIN, "nilearn": _TRAIN,
          "onnx": "pip install -e '.[cpu]' (or '.[gpu]'); to export, also '.[export]'",
          "onnxscript": "pip install -e '.[export]' (with torch: " + _TRAIN + ")",
          "onnxruntime": "pip install -e '.[cpu]' (or '.[gpu]' for NVIDIA GPUs)"}


#: set to 1 (or pass --traceback) to see the traceback of an internal error; RLP_DEBUG=1 is accepted too
TRACEBACK_ENV = "RLP_TRACEBACK"
TRACEBACK_HINT = f"rerun with {TRACEBACK_ENV}=1 (or --traceback) for the traceback"
_traceback_flag: contextvars.ContextVar[bool] = contextvars.ContextVar("rlp_traceback", default=False)


def wants_traceback() -> bool:
    """Whether this command was asked for tracebacks (``--traceback``, ``RLP_TRACEBACK=1`` or ``RLP_DEBUG=1``)."""
    env = (os.environ.get(TRACEBACK_ENV) or os.environ.get("RLP_DEBUG") or "").strip()
    return _traceback_flag.get() or env not in ("", "0")


def internal_error(exc: BaseException) -> str:
    """An unexpected exception (a bug) as one line, with the way to see its traceback."""
    text = " ".join(str(exc).split())[:300]
    return f"internal error: {type(exc).__name__}{': ' + text if text else ''}; {TRACEBACK_HINT}"


def report_internal_error(exc: BaseException) -> str:
    """:func:`internal_error`'s line, after printing the traceback on stderr when it was asked for."""
    if wants_traceback():
        traceback.print_exception(exc, file=sys.stderr)
    return internal_error(exc)


#: what each command can hold less of when it runs out of memory (rlp-heatmap's inputs name their own size)
OUT_OF_MEMORY = {
    "rlp-train": "train with smaller batches (--gan-batch, --r-batch)",
    "rlp-export": "score fewer healthy reference slices (--reference-slices)",
    "rlp-bench": "use a smaller --batch or fewer --slices",
    "rlp-cohort": "run fewer --workers",
    "": "give it smaller inputs",
}


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so that the cleanups written for Ctrl-C run."""


def _terminate(signum, frame):
    raise Terminated()


def run_main(prog: str, body: Callable[[], int | None]) -> int:
    """Run a command's ``body`` (which parses its own arguments) and turn whatever ends it into an exit status."""
    previous = None
    if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread only
        previous = signal.signal(signal.SIGTERM, _terminate)
    token = _traceback_flag.set(False)
    try:
        rc = body()
        return 0 if rc is None else int(rc)
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
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
        print(f"{prog}: out of memory; free memory, or {OUT_OF_MEMORY.get(prog, OUT_OF_MEMORY[''])}", file=sys.stderr)
        return EX_SOFTWARE
    except BrokenPipeError:
        # Output closed early (e.g. piped into head): not an error of ours.
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
    except Exception as exc:  # noqa: BLE001 - the one place where a bug becomes a line
        print(f"{prog}: {_missing_extra(exc) or report_internal_error(exc)}", file=sys.stderr)
        return EX_SOFTWARE
    finally:
        _traceback_flag.reset(token)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _missing_extra(exc: Exception) -> str | None:
    """An optional dependency of this command, missing on a lighter install: what to install (None otherwise)."""
    if not isinstance(exc, ModuleNotFoundError):
        return None
    name = (exc.name or "").split(".")[0]
    extra = EXTRAS.get(name)
    return None if extra is None else f"this command needs the Python package {name!r}, which is not installed: {extra}"


def exit_with(prog: str, body: Callable[[], int | None]) -> None:
    sys.exit(run_main(prog, body))


class UsageError(RlpError):
    """A command-line usage error (exit 2), raised by :class:`OneLineParser`; :func:`run_main` prints it."""

    def __init__(self, message: str):
        super().__init__(message, code=EX_USAGE)


class _Traceback(argparse.Action):
    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest=argparse.SUPPRESS, nargs=0, default=argparse.SUPPRESS,
                         help=f"on an internal error (a bug), print its traceback (also {TRACEBACK_ENV}=1)")

    def __call__(self, parser, namespace, values, option_string=None):
        _traceback_flag.set(True)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (raised as :class:`UsageError`, naming the command's ``--help``)
    instead of a usage dump. Subcommands' parsers are of this class too. Every one has ``--traceback``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.add_help:
            self.add_argument("--traceback", action=_Traceback)

    def error(self, message):
        raise UsageError(f"{message} (see {self.prog} --help)")


def command_parser(prog: str, description: str, epilog: str | None = None) -> OneLineParser:
    """A command's parser: one-line usage errors, and its ``epilog`` (outputs, exit codes) printed as written."""
    return OneLineParser(prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=epilog,
                         description=description)


def fraction(text: str) -> float:
    """An argparse type: a number in [0, 1]."""
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction in [0, 1]")
    return v


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
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated subset of {','.join(allowed)}{also}, got {text!r}")
        return items

    return parse
