"""A training run folder's layout: one type for its writer (``rlp-train``) and its readers (``rlp-export``,
``rlp-bench``), so that no one spells the file names twice.

Layout::

    RUN/config.json                       the resolved training config (config-NAME.json: variant NAME's)
    RUN/metrics.jsonl                     one JSON record per line, tagged by stage
    RUN/checkpoints/gan_{last,best}.pt    stage "gan": G (and D)
    RUN/checkpoints/predictor_{last,best}.pt         stage "predictor": R
    RUN/checkpoints/predictor-NAME_{last,best}.pt    a predictor variant, exported as model r-NAME
    RUN/heldout.npz                       held-out real slices: "images" float32 (N,S,S), "brains" bool
    RUN/predictor_targets.npz             the dense predictor's cached G window maps
    RUN/samples/*.png                     G's samples during training
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .manifest import head_role

STAGES = ("gan", "predictor")
#: model key -> (stage, key of the model inside its checkpoint)
MODEL_STAGES = {"g": ("gan", "g"), "r": ("predictor", "r")}
_VARIANT = re.compile(r"predictor-([a-z0-9]+)_best\.pt")


def checkpoint_name(stage: str, variant: str | None = None) -> str:
    """``gan``, ``predictor``, or ``predictor-NAME`` for a named predictor variant (exported as ``r-NAME``)."""
    return f"{stage}-{variant}" if variant else stage


class RunFolder:
    """The files of a run folder at ``path`` (nothing is read or created here)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.metrics = self.path / "metrics.jsonl"
        self.heldout = self.path / "heldout.npz"
        self.targets_cache = self.path / "predictor_targets.npz"
        self.checkpoints = self.path / "checkpoints"
        self.samples = self.path / "samples"

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def config(self, variant: str | None = None) -> Path:
        return self.path / (f"config-{variant}.json" if variant else "config.json")

    def checkpoint(self, name: str, which: str = "best") -> Path:
        """``checkpoints/NAME_{last,best}.pt``; ``name`` from :func:`checkpoint_name`."""
        if which not in ("last", "best"):
            raise ValueError(which)
        return self.checkpoints / f"{name}_{which}.pt"

    # -- models
    def model_checkpoint(self, key: str) -> tuple[Path, str, str]:
        """(best checkpoint, stage, key inside it) of model ``key``: g, r or r-NAME; ValueError for another name."""
        if key in MODEL_STAGES:
            stage, inner = MODEL_STAGES[key]
            return self.checkpoint(stage), stage, inner
        if head_role(key) == "r":
            return self.checkpoint(checkpoint_name("predictor", key[2:])), "predictor", "r"
        raise ValueError(key)

    def models(self) -> tuple[str, ...]:
        """Every model key this run has a best checkpoint for: g, r, then the variants r-NAME."""
        keys = [k for k in MODEL_STAGES if self.model_checkpoint(k)[0].is_file()]
        if self.checkpoints.is_dir():
            keys += sorted(f"r-{m.group(1)}" for f in self.checkpoints.iterdir() if (m := _VARIANT.fullmatch(f.name)))
        return tuple(keys)

    def relative(self, p: Path) -> str:
        return p.relative_to(self.path).as_posix()
