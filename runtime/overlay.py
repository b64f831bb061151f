"""Overlay PNGs: the input slice in grey, the heatmap in a colour map, the top window boxed.

matplotlib is imported lazily and used through its object API with the Agg
canvas (no pyplot, no global backend switch), so importing :mod:`rlp.runtime`
stays light and a caller's own matplotlib setup is left alone.

Slices are drawn in the canonical (RAS+) orientation the runtime works in:
for an axial slice the subject's right is on the right of the picture and
anterior is up; pixel aspect follows the voxel spacing.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .atomic import write_bytes

MAX_PANELS = 12


@dataclass
class Panel:
    image: np.ndarray  # 2D slice (rows = first in-plane axis), any intensity scale
    heat: np.ndarray  # same shape, >= 0 where evaluated
    spacing: tuple[float, float] = (1.0, 1.0)
    box: tuple[float, float, float, float] | None = None  # a0, b0, a1, b1 (continuous index edges)
    title: str = ""


def pick_slices(scores: Sequence[float], n: int = MAX_PANELS) -> list[int]:
    """Positions of the ``n`` highest scores (ties: earliest first), returned in ascending order."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")[:n]
    return sorted(int(i) for i in order)


def _grey_range(image: np.ndarray) -> tuple[float, float]:
    vals = image[np.isfinite(image)]
    fg = vals[vals > 0]
    vals = fg if fg.size else vals
    if vals.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(vals, [0.5, 99.5])
    return (float(lo), float(hi)) if hi > lo else (float(lo), float(lo) + 1.0)


def render(panels: Sequence[Panel], *, title: str = "", label: str = "window loss",
           with_input: bool = False, note: str = "") -> bytes:
    """PNG bytes of the panels (in a grid); ``with_input`` also shows each slice without the heatmap; ``note``:
    a warning line under the panels (:func:`domain_note`)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    if not panels:
        raise ValueError("no panels to draw")
    vmax = max(float(np.max(p.heat)) if p.heat.size else 0.0 for p in panels)
    norm = Normalize(vmin=0.0, vmax=vmax if vmax > 0 else 1.0)
    cells = [(p, False) for p in panels] if not with_input else [c for p in panels for c in ((p, True), (p, False))]
    ncols = 2 if with_input else int(np.ceil(np.sqrt(len(cells))))
    nrows = int(np.ceil(len(cells) / ncols))
    fig = Figure(figsize=(3.2 * ncols + 0.8, 3.2 * nrows + 0.6), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    mappable = None
    for ax in axes.ravel():
        ax.set_axis_off()
    for ax, (p, plain) in zip(axes.ravel(), cells):
        lo, hi = _grey_range(p.image)
        aspect = float(p.spacing[1]) / float(p.spacing[0])  # drawn transposed: x = first axis, y = second
        image = np.where(np.isfinite(p.image), p.image, 0.0)
        ax.imshow(image.T, origin="lower", cmap="gray", vmin=lo, vmax=hi, aspect=aspect,
                  interpolation="nearest")
        if not plain:
            heat = np.ma.masked_less_equal(np.asarray(p.heat, dtype=np.float32).T, 0.0)
            mappable = ax.imshow(heat, origin="lower", cmap="inferno", norm=norm, alpha=0.6, aspect=aspect,
                                 interpolation="nearest")
            if p.box is not None:
                a0, b0, a1, b1 = p.box
                ax.add_patch(Rectangle((a0, b0), a1 - a0, b1 - b0, fill=False, edgecolor="cyan", linewidth=1.5))
        ax.set_title(p.title if not plain else "input", fontsize=9)
    if mappable is not None:
        cbar = fig.colorbar(mappable, ax=axes.ravel().tolist(), shrink=0.8)
        cbar.set_label(label)
    if title:
        fig.suptitle(title, fontsize=10)
    if note:
        _draw_note(fig, note)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def percentile_text(percentile: float | None) -> str:
    """A score's context for a title: its percentile among the bundle's healthy slices (empty without one)."""
    return "" if percentile is None else f"  (healthy p{percentile:.0f})"


def domain_note(warnings: Sequence[str] | None) -> str:
    """The overlay's warning line for an input outside the bundle's training domain (empty when inside)."""
    if not warnings:
        return ""
    more = f" (+{len(warnings) - 1} more, see the summary)" if len(warnings) > 1 else ""
    return f"WARNING: not what the model was trained on: {warnings[0]}{more}"


def _draw_note(fig, note: str) -> None:
    import textwrap

    fig.subplots_adjust(bottom=0.14)
    fig.text(0.01, 0.01, textwrap.fill(note, 110), fontsize=7, color="red", ha="left", va="bottom")


def save_overlay(path: str | os.PathLike, panels: Sequence[Panel], *, force: bool = True, **kw) -> Path:
    """Render the panels and write the PNG atomically."""
    return write_bytes(path, render(panels, **kw), force=force)
