"""The bench report: ``report.json`` (schema below) and the rows' derived fields (speed-ups, equality, the summary).

``report.json``, ``"schema": "rlp.bench.report"``, ``"schema_version": 1``.
Times are seconds, memory and model sizes bytes; a number that could not be
measured is ``null``. Fields (new fields may be added within a version; a
change of meaning or a removal bumps ``schema_version``)::

    schema, schema_version, rlp_version, created (UTC ISO 8601), duration_s
    command            the command line that produced the report
    mode               "quick" | "full"
    settings           runs, threads, batch, warmup, g_windows (null: never extrapolated),
                       paths, backends, slices (lesion slices used), heldout (held-out slices used), seed
    bundle             path, manifest_sha256, geometry {size, window, stride, context, ...},
                       windows_per_slice, models {key: {file, bytes, precision, input_kind, architecture}}
    run                {path} | null (torch rows and held-out slices come from it)
    inputs             source ("inputs" | "demo" | "suite"), timing_slice (id),
                       lesion [{id, file, lesion_voxels, brain_voxels, shape, spacing}], heldout [{id, index}],
                       suite {seed, lesions, healthy, source, cases [{id, set, base, split, registered, rotation_deg,
                       shift_px, kind, polarity, radius, center, depth, site, level, size, lesion_voxels}]} | null
    environment        cpu, cores, affinity_cores, threads, loadavg_start, nice, python, platform,
                       libraries {name: version | null}, ort_providers, gpu [{name, memory, driver}]
    reference          how the exact G maps (the fidelity reference) were made: {backend, model, where} | null
    rows               [row], see below
    skipped            [{name, path, backend, reason}]: rows planned but unavailable here
    summary            the headline: backend, r_row, g_row, speedup_r_vs_g, speedup_r_vs_g_torch,
                       g_latency_label, memory_ratio_g_over_r, model_bytes_ratio_g_over_r,
                       fidelity {...}, localisation {g: {...}, r: {...}} (null where not measurable)
    notes              [str]
    plots              {latency, memory, panels}: file names in the report's folder (null: not drawn)

A row::

    name, path ("r" | "g"), method ("plain"; later: incremental, coarse-to-fine, one-shot, ...),
    backend, source ("bundle" | "run"), approx (true: approximates G's map), gpu, requested
    status             "ok" | "failed" (error says why)
    model, precision, model_bytes, params (null when unknown)
    latency            median_s, p95_s, min_s, mean_s, max_s, runs, samples_s [...], model_median_s,
                       warmup, extrapolated (bool), extrapolated_from_windows (int | null),
                       full_pass_s (extrapolated rows: the one full pass that made the maps)
    latency_label      "measured" | "extrapolated from N windows"
    windows, windows_total   windows evaluated on the timing slice (brain only) / in the geometry
    windows_per_s      windows / median latency
    speedup            vs_g_same_backend, vs_g_torch (G in PyTorch eager on the same device kind)
    memory             peak_rss_bytes (high-water mark of the row's own process), peak_rss_source
                       ("VmHWM", or "rusage" off Linux), baseline_bytes (RSS after Python, numpy and
                       rlp.runtime are imported; onnxruntime or torch and the model count in the row),
                       after_load_bytes (model loaded), gpu_peak_bytes and gpu_torch_max_allocated_bytes (GPU rows)
    fidelity           {lesion | heldout | all: {slices, windows, mae, mae_rel, pearson, spearman,
                       top5_iou, argmax_distance_windows, per_slice [...]}} against the exact G maps | null
                       (null also for G rows off the reference backend in --quick: they make no maps)
    localisation       {slices, auroc, auprc, best_dice, top_window_hit_rate, hits, top_window_hit_rate_dilated,
                       hits_dilated, hit_dilation, detection_auroc (lesion slices' top window scores against the
                       healthy slices'; null without healthy slices), healthy_slices, groups {kind | polarity |
                       registration | size | site: {name: the same figures}} (suite cases), per_slice [...],
                       healthy_top_scores [...]} | null
    equality           exact methods other than plain (incremental): {reference_row (the plain row of the same
                       path and backend), slices, max_abs_diff (window maps), same_windows, tolerance, equal,
                       speedup_vs_reference} | null; incremental (those rows): what is recomputed per window
    volume             with --volume: {file, slices, estimated_s, seconds, s_per_slice, windows, model_s} or
                       {file, slices, estimated_s, skipped (why)} | null
    approximation      approximate methods (coarse-to-fine): {reference_row, slices, spearman, top5_iou, mae_rel
                       (means over slices against the plain row's maps), max_abs_diff, same_argmax (slices whose
                       top window is the plain row's), scored_fraction, speedup_vs_reference} | null;
                       approximate (those rows): the settings and the windows scored exactly
    backend_details, notes, process_wall_s, error

Metric definitions: fidelity compares a row's window map with the reference's
over the evaluated windows (:func:`rlp.bench.metrics.fidelity`); ``mae`` is the
window-weighted mean over slices, ``mae_rel`` = ``mae`` / mean G window loss,
the others are means over slices. Localisation scores the row's pixel map on
the input grid against the lesion mask over brain voxels (``image > 0``): pixel
AUROC, AUPRC (average precision), best Dice over thresholds (means over
slices); a top-window hit is the highest-scoring window's box (on the input
grid) overlapping the lesion.

The quality blocks are computed in :mod:`rlp.bench.quality`; ``report.md`` and the terminal table are written by
:mod:`rlp.bench.report_md`.
"""

from __future__ import annotations

import math

import numpy as np

from .metrics import fidelity
from .rows import APPROXIMATE_METHODS

SCHEMA = "rlp.bench.report"
SCHEMA_VERSION = 1
HEADLINE_ORDER = ("trt", "ort-cuda", "ort-trt", "ort-cpu", "torch-cuda", "torch-cpu")
MB = 1 << 20


def clean(obj):
    """JSON-safe: NaN/inf become null, numpy scalars plain numbers."""
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def latency_label(latency: dict | None) -> str:
    if not latency:
        return ""
    if latency.get("extrapolated"):
        return f"extrapolated from {latency['extrapolated_from_windows']} windows"
    return "measured"


def add_speedups(rows: list[dict]) -> None:
    ok = [r for r in rows if r.get("status") == "ok"]
    g_rows = {r["backend"]: r for r in ok if r["path"] == "g" and r["method"] == "plain"}
    for r in ok:
        med = r["latency"]["median_s"]
        r["windows_per_s"] = r["windows"] / med if med > 0 else None
        same = g_rows.get(r["backend"])
        torch_g = g_rows.get("torch-cuda" if r["gpu"] else "torch-cpu")
        r["speedup"] = {"vs_g_same_backend": same["latency"]["median_s"] / med if same else None,
                        "vs_g_torch": torch_g["latency"]["median_s"] / med if torch_g else None}


EXACT_TOLERANCE = 1e-6  # exact methods: largest difference allowed from the plain row's window map


def add_equality(rows: list[dict], maps_of) -> None:
    """Check each non-plain row against the plain row of its path and backend (``maps_of(row)``: its maps):
    an exact method must give equal maps (``equality``); an approximate one says how close it comes
    (``approximation``)."""
    plain = {(r["path"], r["backend"]): r for r in rows if r.get("status") == "ok" and r["method"] == "plain"}
    for r in rows:
        if r.get("status") != "ok" or r["method"] == "plain":
            continue
        ref = plain.get((r["path"], r["backend"]))
        mine, theirs = (maps_of(r), maps_of(ref)) if ref else ([], [])
        key = "approximation" if r["method"] in APPROXIMATE_METHODS else "equality"
        if not mine or len(mine) != len(theirs):
            r[key] = None
            continue
        diff = max(float(np.abs(a["window"] - b["window"]).max()) for a, b in zip(mine, theirs))
        common = {"reference_row": ref["name"], "slices": len(mine), "max_abs_diff": diff,
                  "speedup_vs_reference": _ratio(ref["latency"]["median_s"], r["latency"]["median_s"])}
        if key == "approximation":
            per = [fidelity(a["window"], b["window"], b["evaluated"]) for a, b in zip(mine, theirs)]
            done = r.get("approximate") or {}
            r[key] = {**common, **{k: float(np.mean([f[k] for f in per])) for k in ("spearman", "top5_iou", "mae_rel")},
                      "same_argmax": sum(int(np.argmax(a["window"]) == np.argmax(b["window"]))
                                         for a, b in zip(mine, theirs)),
                      "scored_fraction": _ratio(done.get("scored"), done.get("windows"))}
        else:
            same = all(np.array_equal(a["evaluated"], b["evaluated"]) for a, b in zip(mine, theirs))
            r[key] = {**common, "same_windows": same, "tolerance": EXACT_TOLERANCE,
                      "equal": same and diff <= EXACT_TOLERANCE}


def summary(rows: list[dict]) -> dict | None:
    """The headline: R against G on the first backend (by HEADLINE_ORDER) that has both."""
    ok = [r for r in rows if r.get("status") == "ok" and r["method"] == "plain"]
    for backend in HEADLINE_ORDER:
        r = next((x for x in ok if x["backend"] == backend and x["path"] == "r"), None)
        g = next((x for x in ok if x["backend"] == backend and x["path"] == "g"), None)
        if r and g:
            break
    else:
        return None
    fid = (r.get("fidelity") or {}).get("all")
    return {
        "backend": backend, "r_row": r["name"], "g_row": g["name"],
        "r_median_s": r["latency"]["median_s"], "g_median_s": g["latency"]["median_s"],
        "g_latency_label": g["latency_label"],
        "speedup_r_vs_g": r["speedup"]["vs_g_same_backend"], "speedup_r_vs_g_torch": r["speedup"]["vs_g_torch"],
        "memory_ratio_g_over_r": _ratio(g["memory"].get("peak_rss_bytes"), r["memory"].get("peak_rss_bytes")),
        "model_bytes_ratio_g_over_r": _ratio(g.get("model_bytes"), r.get("model_bytes")),
        "fidelity": {k: v for k, v in fid.items() if k != "per_slice"} if fid else None,
        "localisation": {p: _no_per_slice(x.get("localisation")) for p, x in (("g", g), ("r", r))},
    }


def _ratio(a, b):
    return a / b if a and b else None


def _no_per_slice(block):
    return None if block is None else {k: v for k, v in block.items() if k not in ("per_slice", "healthy_top_scores")}
