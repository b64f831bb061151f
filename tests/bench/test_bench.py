"""rlp-bench on a tiny real pipeline: trained on the MNI152 template at 32x32, exported, lesions inserted.

One --quick bench run (module fixture) is checked for its report schema, the
latency and memory of every row, fidelity (the exact G row must match the
independently computed reference perfectly), localisation ranges, the
extrapolation label in every output, and the plots. Speed is never asserted.
"""

from __future__ import annotations

import json
import math
import struct

import numpy as np
import pytest

from helpers.runtime import write_nifti

pytest.importorskip("torch")
pytest.importorskip("onnx")

from rlp.bench import cli as bench_cli  # noqa: E402
from rlp.bench import runner as bench_runner  # noqa: E402
from rlp.bench.cases import find_inputs  # noqa: E402
from rlp.bench.lesions import insert_lesion  # noqa: E402
from rlp.bench.quality import box_hits  # noqa: E402
from rlp.bench.report import SCHEMA, SCHEMA_VERSION  # noqa: E402
from rlp.runtime.core.errors import EX_CANTCREAT, EX_USAGE  # noqa: E402

G_WINDOWS = 16
VOLUME_SLICES = 4


def _lesion_slices(run, folder, n_masked=2):
    """Held-out slices (model grid, written as 1 mm NIfTI) with a lesion each, plus one slice without a mask."""
    with np.load(run / "heldout.npz") as z:
        images, brains = z["images"], z["brains"]
    order = np.argsort(-brains.reshape(len(brains), -1).sum(1))[: n_masked + 1]
    rng = np.random.default_rng(0)
    for j, i in enumerate(order):
        les = insert_lesion(images[i], brains[i], rng, kind=("hyper", "hypo")[j % 2], radius_range=(2.0, 4.0))
        write_nifti(folder / f"s{j}.nii.gz", (les.image * 1000).astype(np.int16)[:, :, None])
        if j < n_masked:
            write_nifti(folder / f"s{j}_lesion.nii.gz", les.mask.astype(np.uint8)[:, :, None])
    return folder


@pytest.fixture(scope="module")
def bundle(tiny_run, tmp_path_factory):
    from rlp.export.cli import main as export_main

    out = tmp_path_factory.mktemp("bench_bundle") / "tiny"
    assert export_main([str(tiny_run), "--out", str(out), "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def bench(tiny_run, bundle, tmp_path_factory):
    base = tmp_path_factory.mktemp("bench")
    slices = _lesion_slices(tiny_run, base / "slices")
    out = base / "out"
    with np.load(tiny_run / "heldout.npz") as z:  # a small volume: held-out slices stacked
        volume = write_nifti(base / "volume.nii.gz",
                             (z["images"][:VOLUME_SLICES] * 1000).astype(np.int16).transpose(1, 2, 0))
    args = ["--bundle", str(bundle), "--run", str(tiny_run), "--inputs", str(slices), "--out", str(out), "--quick",
            "--slices", "3", "--heldout", "2", "--g-windows", str(G_WINDOWS), "--threads", "1", "--batch", "16",
            "--volume", str(volume), "--quiet"]
    rc = bench_cli.main(args)
    return {"rc": rc, "out": out, "args": args, "report": json.loads((out / "report.json").read_text())}


def _rows(report, **match):
    return [r for r in report["rows"] if all(r[k] == v for k, v in match.items())]


def test_report_schema(bench):
    assert bench["rc"] == 0
    rep = bench["report"]
    assert rep["schema"] == SCHEMA and rep["schema_version"] == SCHEMA_VERSION == 1
    assert rep["mode"] == "quick" and rep["command"].startswith("rlp-bench ") and "--quick" in rep["command"]
    assert isinstance(rep["duration_s"], float) and isinstance(rep["created"], str)
    st = rep["settings"]
    got = (st["runs"], st["threads"], st["batch"], st["g_windows"], st["slices"], st["heldout"])
    assert got == (3, 1, 16, G_WINDOWS, 3, 2)
    b = rep["bundle"]
    assert b["windows_per_slice"] == 64 and set(b["models"]) == {"g", "r"} and len(b["manifest_sha256"]) == 64
    env = rep["environment"]
    assert isinstance(env["cpu"], str) and isinstance(env["cores"], int) and env["threads"] == 1
    assert env["libraries"]["numpy"] and env["libraries"]["onnxruntime"]
    assert "CPUExecutionProvider" in env["ort_providers"]
    assert rep["inputs"]["source"] == "inputs"
    assert len(rep["inputs"]["lesion"]) == 3 and len(rep["inputs"]["heldout"]) == 2
    assert rep["reference"]["backend"] == "ort-cpu"
    names = {(r["path"], r["backend"]) for r in rep["rows"]}
    assert names == {("r", "ort-cpu"), ("g", "ort-cpu"), ("r", "torch-cpu"), ("g", "torch-cpu")}
    s = rep["summary"]
    assert s["backend"] == "ort-cpu" and s["speedup_r_vs_g"] > 0 and s["memory_ratio_g_over_r"] > 0
    assert set(s["localisation"]) == {"g", "r"} and s["fidelity"]["slices"] == 5
    assert isinstance(rep["notes"], list) and isinstance(rep["skipped"], list)


def test_every_row_has_latency_and_memory(bench):
    for r in bench["report"]["rows"]:
        assert r["status"] == "ok", r
        assert {"name", "path", "method", "backend", "model", "approx", "source"} <= set(r)
        # G on onnxruntime also runs the approximate coarse-to-fine method; every other row is plain
        assert r["method"] == ("coarse-to-fine" if r["name"] == "G coarse-to-fine · ort-cpu" else "plain")
        assert r["approx"] is (r["path"] == "r" or r["method"] == "coarse-to-fine")
        lat = r["latency"]
        assert lat["runs"] == 3 and len(lat["samples_s"]) == 3
        assert 0 < lat["min_s"] <= lat["median_s"] <= lat["p95_s"] <= lat["max_s"]
        assert r["windows"] > 0 and r["windows_per_s"] > 0 and r["model_bytes"] > 0
        assert r["speedup"]["vs_g_same_backend"] > 0 and r["speedup"]["vs_g_torch"] > 0
        mem = r["memory"]
        assert mem["peak_rss_source"] == "VmHWM"
        assert mem["peak_rss_bytes"] >= mem["after_load_bytes"] >= mem["baseline_bytes"] > 0


def test_every_row_times_the_whole_volume(bench):
    for r in bench["report"]["rows"]:
        v = r["volume"]
        assert v["slices"] == VOLUME_SLICES and v["file"].endswith("volume.nii.gz") and "skipped" not in v, v
        assert v["seconds"] > 0 and v["s_per_slice"] == pytest.approx(v["seconds"] / VOLUME_SLICES)
        assert v["windows"] > 0 and 0 < v["model_s"] <= v["seconds"]
    md = (bench["out"] / "report.md").read_text()
    assert f"({VOLUME_SLICES} axial slices)" in md


def test_a_volume_over_the_limit_is_skipped_with_the_estimate():
    from rlp.bench.rows import _volume

    spec = {"file": "/x/v.nii.gz", "axis": "axial", "slices": 192, "limit_s": 60}
    v = _volume(None, "g", "plain", spec, 3.4)  # 653 s expected: never loaded
    assert v["estimated_s"] == pytest.approx(652.8) and "over the 60 s limit" in v["skipped"] and "seconds" not in v
    assert _volume(None, "r", "plain", None, 0.1) is None


def test_g_latency_is_labelled_extrapolated_everywhere(bench):
    label = f"extrapolated from {G_WINDOWS} windows"
    for r in bench["report"]["rows"]:
        if r["path"] == "g" and r["method"] == "plain":
            assert r["latency"]["extrapolated"] is True and r["latency"]["extrapolated_from_windows"] == G_WINDOWS
            assert r["latency_label"] == label
        else:
            assert r["latency"]["extrapolated"] is False and r["latency_label"] == "measured"
    assert label in (bench["out"] / "report.md").read_text()
    assert bench["report"]["summary"]["g_latency_label"] == label


def test_fidelity_of_r_rows_and_exact_g(bench):
    rep = bench["report"]
    for r in _rows(rep, path="r"):
        fid = r["fidelity"]
        assert set(fid) == {"lesion", "heldout", "all"}
        assert fid["lesion"]["slices"] == 3 and fid["heldout"]["slices"] == 2 and fid["all"]["slices"] == 5
        for key in ("mae", "mae_rel", "pearson", "spearman", "top5_iou", "argmax_distance_windows"):
            assert math.isfinite(fid["all"][key]), key
        # R approximates G (not 0) and beats the all-zero map, whose MAE is G's mean window loss (losses are >= 0)
        assert 0 < fid["all"]["mae"] and fid["all"]["mae_rel"] < 1 and 0 <= fid["all"]["top5_iou"] <= 1
    # The exact G row ran in its own process; the reference was computed in the parent: they must agree.
    (g,) = _rows(rep, path="g", backend="ort-cpu", method="plain")
    for block in g["fidelity"].values():
        assert block["mae"] == pytest.approx(0, abs=1e-7)
        assert block["spearman"] == pytest.approx(1, abs=1e-9) and block["pearson"] == pytest.approx(1, abs=1e-9)
        assert block["top5_iou"] == 1 and block["argmax_distance_windows"] == 0
    # --quick: the G row off the reference backend makes no maps
    (gt,) = _rows(rep, path="g", backend="torch-cpu")
    assert gt["fidelity"] is None and gt["localisation"] is None
    # the approximate G row: measured against the plain G row's maps, its top windows scored exactly
    (gc,) = _rows(rep, path="g", backend="ort-cpu", method="coarse-to-fine")
    a = gc["approximation"]
    assert a["reference_row"] == "G · ort-cpu" and a["slices"] == 5 and 0 < a["scored_fraction"] < 1
    assert -1 <= a["spearman"] <= 1 and 0 <= a["top5_iou"] <= 1 and 0 <= a["same_argmax"] <= 5
    assert gc["approximate"]["factor"] == 2
    # interpolated windows are not exact (mae > 0), yet far closer to G than the all-zero map (mae_rel 1)
    assert 0 < gc["fidelity"]["all"]["mae"] and gc["fidelity"]["all"]["mae_rel"] < 0.5
    assert "Approximate methods against the plain row" in (bench["out"] / "report.md").read_text()
    # R in torch and R in onnxruntime are the same model
    (ro,), (rt,) = _rows(rep, path="r", backend="ort-cpu"), _rows(rep, path="r", backend="torch-cpu")
    assert rt["fidelity"]["all"]["mae"] == pytest.approx(ro["fidelity"]["all"]["mae"], rel=1e-3, abs=1e-6)


def test_localisation_metrics(bench):
    for r in bench["report"]["rows"]:
        loc = r["localisation"]
        if loc is None:
            continue
        assert loc["slices"] == 2  # the third slice has no mask
        for key in ("auroc", "auprc", "best_dice", "top_window_hit_rate"):
            assert 0 <= loc[key] <= 1, key
        assert 0 <= loc["hits"] <= 2 and len(loc["per_slice"]) == 2


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_outputs_and_plots(bench):
    out = bench["out"]
    rep = bench["report"]
    # the worst-misses panel is drawn exactly when G's plain row missed a lesion (dilated) on some slice
    g = next(r for r in rep["rows"] if r["path"] == "g" and r["method"] == "plain" and r.get("localisation"))
    missed = any(not p["top_window_hit_dilated"] for p in g["localisation"]["per_slice"])
    pngs = ["latency.png", "memory.png"] + ["misses.png"] * missed + ["panels.png"]
    assert sorted(p.name for p in out.iterdir()) == sorted(pngs + ["report.json", "report.md"])
    for name in pngs:
        w, h = _png_size((out / name).read_bytes())
        assert w > 100 and h > 100
    assert rep["plots"] == {"latency": "latency.png", "memory": "memory.png", "panels": "panels.png",
                            "misses": "misses.png" if missed else None}
    md = (out / "report.md").read_text()
    assert bench["report"]["command"] in md and "## Environment" in md and "![panels](panels.png)" in md


def test_existing_out_is_refused_without_force(bench, capsys):
    before = (bench["out"] / "report.json").read_bytes()
    capsys.readouterr()
    assert bench_cli.main(bench["args"]) == EX_CANTCREAT
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "exists" in err and "--force" in err
    assert (bench["out"] / "report.json").read_bytes() == before


def test_usage_errors_are_one_line(tmp_path, capsys, monkeypatch, bundle):
    monkeypatch.setattr(bench_runner, "default_bundle", lambda: None)
    assert bench_cli.main(["--out", str(tmp_path / "o")]) == EX_USAGE
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--bundle" in err
    assert bench_cli.main(["--bundle", str(bundle), "--backends", "torch-cpu", "--out",
                           str(tmp_path / "o")]) == EX_USAGE
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--run" in err
    assert bench_cli.main(["--paths", "x"]) == EX_USAGE
    assert not (tmp_path / "o").exists()


def test_inputs_pair_masks_by_name(tmp_path):
    img = np.zeros((6, 6, 1), np.int16)
    for name in ("a.nii.gz", "a_lesion.nii.gz", "b.nii"):
        write_nifti(tmp_path / name, img)
    pairs = find_inputs([tmp_path])
    assert [(p.name, m and m.name) for p, m in pairs] == [("a.nii.gz", "a_lesion.nii.gz"), ("b.nii", None)]
    # a mask named beside its image is not an input of its own; duplicates count once
    pairs = find_inputs([tmp_path / "a.nii.gz", tmp_path / "a_lesion.nii.gz", tmp_path])
    assert [p.name for p, _ in pairs] == ["a.nii.gz", "b.nii"]


def test_with_a_run_and_no_inputs_the_bench_measures_the_lesion_suite(tiny_run, bundle, tmp_path):
    out = tmp_path / "suite"
    args = ["--bundle", str(bundle), "--run", str(tiny_run), "--out", str(out), "--quick", "--slices", "5",
            "--healthy", "3", "--paths", "g,r", "--backends", "ort-cpu", "--g-windows", "0", "--runs", "1",
            "--threads", "1", "--batch", "16", "--seed", "3", "--quiet"]
    assert bench_cli.main(args) == 0
    rep = json.loads((out / "report.json").read_text())
    suite = rep["inputs"]["suite"]
    assert rep["inputs"]["source"] == "suite" and suite["seed"] == 3 and len(suite["cases"]) == 8
    assert [c["set"] for c in suite["cases"]] == ["lesion"] * 5 + ["healthy"] * 3
    assert all(c["split"] in ("val", "test") for c in suite["cases"])
    g = next(r for r in rep["rows"] if r["name"].startswith("G ·") and r["method"] == "plain")
    loc = g["localisation"]
    assert loc["slices"] == 5 and loc["healthy_slices"] == 3 and len(loc["healthy_top_scores"]) == 3
    assert 0 <= loc["detection_auroc"] <= 1 and loc["hit_dilation"] == 4
    assert set(loc["groups"]) == {"kind", "polarity", "registration", "size", "site"}
    assert sum(x["slices"] for x in loc["groups"]["kind"].values()) == 5
    md = (out / "report.md").read_text()
    assert "By kind:" in md and "detection AUROC" in md and "Lesion suite (seed 3)" in md


def test_box_hits():
    lesion = np.zeros((10, 10), bool)
    lesion[5, 5] = True
    assert box_hits((4.5, 4.5, 5.5, 5.5), lesion)
    assert not box_hits((0.0, 0.0, 4.4, 4.4), lesion)
    assert not box_hits((np.nan,) * 4, lesion)


def test_a_run_that_is_not_the_bundles_source_is_refused(tiny_run, bundle, tmp_path, capsys):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(tiny_run, other)
    with open(other / "checkpoints" / "predictor_best.pt", "ab") as fh:
        fh.write(b"\0")
    rc = bench_cli.main(["--bundle", str(bundle), "--run", str(other), "--backends", "torch-cpu", "--paths", "r",
                         "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 65 and len(err.splitlines()) == 1 and "sha256" in err
    assert not (tmp_path / "o").exists()


def test_the_bench_parent_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, rlp.bench.cli, rlp.bench.plots; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
