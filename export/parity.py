"""The parity gate: exported models must compute what the trained models compute, on real slices.

Inputs are the run's held-out slices, inpainted at many window positions with
the geometry contract (:meth:`WindowGeometry.crops`), exactly as the runtime
builds them; never random tensors.

What is compared (every check also fails on any non-finite output):

======================  ===============  ==============================================
candidate               reference        quantity, tolerance
======================  ===============  ==============================================
ONNX fp32 (onnxruntime) PyTorch eager    model outputs (G: recon pixels; R: predicted
                                         loss) and G's window L1 losses: max abs <= 1e-5
ONNX fp16, fp16 engine  ONNX fp32        outputs and window losses: max abs <= 2e-2,
                                         p99 <= 5e-3, median <= 1e-3; the window map of
                                         one whole slice: Spearman >= 0.98 and the same
                                         top window or a tie (see :class:`Tolerances`)
fp32 TensorRT engine    ONNX fp32        outputs and window losses: max abs <= 1e-4
======================  ===============  ==============================================

The PyTorch reference is the *trained* module (``F.interpolate`` bicubic,
unfused BatchNorm), so the fp32 check covers the bicubic rewrite, the BatchNorm
fusion and the exporter together.

On an x86 CPU, onnxruntime runs many fp16 operators through fp32 kernels
between casts that it inserts, so the fp16 rows measure fp16 weights, fp16
tensors at the casts and the graph conversion; fp16 arithmetic on a GPU is
judged by the engine rows when ``--trt`` builds engines there.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator

import numpy as np
from rich import box
from rich.table import Table
from scipy.stats import spearmanr

from rlp.runtime.core.errors import BadInput
from rlp.runtime.core.geometry import WindowGeometry
from rlp.runtime.core.kinds import InputKind
from rlp.runtime.core.progress import Reporter
from rlp.runtime.scorers import score_windows

Runner = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Tolerances:
    """Documented limits of the gate (absolute differences; outputs and losses lie in [0, 1]).

    - ``fp32_max_abs``: onnxruntime fp32 against PyTorch. Both compute in fp32;
      only summation order differs (1e-7 to 1e-6 measured on trained models).
    - ``fp16_*``: fp16 stores about 3 decimal digits (spacing 4.9e-4 just below
      1.0), so a single rounding of an output near 1 is up to 2.4e-4. The limits
      allow a few roundings on typical values and an order of magnitude more
      in the worst pixel.
    - ``map_spearman``: rank agreement of the window map over the evaluated
      windows. It is not judged when the whole fp32 map varies by less than
      ``fp16_median_abs``: fp16 cannot rank windows that fp32 cannot tell apart.
    - top window: the fp16 top window must be the fp32 one, or a tie: its fp32
      score lies within the map's own max abs fp16 difference of the fp32 maximum.
    - ``engine_fp32_max_abs``: TensorRT fp32 engines (TF32 off) choose other
      convolution algorithms than onnxruntime.
    """

    fp32_max_abs: float = 1e-5
    fp16_max_abs: float = 2e-2
    fp16_p99_abs: float = 5e-3
    fp16_median_abs: float = 1e-3
    map_spearman: float = 0.98
    engine_fp32_max_abs: float = 1e-4

    def limits(self, precision: str, reference: str) -> dict:
        if reference == "torch":
            return {"max_abs": self.fp32_max_abs}
        if precision == "fp16":
            return {"max_abs": self.fp16_max_abs, "p99_abs": self.fp16_p99_abs, "median_abs": self.fp16_median_abs}
        return {"max_abs": self.engine_fp32_max_abs}


@dataclass
class Check:
    """One row of the parity table."""

    model: str  # what is checked: "g", "g_fp16", an engine file
    reference: str  # "torch" or the fp32 ONNX model key
    quantity: str  # "recon pixels", "window loss" (G's L1 in the box), "prediction" (R's), "window map #k" (slice k)
    n: int
    limits: dict
    max_abs: float | None = None
    median_abs: float | None = None
    p99_abs: float | None = None
    spearman: float | None = None
    top_window_same: bool | None = None
    top_gap: float | None = None  # fp32 score of the reference's top window minus that of the candidate's
    passed: bool = False
    problem: str = ""  # why it failed
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Candidate:
    """An exported artefact to check: its runner and its precision."""

    name: str
    run: Runner
    precision: str  # "fp32" | "fp16"
    max_batch: int | None = None


@dataclass
class Sample:
    """Model inputs for windows of held-out slices, and (for G) the original pixels under them."""

    slices: list[int]
    boxes: list[np.ndarray]  # per slice, (k, 2) top-left of the windows


@dataclass
class ParityResult:
    checks: list[Check] = field(default_factory=list)
    data: dict = field(default_factory=dict)
    tolerances: Tolerances | None = None

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]


def diff_stats(got: np.ndarray, ref: np.ndarray) -> dict:
    d = np.abs(np.asarray(got, np.float64) - np.asarray(ref, np.float64)).ravel()
    return {"max_abs": float(d.max()), "median_abs": float(np.median(d)), "p99_abs": float(np.percentile(d, 99))}


def compare_values(check: Check, got: np.ndarray, ref: np.ndarray) -> Check:
    """Fill ``check`` with the difference statistics of ``got`` against ``ref`` and judge them."""
    bad_ref, bad = int((~np.isfinite(ref)).sum()), int((~np.isfinite(got)).sum())
    if bad_ref:
        check.problem = (f"the reference ({check.reference}) gives {bad_ref} non-finite value(s): "
                         "the trained model is broken")
        return check
    if bad:
        check.problem = f"{bad} non-finite output value(s)"
        return check
    stats = diff_stats(got, ref)
    for k, v in stats.items():
        setattr(check, k, v)
    over = [f"{k} {stats[k]:.3g} > {lim:.3g}" for k, lim in check.limits.items() if stats[k] > lim]
    check.passed = not over
    check.problem = "; ".join(over)
    return check


def compare_maps(check: Check, got: np.ndarray, ref: np.ndarray, tol: Tolerances) -> Check:
    """Heatmap-level agreement of two window maps over the evaluated windows (1-D arrays)."""
    compare_values(check, got, ref)
    check.limits = dict(check.limits, spearman=tol.map_spearman)
    if check.max_abs is None:  # non-finite values: already failed
        return check
    problems = [check.problem] if check.problem else []
    top_ref, top_got = int(np.argmax(ref)), int(np.argmax(got))
    check.top_window_same = top_ref == top_got
    check.top_gap = float(ref[top_ref] - ref[top_got])
    if check.top_gap > check.max_abs:
        problems.append(f"top window differs (fp32 score gap {check.top_gap:.3g} > max abs {check.max_abs:.3g})")
    if len(ref) > 1 and float(ref.max() - ref.min()) >= tol.fp16_median_abs:
        check.spearman = float(spearmanr(got, ref).statistic)
        if not check.spearman >= tol.map_spearman:
            problems.append(f"Spearman {check.spearman:.4f} < {tol.map_spearman}")
    else:
        check.note = "map flat within fp16 tolerance: ranks not judged"
    check.passed = not problems
    check.problem = "; ".join(problems)
    return check


def default_batch(side: int) -> int:
    """Batch size that keeps one batch of inputs and activations small (64 crops of 48, 8 slices of 256)."""
    return int(max(1, min(64, (1 << 19) // (side * side))))


class ParityGate:
    """Runs candidates and references over the same inpainted held-out windows."""

    def __init__(self, geometry: WindowGeometry, images: np.ndarray, brains: np.ndarray, *, slices: int = 4,
                 windows: int = 32, map_windows: int = 4096, tolerances: Tolerances | None = None,
                 reporter: Reporter | None = None, score: str = "l1"):
        if slices < 1 or windows < 1 or map_windows < 1:
            raise ValueError("parity slices, windows and map windows must be >= 1")
        self.geometry = geometry
        self.score = score  # G's window score (the bundle's), what G's rows compare
        self.images = images
        self.brains = brains
        self.tol = tolerances or Tolerances()
        self.reporter = reporter or Reporter(quiet=True)
        usable = [i for i in range(len(images)) if len(self._evaluated_boxes(geometry, i))]
        if not usable:
            raise BadInput("no held-out slice has a window with enough brain tissue to evaluate")
        pick = np.unique(np.linspace(0, len(usable) - 1, min(slices, len(usable))).round().astype(int))
        self.sample = Sample([usable[k] for k in pick], [])
        for i in self.sample.slices:
            boxes = self._evaluated_boxes(geometry, i)
            take = np.unique(np.linspace(0, len(boxes) - 1, min(windows, len(boxes))).round().astype(int))
            self.sample.boxes.append(boxes[take])
        # The whole-slice map: the sampled slice with the most brain, at the geometry's stride, or
        # at the smallest multiple of it whose evaluated windows fit into ``map_windows``.
        self.map_slice = max(self.sample.slices, key=lambda i: int(brains[i].sum()))
        stride = geometry.stride
        while (len(self._evaluated_boxes(dataclasses.replace(geometry, stride=stride), self.map_slice)) > map_windows
               and stride < geometry.size):
            stride += geometry.stride
        self.map_geometry = dataclasses.replace(geometry, stride=stride)
        self.map_boxes = self._evaluated_boxes(self.map_geometry, self.map_slice)

    def _evaluated_boxes(self, geometry: WindowGeometry, i: int) -> np.ndarray:
        ev = geometry.evaluated(self.brains[i]).ravel()
        return geometry.window_boxes()[ev]

    def describe(self) -> dict:
        return {
            "source": "heldout.npz",
            "slices": self.sample.slices,
            "windows_per_slice": [len(b) for b in self.sample.boxes],
            "windows": int(sum(len(b) for b in self.sample.boxes)),
            "window_selection": "evenly spaced over the evaluated (brain) windows of each slice",
            "map_slice": self.map_slice,
            "map_stride": self.map_geometry.stride,
            "map_windows": len(self.map_boxes),
            "map_grid": list(self.map_geometry.grid_shape),
        }

    # ----------------------------------------------------------- inputs
    def _chunks(self, input_kind: str, pairs: list[tuple[int, np.ndarray]],
                batch: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(inputs, original pixels, boxes) in batches, for windows ``boxes`` of slices ``i``."""
        geo = self.geometry.for_input(input_kind)
        for i, boxes in pairs:
            padded = geo.pad(self.images[i])
            for s in range(0, len(boxes), batch):
                b = boxes[s : s + batch]
                yield geo.crops(padded, b, inpaint=True), geo.crops(padded, b, inpaint=False), b

    def _evaluate(self, role: str, input_kind: str, runners: dict[str, Runner], pairs, batch: int, what: str,
                  keep_outputs: bool) -> dict[str, dict[str, np.ndarray]]:
        """Run every runner over the windows; returns per runner its outputs and (for G) window losses."""
        n = sum(len(b) for _, b in pairs)
        out = {name: {"outputs": [], "scores": []} for name in runners}
        with self.reporter.step(what, total=n * len(runners)) as advance:
            if input_kind == InputKind.DENSE:  # the whole slice once; the window map is the output
                for i, boxes in pairs:
                    for name, run in runners.items():
                        maps: list[np.ndarray] = []

                        def predict(x, run=run, maps=maps):
                            maps.append(np.asarray(run(x), dtype=np.float32))
                            return maps[-1]

                        out[name]["scores"].append(score_windows(self.images[i], self.geometry, boxes, predict,
                                                                 dense=True, on_batch=advance))
                        if keep_outputs:
                            out[name]["outputs"].append(maps[0])
            else:
                for x, target, boxes in self._chunks(input_kind, pairs, batch):
                    for name, run in runners.items():
                        y = np.asarray(run(x), dtype=np.float32)
                        if role == "g":  # the box where this model's input has it (crop centre, or in place)
                            scores = self.geometry.for_input(input_kind).box_score(y, target, boxes, self.score)
                        else:
                            scores = y.reshape(len(x), -1)[:, 0].astype(np.float64)
                        if keep_outputs:
                            out[name]["outputs"].append(y)
                        out[name]["scores"].append(scores)
                        advance(len(x))
        return {name: {k: np.concatenate(v) if v else np.empty(0) for k, v in d.items()} for name, d in out.items()}

    # ------------------------------------------------------------ gate
    def check(self, role: str, input_kind: str, side: int, reference: Runner, fp32: Runner,
              reduced: list[Candidate] | None = None) -> list[Check]:
        """All parity rows of one model (``role`` "g" or "r"; also the key of its fp32 ONNX model).

        ``input_kind`` and ``side`` are what the model reads (``"crop"``/``"image"``, its square side);
        ``reference`` is the PyTorch model, ``fp32`` the fp32 ONNX in onnxruntime;
        ``reduced`` are fp16 models and TensorRT engines, judged against ``fp32``.
        """
        key = role
        reduced = reduced or []
        batch = min([default_batch(side)] + [c.max_batch for c in reduced if c.max_batch])
        pairs = list(zip(self.sample.slices, self.sample.boxes))
        runners = {"torch": reference, key: fp32} | {c.name: c.run for c in reduced}
        res = self._evaluate(role, input_kind, runners, pairs, batch,
                             f"parity {key}: {sum(len(b) for _, b in pairs)} windows", True)
        out_q = "recon pixels" if role == "g" else "prediction"
        rows = []

        def row(name, ref_name, quantity, precision, got, ref):
            n = int(np.asarray(got).size)
            rows.append(compare_values(Check(name, ref_name, quantity, n, self.tol.limits(precision, ref_name)), got,
                                       ref))

        row(key, "torch", out_q, "fp32", res[key]["outputs"], res["torch"]["outputs"])
        if role == "g":
            row(key, "torch", "window loss", "fp32", res[key]["scores"], res["torch"]["scores"])
        for c in reduced:
            row(c.name, key, out_q, c.precision, res[c.name]["outputs"], res[key]["outputs"])
            if role == "g":
                row(c.name, key, "window loss", c.precision, res[c.name]["scores"], res[key]["scores"])
        fp16 = [c for c in reduced if c.precision == "fp16"]
        if fp16:
            map_runners = {key: fp32} | {c.name: c.run for c in fp16}
            maps = self._evaluate(role, input_kind, map_runners, [(self.map_slice, self.map_boxes)], batch,
                                  f"window map {key}: slice {self.map_slice}, {len(self.map_boxes)} windows", False)
            for c in fp16:
                check = Check(c.name, key, f"window map #{self.map_slice}", len(self.map_boxes),
                              self.tol.limits("fp16", key))
                rows.append(compare_maps(check, maps[c.name]["scores"], maps[key]["scores"], self.tol))
        return rows


def table(result: ParityResult, title: str = "parity gate") -> Table:
    """The parity results as a compact rich table; failures and notes are listed under it."""
    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for col in ("model", "quantity", "n", "max abs", "median", "p99", "rho", "top", ""):
        t.add_column(col, justify="right" if col in ("n", "max abs", "median", "p99", "rho") else "left", no_wrap=True)

    def num(v):
        return "" if v is None else f"{v:.1e}"

    notes = ["compared with: fp32 ONNX (onnxruntime) vs PyTorch; fp16 ONNX and engines vs fp32 ONNX"]
    for c in result.checks:
        top = ""
        if c.top_window_same is not None:
            top = "same" if c.top_window_same else "tie" if c.top_gap <= c.max_abs else "moved"
        mark = "" if not (c.problem or c.note) else f" [{len(notes)}]"
        if mark:
            notes.append(f"[{len(notes)}] {c.model} {c.quantity}: {c.problem or c.note}")
        verdict = ("[green]ok[/green]" if c.passed else "[red]FAIL[/red]") + mark
        rho = "" if c.spearman is None else f"{c.spearman:.4f}"
        t.add_row(c.model, c.quantity, str(c.n), num(c.max_abs), num(c.median_abs), num(c.p99_abs),
                  rho, top, verdict)
    tol = result.tolerances
    if tol is not None:
        notes.append(f"limits: vs torch max {tol.fp32_max_abs:g}; fp16 max {tol.fp16_max_abs:g}, "
                     f"p99 {tol.fp16_p99_abs:g}, median {tol.fp16_median_abs:g}, map rho >= {tol.map_spearman:g}; "
                     f"fp32 engine max {tol.engine_fp32_max_abs:g}")
    t.caption = "\n".join(notes)
    t.caption_justify = "left"
    return t
