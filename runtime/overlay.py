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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from .atomic import write_bytes

MAX_PANELS = 12
#: the most pixels per panel side handed to matplotlib (a panel is drawn ~320 px wide): a larger slice is
#: reduced first, so that drawing a 16000x16000 slice costs what a 1024x1024 one does
DISPLAY_MAX = 1024


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


def _reduce(a: np.ndarray, f: int, how) -> np.ndarray:
    """``a`` (2D) in blocks of ``f`` x ``f`` pixels (the last ones partial), each reduced by ``how`` (float32).

    A band of ``f`` rows at a time, so that no full-resolution copy is made; non-finite values count as 0.
    """
    out = []
    for i in range(0, a.shape[0], f):
        band = np.asarray(a[i : i + f], dtype=np.float32)
        row = how(np.where(np.isfinite(band), band, np.float32(0)), axis=0)
        pad = (-row.size) % f
        if pad:
            row = np.concatenate([row, np.repeat(row[-1:], pad)])
        out.append(how(row.reshape(-1, f), axis=1))
    return np.stack(out)


def display_panel(p: Panel, limit: int = DISPLAY_MAX) -> Panel:
    """``p`` at display resolution: at most ``limit`` pixels per side (image: block means, heat: block maxima,
    so a hot window never disappears); its box and spacing follow. A small panel is returned as it is."""
    f = -(-max(p.image.shape) // limit)
    if f <= 1:
        return p
    box = None if p.box is None else tuple((v - (f - 1) / 2) / f for v in p.box)  # edges: -0.5 stays -0.5
    return replace(p, image=_reduce(p.image, f, np.mean), heat=_reduce(p.heat, f, np.max),
                   spacing=(p.spacing[0] * f, p.spacing[1] * f), box=box)


def render(panels: Sequence[Panel], *, title: str = "", label: str = "window loss",
           with_input: bool = False) -> bytes:
    """PNG bytes of the panels (in a grid); ``with_input`` also shows each slice without the heatmap."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    if not panels:
        raise ValueError("no panels to draw")
    panels = [display_panel(p) for p in panels]
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
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def save_overlay(path: str | os.PathLike, panels: Sequence[Panel], *, force: bool = True, **kw) -> Path:
    """Render the panels and write the PNG atomically."""
    return write_bytes(path, render(panels, **kw), force=force)
