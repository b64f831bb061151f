"""The zero-argument demo's table: for each demo slice this call computed, its top window and whether it hits the
inserted lesion (``rlp-heatmap`` with no INPUT), with the bundled model's measured weakness under it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .core.nifti import LESION_SUFFIX, load_nifti, nifti_stem
from .results import box_hits

#: the bundled demo model's measured weakness (runtime/demo/MODEL_CARD.md, the lesion suite of its run, seed 0),
#: printed under the demo's table while it lasts
DEMO_WEAKNESS = ("demo model, measured on its lesion suite (model card): R's top window misses lesions G's finds, "
                 "55/72 against 59/72 (bright uniform 13/15 against 15/15); dark uniform lesions are missed most "
                 "(R 8/14, G 9/14)")


def demo_table(args) -> None:
    """The zero-argument demo: where the top window is, and whether it hits the inserted lesion."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"rlp demo: path {args.path}, outputs in {args.out}")
    for col in ("slice", "lesion", "max score", "healthy pct", "top window (voxel)", "hits lesion"):
        t.add_column(col, no_wrap=True)
    hits = n = 0
    for inp in getattr(args, "done", args.inputs):  # only the inputs this call computed, never an earlier run's
        summary = Path(args.out) / f"{nifti_stem(inp)}_summary.json"
        mask_file = Path(inp).with_name(f"{nifti_stem(inp)}{LESION_SUFFIX}.nii.gz")
        if not summary.is_file() or not mask_file.is_file():
            continue
        rep = json.loads(summary.read_text(encoding="utf-8"))
        top = rep["top_windows"][0] if rep["top_windows"] else None
        hit = top is not None and box_hits(top["box_slice"], _lesion_slice(load_nifti(mask_file), top["slice"]))
        hits += hit
        n += 1
        t.add_row(Path(inp).name, nifti_stem(inp).rsplit("_", 1)[-1],  # the demo names end in the lesion's kind
                  f"{rep['max_score']:.4g}", _pct(rep.get("healthy_percentile")),
                  "-" if top is None else str([round(v) for v in top["voxel"]]), "yes" if hit else "no")
    if n:
        t.caption = f"top window in the lesion: {hits}/{n}"
        console = Console()
        if not console.is_terminal:
            console = Console(width=140)  # pipes and logs: no column truncation
        console.print(t)
        if args.bundle is None:  # the embedded demo bundle: its known weakness, where its user looks
            console.print(DEMO_WEAKNESS, soft_wrap=True, markup=False, highlight=False)


def _pct(p: float | None) -> str:
    return "-" if p is None else f"{p:.0f}"


def _lesion_slice(mask, index: int) -> np.ndarray:
    """The lesion mask's slice with file index ``index`` (along its slice axis), as booleans."""
    k = mask.slice_axis()
    return np.take(mask.data, mask.file_to_canonical_index(k, index), axis=k) > 0
