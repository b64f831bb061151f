"""Overlay PNGs: the input slice in grey, the heatmap in a colour map, the top window boxed.

matplotlib is imported lazily and used through its object API with the Agg
canvas (no pyplot, no global backend switch), so importing :mod:`rlp.runtime`
stays light and a caller's own matplotlib setup is left alone.

Every panel is marked with the anatomical letters of its four sides, read from the input's affine
(:meth:`~rlp.runtime.core.nifti.Volume.axcodes`), and drawn in the radiological convention by default (the
patient's left on the picture's right; ``radiological=False``: the neurological one, left on the left);
anterior is up on axial slices, superior up on the others, anterior on the left of sagittal ones
(:func:`display_axes`). Pixel aspect follows the voxel spacing.

What the figure shows (#20): a panel's title gives the **top window's score** (the summary's
``max_score`` for that slice); the colours are the **per-voxel heatmap**, each voxel the mean of the
scores of the windows covering it (the heatmap NIfTI, whose maximum is the summary's ``heatmap_max``),
so the colour bar stops below the title's score wherever windows overlap (:func:`heat_label`).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from .core.atomic import write_bytes

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
    #: the letters the panel's first and second axes run towards (from the input's affine); None: unknown
    axcodes: tuple[str, str] | None = None


def pick_slices(scores: Sequence[float], n: int = MAX_PANELS) -> list[int]:
    """Positions of the ``n`` highest scores (ties: earliest first), returned in ascending order."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")[:n]
    return sorted(int(i) for i in order)


def figure(width: float, height: float):
    """A matplotlib Figure on its own Agg canvas (no pyplot, no global backend switch)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig, **savefig) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", **savefig)
    return buf.getvalue()


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


def heat_label(what: str) -> str:
    """The colour bar's label: the heatmap's voxels are means of window scores, not the top window's score."""
    return f"{what}\nper voxel: the mean over the windows covering it"


def panel_title(top_score: float, slice_index: int | None = None) -> str:
    """A panel's title: the top window's score (the summary's max_score for that slice)."""
    where = "" if slice_index is None else f"slice {slice_index}  "
    return f"{where}top window {top_score:.3g}"


_OPPOSITE = {"L": "R", "R": "L", "A": "P", "P": "A", "S": "I", "I": "S"}


@dataclass(frozen=True)
class Display:
    """How a panel goes on the screen: which of its axes runs across, the flips, and the side letters."""

    across: int  # the panel axis (0 or 1) that runs left to right; the other runs top to bottom
    flip_x: bool  # the across axis runs right to left
    flip_y: bool  # the other axis runs bottom to top
    left: str = ""
    right: str = ""
    top: str = ""
    bottom: str = ""


def display_axes(axcodes: tuple[str, str] | None, radiological: bool = True) -> Display:
    """Where a panel's axes go, from the letters they run towards (``axcodes``, e.g. ("R", "A")).

    The left-right axis runs across (radiological: the patient's left on the picture's right;
    neurological: on its left), else the anterior-posterior one (anterior on the left, as a sagittal slice
    is seen from the patient's left); anterior is up on axial slices, superior on the others. Unknown
    letters (None): the panel's first axis across, second up, no markers."""
    if axcodes is None:
        return Display(0, False, True)
    codes = [c.upper() for c in axcodes]
    group = ["LRAPSI".index(c) // 2 for c in codes]  # 0: left-right, 1: anterior-posterior, 2: superior-inferior
    across = 0 if group[0] <= group[1] else 1
    up = 1 - across
    right = ("L" if radiological else "R", "P", "S")[group[across]]
    top = ("R", "A", "S")[group[up]]
    flip_x = codes[across] != right  # unflipped, the columns run towards codes[across]: it is on the right
    flip_y = codes[up] == top  # unflipped, the rows run down towards codes[up]: it is at the bottom
    return Display(across, flip_x, flip_y, _OPPOSITE[right], right, top, _OPPOSITE[top])


def to_screen(array: np.ndarray, d: Display) -> np.ndarray:
    """A panel array as it is drawn: ``[row from the top, column from the left]``."""
    a = np.asarray(array)
    screen = a.T if d.across == 0 else a
    if d.flip_y:
        screen = screen[::-1]
    if d.flip_x:
        screen = screen[:, ::-1]
    return screen


def _box_on_screen(box, shape: tuple[int, int], d: Display) -> tuple[float, float, float, float]:
    """A box (a0, b0, a1, b1: edges along the panel's axes) as (x, y, width, height) on the screen."""
    a0, b0, a1, b1 = box
    (x0, x1), (y0, y1) = ((a0, a1), (b0, b1)) if d.across == 0 else ((b0, b1), (a0, a1))
    ncols, nrows = (shape[0], shape[1]) if d.across == 0 else (shape[1], shape[0])
    if d.flip_x:
        x0, x1 = ncols - 1 - x0, ncols - 1 - x1
    if d.flip_y:
        y0, y1 = nrows - 1 - y0, nrows - 1 - y1
    return min(x0, x1), min(y0, y1), abs(x1 - x0), abs(y1 - y0)


def _mark_sides(ax, d: Display) -> None:
    style = {"transform": ax.transAxes, "color": "yellow", "fontsize": 9, "fontweight": "bold"}
    for text, x, y, ha, va in ((d.left, 0.01, 0.5, "left", "center"), (d.right, 0.99, 0.5, "right", "center"),
                               (d.top, 0.5, 0.99, "center", "top"), (d.bottom, 0.5, 0.01, "center", "bottom")):
        if text:
            ax.text(x, y, text, ha=ha, va=va, **style)


def _draw_cell(ax, p: Panel, plain: bool, norm, radiological: bool):
    """One panel on ``ax``: the slice in grey, unless ``plain`` the heatmap and the top window, the side
    letters; returns the heatmap's image (None for a plain cell)."""
    from matplotlib.patches import Rectangle

    d = display_axes(p.axcodes, radiological)
    lo, hi = _grey_range(p.image)
    down = 1 - d.across
    aspect = float(p.spacing[down]) / float(p.spacing[d.across])
    image = np.where(np.isfinite(p.image), p.image, 0.0)
    ax.imshow(to_screen(image, d), origin="upper", cmap="gray", vmin=lo, vmax=hi, aspect=aspect,
              interpolation="nearest")
    mappable = None
    if not plain:
        heat = np.ma.masked_less_equal(to_screen(np.asarray(p.heat, dtype=np.float32), d), 0.0)
        mappable = ax.imshow(heat, origin="upper", cmap="inferno", norm=norm, alpha=0.6, aspect=aspect,
                             interpolation="nearest")
        if p.box is not None:
            x, y, w, h = _box_on_screen(p.box, p.image.shape, d)
            ax.add_patch(Rectangle((x, y), w, h, fill=False, edgecolor="cyan", linewidth=1.5))
    _mark_sides(ax, d)
    ax.set_title(p.title if not plain else "input", fontsize=9)
    return mappable


def montage_cells(panels: Sequence[Panel], with_input: bool) -> tuple[list[tuple[Panel, bool]], int]:
    """The cells of the figure, (panel, plain) in reading order, and the number of columns: with
    ``with_input`` every heatmap panel has its plain input on its left, so no lesion hides under colours."""
    if not with_input:
        return [(p, False) for p in panels], int(np.ceil(np.sqrt(len(panels))))
    pairs = int(np.ceil(np.sqrt(len(panels))))
    return [c for p in panels for c in ((p, True), (p, False))], 2 * pairs


def panels_figure(panels: Sequence[Panel], *, title: str = "", label: str = "window loss", with_input: bool = True,
                  radiological: bool = True):
    """The matplotlib Figure of the panels (see :func:`render`)."""
    from matplotlib.colors import Normalize

    if not panels:
        raise ValueError("no panels to draw")
    panels = [display_panel(p) for p in panels]
    vmax = max(float(np.max(p.heat)) if p.heat.size else 0.0 for p in panels)
    norm = Normalize(vmin=0.0, vmax=vmax if vmax > 0 else 1.0)
    cells, ncols = montage_cells(panels, with_input)
    nrows = int(np.ceil(len(cells) / ncols))
    fig = figure(3.2 * ncols + 0.8, 3.2 * nrows + 0.6)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    mappable = None
    for ax in axes.ravel():
        ax.set_axis_off()
    for ax, (p, plain) in zip(axes.ravel(), cells):
        mappable = _draw_cell(ax, p, plain, norm, radiological) or mappable
    if mappable is not None:
        cbar = fig.colorbar(mappable, ax=axes.ravel().tolist(), shrink=0.8)
        cbar.set_label(label)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def render(panels: Sequence[Panel], *, title: str = "", label: str = "window loss",
           with_input: bool = True, radiological: bool = True, note: str = "") -> bytes:
    """PNG bytes of the panels (in a grid); ``with_input`` (default) shows each slice also without the
    heatmap, beside it; ``radiological`` (default) puts the patient's left on the picture's right; ``note``:
    a warning line under the panels (:func:`domain_note`)."""
    fig = panels_figure(panels, title=title, label=label, with_input=with_input, radiological=radiological)
    if note:
        _draw_note(fig, note)
    return png_bytes(fig)


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
