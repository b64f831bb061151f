"""The bench report as text: ``report.md`` and the terminal table (from the report dict of :mod:`rlp.bench.report`)."""

from __future__ import annotations

import math

from .quality import GROUPS, HIT_DILATION
from .report import EXACT_TOLERANCE, MB


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
    """The summary in sentences: R against G, then each exact, approximate and whole-volume row."""
    s = report.get("summary")
    if not s:
        return ["No backend ran both R and G, so there is no R-vs-G headline."] + _method_lines(report["rows"])
    torch_g = s["speedup_r_vs_g_torch"]
    lines = [f"R vs G on {s['backend']}: R {_f(s['speedup_r_vs_g'], '.2f')}x faster per slice "
             f"(median {_f(s['r_median_s'], '.3f')} s vs {_f(s['g_median_s'], '.3f')} s; G {s['g_latency_label']})"
             + (f", {_f(torch_g, '.2f')}x faster than G in PyTorch eager" if torch_g else "")
             + "."]
    lines.append(f"Peak memory of the process, G / R: {_f(s['memory_ratio_g_over_r'], '.2f')}x; "
                 f"model bytes, G / R: {_f(s['model_bytes_ratio_g_over_r'], '.2f')}x.")
    fid = s.get("fidelity")
    if fid:
        rel = 100 * fid["mae_rel"] if fid["mae_rel"] is not None else None
        lines.append(f"Fidelity of R to exact G ({_n(fid['slices'], 'slice')}, {fid['windows']} windows): "
                     f"MAE {_f(fid['mae'])} ({_f(rel, '.1f')}% of G's mean window loss), "
                     f"Pearson {_f(fid['pearson'], '.3f')}, Spearman {_f(fid['spearman'], '.3f')}, "
                     f"top-5% IoU {_f(fid['top5_iou'], '.3f')}, "
                     f"argmax distance {_f(fid['argmax_distance_windows'], '.1f')} windows.")
    for p in ("g", "r"):
        loc = s["localisation"].get(p)
        if loc:
            lines.append(_localisation_line(p, loc))
    return lines + _method_lines(report["rows"])


def _localisation_line(path: str, loc: dict) -> str:
    detection = ""
    if loc.get("detection_auroc") is not None:
        detection = (f", slice detection AUROC {_f(loc['detection_auroc'], '.3f')} against "
                     f"{_n(loc['healthy_slices'], 'healthy slice')}")
    return (f"Localisation, {path.upper()} path ({_n(loc['slices'], 'slice')} with inserted lesions): pixel AUROC "
            f"{_f(loc['auroc'], '.3f')}, AUPRC {_f(loc['auprc'], '.3f')}, best Dice {_f(loc['best_dice'], '.3f')}, "
            f"top window in the lesion {loc['hits']}/{loc['slices']} "
            f"({loc.get('hits_dilated', '–')}/{loc['slices']} within {loc.get('hit_dilation', 0)} voxels)"
            + detection + ".")


def _method_lines(rows: list[dict]) -> list[str]:
    lines = [f"{r['name']}: window maps {'equal' if e['equal'] else 'NOT equal'} to {e['reference_row']}'s within "
             f"{e['tolerance']:g} (max |diff| {_f(e['max_abs_diff'])}, {_n(e['slices'], 'slice')}); speed-up over it "
             f"{_f(e['speedup_vs_reference'], '.2f')}x." for r in rows if (e := r.get("equality"))]
    for r in rows:
        a = r.get("approximation")
        if a:
            scored = 100 * a["scored_fraction"] if a["scored_fraction"] else None
            lines.append(f"{r['name']} (APPROXIMATE, {_f(scored, '.0f')}% of windows scored exactly): "
                         f"{_f(a['speedup_vs_reference'], '.2f')}x faster than {a['reference_row']}; against its map "
                         f"Spearman {_f(a['spearman'], '.3f')}, top-5% IoU {_f(a['top5_iou'], '.3f')}, same top "
                         f"window on {a['same_argmax']}/{a['slices']} slices.")
    lines += [f"{r['name']}: a whole volume of {v['slices']} slices in {_f(v['seconds'], '.1f')} s "
              f"({_f(v['s_per_slice'], '.3f')} s per slice)." for r in rows
              if (v := r.get("volume")) and "seconds" in v]
    return lines


def markdown(report: dict) -> str:
    """``report.md``: summary, speed, memory, fidelity, localisation, inputs, bundle and environment."""
    rows = report["rows"]
    ok = [r for r in rows if r.get("status") == "ok"]
    st = report["settings"]
    b = report["bundle"]
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
    L.append(_table(["row", "model", "median s", "p95 s", "min s", "windows/s", "x G same backend", "x G torch",
                     "latency"],
                    [[r["name"], f"{r['model']} ({r['precision']})", _latency_cell(r), _latency_cell(r, "p95_s"),
                      _latency_cell(r, "min_s"), _f(r["windows_per_s"], ".0f"),
                      _f(r["speedup"]["vs_g_same_backend"], ".2f"), _f(r["speedup"]["vs_g_torch"], ".2f"),
                      r["latency_label"] + (f"; one full pass {r['latency']['full_pass_s']:.2f} s"
                                            if r["latency"].get("full_pass_s") else "")] for r in ok]))
    L += _methods(ok) + _volumes(ok) + _memory(ok) + _fidelity(report, ok) + _localisation(ok)
    L += _unrun(report) + _inputs(report) + _bundle_and_environment(report)
    return "\n".join(L)


def _methods(ok: list[dict]) -> list[str]:
    """Exact and approximate methods against the plain row of their path and backend."""
    L: list[str] = []
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
                        [[r["name"], a["reference_row"], str(a["slices"]),
                          _f(100 * a["scored_fraction"] if a["scored_fraction"] else None, ".0f") + "%",
                          _f(a["spearman"], ".3f"), _f(a["top5_iou"], ".3f"), _f(100 * a["mae_rel"], ".2f"),
                          _f(a["max_abs_diff"]), f"{a['same_argmax']}/{a['slices']}",
                          _f(a["speedup_vs_reference"], ".2f")]
                         for r in approx if (a := r["approximation"])]))
    return L


def _volumes(ok: list[dict]) -> list[str]:
    """Whole-volume timings (``--volume``)."""
    L: list[str] = []
    vols = [r for r in ok if r.get("volume")]
    if vols:
        v0 = vols[0]["volume"]
        L += ["", f"Whole volume `{v0['file']}` ({v0['slices']} axial slices): one `heatmap_nifti` per row (load, "
                  "every slice, back on the file's grid), measured once in the row's process:", ""]
        L.append(_table(["row", "seconds", "s / slice", "windows", "model s"],
                        [[r["name"], _f(v.get("seconds"), ".1f"), _f(v.get("s_per_slice"), ".3f"),
                          str(v.get("windows", "–")), _f(v.get("model_s"), ".1f")] if "skipped" not in v else
                         [r["name"], f"not run: {v['skipped']}", "–", "–", "–"]
                         for r in vols if (v := r["volume"])]))
    return L


def _memory(ok: list[dict]) -> list[str]:
    """Peak memory of each row's process."""
    L: list[str] = []
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
    return L


def _fidelity(report: dict, ok: list[dict]) -> list[str]:
    """Fidelity of each row's window maps to the exact G maps."""
    L: list[str] = []
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
    return L


def _localisation(ok: list[dict]) -> list[str]:
    """Localisation overall and per suite group."""
    L: list[str] = []
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
    return L


def _unrun(report: dict) -> list[str]:
    """Rows that failed or were skipped."""
    L: list[str] = []
    rows = report["rows"]
    bad = [r for r in rows if r.get("status") != "ok"]
    if bad or report["skipped"]:
        L += ["", "## Rows that did not run", ""]
        L += [f"- {r['name']}: {r['status']}: {r.get('error')}" for r in bad]
        L += [f"- {s['name']}: skipped: {s['reason']}" for s in report["skipped"]]
    return L


def _inputs(report: dict) -> list[str]:
    """What the rows were measured on."""
    L: list[str] = []
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
    return L


def _bundle_and_environment(report: dict) -> list[str]:
    """The bundle's models, the machine, notes and plots."""
    L: list[str] = []
    b, env = report["bundle"], report["environment"]
    geo = b["geometry"]
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
    return L


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
    labels = sorted({r["latency_label"] for r in report["rows"]
                     if r.get("status") == "ok" and r["latency"].get("extrapolated")})
    if labels:
        t.caption = "* " + "; ".join(labels)
    return t
