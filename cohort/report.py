"""The cohort index (CSV and JSON Lines, a row per volume) and the cohort report (Markdown, a plot, a montage).

Index columns: ``input``, the table's metadata columns (as given), ``status`` (ok, skipped: made
earlier by the same bundle and settings, failed), ``reason`` (a failure's one line), ``attempts``,
``max_score``, ``top_slice``, ``top_voxel``, ``top_world_mm`` (the top window's centre in mm, through
the input's affine), ``top_windows`` (JSON: every listed window), ``heatmap``, ``overlay``,
``summary`` (output paths), ``bundle_sha256`` (the manifest's), ``seconds`` (the volume's own time,
from the run that made it). ``cohort_index.jsonl`` holds the same rows as JSON objects (metadata under
``meta``). matplotlib is used through its object API on the Agg canvas, as in ``rlp.runtime.overlay``.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from rlp.runtime.core.atomic import write_bytes, write_text
from rlp.runtime.overlay import figure, png_bytes

INDEX_CSV, INDEX_JSONL = "cohort_index.csv", "cohort_index.jsonl"
REPORT_MD, REPORT_PLOT, REPORT_MONTAGE = "cohort_report.md", "cohort_scores.png", "cohort_top.png"
FIXED = ("status", "reason", "attempts", "max_score", "top_slice", "top_voxel", "top_world_mm", "top_windows",
         "heatmap", "overlay", "summary", "bundle_sha256", "seconds")


def _flat(row: dict) -> dict:
    top = row["top_windows"][0] if row["top_windows"] else {}
    outs = row["outputs"]
    flat = {"input": row["input"], **row["meta"], "status": row["status"], "reason": row["reason"],
            "attempts": row.get("attempts", ""), "max_score": "" if row["max_score"] is None else row["max_score"],
            "top_slice": top.get("slice", ""), "top_voxel": json.dumps(top.get("voxel")) if top else "",
            "top_world_mm": json.dumps(top.get("world_mm")) if top else "",
            "top_windows": json.dumps(row["top_windows"]) if row["top_windows"] else "",
            "bundle_sha256": row["bundle_sha256"] or "", "seconds": "" if row["seconds"] is None else row["seconds"]}
    for k in ("heatmap", "overlay", "summary"):
        flat[k] = outs.get(k, "")
    return flat


def write_index(out: Path, rows: list[dict]) -> tuple[Path, Path]:
    """``cohort_index.csv`` and ``cohort_index.jsonl`` in ``out``, rows in input order, each written atomically."""
    meta: list[str] = []
    for r in rows:
        meta += [k for k in r["meta"] if k not in meta]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["input", *[m for m in meta if m not in FIXED and m != "input"], *FIXED],
                       extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(_flat(r))
    lines = "".join(json.dumps({k: v for k, v in r.items() if k != "n"}) + "\n" for r in rows)
    return write_text(out / INDEX_CSV, buf.getvalue()), write_text(out / INDEX_JSONL, lines)


def score_plot(ranked: list[dict]) -> bytes:
    """Every finished volume's maximum score, highest first."""
    fig = figure(8, 3.5)
    ax = fig.add_subplot(1, 1, 1)
    scores = [r["max_score"] for r in ranked]
    ax.bar(np.arange(1, len(scores) + 1), scores, color="tab:red", width=0.9)
    ax.set_xlabel("volume rank")
    ax.set_ylabel("max window score")
    ax.set_title(f"{len(scores)} volumes, most anomalous first")
    fig.tight_layout()
    return png_bytes(fig)


def montage(ranked: list[dict], n: int) -> bytes | None:
    """The overlays of the ``n`` most anomalous volumes side by side (None when there is none)."""
    from matplotlib.image import imread

    top = [r for r in ranked[:n] if Path(r["outputs"].get("overlay", "")).is_file()]
    if not top:
        return None
    cols = min(3, len(top))
    rows = -(-len(top) // cols)
    fig = figure(5 * cols, 4.2 * rows)
    for i, r in enumerate(top):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(imread(r["outputs"]["overlay"]))
        ax.set_title(f"#{i + 1} {Path(r['input']).name}  max {r['max_score']:.3g}", fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    return png_bytes(fig)


def write_report(out: Path, rows: list[dict], settings: dict, engine: str, top: int = 6) -> Path:
    """``cohort_report.md`` with the ranking plot and the montage of the ``top`` most anomalous volumes."""
    done = [r for r in rows if r["status"] in ("ok", "skipped")]
    ranked = sorted(done, key=lambda r: -r["max_score"])
    failed = [r for r in rows if r["status"] == "failed"]
    md = ["# Cohort report\n", f"{len(rows)} volumes: {len(done)} done "
          f"({sum(r['status'] == 'skipped' for r in rows)} of them made by an earlier run with the same bundle and "
          f"settings), {len(failed)} failed. Engine: {engine}. Settings: `{json.dumps(settings)}`.\n"]
    if ranked:
        write_bytes(out / REPORT_PLOT, score_plot(ranked))
        md.append(f"![maximum score per volume]({REPORT_PLOT})\n")
        picture = montage(ranked, top)
        if picture is not None:
            write_bytes(out / REPORT_MONTAGE, picture)
            md.append(f"![the most anomalous volumes]({REPORT_MONTAGE})\n")
        md += ["## Most anomalous volumes\n", "| rank | input | max score | top window (mm) | heatmap |",
               "|---|---|---|---|---|"]
        for i, r in enumerate(ranked[:max(top, 20)], 1):
            world = r["top_windows"][0].get("world_mm") if r["top_windows"] else None
            md.append(f"| {i} | {r['input']} | {r['max_score']:.4g} | {world} | {r['outputs'].get('heatmap', '')} |")
        md.append("")
    if failed:
        md += ["## Failed volumes\n", "| input | attempts | reason |", "|---|---|---|"]
        md += [f"| {r['input']} | {r.get('attempts', '')} | {r['reason'].replace('|', '/')} |" for r in failed]
        md.append("")
    return write_text(out / REPORT_MD, "\n".join(md))
