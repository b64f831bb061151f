"""rlp-cohort: a cohort of volumes in local worker processes and on a local Ray, resumable, losing nothing.

The bundle is the tiny test bundle (tests/helpers/runtime.py): each volume takes milliseconds, so what
these tests pay for is starting worker processes (spawn) and Ray. Ray tests share one local Ray
(num_cpus=2, no dashboard) and skip with the reason where ray is not installed.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from helpers.child_hooks import start_until
from helpers.runtime import make_bundle, phantom, write_nifti
from rlp.cohort.cli import main
from rlp.runtime import Bundle


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """A CSV of 5 rows: two volumes named v in different folders, w, a corrupt file and a missing one."""
    root = tmp_path_factory.mktemp("cohort")
    bundle = make_bundle(root / "bundle")
    aff = np.diag([1.0, 1.0, 2.0, 1.0])
    (root / "a").mkdir(), (root / "b").mkdir()
    write_nifti(root / "a" / "v.nii.gz", phantom((30, 28, 3), seed=1), aff)
    write_nifti(root / "b" / "v.nii.gz", phantom((30, 28, 3), seed=2), aff)
    write_nifti(root / "w.nii.gz", phantom((30, 28, 2), seed=3, lesion=False), aff)
    (root / "bad.nii.gz").write_bytes(b"not a NIfTI file at all")
    rows = [("path", "age", "site"), ("a/v.nii.gz", "71", "x"), ("b/v.nii.gz", "64", "y"), ("w.nii.gz", "80", "x"),
            ("bad.nii.gz", "55", "z"), (str(root / "missing.nii.gz"), "60", "z")]
    with open(root / "cohort.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return root, bundle


def _run(capsys, *args) -> tuple[int, dict, str]:
    code = main([str(a) for a in args] + ["--json"])
    out, err = capsys.readouterr()
    return code, json.loads(out) if out.strip() else {}, err


def _index(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "cohort_index.jsonl").read_text().splitlines()]


def _maps(out: Path) -> dict[str, np.ndarray]:
    return {str(p.relative_to(out)): np.asanyarray(nib.load(p).dataobj)
            for p in sorted((out / "volumes").rglob("*_heatmap.nii.gz"))}


def _expected(bundle: Path, vol: Path) -> np.ndarray:
    with Bundle.load(bundle, backend="ort-cpu") as b:
        return b.heatmap_nifti(vol).heatmap


@pytest.fixture(scope="module")
def local_run(cohort, tmp_path_factory):
    root, bundle = cohort
    out = tmp_path_factory.mktemp("local")
    code = main([str(root / "cohort.csv"), "--bundle", str(bundle), "--out", str(out), "--workers", "2", "--quiet"])
    return code, out


def test_local_cohort_records_every_row_and_keeps_names_apart(cohort, local_run):
    root, bundle = cohort
    code, out = local_run
    assert code == 65  # some volumes failed, and the exit code says so
    rows = _index(out)
    assert [Path(r["input"]).name for r in rows] == ["v.nii.gz", "v.nii.gz", "w.nii.gz", "bad.nii.gz", "missing.nii.gz"]
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "failed", "failed"]
    assert [r["meta"] for r in rows][:2] == [{"age": "71", "site": "x"}, {"age": "64", "site": "y"}]
    bad, missing = rows[3]["reason"], rows[4]["reason"]
    assert "bad.nii.gz" in bad and "\n" not in bad and "missing.nii.gz" in missing and "no such file" in missing
    # one name in two folders: mirrored, never the same outputs
    a, b = rows[0]["outputs"]["heatmap"], rows[1]["outputs"]["heatmap"]
    assert a == str(out / "volumes" / "a" / "v_heatmap.nii.gz") and b == str(out / "volumes" / "b" / "v_heatmap.nii.gz")
    np.testing.assert_array_equal(np.asanyarray(nib.load(a).dataobj), _expected(bundle, root / "a" / "v.nii.gz"))
    np.testing.assert_array_equal(np.asanyarray(nib.load(b).dataobj), _expected(bundle, root / "b" / "v.nii.gz"))
    assert rows[0]["top_windows"][0]["world_mm"] is not None and rows[0]["bundle_sha256"]
    with open(out / "cohort_index.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [t["status"] for t in table] == [r["status"] for r in rows] and table[0]["age"] == "71"
    report = (out / "cohort_report.md").read_text()
    assert "Most anomalous" in report and "bad.nii.gz" in report
    assert (out / "cohort_scores.png").stat().st_size > 0 and (out / "cohort_top.png").stat().st_size > 0


def test_a_rerun_skips_what_the_same_bundle_made_and_retries_the_failed(cohort, local_run, capsys):
    root, bundle = cohort
    _, out = local_run
    before = {p: p.stat().st_mtime_ns for p in (out / "volumes").rglob("*_heatmap.nii.gz")}
    code, res, _ = _run(capsys, root / "cohort.csv", "--bundle", bundle, "--out", out, "--workers", "1")
    assert code == 65 and (res["ok"], res["skipped"], res["failed"]) == (0, 3, 2)
    assert {p: p.stat().st_mtime_ns for p in (out / "volumes").rglob("*_heatmap.nii.gz")} == before  # untouched
    assert [r["status"] for r in _index(out)] == ["skipped"] * 3 + ["failed"] * 2


def test_outputs_of_other_settings_or_missing_files_are_not_taken_as_done(cohort, local_run):
    from rlp.cohort.work import Settings, done_row

    root, _ = cohort
    _, out = local_run
    row = _index(out)[0]
    task = {"path": row["input"], "out_dir": str(Path(row["outputs"]["heatmap"]).parent)}
    sha = row["bundle_sha256"]
    assert done_row(task, Settings().key(sha))["max_score"] == row["max_score"]
    assert done_row(task, Settings(top_k=2).key(sha)) is None
    assert done_row(task, Settings().key("0" * 64)) is None  # another bundle
    heatmap = Path(row["outputs"]["heatmap"])
    heatmap.rename(heatmap.with_suffix(".moved"))
    try:
        assert done_row(task, Settings().key(sha)) is None
    finally:
        heatmap.with_suffix(".moved").rename(heatmap)


def test_an_unreadable_table_row_is_one_clear_error(cohort, capsys, tmp_path):
    root, bundle = cohort
    table = tmp_path / "t.tsv"
    table.write_text(f"path\tage\n{root / 'w.nii.gz'}\t80\n{root / 'a' / 'v.nii.gz'}\n")
    code, _, err = _run(capsys, table, "--bundle", bundle, "--out", tmp_path / "out")
    assert code == 65 and err.strip() == f"rlp-cohort: {table}: line 3 has 1 fields, the header has 2"
    assert not (tmp_path / "out").exists()  # nothing made
    (tmp_path / "n.csv").write_text("name,age\nx.nii.gz,3\n")
    code, _, err = _run(capsys, tmp_path / "n.csv", "--bundle", bundle, "--out", tmp_path / "out")
    assert code == 65 and "no path column" in err and len(err.strip().splitlines()) == 1


KILL_ONCE = """
import os, signal
from pathlib import Path
import rlp.cohort.work as work
_run = work.Worker.run
def run(self, task):
    flag = Path(os.environ["RLP_TEST_KILL_FLAG"])
    if task["path"].endswith("w.nii.gz") and not flag.exists():
        flag.write_text("killed")
        os.kill(os.getpid(), signal.SIGKILL)  # this worker process dies holding the volume
    return _run(self, task)
work.Worker.run = run
"""


def test_a_worker_killed_mid_cohort_loses_nothing(cohort, tmp_path):
    root, bundle = cohort
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(KILL_ONCE)  # runs in the driver, so in every worker it starts
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
           "RLP_TEST_KILL_FLAG": str(tmp_path / "killed")}
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "rlp.cohort.cli", root / "a", root / "b", root / "w.nii.gz",
                           "--bundle", bundle, "--out", out, "--workers", "1", "--quiet"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert (tmp_path / "killed").exists()  # a worker really was killed
    assert proc.returncode == 0, proc.stderr
    rows = _index(out)
    assert [(Path(r["input"]).name, r["status"], r["attempts"]) for r in rows] == [
        ("v.nii.gz", "ok", 1), ("v.nii.gz", "ok", 1), ("w.nii.gz", "ok", 2)]
    for r in rows:
        np.testing.assert_array_equal(np.asanyarray(nib.load(r["outputs"]["heatmap"]).dataobj),
                                      _expected(bundle, Path(r["input"])))


STOP_AFTER_TWO = """
import rlp.cohort.cli as cli
_drive = cli.drive
def drive(engine, tasks, retries, on_row):
    done = []
    def hooked(row):
        on_row(row)
        done.append(row)
        if len(done) == 2:
            _reached()  # the test kills the driver here, two volumes recorded, the others not
    _drive(engine, tasks, retries, hooked)
cli.drive = drive
"""


def test_a_killed_driver_resumes_to_the_same_outputs(cohort, capsys, tmp_path):
    root, bundle = cohort
    out = tmp_path / "out"
    (tmp_path / "in").mkdir()
    for i in range(3):
        write_nifti(tmp_path / "in" / f"s{i}.nii.gz", phantom((30, 28, 2), seed=10 + i), np.diag([1.0, 1.0, 2.0, 1.0]))
    args = [tmp_path / "in", root / "w.nii.gz", "--bundle", bundle, "--out", out, "--workers", "1", "--quiet"]
    proc, reached = start_until("rlp.cohort.cli", args, STOP_AFTER_TWO, start_new_session=True)
    try:
        assert reached, proc.communicate(timeout=60)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its worker processes
        proc.wait(timeout=60)
    assert not (out / "cohort_index.csv").exists()
    code, res, err = _run(capsys, *args)
    assert code == 0, err
    assert res["skipped"] >= 2 and res["skipped"] + res["ok"] == 4
    for r in _index(out):
        np.testing.assert_array_equal(np.asanyarray(nib.load(r["outputs"]["heatmap"]).dataobj),
                                      _expected(bundle, Path(r["input"])))


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install -e '.[cpu,scale]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def test_ray_and_local_give_the_same_cohort(cohort, local_run, local_ray, tmp_path):
    root, bundle = cohort
    _, local = local_run
    out = tmp_path / "ray"
    code = main([str(root / "cohort.csv"), "--bundle", str(bundle), "--out", str(out), "--ray", "--quiet"])
    assert code == 65
    keep = ("input", "meta", "reason", "max_score", "top_windows", "slices", "bundle_sha256", "warnings")

    def same(r):  # the local cohort may have been rerun by now (its rows then say "skipped")
        return {"done": r["status"] != "failed", **{k: r[k] for k in keep}}

    assert [same(r) for r in _index(out)] == [same(r) for r in _index(local)]
    assert [r["status"] for r in _index(out)] == ["ok"] * 3 + ["failed"] * 2
    ray_maps, local_maps = _maps(out), _maps(local)
    assert sorted(ray_maps) == sorted(local_maps) and len(ray_maps) == 3
    for k in ray_maps:
        np.testing.assert_array_equal(ray_maps[k], local_maps[k])


def test_ray_missing_is_one_line_naming_the_extra(cohort, capsys, tmp_path, monkeypatch):
    root, bundle = cohort
    monkeypatch.setitem(sys.modules, "ray", None)  # as on an install without the scale extra
    code, _, err = _run(capsys, root / "w.nii.gz", "--bundle", bundle, "--out", tmp_path / "out", "--ray")
    assert code == 70 and err.strip() == ("rlp-cohort: --ray needs the Python package 'ray', which is not installed: "
                                          "pip install -e '.[cpu,scale]'")


#: rlp-heatmap's options that choose how the command runs, never what an input's outputs are
RUN_LEVEL = {"help", "inputs", "bundle", "out", "out_layout", "backend", "list_backends", "precision", "batch",
             "threads", "force", "quiet", "json", "version"}


def test_every_per_input_option_of_rlp_heatmap_is_a_cohort_setting_with_the_same_choices():
    """A new rlp-heatmap option either chooses how the run goes (RUN_LEVEL) or changes the outputs: then rlp-cohort
    takes it too, with the same choices and default, and its resume key covers it."""
    import argparse
    import dataclasses

    from rlp.cohort.cli import build_parser as cohort_parser
    from rlp.cohort.work import Settings
    from rlp.runtime.cli import build_parser as heatmap_parser

    heatmap = {a.dest: a for a in heatmap_parser()._actions if a.dest != argparse.SUPPRESS}
    cohort = {a.dest: a for a in cohort_parser()._actions}
    fields = {f.name: f.default for f in dataclasses.fields(Settings)}
    per_input = set(heatmap) - RUN_LEVEL
    assert per_input >= {"path", "method", "strict", "volume_index", "neurological"}
    assert set(fields) == per_input  # a missing one would be left out of the cohort's outputs and resume key
    for dest in per_input | {"backend", "precision", "batch"}:
        h, c = heatmap[dest], cohort[dest]
        assert (c.option_strings, c.choices, c.type, c.nargs, c.const) == (h.option_strings, h.choices, h.type,
                                                                           h.nargs, h.const), dest
        assert dest == "backend" or c.default == h.default == fields.get(dest, h.default), dest
    # the resume key is pinned: a change to it makes every finished volume of a cohort run again, so it changes
    # only on purpose (last: --no-overlay joined the per-input options)
    sha = "0" * 64
    assert Settings().key(sha) == "b456ea2400be22c7c27836c97942eea4c956a25ae457135e647d0cee3090d32c"
    assert Settings(top_k=2, path="g", strict=True).key(sha) == (
        "a8090b81091403b49210bab1985db9727ebdac83d1663da6312a4c7fda9cede5")
