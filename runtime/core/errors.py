"""rlp's error type and exit codes (sysexits), shared by every command.

Every user-facing failure is an :class:`RlpError`: one line naming the file and
the problem, and the exit code a shell script can act on. Commands catch it at
the top and print it without a traceback.
"""

from __future__ import annotations

import os
import re

EX_OK = 0
EX_USAGE = 2
EX_DATAERR = 65
EX_NOINPUT = 66
EX_SOFTWARE = 70
EX_CANTCREAT = 73
EX_IOERR = 74
EX_NOPERM = 77
EX_INTERRUPTED = 130


#: terminal escape sequences (colours, cursor moves) that libraries put in their messages
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def _printable(text: str) -> str:
    """``text`` with control characters (a newline in a file name, ESC) written as escapes, so that an error
    stays on one line and cannot drive the terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class RlpError(Exception):
    """A user-facing error: ``<path>: <message>``, with a sysexits exit code."""

    def __init__(self, message: str, path: str | os.PathLike | None = None, code: int = EX_DATAERR):
        self.message = message
        self.path = None if path is None else os.fspath(path)
        self.code = code
        super().__init__(str(self))

    def __str__(self) -> str:
        msg = _printable(" ".join(_ANSI.sub("", str(self.message)).split()))  # always one line, no terminal codes
        return f"{_printable(self.path)}: {msg}" if self.path else msg


class InputMissing(RlpError):
    def __init__(self, message: str = "no such file or directory", path=None):
        super().__init__(message, path, EX_NOINPUT)


class BadInput(RlpError):
    def __init__(self, message: str, path=None):
        super().__init__(message, path, EX_DATAERR)


class CannotCreate(RlpError):
    def __init__(self, message: str, path=None):
        super().__init__(message, path, EX_CANTCREAT)


class SecurityRefusal(RlpError):
    def __init__(self, message: str, path=None):
        super().__init__(message, path, EX_NOPERM)


class Unavailable(RlpError):
    """A backend or optional dependency that is not installed or has no device."""

    def __init__(self, message: str, path=None):
        super().__init__(message, path, EX_SOFTWARE)


def one_line(exc: BaseException | str) -> str:
    """An exception's message on one line (its type name when it has none)."""
    text = exc if isinstance(exc, str) else str(exc)
    return " ".join(text.split()) or type(exc).__name__
