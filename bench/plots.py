"""PNG plots of a bench report: latency bars, memory bars, and slice panels (input, lesion, G and R heatmaps).

matplotlib through its object API on the Agg canvas (no pyplot, no global
backend switch), as :mod:`rlp.runtime.overlay` does. Slices are drawn the way
``rlp-heatmap`` draws them: canonical orientation, first axis across, origin
lower, aspect from the voxel spacing.
"""

from __future__ import annotations

import numpy as np

from rlp.runtime.overlay import figure as _figure
from rlp.runtime.overlay import png_bytes

from .report import MB


def _png(fig) -> bytes:
    return png_bytes(fig, bbox_inches="tight")


def _bars(ax, names, values, colours, xlabel: str, labels, label_at=None) -> None:
    y = np.arange(len(names))
    ax.barh(y, values, color=colours)
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    for yi, v, text in zip(y, values if label_at is None else label_at, labels):
        ax.text(v, yi, f"  {text}", va="center", fontsize=7)
    ax.margins(x=0.3)


def _colour(row: dict) -> str:
    return "tab:orange" if row["path"] == "g" else "tab:blue"


def latency_png(report: dict) -> bytes | None:
    rows = [r for r in report["rows"] if r.get("status") == "ok"]
    if not rows:
        return None
    fig = _figure(7.5, 0.45 * len(rows) + 1.4)
    ax = fig.subplots()
    med = [r["latency"]["median_s"] for r in rows]
    lo = [m - r["latency"]["min_s"] for m, r in zip(med, rows)]
    hi = [r["latency"]["p95_s"] - m for m, r in zip(med, rows)]
    labels = [f"{m:.3g} s" + (" *" if r["latency"].get("extrapolated") else "") for m, r in zip(med, rows)]
    _bars(ax, [r["name"] for r in rows], med, [_colour(r) for r in rows], "heatmap latency per slice (s)", labels,
          [r["latency"]["p95_s"] for r in rows])
    ax.errorbar(med, np.arange(len(rows)), xerr=[lo, hi], fmt="none", ecolor="black", capsize=3, linewidth=1)
    if max(med) / max(min(med), 1e-12) > 50:
        ax.set_xscale("log")
    extra = sorted({r["latency_label"] for r in rows if r["latency"].get("extrapolated")})
    title = "median, whiskers min to p95 (R blue, G orange)"
    if extra:
        title += "\n* " + "; ".join(extra)
    ax.set_title(title, fontsize=9)
    return _png(fig)


def memory_png(report: dict) -> bytes | None:
    rows = [r for r in report["rows"] if r.get("status") == "ok" and r["memory"].get("peak_rss_bytes")]
    if not rows:
        return None
    fig = _figure(7.5, 0.45 * len(rows) + 1.4)
    ax = fig.subplots()
    peak = [r["memory"]["peak_rss_bytes"] / MB for r in rows]
    base = [(r["memory"].get("baseline_bytes") or 0) / MB for r in rows]
    _bars(ax, [r["name"] for r in rows], peak, [_colour(r) for r in rows], "peak RSS of the row's process (MB)",
          [f"{p:.0f} MB (model {r['model_bytes'] / MB:.2f} MB)" if r.get("model_bytes") else f"{p:.0f} MB"
           for p, r in zip(peak, rows)])
    ax.barh(np.arange(len(rows)), base, color="lightgrey")
    ax.set_title("peak RSS per row, each in its own process (R blue, G orange; grey: RSS after imports)", fontsize=9)
    return _png(fig)


def _show(ax, image, spacing, cmap="gray", vmin=None, vmax=None, alpha=1.0):
    aspect = float(spacing[1]) / float(spacing[0])  # drawn transposed: x = first axis, y = second
    return ax.imshow(np.ma.asarray(image).T, origin="lower", cmap=cmap, vmin=vmin, vmax=vmax, aspect=aspect,
                     interpolation="nearest", alpha=alpha)


def panels_png(slices: list[dict]) -> bytes | None:
    """One line per slice: input, lesion mask, G heatmap, R heatmap (top window boxed).

    Each item: ``{"title", "image", "spacing", "lesion" (or None), "g": (pixel map, box) or None,
    "r": (pixel map, box) or None}``.
    """
    if not slices:
        return None
    from matplotlib.patches import Rectangle

    fig = _figure(12.5, 3.0 * len(slices) + 0.4)
    axes = fig.subplots(len(slices), 4, squeeze=False)
    for line, s in zip(axes, slices):
        img, sp = np.nan_to_num(np.asarray(s["image"], np.float64)), s["spacing"]
        fg = img[img > 0]
        lo, hi = np.percentile(fg, [0.5, 99.5]) if fg.size else (0.0, 1.0)
        for ax in line:
            ax.set_axis_off()
            _show(ax, img, sp, vmin=lo, vmax=hi if hi > lo else lo + 1)
        line[0].set_title(s["title"], fontsize=8)
        if s.get("lesion") is not None:
            _show(line[1], np.ma.masked_equal(s["lesion"].astype(float), 0), sp, cmap="autumn", alpha=0.7)
        line[1].set_title("lesion mask", fontsize=8)
        for ax, key in ((line[2], "g"), (line[3], "r")):
            if s.get(key) is None:
                ax.set_title(f"{key.upper()}: not run", fontsize=8)
                continue
            heat, box = s[key]
            m = _show(ax, np.ma.masked_less_equal(heat, 0), sp, cmap="inferno", alpha=0.75)
            if box is not None and np.all(np.isfinite(box)):
                a0, b0, a1, b1 = box
                ax.add_patch(Rectangle((a0, b0), a1 - a0, b1 - b0, fill=False, edgecolor="cyan", linewidth=1.2))
            fig.colorbar(m, ax=ax, shrink=0.75)
            ax.set_title(f"{key.upper()} window score{' (predicted)' if key == 'r' else ''}", fontsize=8)
    return _png(fig)
