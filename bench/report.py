"""The bench report: metrics from the rows' maps, ``report.json`` (schema below), ``report.md`` and the terminal table.

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
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from rlp.runtime.results import box_hits  # the demo table's question too: one name, imported

from .metrics import auprc, auroc, best_dice, fidelity
from .rows import APPROXIMATE_METHODS

SCHEMA = "rlp.bench.report"
SCHEMA_VERSION = 1
HEADLINE_ORDER = ("trt", "ort-cuda", "ort-trt", "ort-cpu", "torch-cuda", "torch-cpu")
FIDELITY_KEYS = ("mae", "mae_rel", "pearson", "spearman", "top5_iou", "argmax_distance_windows")
LOCAL_KEYS = ("auroc", "auprc", "best_dice")
HIT_DILATION = 4  # voxels: a top window overlapping the lesion grown by this much counts as a dilated hit
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


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(vals)) if vals else None


# --------------------------------------------------------------------------- metrics
def fidelity_block(pred_maps: list[dict], ref_maps: list[dict], cases: list[dict]) -> dict:
    """Fidelity of one row's window maps to the reference, per case set and over all slices."""
    per = {}
    for case, p, r in zip(cases, pred_maps, ref_maps):
        ev = r["evaluated"] & p["evaluated"]
        if not ev.any():
            continue
        f = fidelity(p["window"], r["window"], ev)
        f["mean_g"] = float(r["window"][ev].mean())
        f["evaluated_differs"] = bool((r["evaluated"] != p["evaluated"]).any())
        per.setdefault(case["set"], []).append({"id": case["id"], **f})
    out = {name: _aggregate(items) for name, items in per.items()}
    if len(out) > 1:
        out["all"] = _aggregate([f for items in per.values() for f in items], per_slice=False)
    elif out:
        out["all"] = {k: v for k, v in next(iter(out.values())).items() if k != "per_slice"}
    return out


def _aggregate(items: list[dict], per_slice: bool = True) -> dict:
    n = np.asarray([f["n_windows"] for f in items], np.float64)
    mae = float(np.sum(n * [f["mae"] for f in items]) / n.sum())
    mean_g = float(np.sum(n * [f["mean_g"] for f in items]) / n.sum())
    out = {"slices": len(items), "windows": int(n.sum()), "mae": mae, "mae_rel": mae / mean_g if mean_g else None,
           **{k: _mean(f[k] for f in items) for k in FIDELITY_KEYS[2:]}}
    if per_slice:
        out["per_slice"] = items
    return out


def top_score(m: dict) -> float:
    """A slice's anomaly score: its highest evaluated window score (0 when nothing was evaluated)."""
    ev = np.asarray(m["evaluated"], bool)
    return float(np.asarray(m["window"])[ev].max()) if ev.any() else 0.0


#: the lesion suite's groups the report breaks localisation down by (case["suite"] keys)
GROUPS = ("kind", "polarity", "registration", "size", "site")


def _group_of(case: dict, key: str) -> str | None:
    s = case.get("suite")
    if not s:
        return None
    if key == "registration":
        return "aligned" if s.get("registered", True) else "unregistered"
    return s.get(key)


def _local_summary(per: list[dict], negatives: list[float]) -> dict:
    hits = sum(p["top_window_hit"] for p in per)
    hits_d = sum(p["top_window_hit_dilated"] for p in per)
    out = {"slices": len(per), **{k: _mean(p[k] for p in per) for k in LOCAL_KEYS},
           "top_window_hit_rate": hits / len(per), "hits": hits,
           "top_window_hit_rate_dilated": hits_d / len(per), "hits_dilated": hits_d, "detection_auroc": None}
    if negatives:  # slice level: lesion slices' top scores against healthy slices'
        pos = [p["top_score"] for p in per]
        out["detection_auroc"] = auroc(np.r_[pos, negatives], np.r_[np.ones(len(pos), bool), np.zeros(len(negatives), bool)])
    return out


def localisation_block(maps: list[dict], cases: list[dict], truth: dict, dilation: int = HIT_DILATION) -> dict | None:
    """Localisation metrics of one row on the cases that have a lesion mask, and slice-level detection
    against the healthy cases (set ``healthy``), overall and per suite group (:data:`GROUPS`).

    A top-window hit is the top window's box overlapping the lesion; the dilated hit, overlapping the
    lesion dilated by ``dilation`` voxels (the window is a coarse pointer: a box beside the lesion's edge
    points at it)."""
    per, negatives = [], []
    for case, m in zip(cases, maps):
        if case.get("set") == "healthy":
            negatives.append(top_score(m))
            continue
        t = truth.get(case["id"])
        if t is None:
            continue
        brain, lesion = t["brain"], t["lesion"]
        scores, labels = m["pixel"][brain], lesion[brain]
        grown = ndimage.binary_dilation(lesion, iterations=dilation) if dilation else lesion
        rec = {"id": case["id"], "auroc": auroc(scores, labels), "auprc": auprc(scores, labels),
               "best_dice": best_dice(scores, labels), "top_window_hit": box_hits(m["top"], lesion),
               "top_window_hit_dilated": box_hits(m["top"], grown), "top_score": top_score(m)}
        rec.update({g: v for g in GROUPS if (v := _group_of(case, g)) is not None})
        per.append(rec)
    if not per:
        return None
    out = {**_local_summary(per, negatives), "healthy_slices": len(negatives), "hit_dilation": dilation}
    groups = {}
    for g in GROUPS:
        names = sorted({p[g] for p in per if g in p})
        if names:
            groups[g] = {n: _local_summary([p for p in per if p.get(g) == n], negatives) for n in names}
    if groups:
        out["groups"] = groups
    out["per_slice"] = per
    out["healthy_top_scores"] = negatives
    return out


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


# --------------------------------------------------------------------------- text
def _f(x, spec: str = ".3g", none: str = "–") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return none
    return format(x, spec)


def _n(k: int, what: str) -> str:
    return f"{k} {what}" + ("" if k == 1 else "s")


def _mb(x) -> str:
    return _f(None if x is None else x / MB, ".1f")


def _latency_cell(r: dict, key: str = "median_s") -> str:
    lat = r.get("latency") or {}
    return _f(lat.get(key), ".3f") + ("*" if lat.get("extrapolated") else "")


def _table(header: list[str], lines: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(cells) + " |" for cells in lines]
    return "\n".join(out)


def headline_lines(report: dict) -> list[str]:
    exact = [f"{r['name']}: window maps {'equal' if e['equal'] else 'NOT equal'} to {e['reference_row']}'s within "
             f"{e['tolerance']:g} (max |diff| {_f(e['max_abs_diff'])}, {_n(e['slices'], 'slice')}); speed-up over it "
             f"{_f(e['speedup_vs_reference'], '.2f')}x." for r in report["rows"] if (e := r.get("equality"))]
    exact += [f"{r['name']} (APPROXIMATE, {_f(100 * a['scored_fraction'] if a['scored_fraction'] else None, '.0f')}% "
              f"of windows scored exactly): {_f(a['speedup_vs_reference'], '.2f')}x faster than {a['reference_row']}; "
              f"against its map Spearman {_f(a['spearman'], '.3f')}, top-5% IoU {_f(a['top5_iou'], '.3f')}, same top "
              f"window on {a['same_argmax']}/{a['slices']} slices." for r in report["rows"] if (a := r.get("approximation"))]
    exact += [f"{r['name']}: a whole volume of {v['slices']} slices in {_f(v['seconds'], '.1f')} s "
              f"({_f(v['s_per_slice'], '.3f')} s per slice)." for r in report["rows"]
              if (v := r.get("volume")) and "seconds" in v]
    s = report.get("summary")
    if not s:
        return ["No backend ran both R and G, so there is no R-vs-G headline."] + exact
    lines = [f"R vs G on {s['backend']}: R {_f(s['speedup_r_vs_g'], '.2f')}x faster per slice "
             f"(median {_f(s['r_median_s'], '.3f')} s vs {_f(s['g_median_s'], '.3f')} s; G {s['g_latency_label']})"
             + (f", {_f(s['speedup_r_vs_g_torch'], '.2f')}x faster than G in PyTorch eager" if s['speedup_r_vs_g_torch'] else "")
             + "."]
    lines.append(f"Peak memory of the process, G / R: {_f(s['memory_ratio_g_over_r'], '.2f')}x; "
                 f"model bytes, G / R: {_f(s['model_bytes_ratio_g_over_r'], '.2f')}x.")
    fid = s.get("fidelity")
    if fid:
        lines.append(f"Fidelity of R to exact G ({_n(fid['slices'], 'slice')}, {fid['windows']} windows): MAE {_f(fid['mae'])} "
                     f"({_f(100 * fid['mae_rel'] if fid['mae_rel'] is not None else None, '.1f')}% of G's mean window loss), "
                     f"Pearson {_f(fid['pearson'], '.3f')}, Spearman {_f(fid['spearman'], '.3f')}, "
                     f"top-5% IoU {_f(fid['top5_iou'], '.3f')}, argmax distance {_f(fid['argmax_distance_windows'], '.1f')} windows.")
    for p in ("g", "r"):
        loc = s["localisation"].get(p)
        if loc:
            lines.append(f"Localisation, {p.upper()} path ({_n(loc['slices'], 'slice')} with inserted lesions): pixel AUROC "
                         f"{_f(loc['auroc'], '.3f')}, AUPRC {_f(loc['auprc'], '.3f')}, best Dice {_f(loc['best_dice'], '.3f')}, "
                         f"top window in the lesion {loc['hits']}/{loc['slices']} "
                         f"({loc.get('hits_dilated', '–')}/{loc['slices']} within {loc.get('hit_dilation', 0)} voxels)"
                         + (f", slice detection AUROC {_f(loc['detection_auroc'], '.3f')} against "
                            f"{_n(loc['healthy_slices'], 'healthy slice')}" if loc.get("detection_auroc") is not None else "")
                         + ".")
    return lines + exact


def markdown(report: dict) -> str:
    rows = report["rows"]
    ok = [r for r in rows if r.get("status") == "ok"]
    st = report["settings"]
    env = report["environment"]
    b = report["bundle"]
    geo = b["geometry"]
    L = [f"# rlp-bench report ({report['mode']})", "",
         f"Command: `{report['command']}`  ",
         f"Created {report['created']} (UTC), took {report['duration_s']:.0f} s. rlp {report['rlp_version']}.", ""]
    extra = [r for r in ok if r["latency"].get("extrapolated")]
    if extra:
        L += [f"> **--quick**: latencies marked * are **{extra[0]['latency_label']}** of the timing slice "
              "(the model part scaled to all evaluated windows; pre- and post-processing measured), "
              "not full measured runs.", ""]
    L += ["## Summary", ""] + [f"- {x}" for x in headline_lines(report)] + [""]
    L += ["## Speed", "",
          f"Heatmap latency of one slice (`{report['inputs']['timing_slice']}`, {ok[0]['windows'] if ok else '?'} of "
          f"{b['windows_per_slice']} windows evaluated) after a warm-up of {st['warmup']}; {st['runs']} runs; "
          f"batch {st['batch']}, {st['threads']} threads.", ""]
    L.append(_table(["row", "model", "median s", "p95 s", "min s", "windows/s", "x G same backend", "x G torch", "latency"],
                    [[r["name"], f"{r['model']} ({r['precision']})", _latency_cell(r), _latency_cell(r, "p95_s"),
                      _latency_cell(r, "min_s"), _f(r["windows_per_s"], ".0f"), _f(r["speedup"]["vs_g_same_backend"], ".2f"),
                      _f(r["speedup"]["vs_g_torch"], ".2f"),
                      r["latency_label"] + (f"; one full pass {r['latency']['full_pass_s']:.2f} s"
                                            if r["latency"].get("full_pass_s") else "")] for r in ok]))
    exact = [r for r in ok if r.get("equality")]
    if exact:
        L += ["", f"Exact methods against the plain row of the same path and backend (window maps, every slice "
                  f"with maps; equal means max |diff| <= {EXACT_TOLERANCE:g} and the same windows evaluated):", ""]
        L.append(_table(["row", "plain row", "slices", "max abs diff", "equal", "x plain"],
                        [[r["name"], e["reference_row"], str(e["slices"]), _f(e["max_abs_diff"]),
                          "yes" if e["equal"] else "**no**", _f(e["speedup_vs_reference"], ".2f")]
                         for r in exact if (e := r["equality"])]))
    approx = [r for r in ok if r.get("approximation")]
    if approx:
        L += ["", "Approximate methods against the plain row of the same path and backend (window maps over the "
                  "evaluated windows; means over slices):", ""]
        L.append(_table(["row", "plain row", "slices", "scored exactly", "Spearman", "top-5% IoU", "MAE % of plain",
                         "max abs diff", "same top window", "x plain"],
                        [[r["name"], a["reference_row"], str(a["slices"]), _f(100 * a["scored_fraction"] if
                                                                             a["scored_fraction"] else None, ".0f") + "%",
                          _f(a["spearman"], ".3f"), _f(a["top5_iou"], ".3f"), _f(100 * a["mae_rel"], ".2f"),
                          _f(a["max_abs_diff"]), f"{a['same_argmax']}/{a['slices']}", _f(a["speedup_vs_reference"], ".2f")]
                         for r in approx if (a := r["approximation"])]))
    vols = [r for r in ok if r.get("volume")]
    if vols:
        v0 = vols[0]["volume"]
        L += ["", f"Whole volume `{v0['file']}` ({v0['slices']} axial slices): one `heatmap_nifti` per row (load, "
                  "every slice, back on the file's grid), measured once in the row's process:", ""]
        L.append(_table(["row", "seconds", "s / slice", "windows", "model s"],
                        [[r["name"], _f(v.get("seconds"), ".1f"), _f(v.get("s_per_slice"), ".3f"),
                          str(v.get("windows", "–")), _f(v.get("model_s"), ".1f")] if "skipped" not in v else
                         [r["name"], f"not run: {v['skipped']}", "–", "–", "–"] for r in vols if (v := r["volume"])]))
    L += ["", "## Memory", "",
          "Peak RSS of a process doing only that row (interpreter and libraries included; the baseline is the "
          "RSS after Python, numpy and rlp.runtime are imported, before onnxruntime or torch and the model).", ""]
    gpu = any(r["gpu"] for r in ok)
    L.append(_table(["row", "peak RSS MB", "baseline MB", "peak - baseline MB"] + ["GPU peak MB"] * gpu
                    + ["model MB", "params"],
                    [[r["name"], _mb(r["memory"].get("peak_rss_bytes")), _mb(r["memory"].get("baseline_bytes")),
                      _mb((r["memory"].get("peak_rss_bytes") or 0) - (r["memory"].get("baseline_bytes") or 0)
                          if r["memory"].get("baseline_bytes") else None)]
                     + [_mb(r["memory"].get("gpu_peak_bytes"))] * gpu
                     + [_f(r["model_bytes"] / MB if r.get("model_bytes") else None, ".2f"), _f(r.get("params"), ",")]
                     for r in ok]))
    ref = report.get("reference")
    L += ["", "## Fidelity to the exact G map", ""]
    if ref:
        L += [f"Reference: G ({ref['model']}) on {ref['backend']}, {ref['where']}. Exact rows must show MAE 0 and "
              "Spearman 1.", ""]
        lines = []
        for r in ok:
            blocks = r.get("fidelity") or {}
            for name, f in blocks.items():
                if name == "all" and len(blocks) == 2:  # one set: "all" repeats it
                    continue
                lines.append([r["name"], name, str(f["slices"]), _f(f["mae"]),
                              _f(100 * f["mae_rel"] if f["mae_rel"] is not None else None, ".2f"),
                              _f(f["pearson"], ".4f"), _f(f["spearman"], ".4f"), _f(f["top5_iou"], ".3f"),
                              _f(f["argmax_distance_windows"], ".1f")])
        L.append(_table(["row", "set", "slices", "MAE", "MAE % of G mean", "Pearson", "Spearman", "top-5% IoU",
                         "argmax dist (windows)"], lines))
    else:
        L.append("No exact G reference (the bundle has no G model, or onnxruntime's CPU provider is missing).")
    L += ["", "## Localisation", "",
          "Pixel maps on each slice's own grid against its lesion mask, brain voxels only (means over slices). "
          "Top window: the highest-scoring window's box overlaps the lesion, or the lesion dilated by "
          f"{HIT_DILATION} voxels. Detection: AUROC of the slices' top window scores, lesion slices against "
          "healthy ones.", ""]
    locs = [(r, loc) for r in ok if (loc := r.get("localisation"))]
    L.append(_table(["row", "slices", "AUROC", "AUPRC", "best Dice", "top window in lesion",
                     f"in lesion + {HIT_DILATION}", "detection AUROC"],
                    [[r["name"], str(loc["slices"]), _f(loc["auroc"], ".3f"), _f(loc["auprc"], ".3f"),
                      _f(loc["best_dice"], ".3f"), f"{loc['hits']}/{loc['slices']}",
                      f"{loc.get('hits_dilated', '–')}/{loc['slices']}", _f(loc.get("detection_auroc"), ".3f")]
                     for r, loc in locs]))
    for g in GROUPS:
        lines = [[r["name"], name, str(x["slices"]), _f(x["auroc"], ".3f"), _f(x["auprc"], ".3f"),
                  _f(x["best_dice"], ".3f"), f"{x['hits']}/{x['slices']}", f"{x['hits_dilated']}/{x['slices']}",
                  _f(x.get("detection_auroc"), ".3f")]
                 for r, loc in locs for name, x in (loc.get("groups") or {}).get(g, {}).items()]
        if lines:
            L += ["", f"By {g}:", ""]
            L.append(_table(["row", g, "slices", "AUROC", "AUPRC", "best Dice", "top window in lesion",
                             f"in lesion + {HIT_DILATION}", "detection AUROC"], lines))
    bad = [r for r in rows if r.get("status") != "ok"]
    if bad or report["skipped"]:
        L += ["", "## Rows that did not run", ""]
        L += [f"- {r['name']}: {r['status']}: {r.get('error')}" for r in bad]
        L += [f"- {s['name']}: skipped: {s['reason']}" for s in report["skipped"]]
    inp = report["inputs"]
    L += ["", "## Inputs", "",
          f"Source: {inp['source']}; {_n(len(inp['lesion']), 'slice')} with lesions"
          + (f", {_n(len(inp['heldout']), 'held-out slice')} without" if inp["heldout"] else "") + ".", ""]
    if inp.get("suite"):
        s = inp["suite"]
        L += [f"Lesion suite (seed {s['seed']}): {s['lesions']} lesion slices and {s['healthy']} healthy ones built "
              f"from the run's held-out slices ({s['source']}); the recipe of each slice is in report.json "
              "(inputs.suite.cases).", ""]
    else:
        L += [f"- `{c['id']}`: {c.get('file') or 'array'}, shape {c['shape']}, lesion {c['lesion_voxels']} voxels"
              for c in inp["lesion"]]
    L += ["", "## Bundle", "",
          f"`{b['path']}` (manifest sha256 {b['manifest_sha256'][:12]}...). Geometry: {geo['size']}x{geo['size']}, "
          f"window {geo['window']}, stride {geo['stride']}, context {geo.get('context')}: {b['windows_per_slice']} "
          f"windows per slice.", ""]
    L.append(_table(["model", "file", "MB", "precision", "reads"],
                    [[k, m["file"], _f(m["bytes"] / MB, ".2f"), m["precision"], m["input_kind"]]
                     for k, m in b["models"].items()]))
    libs = ", ".join(f"{k} {v}" for k, v in env["libraries"].items() if v)
    gpus = "; ".join(f"{g['name']} ({g['memory']})" for g in env["gpu"]) or "none"
    L += ["", "## Environment", "",
          f"- CPU: {env['cpu']}; {env['cores']} cores ({env['affinity_cores']} usable), {env['threads']} threads used",
          f"- load average at start: {env['loadavg_start']}; nice {env['nice']}",
          f"- GPU: {gpus}", f"- Python {env['python']} on {env['platform']}", f"- {libs}",
          f"- onnxruntime providers: {', '.join(env['ort_providers']) or 'none'}", ""]
    if report["notes"]:
        L += ["## Notes", ""] + [f"- {n}" for n in report["notes"]] + [""]
    plots = {k: v for k, v in report["plots"].items() if v}
    if plots:
        L += ["## Plots", ""] + [f"![{k}]({v})" for k, v in plots.items()] + [""]
    return "\n".join(L)


def terminal_table(report: dict):
    """A rich table of the rows (printed on stderr by the CLI)."""
    from rich.table import Table

    t = Table(title=f"rlp-bench ({report['mode']}): heatmap of one slice", title_justify="left")
    for col in ("row", "median s", "p95 s", "win/s", "x G", "peak RSS MB", "MAE %G", "Spearman", "AUROC", "hits",
                f"hits+{HIT_DILATION}", "detect"):
        t.add_column(col, justify="left" if col == "row" else "right")
    for r in report["rows"]:
        if r.get("status") != "ok":
            t.add_row(r["name"], f"[red]{r['status']}[/red]", *[""] * 10)
            continue
        fid = (r.get("fidelity") or {}).get("all") or {}
        loc = r.get("localisation") or {}
        t.add_row(r["name"], _latency_cell(r), _latency_cell(r, "p95_s"), _f(r["windows_per_s"], ".0f"),
                  _f(r["speedup"]["vs_g_same_backend"], ".2f"), _mb(r["memory"].get("peak_rss_bytes")),
                  _f(100 * fid["mae_rel"] if fid.get("mae_rel") is not None else None, ".2f"),
                  _f(fid.get("spearman"), ".3f"), _f(loc.get("auroc"), ".3f"),
                  f"{loc['hits']}/{loc['slices']}" if loc else "–",
                  f"{loc['hits_dilated']}/{loc['slices']}" if loc.get("hits_dilated") is not None else "–",
                  _f(loc.get("detection_auroc"), ".3f"))
    labels = sorted({r["latency_label"] for r in report["rows"] if r.get("status") == "ok" and r["latency"].get("extrapolated")})
    if labels:
        t.caption = "* " + "; ".join(labels)
    return t
