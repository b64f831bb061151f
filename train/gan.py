"""Stage ``gan``: G (the inpainting U-Net) and D (the patch discriminator), adversarially."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from rlp.runtime.core.errors import BadInput
from rlp.runtime.core.kinds import InputKind

from . import models
from .common import box_mask_like, box_scores, fixed_windows, g_losses, save_samples, unwrap, write_heldout
from .trainer import Stage


class GanStage(Stage):
    stage = "gan"

    def build(self) -> None:
        s = self.settings
        G = models.UNetG(width=s.width, depth=s.depth, max_width=s.max_width, upsample=s.upsample, output=s.output)
        if self.geom.input_size % (2**s.depth):
            raise BadInput(f"G's input side {self.geom.input_size} must be a multiple of 2**depth = {2 ** s.depth}")
        D = models.PatchD(width=s.d_width, n_layers=s.d_layers)
        self.G = self.dist.wrap(G.to(self.device), self.device)
        self.D = self.dist.wrap(D.to(self.device), self.device)
        self.models = {"g": self.G, "d": self.D}
        b1 = float(s.beta1)
        self.optims = {"g": torch.optim.Adam(self.G.parameters(), float(s.lr_g), betas=(b1, 0.999)),
                       "d": torch.optim.Adam(self.D.parameters(), float(s.lr_d), betas=(b1, 0.999))}
        self.val_inp, self.val_orig, self.val_boxes = fixed_windows(
            self.data, "val", self.geom, int(s.val_windows), self.cfg.run.seed + 1)
        if self.dist.main:
            write_heldout(self.folder, self.data)
        self.schedules(max(1, int(s.steps)))

    def input_kinds(self) -> dict:
        return {"g": InputKind.CROP if self.geom.context is not None else InputKind.IMAGE}

    def step(self) -> dict:
        s = self.settings
        inp, orig, mask, _ = self.batch(int(s.batch), s.box_sampling, corrupt=True)
        self.G.train()
        self.D.train()
        with self.autocast():
            out = self.G(inp).float()
        mu = out[:, :1]
        comp = mask * mu + (1 - mask) * orig
        logs = {}
        adv = float(s.adv)
        if adv > 0:
            logs["loss_d"] = self._d_step(orig, comp)
        opt_g = self.optims["g"]
        opt_g.zero_grad(set_to_none=True)
        sc = box_scores(out, orig, mask)
        l_box = sc["l1"].mean()
        loss = float(s.l1_box) * l_box + float(s.l1_context) * sc["whole"].mean()
        if "nll" in sc:  # Laplace G: the negative log-likelihood of the box's pixels under (mu, b)
            l_nll = sc["nll"].mean()
            loss = loss + float(s.nll) * l_nll
            logs["nll_box"] = float(l_nll.detach())
        if adv > 0:
            with self.autocast():
                fake = unwrap(self.D)(comp).float()
            l_adv = F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))
            loss = loss + adv * l_adv
            logs["loss_adv"] = float(l_adv.detach())
        self.backward(loss, opt_g)
        self.scheds["g"].step()
        logs["l1_box"] = float(l_box.detach())
        return logs

    def _d_step(self, orig: torch.Tensor, comp: torch.Tensor) -> float:
        opt_d = self.optims["d"]
        opt_d.zero_grad(set_to_none=True)
        with self.autocast():
            both = self.D(torch.cat([orig, comp.detach()])).float()
        n = orig.shape[0]
        loss_d = 0.5 * (F.binary_cross_entropy_with_logits(both[:n], torch.ones_like(both[:n]))
                        + F.binary_cross_entropy_with_logits(both[n:], torch.zeros_like(both[n:])))
        self.backward(loss_d, opt_d)
        self.scheds["d"].step()
        return float(loss_d.detach())

    @torch.no_grad()
    def validate(self, step: int) -> dict:
        G = unwrap(self.G)
        vi, vo = self.val_inp.to(self.device), self.val_orig.to(self.device)
        mask = box_mask_like(vo, self.geom, self.val_boxes)
        sc = g_losses(G, vi, vo, mask)
        every = int(self.settings.sample_every or 0)
        if every and (step % every == 0 or step == int(self.settings.steps)):
            out = G(vi[:6]).cpu().numpy()
            save_samples(self.folder.samples / f"gan_step{step:06d}.png", vi[:6].cpu().numpy(), vo[:6].cpu().numpy(),
                         out)
        rec = {"val_key": "val_l1", "val_l1": float(sc["l1"].mean()), "val_l1_image": float(sc["whole"].mean())}
        if "nll" in sc:  # a Laplace G is kept by its likelihood on held-out windows (mean and scale together)
            rec.update(val_key="val_nll", val_nll=float(sc["nll"].mean()), val_z=float(sc["z"].mean()))
        return rec
