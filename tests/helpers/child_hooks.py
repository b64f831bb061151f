"""Kill a command at a known point: a child Python that stops itself there and tells the test.

A test that kills a subprocess "mid-write" by polling for a file races the child:
the child may finish first (nothing is then tested) or the poll may see the file
a moment too late. Here the child runs the command's ``main`` with a hook
installed (``patch``: Python source that calls ``_reached()`` at the chosen
point); ``_reached`` writes one byte to a pipe and holds the child there until the
test signals it. The test blocks on that pipe, with a deadline: no sleeps, no race.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time

_CHILD = """
import os, sys, time
_fd = int(sys.argv[1])
def _reached():
    os.write(_fd, b"!")
    while True:  # held here until the test signals this process
        time.sleep(60)
{patch}
from {module} import main
sys.exit(main(sys.argv[2:]))
"""


def start_until(module: str, args: list[str], patch: str, timeout: float = 120.0,
                **popen) -> tuple[subprocess.Popen, bool]:
    """Run ``module``'s ``main(args)`` in a child with ``patch`` installed; return (process, reached):
    ``reached`` is True once the child called ``_reached()`` (it is then still running, held there), False
    if it exited or ``timeout`` seconds passed first."""
    r, w = os.pipe()
    try:
        proc = subprocess.Popen([sys.executable, "-c", _CHILD.format(patch=patch, module=module), str(w),
                                 *map(str, args)],
                                pass_fds=(w,), **popen)
    finally:
        os.close(w)
    try:
        deadline = time.monotonic() + timeout
        got = b""
        while not got:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([r], [], [], left)[0]:
                break
            got = os.read(r, 1)
            if not got:  # end of file: the child exited without reaching the point
                break
    finally:
        os.close(r)
    return proc, got == b"!" and proc.poll() is None
