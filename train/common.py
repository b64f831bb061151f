"""What the training stages share: devices and torchrun, seeding and RNG state, metrics, the fixed
validation windows, G's box scores, the dense predictor's loss, and the held-out slices.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rlp.runtime.core.atomic import atomic_path
from rlp.runtime.core.errors import BadInput
from rlp.runtime.core.geometry import WindowGeometry
from rlp.runtime.core.runfolder import RunFolder

from .data import SPLITS, SliceData


def make_geometry(cfg, size: int, path=None) -> WindowGeometry:
    """The run's window geometry, for data of side ``size``.

    ``cfg``: a :class:`~rlp.train.config.TrainConfig` or its dict. The config gives window, stride and
    context for slices of ``geometry.reference_size``; data of another size is refused (naming ``path``)
    before anything trains: a geometry quietly rescaled to the data is not the configuration asked for.
    """
    from .config import TrainConfig

    g = TrainConfig.coerce(cfg).geometry
    if g.reference_size != size:
        raise BadInput(f"the data's slices are {size}x{size}, but the config's geometry is for {g.reference_size}x"
                       f"{g.reference_size} slices (window {g.window}, stride {g.stride}, context {g.context}); "
                       f"prepare the data with --size {g.reference_size}, or use a preset or --config made for "
                       f"{size}x{size} (geometry.reference_size = {size})", path)
    return g.window_geometry()


class Dist:
    """torchrun (DDP) state; a single process when WORLD_SIZE is unset."""

    def __init__(self, device: torch.device):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.enabled = self.world > 1
        if self.enabled and not torch.distributed.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            torch.distributed.init_process_group(backend)
        self.main = self.rank == 0

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        if not self.enabled:
            return model
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def barrier(self):
        if self.enabled:
            torch.distributed.barrier()

    def close(self):
        if self.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BadInput(f"device {name!r} requested but CUDA is not available")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def rng_state(gen: torch.Generator) -> dict:
    return {"gen": gen.get_state(), "torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
            "python_version": random.getstate()[0], "python_gauss": random.getstate()[2]}


def set_rng_state(gen: torch.Generator, st: dict) -> None:
    gen.set_state(st["gen"])
    torch.set_rng_state(st["torch"])
    random.setstate((st["python_version"], tuple(st["python"]), st["python_gauss"]))


def unwrap(m: nn.Module) -> nn.Module:
    return m.module if isinstance(m, nn.parallel.DistributedDataParallel) else m


class Metrics:
    """metrics.jsonl: one JSON object per line, flushed; this stage's records after ``resume_step`` are dropped."""

    def __init__(self, path: Path, resume_step: int, stage: str):
        self.path = path
        if path.exists():
            keep = []
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a kill
                if rec.get("stage") != stage or rec.get("step", 0) <= resume_step:
                    keep.append(line)
            with atomic_path(path) as tmp:
                tmp.write_text("".join(k + "\n" for k in keep))
        self.fh = open(path, "a", buffering=1)
        self.stage = stage

    def log(self, **rec):
        rec = {"stage": self.stage, "time": round(time.time(), 3), **rec}
        self.fh.write(json.dumps(rec) + "\n")

    def close(self):
        self.fh.close()


def fixed_windows(data: SliceData, split: str, geom: WindowGeometry, n: int, seed: int):
    """A fixed, seeded set of (slice, window) pairs on the stride grid, from windows the heatmap evaluates."""
    idx = data.indices(split)
    if len(idx) == 0:
        idx = data.indices("train")
    rng = np.random.default_rng(seed)
    boxes_all = geom.window_boxes()
    pairs = []
    for i in idx:
        ev = geom.evaluated(data.brains[i]).ravel()
        for b in boxes_all[ev]:
            pairs.append((int(i), int(b[0]), int(b[1])))
    if not pairs:
        raise BadInput(f"no brain windows in the {split} split", data.path)
    sel = rng.choice(len(pairs), size=min(n, len(pairs)), replace=False)
    sel = [pairs[k] for k in sorted(sel)]
    inp, orig, allb = [], [], []
    for i in sorted({p[0] for p in sel}):
        boxes = np.array([[r, c] for (j, r, c) in sel if j == i])
        padded = geom.pad(data.images[i])
        inp.append(geom.crops(padded, boxes, inpaint=True))
        orig.append(geom.crops(padded, boxes, inpaint=False))
        allb.append(boxes)
    return torch.from_numpy(np.concatenate(inp)), torch.from_numpy(np.concatenate(orig)), np.concatenate(allb)


def box_mask_like(x: torch.Tensor, geom: WindowGeometry, boxes=None) -> torch.Tensor:
    m = torch.zeros_like(x)
    w = geom.window
    if geom.context is not None:
        b = geom.margin
        m[..., b : b + w, b : b + w] = 1
    else:
        for k, (r, c) in enumerate(boxes):
            m[k, :, r : r + w, c : c + w] = 1
    return m


def is_laplace(G: nn.Module) -> bool:
    return unwrap(G).arch.get("output", "sigmoid") == "laplace"


def run_score(want: str, G: nn.Module) -> str:
    """The window score predictors learn and the bundle computes: ``predictor.score`` (``want``), where
    ``auto`` is the calibrated ``z`` for a Laplace G and the paper's ``l1`` for a sigmoid one."""
    if want == "auto":
        return "z" if is_laplace(G) else "l1"
    if want == "z" and not is_laplace(G):
        raise BadInput("--score z needs a Laplace G (gan.output = laplace): this run's G predicts no scale")
    return want


def box_scores(out: torch.Tensor, orig: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-input box scores of G's output: ``l1`` (of the mean), and for a Laplace G ``z`` (|x - mu| / b)
    and ``nll`` (|x - mu| / b + log b); ``whole``: the L1 over the whole input. Differentiable: G's training
    loss is their batch means (every box has the same area)."""
    mu = out[:, :1]
    d = (mu - orig).abs()
    area = mask.flatten(1).sum(1)
    res = {"l1": (d * mask).flatten(1).sum(1) / area, "whole": d.flatten(1).mean(1)}
    if out.shape[1] == 2:
        b = out[:, 1:]
        z = d / b
        res["z"] = (z * mask).flatten(1).sum(1) / area
        res["nll"] = ((z + b.log()) * mask).flatten(1).sum(1) / area
    return res


@torch.no_grad()
def g_losses(G: nn.Module, inp: torch.Tensor, orig: torch.Tensor, mask: torch.Tensor, batch: int = 256) -> dict:
    """:func:`box_scores` of every input, in batches (float64)."""
    G.eval()
    parts: dict[str, list] = {}
    for s in range(0, len(inp), batch):
        for k, v in box_scores(G(inp[s : s + batch]), orig[s : s + batch], mask[s : s + batch]).items():
            parts.setdefault(k, []).append(v.double())
    return {k: torch.cat(v) for k, v in parts.items()}


def save_samples(path: Path, inp, orig, out, n: int = 6) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(n, len(inp))
    rows = [np.concatenate([orig[i, 0], inp[i, 0], out[i, 0], np.abs(out[i, 0] - orig[i, 0])]
                           + ([out[i, 1] / max(float(out[:, 1].max()), 1e-6)] if out.shape[1] == 2 else []), axis=1)
            for i in range(n)]  # original, G's input, G's mean, |error| (and a Laplace G's scale, brightest = 1)
    grid = np.concatenate(rows, axis=0)
    with atomic_path(path, suffix=".png") as tmp:
        plt.imsave(tmp, np.clip(grid, 0, 1), cmap="gray", vmin=0, vmax=1, format="png")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if np.std(a) == 0 or np.std(b) == 0:
        return 0.0
    return float(spearmanr(a, b).statistic)


def dense_loss(pred: torch.Tensor, target: torch.Tensor, rank_weight: float) -> tuple[torch.Tensor, dict]:
    """Masked L1 on the scored windows plus ``rank_weight`` x (1 - correlation) per slice.

    ``target`` holds NaN where G did not score a window. The correlation term
    asks for the right ordering of windows within a slice (what a heatmap shows),
    which the L1 term alone lets a near-constant map get away without.
    """
    ok = torch.isfinite(target)
    t = torch.where(ok, target, torch.zeros_like(target))
    w = ok.to(pred.dtype)
    n = w.flatten(1).sum(1).clamp_min(1)
    l1 = ((pred - t).abs() * w).sum() / w.sum().clamp_min(1)
    pm = (pred * w).flatten(1).sum(1) / n
    tm = (t * w).flatten(1).sum(1) / n
    pc = (pred - pm[:, None, None]) * w
    tc = (t - tm[:, None, None]) * w
    # (+ eps: the gradient of sqrt at 0, a slice with one scored window, would be NaN)
    pn = (pc.square().flatten(1).sum(1) + 1e-12).sqrt()
    tn = (tc.square().flatten(1).sum(1) + 1e-12).sqrt()
    # Pearson, except that a map flatter than the target's counts as if it had the target's spread: plain
    # Pearson is blind to scale and its gradient grows as the map flattens, which (measured) lets the map
    # collapse to a near-constant whose tiny ripples still rank well
    corr = (pc * tc).flatten(1).sum(1) / (tn * torch.maximum(pn, tn) + 1e-12)
    loss = l1 / tm.mean().clamp_min(1e-6) + rank_weight * (1 - corr.mean())
    return loss, {"loss": float(loss.detach()), "l1": float(l1.detach()), "corr": float(corr.mean().detach())}


class Budget:
    def __init__(self, minutes: float):
        self.deadline = time.monotonic() + minutes * 60 if minutes and minutes > 0 else None

    def over(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline


def write_heldout(run: RunFolder, data: SliceData, n: int = 64) -> None:
    """Held-out slices (model grid, never trained on) for export parity and the bench's lesion suite: up to
    ``n`` of the test split, then of the validation split, evenly spread; ``split`` says which (1 val, 2 test)."""
    idx, split = np.empty(0, np.int64), np.empty(0, np.int8)
    for name in ("test", "val"):
        avail = data.indices(name)
        k = min(len(avail), n - len(idx))
        if k > 0:
            take = avail[np.linspace(0, len(avail) - 1, k).round().astype(int)]
            idx = np.concatenate([idx, take])
            split = np.concatenate([split, np.full(k, SPLITS.index(name), np.int8)])
    with atomic_path(run.heldout, suffix=".npz") as tmp:
        np.savez(tmp, images=data.images[idx].astype(np.float32), brains=data.brains[idx].astype(bool),
                 index=idx.astype(np.int64), slice_index=data.slice_index[idx].astype(np.int64), split=split)


