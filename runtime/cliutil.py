"""What every rlp command does at its top: user errors as one line, exit codes, Ctrl-C.

Modelled on Polygraphy's ``_main``: the command returns a status; an
:class:`RlpError` prints ``prog: path: problem`` to stderr with no traceback and
exits with its sysexits code; Ctrl-C exits 130 (callers remove partial outputs
in their own ``finally``/``except`` blocks, which run before this).
"""

from __future__ import annotations

import os
import sys
from typing import Callable

from .errors import EX_INTERRUPTED, EX_SOFTWARE, RlpError


def run_main(prog: str, body: Callable[[], int | None]) -> int:
    try:
        rc = body()
        return 0 if rc is None else int(rc)
    except RlpError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EX_INTERRUPTED
    except MemoryError:
        print(f"{prog}: out of memory", file=sys.stderr)
        return EX_SOFTWARE
    except BrokenPipeError:
        # Output closed early (e.g. piped into head): not an error of ours.
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0


def exit_with(prog: str, body: Callable[[], int | None]) -> None:
    sys.exit(run_main(prog, body))
