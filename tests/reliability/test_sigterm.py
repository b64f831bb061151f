"""SIGTERM (kill, timeout, schedulers, container runtimes) is treated like Ctrl-C by every command (#21, item 4):
one line, exit 143, and the same cleanup, so no temporary file is left."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from rlp.runtime.core.cliutil import EX_TERMINATED, run_main


def test_run_main_turns_sigterm_into_a_clean_exit_and_restores_the_handler(capsys):
    before = signal.getsignal(signal.SIGTERM)

    def body():
        signal.raise_signal(signal.SIGTERM)
        raise AssertionError("not reached")

    assert run_main("rlp-x", body) == EX_TERMINATED == 143
    assert capsys.readouterr().err == "rlp-x: terminated (SIGTERM)\n"
    assert signal.getsignal(signal.SIGTERM) is before


def test_sigterm_during_training_exits_143_and_leaves_only_complete_checkpoints(tmp_path, mni_tiny):
    pytest.importorskip("torch")
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "rlp.train.cli", "gan", "--preset", "tiny", "--data", str(mni_tiny),
                             "--run", str(run), "--gan-steps", "1000000", "--threads", "1", "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last = run / "checkpoints" / "gan_last.pt"
    deadline = time.monotonic() + 120
    while not last.is_file():  # the first checkpoint: training is under way
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == "rlp-train: terminated (SIGTERM)" and "Traceback" not in err
    leftovers = [p.name for p in run.rglob("*") if p.name.startswith(".") or p.name.endswith((".tmp", ".partial"))]
    assert leftovers == []
    from rlp.train.checkpoint import load_checkpoint

    names = {p.name for p in (run / "checkpoints").iterdir()}  # best may not be written yet: it follows last
    assert "gan_last.pt" in names and names <= {"gan_best.pt", "gan_last.pt"}
    for name in names:  # every checkpoint there is complete
        assert load_checkpoint(run / "checkpoints" / name)["stage"] == "gan"
