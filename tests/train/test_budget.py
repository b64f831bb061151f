"""A stage that runs out of its --max-minutes keeps its best checkpoint and says so."""

from __future__ import annotations

import json

import pytest

from helpers.process import run_python

pytest.importorskip("torch")


def test_running_out_of_time_keeps_the_best_checkpoint_and_says_so(tmp_path, mni_tiny):
    run = tmp_path / "run"
    r = run_python(["-m", "rlp.train.cli", "gan", "--preset", "tiny", "--data", str(mni_tiny), "--run", str(run),
                 "--gan-steps", "100000", "--max-minutes", "0.0001", "--threads", "1"])
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)["stages"][0]
    assert res["stopped_by"] == "time budget" and res["steps"] < 100000
    assert "--max-minutes budget ran out" in r.stderr and str(run / "checkpoints") in r.stderr
    assert (run / "checkpoints" / "gan_best.pt").is_file() and (run / "checkpoints" / "gan_last.pt").is_file()
