"""A command in a subprocess, run the way a user's shell would."""

from __future__ import annotations

import os
import subprocess
import sys


def run_python(args: list[str], cwd=None, env=None, timeout=300) -> subprocess.CompletedProcess:
    """Run ``python args`` (``["-m", "rlp.runtime.cli", ...]``, ``["-c", code]``) in a subprocess; capture its text."""
    e = dict(os.environ)
    e.pop("PYTHONWARNINGS", None)
    if env:
        e.update(env)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=e, capture_output=True, text=True, timeout=timeout)
