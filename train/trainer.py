"""What every training stage does: the run folder, the atomic ``last``/``best`` checkpoints, JSON-lines
metrics, ``--resume`` from the exact saved state, a checkpoint on Ctrl-C or SIGTERM, seeded determinism,
mixed precision on CUDA, and ``torchrun`` (DDP) data parallelism.

A stage (:mod:`rlp.train.gan`, :mod:`rlp.train.predictors`) subclasses :class:`Stage` and gives its
models (``build``), one optimisation step (``step``), its validation (``validate``) and what its
models read (``input_kinds``).
"""

from __future__ import annotations

import math
import signal
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from rlp.runtime import __version__
from rlp.runtime.core.atomic import write_json
from rlp.runtime.core.cliutil import Terminated
from rlp.runtime.core.errors import BadInput, InputMissing
from rlp.runtime.core.progress import progress, stderr_console
from rlp.runtime.core.runfolder import RunFolder, checkpoint_name

from .augment import augment, corrupt_context, crops_and_inpaint, sample_boxes
from .checkpoint import load_checkpoint, save_checkpoint
from .common import Budget, Dist, Metrics, make_geometry, pick_device, rng_state, seed_everything, set_rng_state, unwrap
from .config import TrainConfig, resume_hash
from .data import SliceData


class HeldSignals:
    """Ctrl-C and SIGTERM held until the block ends, then raised (KeyboardInterrupt, or cliutil's
    Terminated): a step is never cut in half, so the checkpoint saved on an interrupt is a real state."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self):
        self.got = None
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._hold) for s in self.SIGNALS}
        return self

    def _hold(self, signum, frame):
        self.got = signum

    def __exit__(self, *exc):
        for s, h in self.previous.items():
            signal.signal(s, h)
        if self.got is not None and exc[0] is None:
            raise Terminated() if self.got == signal.SIGTERM else KeyboardInterrupt()
        return False


class Stage:
    """One training stage; ``stage`` is its checkpoints' and config section's name."""

    stage = ""

    def __init__(self, cfg: TrainConfig | dict, data_path: str, run: Path, resume: bool = False, quiet: bool = False):
        self.cfg = TrainConfig.coerce(cfg)
        self.cfg_dict = self.cfg.to_dict()
        self.folder = RunFolder(run)
        self.run, self.quiet, self.resume = self.folder.path, quiet, resume
        self.settings = self.cfg.section(self.stage)
        rc = self.cfg.run
        self.device = pick_device(rc.device)
        if rc.threads:
            torch.set_num_threads(int(rc.threads))
        self.dist = Dist(self.device)
        self.gen = seed_everything(rc.seed + 1000 * self.dist.rank, rc.deterministic)
        self.data = SliceData(data_path)
        self.data_prov = self.data.provenance()
        self.geom = make_geometry(self.cfg, self.data.size, self.data.path)
        self.name = checkpoint_name(self.stage, getattr(self.settings, "variant", ""))  # checkpoints, metrics
        self.last = self.folder.checkpoint(self.name, "last")
        self.best = self.folder.checkpoint(self.name, "best")
        self.amp = self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if self.amp else None
        if self.dist.main:
            self.folder.checkpoints.mkdir(parents=True, exist_ok=True)
            self.folder.samples.mkdir(exist_ok=True)

    # -- what a stage gives
    def build(self) -> None:
        raise NotImplementedError

    def step(self) -> dict:
        raise NotImplementedError

    def validate(self, step: int) -> dict:
        raise NotImplementedError

    def input_kinds(self) -> dict:
        """What each of the stage's exported models reads (recorded in the checkpoint for export)."""
        raise NotImplementedError

    def extra_state(self) -> dict:
        return {}

    # -- shared pieces
    def schedules(self, steps: int) -> None:
        self.scheds = {k: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=steps, eta_min=0.1 * o.defaults["lr"])
                       for k, o in self.optims.items()}

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.float16) if self.amp else nullcontext()

    def backward(self, loss, opt) -> None:
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(opt)
            self.scaler.update()
        else:
            loss.backward()
            opt.step()

    def batch(self, n: int, box_sampling: str, corrupt: bool = False, r_geom=None):
        """``n`` augmented training slices, a box each: (G's input, original, box mask, R's input or None).
        ``corrupt``: G reads a corrupted context (augment.context_noise) while its targets stay clean."""
        tr = self.data.indices("train")
        if len(tr) == 0:
            raise BadInput("the train split is empty", self.data.path)
        pick = tr[torch.randint(0, len(tr), (n,), generator=self.gen).numpy()]
        imgs = torch.from_numpy(self.data.images[pick]).unsqueeze(1)
        brains = torch.from_numpy(self.data.brains[pick]).unsqueeze(1).float()
        aug = self.cfg.augment_config()
        ceiling = self.data.preprocessing.ceiling
        imgs, brains = augment(imgs, brains, aug, self.gen, ceiling=ceiling)
        boxes = sample_boxes(brains, self.geom, box_sampling, self.gen)
        inp, orig, mask = crops_and_inpaint(imgs, boxes, self.geom)
        if corrupt and aug.context_noise > 0:
            inp = crops_and_inpaint(corrupt_context(imgs, brains, aug, self.gen, ceiling=ceiling), boxes, self.geom)[0]
        r_inp = None
        if r_geom is not None:
            r_inp = (inp if r_geom == self.geom else crops_and_inpaint(imgs, boxes, r_geom)[0]).to(self.device)
        return inp.to(self.device), orig.to(self.device), mask.to(self.device), r_inp

    # -- checkpoints
    def state(self, step: int, best: float, metrics: dict) -> dict:
        return {
            "stage": self.stage, "step": step, "best": best,
            "arch": {k: unwrap(m).arch for k, m in self.models.items()},
            "models": {k: unwrap(m).state_dict() for k, m in self.models.items()},
            "optim": {k: o.state_dict() for k, o in self.optims.items()},
            "sched": {k: s.state_dict() for k, s in self.scheds.items()},
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "rng": rng_state(self.gen),
            "config": self.cfg_dict, "config_hash": resume_hash(self.cfg_dict, self.stage),
            "data": self.data_prov, "geometry": self.geom.to_dict(),
            "preprocessing": self.data.preprocessing.to_dict(),
            "metrics": metrics, "rlp_version": __version__,
            "input_kind": {k: str(v) for k, v in self.input_kinds().items()},
            **self.extra_state(),
        }

    def restore(self) -> tuple[int, float]:
        if not self.last.is_file():
            raise InputMissing(f"--resume: no {self.stage} checkpoint to resume from", self.last)
        st = load_checkpoint(self.last)
        self._check_resume(st)
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

    def _check_resume(self, state: dict) -> None:
        path = self.last
        if state.get("stage") != self.stage:
            raise BadInput(f"checkpoint is from stage {state.get('stage')!r}, not {self.stage!r}", path)
        if state.get("config_hash") != resume_hash(self.cfg_dict, self.stage):
            raise BadInput("checkpoint was made with different model/geometry settings; "
                           "use the same config to resume, or a new --run folder", path)
        if state.get("data", {}).get("sha256") != self.data_prov["sha256"]:
            raise BadInput("checkpoint was trained on different data (dataset sha256 differs)", path)

    # -- the loop
    def fit(self) -> dict:
        self.build()
        step, best = self._start()
        total = int(self.settings.steps)
        t0 = time.monotonic()
        self.saved_step = step
        try:
            step, best, last_val, stopped = self._loop(step, best, total)
        except KeyboardInterrupt:
            self._save_interrupted()
            raise
        finally:
            if self.metrics:
                self.metrics.close()
            self.dist.close()
        return {"stage": self.stage, "steps": step, "stopped_by": stopped, "seconds": round(time.monotonic() - t0, 1),
                "best": best, **last_val}

    def _start(self) -> tuple[int, float]:
        step, best = (0, math.inf)
        if self.resume:
            step, best = self.restore()
        elif self.last.exists() and self.dist.main:
            raise BadInput(f"{self.run} already holds a {self.name} run; pass --resume to continue it, --force to "
                           "replace it, or choose a new --run folder", self.last)
        if self.dist.main:  # only a stage that starts records its config: a refused or failed one leaves it alone
            # a predictor variant keeps the run's config (the default models') and writes its own beside it
            write_json(self.folder.config(getattr(self.settings, "variant", "")), self.cfg_dict)
        # A fresh stage drops the records a discarded earlier attempt of it left (step 0 keeps none of them).
        # Records are tagged gan, predictor or predictor-NAME: a variant never drops the default predictor's.
        self.metrics = Metrics(self.folder.metrics, step, self.name) if self.dist.main else None
        self.progress = (step, best, {})
        return step, best

    def _loop(self, step: int, best: float, total: int):
        budget = Budget(float(self.cfg.run.max_minutes or 0))
        last_val: dict = {}
        stopped = "steps"
        with progress(self.quiet or not self.dist.main, extra="{task.fields[info]}") as bar:
            task = bar.add_task(f"training {self.stage}", total=total, completed=step, info="")
            while step < total:
                with HeldSignals():
                    logs = self.step()
                    step += 1
                    self.progress = (step, best, last_val)
                if self.metrics and step % int(self.settings.log_every) == 0:
                    self.metrics.log(step=step, **logs)
                over = budget.over()
                if step % int(self.settings.val_every) == 0 or step == total or over:
                    last_val = self.validate(step) if self.dist.main else {}
                    best = self._checkpoint(step, best, last_val)
                    self.progress = (step, best, last_val)
                bar.update(task, completed=step, info=" ".join(f"{k}={v:.4f}" for k, v in logs.items()))
                if over:
                    stopped = "time budget"
                    break
        return step, best, last_val, stopped

    def _checkpoint(self, step: int, best: float, val: dict) -> float:
        if self.dist.main:
            key = val["val_key"]
            improved = val[key] < best
            if improved:
                best = val[key]
            self.metrics.log(step=step, **val)
            st = self.state(step, best, val)
            save_checkpoint(self.last, st)
            if improved:
                save_checkpoint(self.best, st)
            self.saved_step = step
        self.dist.barrier()
        return best

    def _save_interrupted(self) -> None:
        """Ctrl-C or SIGTERM: the steps done since the last checkpoint are saved (atomically) to ``last``, so
        that ``--resume`` continues from them; ``best`` is left to validation."""
        step, best, val = getattr(self, "progress", (0, math.inf, {}))
        if not self.dist.main or step <= self.saved_step:
            return
        with HeldSignals():  # a second Ctrl-C waits for the (atomic) save
            save_checkpoint(self.last, self.state(step, best, val))
        if not self.quiet:
            stderr_console.print(f"{self.stage}: interrupted after {step} steps; saved {self.last} "
                                 f"(continue with --resume)")
