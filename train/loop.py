"""The two training stages: G and D adversarially (``gan``), then R against a frozen G (``predictor``).

Both stages share the run folder, the atomic ``last``/``best`` checkpoints, JSON-lines
metrics, ``--resume`` from the exact saved state, seeded determinism, mixed
precision on CUDA, and ``torchrun`` (DDP) data parallelism.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from rlp.runtime import __version__
from rlp.runtime.core.atomic import atomic_path, write_json
from rlp.runtime.core.errors import BadInput, InputMissing
from rlp.runtime.core.geometry import WindowGeometry
from rlp.runtime.core.progress import progress

from . import models
from .augment import AugmentConfig, augment, corrupt_context, crops_and_inpaint, sample_boxes
from .checkpoint import load_checkpoint, save_checkpoint
from .config import resume_hash
from .data import SPLITS, SliceData
from .targets import CACHE as TARGETS_CACHE
from .targets import build_targets


# ----------------------------------------------------------------- helpers
def make_geometry(cfg: dict, size: int) -> WindowGeometry:
    """The run's window geometry at the dataset's size.

    The config gives window, stride and context at ``reference_size``; a dataset
    of another size gets them scaled (the demo's 8/2/48 at 128 is 16/4/96 at 256).
    """
    g = cfg["geometry"]
    ctx = g.get("context")
    ctx = None if ctx in (None, "full", 0) else int(ctx)
    ref = int(g.get("reference_size", size))
    geom = WindowGeometry(size=ref, window=int(g["window"]), stride=int(g["stride"]), fill=float(g.get("fill", 1.0)),
                          context=ctx, min_tissue=float(g.get("min_tissue", 0.0)), paint=str(g.get("paint", "box")))
    return geom if ref == size else geom.scaled(size)


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


def run_score(cfg: dict, G: nn.Module) -> str:
    """The window score predictors learn and the bundle computes: ``predictor.score``, where ``auto`` is
    the calibrated ``z`` for a Laplace G and the paper's ``l1`` for a sigmoid one."""
    want = str(cfg["predictor"].get("score", "auto"))
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


def checkpoint_name(stage: str, variant: str | None = None) -> str:
    """``gan``, ``predictor``, or ``predictor-NAME`` for a named predictor variant (exported as ``r-NAME``)."""
    return f"{stage}-{variant}" if variant else stage


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


def _check_resume(state: dict, cfg: dict, stage: str, data_sha: str, path: Path) -> None:
    if state.get("stage") != stage:
        raise BadInput(f"checkpoint is from stage {state.get('stage')!r}, not {stage!r}", path)
    if state.get("config_hash") != resume_hash(cfg, stage):
        raise BadInput("checkpoint was made with different model/geometry settings; "
                       "use the same config to resume, or a new --run folder", path)
    if state.get("data", {}).get("sha256") != data_sha:
        raise BadInput("checkpoint was trained on different data (dataset sha256 differs)", path)


def write_heldout(run: Path, data: SliceData, n: int = 64) -> None:
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
    with atomic_path(run / "heldout.npz", suffix=".npz") as tmp:
        np.savez(tmp, images=data.images[idx].astype(np.float32), brains=data.brains[idx].astype(bool),
                 index=idx.astype(np.int64), slice_index=data.slice_index[idx].astype(np.int64), split=split)


# ------------------------------------------------------------------- stages
def train_gan(cfg: dict, data_path: str, run: Path, *, resume: bool = False, quiet: bool = False) -> dict:
    return _Trainer(cfg, data_path, run, "gan", resume, quiet).fit()


def train_predictor(cfg: dict, data_path: str, run: Path, *, resume: bool = False, quiet: bool = False) -> dict:
    return _Trainer(cfg, data_path, run, "predictor", resume, quiet).fit()


class _Trainer:
    def __init__(self, cfg: dict, data_path: str, run: Path, stage: str, resume: bool, quiet: bool):
        self.cfg, self.run, self.stage, self.quiet = cfg, Path(run), stage, quiet
        self.device = pick_device(cfg["run"]["device"])
        if cfg["run"].get("threads"):
            torch.set_num_threads(int(cfg["run"]["threads"]))
        self.dist = Dist(self.device)
        seed = int(cfg["run"]["seed"]) + 1000 * self.dist.rank
        self.gen = seed_everything(seed, bool(cfg["run"]["deterministic"]))
        self.data = SliceData(data_path)
        self.data_prov = self.data.provenance()
        self.geom = make_geometry(cfg, self.data.size)
        self.r_geom = self.geom  # what R reads; the paper's R reads the whole slice (set in _build)
        self.sec = cfg[stage]
        self.ckdir = self.run / "checkpoints"
        self.name = checkpoint_name(stage, self.sec.get("variant"))  # checkpoints and metrics records
        self.last = self.ckdir / f"{self.name}_last.pt"
        self.best = self.ckdir / f"{self.name}_best.pt"
        self.resume = resume
        self.amp = self.device.type == "cuda"
        if self.dist.main:
            self.ckdir.mkdir(parents=True, exist_ok=True)
            (self.run / "samples").mkdir(exist_ok=True)

    # -- shared
    def _state(self, step: int, best: float, metrics: dict) -> dict:
        return {
            "stage": self.stage, "step": step, "best": best,
            "arch": {k: unwrap(m).arch for k, m in self.models.items()},
            "models": {k: unwrap(m).state_dict() for k, m in self.models.items()},
            "optim": {k: o.state_dict() for k, o in self.optims.items()},
            "sched": {k: s.state_dict() for k, s in self.scheds.items()},
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "rng": rng_state(self.gen),
            "config": self.cfg, "config_hash": resume_hash(self.cfg, self.stage),
            "data": self.data_prov, "geometry": self.geom.to_dict(),
            "preprocessing": self.data.preprocessing.to_dict(),
            "metrics": metrics, "rlp_version": __version__,
            # the window score a predictor learned (export writes it into the manifest)
            **({"score": self.score} if self.stage == "predictor" else {}),
        }

    def _restore(self):
        if not self.last.is_file():
            raise InputMissing(f"--resume: no {self.stage} checkpoint to resume from", self.last)
        st = load_checkpoint(self.last)
        _check_resume(st, self.cfg, self.stage, self.data_prov["sha256"], self.last)
        for k, m in self.models.items():
            unwrap(m).load_state_dict(st["models"][k])
        for k, o in self.optims.items():
            o.load_state_dict(st["optim"][k])
        for k, s in self.scheds.items():
            s.load_state_dict(st["sched"][k])
        if self.scaler is not None and st.get("scaler"):
            self.scaler.load_state_dict(st["scaler"])
        set_rng_state(self.gen, st["rng"])
        return int(st["step"]), float(st["best"])

    def _batch(self, batch: int):
        tr = self.data.indices("train")
        if len(tr) == 0:
            raise BadInput("the train split is empty", self.data.path)
        pick = tr[torch.randint(0, len(tr), (batch,), generator=self.gen).numpy()]
        imgs = torch.from_numpy(self.data.images[pick]).unsqueeze(1)
        brains = torch.from_numpy(self.data.brains[pick]).unsqueeze(1).float()
        aug = AugmentConfig(**self.cfg.get("augment", {}))
        ceiling = self.data.preprocessing.ceiling
        imgs, brains = augment(imgs, brains, aug, self.gen, ceiling=ceiling)
        boxes = sample_boxes(brains, self.geom, self.sec["box_sampling"], self.gen)
        inp, orig, mask = crops_and_inpaint(imgs, boxes, self.geom)
        if self.stage == "gan" and aug.context_noise > 0:  # G reads a corrupted context, its targets stay clean
            inp = crops_and_inpaint(corrupt_context(imgs, brains, aug, self.gen, ceiling=ceiling), boxes, self.geom)[0]
        r_inp = inp if self.r_geom == self.geom else crops_and_inpaint(imgs, boxes, self.r_geom)[0]
        return inp.to(self.device), orig.to(self.device), mask.to(self.device), r_inp.to(self.device)

    def fit(self) -> dict:
        self._build()
        step, best = (0, math.inf)
        if self.resume:
            step, best = self._restore()
        elif self.last.exists() and self.dist.main:
            raise BadInput(f"{self.run} already holds a {self.name} run; pass --resume to continue it or choose a new --run folder", self.last)
        if self.dist.main:  # only a stage that starts records its config: a refused or failed one leaves it alone
            # a predictor variant keeps the run's config (the default models') and writes its own beside it
            variant = self.sec.get("variant")
            write_json(self.run / (f"config-{variant}.json" if variant else "config.json"), self.cfg)
        # A fresh stage drops the records a discarded earlier attempt of it left (step 0 keeps none of them).
        # Records are tagged gan, predictor or predictor-NAME: a variant never drops the default predictor's.
        self.metrics = Metrics(self.run / "metrics.jsonl", step, self.name) if self.dist.main else None
        total = int(self.sec["steps"])
        budget = Budget(float(self.cfg["run"].get("max_minutes") or 0))
        t0 = time.monotonic()
        last_val: dict = {}
        stopped = "steps"
        try:
            with progress(self.quiet or not self.dist.main, extra="{task.fields[info]}") as bar:
                task = bar.add_task(f"training {self.stage}", total=total, completed=step, info="")
                while step < total:
                    logs = self._step()
                    step += 1
                    if self.metrics and step % int(self.sec["log_every"]) == 0:
                        self.metrics.log(step=step, **logs)
                    at_val = step % int(self.sec["val_every"]) == 0 or step == total
                    over = budget.over()
                    if at_val or over:
                        last_val = self._validate(step)
                        if self.dist.main:
                            key = last_val["val_key"]
                            improved = last_val[key] < best
                            if improved:
                                best = last_val[key]
                            self.metrics.log(step=step, **last_val)
                            st = self._state(step, best, last_val)
                            save_checkpoint(self.last, st)
                            if improved:
                                save_checkpoint(self.best, st)
                        self.dist.barrier()
                    bar.update(task, completed=step, info=" ".join(f"{k}={v:.4f}" for k, v in logs.items()))
                    if over:
                        stopped = "time budget"
                        break
        finally:
            if self.metrics:
                self.metrics.close()
            self.dist.close()
        return {"stage": self.stage, "steps": step, "stopped_by": stopped, "seconds": round(time.monotonic() - t0, 1),
                "best": best, **last_val}

    # -- stage specifics
    def _build(self):
        self.scaler = torch.amp.GradScaler("cuda") if self.amp else None
        s = self.sec
        if self.stage == "gan":
            G = models.UNetG(width=s["width"], depth=s["depth"], max_width=s["max_width"], upsample=s["upsample"],
                             output=str(s.get("output", "sigmoid")))
            if self.geom.input_size % (2 ** s["depth"]):
                raise BadInput(f"G's input side {self.geom.input_size} must be a multiple of 2**depth = {2 ** s['depth']}")
            D = models.PatchD(width=s["d_width"], n_layers=s["d_layers"])
            self.G = self.dist.wrap(G.to(self.device), self.device)
            self.D = self.dist.wrap(D.to(self.device), self.device)
            self.models = {"g": self.G, "d": self.D}
            b1 = float(s["beta1"])
            self.optims = {"g": torch.optim.Adam(self.G.parameters(), float(s["lr_g"]), betas=(b1, 0.999)),
                           "d": torch.optim.Adam(self.D.parameters(), float(s["lr_d"]), betas=(b1, 0.999))}
            self.val_inp, self.val_orig, self.val_boxes = fixed_windows(
                self.data, "val", self.geom, int(s["val_windows"]), int(self.cfg["run"]["seed"]) + 1)
            if self.dist.main:
                write_heldout(self.run, self.data)
        else:
            gpath = self.ckdir / "gan_best.pt"
            gst = load_checkpoint(gpath)
            if gst.get("stage") != "gan":
                raise BadInput("not a G checkpoint", gpath)
            if gst.get("geometry") != self.geom.to_dict():
                raise BadInput("G was trained with a different window geometry than this config", gpath)
            self.frozen_g = models.build(gst["arch"]["g"]).to(self.device)
            self.frozen_g.load_state_dict(gst["models"]["g"])
            self.frozen_g.eval().requires_grad_(False)
            self.score = run_score(self.cfg, self.frozen_g)
            if s["kind"] == "dense":
                return self._build_dense(gpath, steps=max(1, int(s["steps"])))
            # The paper's R reads the whole inpainted slice, also where G reads context crops.
            self.r_geom = self.geom.for_input("image") if s["kind"] == "paper" else self.geom
            if s["kind"] == "paper":
                R = models.PaperR(self.r_geom.input_size)
            else:
                R = models.CropR(self.geom.input_size, width=s["width"], n_down=s["n_down"])
            n_val, val_seed = int(s["val_windows"]), int(self.cfg["run"]["seed"]) + 1
            vi, vo, self.val_boxes = fixed_windows(self.data, "val", self.geom, n_val, val_seed)
            # the same windows (same seed and rule) as R's inputs, when R reads something else than G
            self.val_inp = vi if self.r_geom == self.geom else fixed_windows(self.data, "val", self.r_geom, n_val, val_seed)[0]
            mask = box_mask_like(vo, self.geom, self.val_boxes)
            sc = g_losses(self.frozen_g, vi.to(self.device), vo.to(self.device), mask.to(self.device))
            self.target_scale = models.target_scale(self.score)
            self.val_target = (sc[self.score] if s["target"] == "window" else sc["whole"]).cpu()
            if not self.resume:
                models.init_head_bias(R, float(self.val_target.mean()) / self.target_scale)
            self.R = self.dist.wrap(R.to(self.device), self.device)
            self.models = {"r": self.R}
            self.optims = {"r": torch.optim.Adam(self.R.parameters(), float(s["lr"]))}
        self._schedules(max(1, int(s["steps"])))

    def _schedules(self, steps: int) -> None:
        self.scheds = {k: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=steps, eta_min=0.1 * o.defaults["lr"])
                       for k, o in self.optims.items()}

    def _build_dense(self, gpath: Path, steps: int) -> None:
        """The dense predictor: G's window maps precomputed (and cached) once, then R trains on whole slices."""
        s = self.sec
        seed = int(self.cfg["run"]["seed"])
        self.targets = build_targets(self.frozen_g, gpath, self.data, self.data_prov["sha256"], self.geom, s,
                                     dict(self.cfg.get("augment", {})), seed, self.run / TARGETS_CACHE, device=self.device,
                                     quiet=self.quiet or not self.dist.main, score=self.score,
                                     ceiling=self.data.preprocessing.ceiling)
        self.frozen_g = None  # not needed any more: every target is in the cache
        g = self.geom
        R = models.DenseR(g.size, g.window, g.stride, width=s["width"], n_context=s["n_context"])
        if tuple(R(torch.zeros(1, 1, g.size, g.size)).shape[-2:]) != g.grid_shape:
            raise BadInput(f"the dense predictor cannot produce the {g.grid_shape} window grid of this geometry "
                           f"(size {g.size}, window {g.window}, stride {g.stride}); use a crop predictor")
        if not self.resume:
            models.init_head_bias(R, float(np.nanmean(self.targets["train_maps"])))
        self.R = self.dist.wrap(R.to(self.device), self.device)
        self.models = {"r": self.R}
        self.optims = {"r": torch.optim.Adam(self.R.parameters(), float(s["lr"]))}
        self._schedules(steps)

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.float16) if self.amp else nullcontext()

    def _backward(self, loss, opt):
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(opt)
            self.scaler.update()
        else:
            loss.backward()
            opt.step()

    def _step(self) -> dict:
        s = self.sec
        if self.stage == "gan":
            return self._gan_step(s)
        if s["kind"] == "dense":
            return self._dense_step(s)
        inp, orig, mask, r_inp = self._batch(int(s["batch"]))
        with torch.no_grad(), self._autocast():
            out = self.frozen_g(inp).float()
        sc = box_scores(out, orig, mask)
        target = (sc[self.score] if s["target"] == "window" else sc["whole"]).float()
        self.R.train()
        opt = self.optims["r"]
        opt.zero_grad(set_to_none=True)
        with self._autocast():
            pred = self.R(r_inp).float().flatten() * self.target_scale
        loss = (pred - target).abs().mean()
        self._backward(loss, opt)
        self.scheds["r"].step()
        return {"loss": float(loss.detach()), "target_mean": float(target.mean())}

    def _dense_step(self, s) -> dict:
        t = self.targets
        pick = torch.randint(0, len(t["train_images"]), (int(s["batch"]),), generator=self.gen).numpy()
        x = torch.from_numpy(t["train_images"][pick]).unsqueeze(1).to(self.device)
        target = torch.from_numpy(t["train_maps"][pick]).to(self.device)
        self.R.train()
        opt = self.optims["r"]
        opt.zero_grad(set_to_none=True)
        with self._autocast():
            pred = self.R(x).float()[:, 0]
        loss, parts = dense_loss(pred, target, float(s["rank_weight"]))
        self._backward(loss, opt)
        self.scheds["r"].step()
        return parts

    def _gan_step(self, s) -> dict:
        inp, orig, mask, _ = self._batch(int(s["batch"]))
        self.G.train()
        self.D.train()
        with self._autocast():
            out = self.G(inp).float()
        mu = out[:, :1]
        comp = mask * mu + (1 - mask) * orig
        logs = {}
        adv = float(s["adv"])
        if adv > 0:
            opt_d = self.optims["d"]
            opt_d.zero_grad(set_to_none=True)
            with self._autocast():
                both = self.D(torch.cat([orig, comp.detach()])).float()
            n = orig.shape[0]
            loss_d = 0.5 * (F.binary_cross_entropy_with_logits(both[:n], torch.ones_like(both[:n]))
                            + F.binary_cross_entropy_with_logits(both[n:], torch.zeros_like(both[n:])))
            self._backward(loss_d, opt_d)
            self.scheds["d"].step()
            logs["loss_d"] = float(loss_d.detach())
        opt_g = self.optims["g"]
        opt_g.zero_grad(set_to_none=True)
        sc = box_scores(out, orig, mask)
        l_box = sc["l1"].mean()
        loss = float(s["l1_box"]) * l_box + float(s["l1_context"]) * sc["whole"].mean()
        if "nll" in sc:  # Laplace G: the negative log-likelihood of the box's pixels under (mu, b)
            l_nll = sc["nll"].mean()
            loss = loss + float(s.get("nll", 1.0)) * l_nll
            logs["nll_box"] = float(l_nll.detach())
        if adv > 0:
            with self._autocast():
                fake = unwrap(self.D)(comp).float()
            l_adv = F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))
            loss = loss + adv * l_adv
            logs["loss_adv"] = float(l_adv.detach())
        self._backward(loss, opt_g)
        self.scheds["g"].step()
        logs["l1_box"] = float(l_box.detach())
        return logs

    @torch.no_grad()
    def _validate_dense(self, R: nn.Module) -> dict:
        t = self.targets
        x = torch.from_numpy(t["val_images"]).unsqueeze(1)
        pred = torch.cat([R(x[k : k + 8].to(self.device)).float()[:, 0].cpu() for k in range(0, len(x), 8)]).double().numpy()
        tgt = t["val_maps"].astype(np.float64)
        ok = np.isfinite(tgt)
        mae = float(np.abs(pred[ok] - tgt[ok]).mean())
        per_slice = [spearman(p[m], g[m]) for p, g, m in zip(pred, tgt, ok) if m.sum() > 2]
        rank = float(np.mean(per_slice)) if per_slice else 0.0
        mean = float(tgt[ok].mean())
        return {"val_key": "val_objective", "val_objective": mae / mean + float(self.sec["rank_weight"]) * (1 - rank),
                "val_mae": mae, "val_mae_rel": mae / mean, "val_mae_median_baseline": float(np.abs(np.median(tgt[ok]) - tgt[ok]).mean()),
                "val_spearman": spearman(pred[ok], tgt[ok]), "val_spearman_slice": rank, "val_target_mean": mean}

    @torch.no_grad()
    def _validate(self, step: int) -> dict:
        if not self.dist.main:
            return {}
        if self.stage == "gan":
            G = unwrap(self.G)
            vi, vo = self.val_inp.to(self.device), self.val_orig.to(self.device)
            mask = box_mask_like(vo, self.geom, self.val_boxes)
            sc = g_losses(G, vi, vo, mask)
            every = int(self.sec.get("sample_every") or 0)
            if every and (step % every == 0 or step == int(self.sec["steps"])):
                out = G(vi[:6]).cpu().numpy()
                save_samples(self.run / "samples" / f"gan_step{step:06d}.png", vi[:6].cpu().numpy(), vo[:6].cpu().numpy(), out)
            rec = {"val_key": "val_l1", "val_l1": float(sc["l1"].mean()), "val_l1_image": float(sc["whole"].mean())}
            if "nll" in sc:  # a Laplace G is kept by its likelihood on held-out windows (mean and scale together)
                rec.update(val_key="val_nll", val_nll=float(sc["nll"].mean()), val_z=float(sc["z"].mean()))
            return rec
        R = unwrap(self.R)
        R.eval()
        if self.sec["kind"] == "dense":
            return self._validate_dense(R)
        preds = []
        for s0 in range(0, len(self.val_inp), 256):
            preds.append(R(self.val_inp[s0 : s0 + 256].to(self.device)).float().flatten().cpu() * self.target_scale)
        pred = torch.cat(preds).double().numpy()
        tgt = self.val_target.numpy()
        mae = float(np.abs(pred - tgt).mean())
        return {"val_key": "val_mae", "val_mae": mae, "val_mae_rel": mae / float(tgt.mean()),
                "val_mae_median_baseline": float(np.abs(np.median(tgt) - tgt).mean()),
                "val_spearman": spearman(pred, tgt), "val_target_mean": float(tgt.mean())}
