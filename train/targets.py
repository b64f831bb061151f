"""G's window-loss maps, computed once in large batches and cached, for predictors trained on them.

Training a predictor against a frozen G one G pass per step spends most of its
time in G and sees each window once. Here G scores many windows of many
(augmented) training slices in large batches before R trains, and the maps are
cached in the run folder (``predictor_targets.npz``) with their provenance: the
G checkpoint's sha256, the dataset's sha256, the geometry and the sampling
settings. A cache whose provenance differs is rebuilt, never reused.

A map holds G's loss for a seeded random fraction of the windows the heatmap
evaluates on that slice and NaN elsewhere (train copies); validation slices get
every evaluated window.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rlp.runtime.core.atomic import atomic_path
from rlp.runtime.core.errors import BadInput
from rlp.runtime.core.geometry import WindowGeometry
from rlp.runtime.core.manifest import sha256_file
from rlp.runtime.core.progress import progress

from .augment import AugmentConfig, augment, corrupt_context

CACHE = "predictor_targets.npz"
FORMAT = 1


@torch.no_grad()
def window_loss_maps(G: nn.Module, images: np.ndarray, brains: np.ndarray, geom: WindowGeometry, *,
                     fraction: float = 1.0, rng: np.random.Generator | None = None, batch: int = 512,
                     device: torch.device | None = None, on_slice=None, score: str = "l1") -> np.ndarray:
    """G's window score map (N, rows, cols) float32 for N model-grid slices; NaN where not scored.

    ``fraction`` < 1 scores a random subset (drawn from ``rng``) of each
    slice's evaluated windows. The crops and the score are the runtime's
    (:meth:`WindowGeometry.crops`, :meth:`WindowGeometry.box_score`).
    """
    G.eval()
    device = device or next(G.parameters()).device
    rng = rng or np.random.default_rng(0)
    maps = np.full((len(images),) + geom.grid_shape, np.nan, dtype=np.float32)
    boxes_all = geom.window_boxes()
    for n, (img, brain) in enumerate(zip(images, brains)):
        ev = np.flatnonzero(geom.evaluated(brain).ravel())
        if fraction < 1.0 and len(ev):
            ev = np.sort(rng.choice(ev, size=max(1, int(round(fraction * len(ev)))), replace=False))
        padded = geom.pad(np.asarray(img, np.float32))
        flat = maps[n].reshape(-1)
        for s in range(0, len(ev), batch):
            idx = ev[s : s + batch]
            b = boxes_all[idx]
            x = torch.from_numpy(geom.crops(padded, b, inpaint=True)).to(device)
            y = G(x).float().cpu().numpy()
            flat[idx] = geom.box_score(y, geom.crops(padded, b, inpaint=False), b, score)
        if on_slice is not None:
            on_slice()
    return maps


def build_targets(G: nn.Module, g_checkpoint: Path, data, data_sha256: str, geom: WindowGeometry, sec: dict, aug: dict,
                  seed: int, cache: Path, *, device: torch.device, quiet: bool = False, score: str = "l1",
                  ceiling: float = 1.0) -> dict:
    """Training and validation (image, map) pairs for a dense predictor, from the cache when it matches.

    ``sec`` is the predictor config: ``target_copies`` (the original slice plus
    augmented copies per training slice) and ``target_fraction`` (the share of
    windows scored on each training copy).
    """
    copies, fraction = int(sec["target_copies"]), float(sec["target_fraction"])
    corrupt = float(sec.get("target_corrupt", 0.0))
    if copies < 1 or not 0 < fraction <= 1:
        raise BadInput("predictor.target_copies must be >= 1 and predictor.target_fraction in (0, 1]")
    cfg = AugmentConfig(**aug)
    if not 0 <= corrupt <= 1 or (corrupt > 0 and (cfg.context_noise <= 0 or copies < 2)):
        raise BadInput("predictor.target_corrupt must lie in [0, 1] and, above 0, needs augment.context_noise > 0 "
                       "and target_copies >= 2 (it corrupts a share of the augmented copies)")
    prov = {"format": FORMAT, "g_checkpoint_sha256": sha256_file(g_checkpoint), "data_sha256": data_sha256,
            "geometry": geom.to_dict(), "copies": copies, "fraction": fraction, "augment": aug, "seed": seed}
    if score != "l1":  # caches made before scores existed hold L1 maps and stay valid for an L1 run
        prov["score"] = score
    if corrupt > 0:
        prov["corrupt"] = corrupt
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as z:
                if json.loads(str(z["provenance"])) == prov:
                    return {k: z[k] for k in ("train_images", "train_maps", "val_images", "val_maps", "val_brains")} | {
                        "provenance": prov, "cached": True}
        except (OSError, ValueError, KeyError):
            pass  # unreadable or stale: rebuilt below
    tr, va = data.indices("train"), data.indices("val")
    if len(tr) == 0:
        raise BadInput("the train split is empty", data.path)
    if len(va) == 0:
        va = tr
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    imgs = [data.images[tr]]
    brains = [data.brains[tr]]
    for _ in range(copies - 1):
        a, b = augment(torch.from_numpy(data.images[tr]).unsqueeze(1),
                       torch.from_numpy(data.brains[tr]).unsqueeze(1).float(),
                       cfg, gen, ceiling=ceiling)
        if corrupt > 0:  # abnormal tissue too, and G's response to it: what R must predict on a lesion slice
            a = corrupt_context(a, b, replace(cfg, context_noise_p=corrupt), gen, ceiling=ceiling)
        imgs.append(a[:, 0].numpy())
        brains.append(b[:, 0].numpy() > 0.5)
    train_images = np.concatenate(imgs).astype(np.float32)
    train_brains = np.concatenate(brains)
    with progress(quiet, transient=True) as bar:
        task = bar.add_task("G targets for the predictor", total=len(train_images) + len(va))
        step = lambda: bar.advance(task)  # noqa: E731
        train_maps = window_loss_maps(G, train_images, train_brains, geom, fraction=fraction, rng=rng,
                                      device=device, on_slice=step, score=score)
        val_maps = window_loss_maps(G, data.images[va], data.brains[va], geom, device=device, on_slice=step,
                                    score=score)
    out = {"train_images": train_images, "train_maps": train_maps, "val_images": data.images[va].astype(np.float32),
           "val_maps": val_maps, "val_brains": data.brains[va].astype(bool)}
    with atomic_path(cache, suffix=".npz") as tmp:
        np.savez(tmp, provenance=np.array(json.dumps(prov)), **out)
    return out | {"provenance": prov, "cached": False}
