"""Tiny run folders with the layout rlp-train writes (random tiny models, no training): for the export tests and
the reliability tests of rlp-export. Needs torch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from rlp.runtime.core.geometry import WindowGeometry
from rlp.runtime.core.preprocess import Preprocessing
from rlp.train.checkpoint import save_checkpoint
from rlp.train.models import CropR, UNetG

GEOMETRY = WindowGeometry(size=32, window=4, stride=4, context=16)


# ---------------------------------------------------------------- helpers
def synthetic_slices(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Brain-like slices: an ellipse of smooth texture in [0, 1] on a zero background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / (size - 1) * 2 - 1
    images, brains = [], []
    for _ in range(n):
        brain = (xx / (0.7 + 0.2 * rng.random())) ** 2 + (yy / (0.6 + 0.2 * rng.random())) ** 2 < 1
        tex = ndimage.gaussian_filter(rng.random((size, size)), size / 16)
        tex = (tex - tex.min()) / (np.ptp(tex) + 1e-12)
        images.append((np.clip(0.2 + 0.8 * tex, 0, 1) * brain).astype(np.float32))
        brains.append(brain)
    return np.stack(images), np.stack(brains)


def randomise_batchnorm(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial running statistics, so that folding BatchNorm is really tested."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.rand(c, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(c, generator=g) * 0.2 - 0.1)
    return model.eval()


def make_run(folder: Path, *, geometry: WindowGeometry = GEOMETRY, g: torch.nn.Module | None = None,
             r: torch.nn.Module | None = None, n_slices: int = 3, config: dict | None = None) -> Path:
    """A run folder with the layout rlp-train writes."""
    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "checkpoints").mkdir(exist_ok=True)
    config = config or {"preset": "test", "predictor": {"target": "window"}}
    (folder / "config.json").write_text(json.dumps(config))
    common = {"geometry": geometry.to_dict(), "preprocessing": Preprocessing(size=geometry.size).to_dict(),
              "config": config, "data": {"path": "synthetic", "sha256": "0" * 64}, "metrics": {"val_l1": 0.1},
              "step": 7}
    if g is not None:
        d = torch.nn.Conv2d(1, 1, 3)
        save_checkpoint(folder / "checkpoints/gan_best.pt", dict(
            common, stage="gan", arch={"g": g.arch, "d": {"kind": "patchgan", "width": 4, "n_layers": 1}},
            models={"g": g.state_dict(), "d": d.state_dict()}))
    if r is not None:
        save_checkpoint(folder / "checkpoints/predictor_best.pt", dict(
            common, stage="predictor", arch={"r": r.arch}, models={"r": r.state_dict()}))
    images, brains = synthetic_slices(n_slices, geometry.size)
    np.savez(folder / "heldout.npz", images=images, brains=brains)
    return folder


def tiny_g() -> UNetG:
    torch.manual_seed(1)
    return randomise_batchnorm(UNetG(width=4, depth=2))


def tiny_r() -> CropR:
    torch.manual_seed(2)
    return CropR(input_size=16, width=4).eval()


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.endswith((".partial", ".old")))
