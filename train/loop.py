"""The two training stages: G and D adversarially (``gan``), then R against a frozen G (``predictor``).

The stages are classes: :class:`~rlp.train.gan.GanStage`, and one class per predictor kind in
:data:`~rlp.train.predictors.PREDICTOR_STAGES`, on the shared :class:`~rlp.train.trainer.Stage`
(run folder, checkpoints, metrics, ``--resume``, interrupts, DDP).
"""

from __future__ import annotations

from pathlib import Path

from rlp.runtime.core.runfolder import checkpoint_name

from .common import box_scores, dense_loss, make_geometry, run_score
from .config import TrainConfig
from .gan import GanStage
from .predictors import PREDICTOR_STAGES

__all__ = ["train_gan", "train_predictor", "make_geometry", "dense_loss", "box_scores", "run_score", "checkpoint_name"]


def train_gan(cfg: TrainConfig | dict, data_path: str, run: Path, *, resume: bool = False, quiet: bool = False) -> dict:
    return GanStage(cfg, data_path, run, resume, quiet).fit()


def train_predictor(cfg: TrainConfig | dict, data_path: str, run: Path, *, resume: bool = False,
                    quiet: bool = False) -> dict:
    cfg = TrainConfig.coerce(cfg)
    return PREDICTOR_STAGES[cfg.predictor.kind](cfg, data_path, run, resume, quiet).fit()
