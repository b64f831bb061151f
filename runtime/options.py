"""The scoring options ``rlp-heatmap`` and ``rlp-cohort`` share: one table, so both take the same flags and choices.

Each :class:`Option` is one flag with its argparse settings; :data:`SCORING` lists them in ``rlp-heatmap``'s
order. The per-input ones (``per_input=True``) change what an input's outputs are: ``rlp-cohort`` keys its
resume on them (its ``Settings`` are built from this table) and hands them to ``rlp-heatmap``'s per-input
code. The others choose how the bundle runs (backend, precision, batch), which does not change the maps.
The choices are the constants the code validates against (``Bundle``, :mod:`.orchestrate`, the backend table).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from . import __version__
from .backends import AUTO_ORDER, BACKENDS
from .coarse import NAME as COARSE
from .coarse import CoarseToFine
from .core.cliutil import fraction, int_at_least
from .core.errors import EX_USAGE, RlpError
from .core.geometry import SCORES
from .core.manifest import head_role
from .core.nifti import AXES
from .heatmap import DEFAULT_BATCH, METHODS, PRECISIONS
from .orchestrate import DEFAULT_TOP_K, NONFINITE


def heatmap_head(text: str) -> str:
    """An argparse type: a heatmap head (g, r or r-NAME), given with ``--path``."""
    try:
        head_role(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a heatmap path (g, r or r-NAME)") from None
    return text


@dataclass(frozen=True)
class Option:
    """One shared flag: its names, whether it changes an input's outputs, and its argparse settings."""

    flags: tuple[str, ...]
    per_input: bool
    kwargs: dict = field(default_factory=dict)

    @property
    def dest(self) -> str:
        return self.flags[0].lstrip("-").replace("-", "_")

    @property
    def default(self):
        return self.kwargs.get("default", False if self.kwargs.get("action") == "store_true" else None)


SCORING = (
    Option(("--path",), True, dict(type=heatmap_head, default="r",
           help="r: the bundle's predictor (default, fast); r-NAME: a predictor variant the bundle also holds; "
                "g: G, exact and slow")),
    Option(("--method",), True, dict(choices=METHODS, default="plain",
           help="plain (default): every window through the model; incremental: the same scores, recomputing "
                "only what each box changes (predictors that read the whole slice, on onnxruntime); "
                "coarse-to-fine: APPROXIMATE, a coarse lattice of windows, then exactly only the windows it "
                "finds high, the others estimated between them")),
    Option(("--coarse-factor",), True, dict(type=int_at_least(2), default=None, metavar="N",
           help=f"coarse-to-fine: score every N-th window row and column first (default {CoarseToFine.factor})")),
    Option(("--refine",), True, dict(type=fraction, default=None, metavar="F",
           help=f"coarse-to-fine: then score exactly the fraction F of the other windows with the highest "
                f"estimates (default {CoarseToFine.refine})")),
    Option(("--backend",), False, dict(choices=("auto",) + BACKENDS, default="auto",
           help=f"inference backend (default auto: {', then '.join(AUTO_ORDER)}; --list-backends)")),
    Option(("--score",), True, dict(choices=tuple(SCORES), default=None,
           help="the G path's window score (default: the bundle's, normally z: |x - mu| / b, G's error in "
                "units of the error it expects on healthy tissue there); l1: the paper's raw L1 (--path g only)")),
    Option(("--precision",), False, dict(choices=PRECISIONS, default="auto",
           help="auto: the bundle's fp16 models on GPU backends, fp32 on the CPU")),
    Option(("--batch",), False, dict(type=int_at_least(1), default=DEFAULT_BATCH,
           help=f"windows per model call (default {DEFAULT_BATCH})")),
    Option(("--axis",), True, dict(choices=tuple(AXES), default="axial",
           help="slice orientation for volumes (default axial; single-slice files use their own)")),
    Option(("--slice",), True, dict(type=int_at_least(0), default=None, metavar="N",
           help="only the slice with voxel index N along the file axis closest to --axis (as viewers show it)")),
    Option(("--volume-index",), True, dict(type=int_at_least(0), default=None, metavar="N",
           help="4D files: use volume N (0-based, along the fourth axis) instead of refusing a file with "
                "several volumes; the outputs have the 3D grid")),
    Option(("--all-windows",), True, dict(action="store_true", help="evaluate windows without brain tissue too")),
    Option(("--save-window-map",), True, dict(action="store_true", help="also write <stem>_windows.npy")),
    Option(("--no-overlay",), True, dict(action="store_true",
           help="leave out <stem>_overlay.png (drawing it is most of an input's time on the R path: "
                "docs/SCALING.md)")),
    Option(("--neurological",), True, dict(action="store_true",
           help="overlays in the neurological convention (the patient's left on the left); default: "
                "radiological (the patient's left on the right), sides marked from the input's affine")),
    Option(("--top-k",), True, dict(type=int_at_least(0), default=DEFAULT_TOP_K, metavar="K",
           help=f"windows listed in the summary (default {DEFAULT_TOP_K})")),
    Option(("--nonfinite",), True, dict(choices=NONFINITE, default=None,
           help="NaN/Inf voxels: error (default, from the bundle) or zero (replace with 0 and warn)")),
    Option(("--strict",), True, dict(action="store_true",
           help="refuse an input that fails a training-domain check (exit 65, no output) instead of warning")),
)
#: the per-input options: what an input's outputs depend on besides the bundle
PER_INPUT = tuple(o for o in SCORING if o.per_input)


def add_scoring_options(parser: argparse.ArgumentParser, *, before: dict | None = None,
                        **changes: dict) -> None:
    """Add every :data:`SCORING` option to ``parser``. ``changes``: dest -> argparse settings that replace the
    table's for this command (another default or help); ``before``: dest -> a function adding the command's own
    options just before that one (so that ``--help`` keeps related flags together)."""
    for option in SCORING:
        if before and option.dest in before:
            before[option.dest](parser)
        parser.add_argument(*option.flags, **{**option.kwargs, **changes.get(option.dest, {})})


def add_closing_options(parser: argparse.ArgumentParser, *, quiet: str, json: str) -> None:
    """``--quiet``, ``--json`` and ``--version``, the options both commands end with (``quiet`` and ``json``: what
    they do there)."""
    parser.add_argument("--quiet", "-q", action="store_true", help=quiet)
    parser.add_argument("--json", action="store_true", help=json)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")


def coarse_settings(args) -> CoarseToFine | None:
    """The coarse-to-fine settings (None for the other methods; the options must not be given then)."""
    given = {k: v for k, v in (("factor", args.coarse_factor), ("refine", args.refine)) if v is not None}
    if args.method != COARSE:
        if given:
            raise RlpError(f"--coarse-factor and --refine apply to --method {COARSE} only", code=EX_USAGE)
        return None
    return CoarseToFine(**given)
