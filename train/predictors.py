"""Stage ``predictor``: R learns G's window score against the run's frozen G.

One class per predictor kind, one entry in :data:`PREDICTOR_STAGES`: a new predictor is a subclass of
:class:`WindowPredictor` (R reads the painted window's input and gives its score; ``make_model`` and
``r_geometry`` say which model and what it reads) or of :class:`PredictorStage` with its own step and
validation, like :class:`DensePredictor`.
"""

from __future__ import annotations

import numpy as np
import torch

from rlp.runtime.core.errors import BadInput
from rlp.runtime.core.kinds import InputKind, PredictorKind

from . import models
from .checkpoint import load_checkpoint
from .common import box_mask_like, box_scores, dense_loss, fixed_windows, g_losses, run_score, spearman, unwrap
from .targets import build_targets
from .trainer import Stage


class PredictorStage(Stage):
    """What every predictor does first: load the run's best G, frozen, and the score to learn."""

    stage = "predictor"

    def build(self) -> None:
        self.gpath = self.folder.checkpoint("gan", "best")
        gst = load_checkpoint(self.gpath)
        if gst.get("stage") != "gan":
            raise BadInput("not a G checkpoint", self.gpath)
        if gst.get("geometry") != self.geom.to_dict():
            raise BadInput("G was trained with a different window geometry than this config", self.gpath)
        self.frozen_g = models.build(gst["arch"]["g"]).to(self.device)
        self.frozen_g.load_state_dict(gst["models"]["g"])
        self.frozen_g.eval().requires_grad_(False)
        self.score = run_score(self.settings.score, self.frozen_g)
        self.build_r()
        self.schedules(max(1, int(self.settings.steps)))

    def build_r(self) -> None:
        raise NotImplementedError

    def set_r(self, R: torch.nn.Module) -> None:
        self.R = self.dist.wrap(R.to(self.device), self.device)
        self.models = {"r": self.R}
        self.optims = {"r": torch.optim.Adam(self.R.parameters(), float(self.settings.lr))}

    def extra_state(self) -> dict:
        return {"score": self.score}  # the window score the predictor learned (export writes it into the manifest)


class WindowPredictor(PredictorStage):
    """R reads one painted window's input (``r_geometry``) and predicts G's score of that window."""

    def r_geometry(self):
        return self.geom

    def make_model(self) -> torch.nn.Module:
        raise NotImplementedError

    def input_kinds(self) -> dict:
        return {"r": InputKind.CROP if self.r_geom.context is not None else InputKind.IMAGE}

    def build_r(self) -> None:
        s = self.settings
        self.r_geom = self.r_geometry()
        R = self.make_model()
        n_val, val_seed = int(s.val_windows), self.cfg.run.seed + 1
        vi, vo, self.val_boxes = fixed_windows(self.data, "val", self.geom, n_val, val_seed)
        # the same windows (same seed and rule) as R's inputs, when R reads something else than G
        self.val_inp = (vi if self.r_geom == self.geom
                        else fixed_windows(self.data, "val", self.r_geom, n_val, val_seed)[0])
        mask = box_mask_like(vo, self.geom, self.val_boxes)
        sc = g_losses(self.frozen_g, vi.to(self.device), vo.to(self.device), mask.to(self.device))
        self.target_scale = models.target_scale(self.score)
        self.val_target = self._target(sc).cpu()
        if not self.resume:
            models.init_head_bias(R, float(self.val_target.mean()) / self.target_scale)
        self.set_r(R)

    def _target(self, sc: dict) -> torch.Tensor:
        return sc[self.score] if self.settings.target == "window" else sc["whole"]

    def step(self) -> dict:
        s = self.settings
        inp, orig, mask, r_inp = self.batch(int(s.batch), s.box_sampling, r_geom=self.r_geom)
        with torch.no_grad(), self.autocast():
            out = self.frozen_g(inp).float()
        target = self._target(box_scores(out, orig, mask)).float()
        self.R.train()
        opt = self.optims["r"]
        opt.zero_grad(set_to_none=True)
        with self.autocast():
            pred = self.R(r_inp).float().flatten() * self.target_scale
        loss = (pred - target).abs().mean()
        self.backward(loss, opt)
        self.scheds["r"].step()
        return {"loss": float(loss.detach()), "target_mean": float(target.mean())}

    @torch.no_grad()
    def validate(self, step: int) -> dict:
        R = unwrap(self.R)
        R.eval()
        preds = []
        for s0 in range(0, len(self.val_inp), 256):
            preds.append(R(self.val_inp[s0 : s0 + 256].to(self.device)).float().flatten().cpu() * self.target_scale)
        pred = torch.cat(preds).double().numpy()
        tgt = self.val_target.numpy()
        mae = float(np.abs(pred - tgt).mean())
        return {"val_key": "val_mae", "val_mae": mae, "val_mae_rel": mae / float(tgt.mean()),
                "val_mae_median_baseline": float(np.abs(np.median(tgt) - tgt).mean()),
                "val_spearman": spearman(pred, tgt), "val_target_mean": float(tgt.mean())}


class CropPredictor(WindowPredictor):
    """R reads G's own input: the context crop around the painted box."""

    def make_model(self):
        return models.CropR(self.geom.input_size, width=self.settings.width, n_down=self.settings.n_down)


class PaperPredictor(WindowPredictor):
    """The paper's R: the whole inpainted slice, also where G reads context crops."""

    def r_geometry(self):
        return self.geom.for_input(InputKind.IMAGE)

    def make_model(self):
        try:
            return models.PaperR(self.r_geom.input_size)
        except ValueError as exc:  # its layer table needs 256x256 (or 128x128) slices
            raise BadInput(f"--predictor paper: {exc}", self.data.path) from None


class DensePredictor(PredictorStage):
    """The slice in, every window's score out: G's window maps precomputed (and cached) once, then R trains
    on whole slices."""

    def input_kinds(self) -> dict:
        return {"r": InputKind.DENSE}

    def build_r(self) -> None:
        s, g = self.settings, self.geom
        self.targets = build_targets(self.frozen_g, self.gpath, self.data, self.data_prov["sha256"], g,
                                     self.cfg_dict["predictor"], dict(self.cfg.augment), self.cfg.run.seed,
                                     self.folder.targets_cache, device=self.device,
                                     quiet=self.quiet or not self.dist.main, score=self.score,
                                     ceiling=self.data.preprocessing.ceiling)
        self.frozen_g = None  # not needed any more: every target is in the cache
        R = models.DenseR(g.size, g.window, g.stride, width=s.width, n_context=s.n_context)
        if tuple(R(torch.zeros(1, 1, g.size, g.size)).shape[-2:]) != g.grid_shape:
            raise BadInput(f"the dense predictor cannot produce the {g.grid_shape} window grid of this geometry "
                           f"(size {g.size}, window {g.window}, stride {g.stride}); use a crop predictor")
        if not self.resume:
            models.init_head_bias(R, float(np.nanmean(self.targets["train_maps"])))
        self.set_r(R)

    def step(self) -> dict:
        t = self.targets
        pick = torch.randint(0, len(t["train_images"]), (int(self.settings.batch),), generator=self.gen).numpy()
        x = torch.from_numpy(t["train_images"][pick]).unsqueeze(1).to(self.device)
        target = torch.from_numpy(t["train_maps"][pick]).to(self.device)
        self.R.train()
        opt = self.optims["r"]
        opt.zero_grad(set_to_none=True)
        with self.autocast():
            pred = self.R(x).float()[:, 0]
        loss, parts = dense_loss(pred, target, float(self.settings.rank_weight))
        self.backward(loss, opt)
        self.scheds["r"].step()
        return parts

    @torch.no_grad()
    def validate(self, step: int) -> dict:
        R = unwrap(self.R)
        R.eval()
        t = self.targets
        x = torch.from_numpy(t["val_images"]).unsqueeze(1)
        pred = torch.cat([R(x[k : k + 8].to(self.device)).float()[:, 0].cpu()
                          for k in range(0, len(x), 8)]).double().numpy()
        tgt = t["val_maps"].astype(np.float64)
        ok = np.isfinite(tgt)
        mae = float(np.abs(pred[ok] - tgt[ok]).mean())
        per_slice = [spearman(p[m], g[m]) for p, g, m in zip(pred, tgt, ok) if m.sum() > 2]
        rank = float(np.mean(per_slice)) if per_slice else 0.0
        mean = float(tgt[ok].mean())
        return {"val_key": "val_objective", "val_objective": mae / mean + float(self.settings.rank_weight) * (1 - rank),
                "val_mae": mae, "val_mae_rel": mae / mean,
                "val_mae_median_baseline": float(np.abs(np.median(tgt[ok]) - tgt[ok]).mean()),
                "val_spearman": spearman(pred[ok], tgt[ok]), "val_spearman_slice": rank, "val_target_mean": mean}


#: the stage class of each predictor kind (``rlp-train --predictor``)
PREDICTOR_STAGES: dict[PredictorKind, type[PredictorStage]] = {
    PredictorKind.DENSE: DensePredictor,
    PredictorKind.CROP: CropPredictor,
    PredictorKind.PAPER: PaperPredictor,
}
