"""One bench row: a heatmap path run one way on one backend, measured in a process of its own.

A row is ``{name, path, method, backend, source, approx}``:

- ``path``: ``"r"`` (R predicts each window's loss) or ``"g"`` (G reconstructs,
  the loss is computed: exact);
- ``method``: how the windows are scored; ``"plain"`` = every evaluated window
  through the model, in batches (the paper's setting); ``"incremental"``
  (exact, predictors that read the whole slice) and ``"coarse-to-fine"``
  (approximate, G by default) are measured against the plain row of the same
  path and backend; the report's schema does not change;
- ``backend``: an onnxruntime/TensorRT backend of :mod:`rlp.runtime.backends`
  on the bundle's ONNX models, or ``torch-cpu``/``torch-cuda``: PyTorch eager
  (NCHW, ``inference_mode``) on the checkpoints of ``--run``, added to the
  runtime's backend registry in the row's process (:data:`TORCH_BACKENDS`);
- ``approx``: whether the row approximates G's window map (a predictor, or an
  approximate method: then its fidelity to the exact G map is the point); exact
  rows get the same fidelity numbers, which must be perfect.

The parent (:mod:`rlp.bench.runner`) writes a JSON spec and runs
``python -m rlp.bench.rows SPEC RESULT``; the child loads only this row's
model, warms it up (two batches of windows), times ``runs`` heatmaps of the
timing slice with :meth:`rlp.runtime.Bundle.heatmap_slice`, then computes the
full maps of the quality slices and saves them (``.npz``) for the parent's
fidelity and localisation metrics. Peak memory is the child's own RSS high-water
mark (``VmHWM``: since its exec, so only this row's work, interpreter included).

A G row with ``g_windows`` set (``--quick``) times the path's plain scorer on that
many evenly spread evaluated windows and scales to the slice's window count
(plus the measured pre- and post-processing): the latency is *extrapolated
from N windows*, and says so. Its one full pass over the timing slice (for the
maps) is reported beside it as ``full_pass_s``.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rlp.runtime.backends import BACKENDS, Backend, BackendInfo, CheckedModel, backend_info, register_backend
from rlp.runtime.coarse import NAME as COARSE
from rlp.runtime.coarse import CoarseToFine
from rlp.runtime.core.atomic import write_json
from rlp.runtime.core.errors import EX_SOFTWARE, BadInput, InputMissing, RlpError, Unavailable
from rlp.runtime.core.kinds import InputKind
from rlp.runtime.core.manifest import Manifest, head_role, sha256_file
from rlp.runtime.core.preprocess import preprocess_slice
from rlp.runtime.heatmap import Bundle
from rlp.runtime.results import top_windows

from .cases import load_case

#: PyTorch eager rows: rows of the runtime's backend table, registered in the row's process (:func:`measure`)
TORCH_BACKENDS = {f"torch-{d}": BackendInfo(f"torch-{d}", f"PyTorch eager, the run's checkpoint ({d.upper()})",
                                            gpu=d == "cuda", auto=None, incremental=False, fp16_models=False,
                                            ci=d == "cpu", install="pip install 'rlp[train]'")
                  for d in ("cpu", "cuda")}
ALL_BACKENDS = BACKENDS + tuple(TORCH_BACKENDS)
#: incremental: exact, R models that read the whole slice; coarse-to-fine: approximate, paths scored window by window
METHODS = ("plain", "incremental", COARSE)
APPROXIMATE_METHODS = (COARSE,)
WARMUP_BATCHES = 2


def backend_facts(name: str) -> BackendInfo:
    """A row's backend in the runtime's table (the torch rows are registered only in their own process)."""
    return TORCH_BACKENDS.get(name) or backend_info(name)


@dataclass
class Row:
    path: str  # "g", "r" or a predictor variant "r-NAME"
    backend: str  # one of ALL_BACKENDS
    method: str = "plain"
    requested: bool = False  # named in --backends: unavailable is an error, not a skip

    @property
    def source(self) -> str:
        return "run" if self.backend in TORCH_BACKENDS else "bundle"

    @property
    def approx(self) -> bool:
        """Approximates G's window map (a predictor, or an approximate method such as coarse-to-fine)."""
        return head_role(self.path) == "r" or self.method in APPROXIMATE_METHODS

    @property
    def name(self) -> str:
        how = "" if self.method == "plain" else f" {self.method}"
        return f"{self.path[0].upper()}{self.path[1:]}{how} · {self.backend}"

    @property
    def gpu(self) -> bool:
        return backend_facts(self.backend).gpu

    def to_dict(self) -> dict:
        return {"name": self.name, "path": self.path, "method": self.method, "backend": self.backend,
                "source": self.source, "approx": self.approx, "gpu": self.gpu, "requested": self.requested}


def check_run_matches(manifest: Manifest, run: Path, paths) -> None:
    """The run's checkpoints must be the ones the bundle was exported from (file and sha256 in the manifest)."""
    listed = manifest.training.get("checkpoints", {}) if isinstance(manifest.training, dict) else {}
    for path in paths:
        info = listed.get(path) if isinstance(listed.get(path), dict) else {}
        if not info.get("file") or not info.get("sha256"):
            continue  # the bundle does not say; the row process still checks geometry and architecture
        ckpt = run / info["file"]
        if not ckpt.is_file():
            raise InputMissing(f"no {info['file']} for the torch {path} rows", run)
        if sha256_file(ckpt) != info["sha256"]:
            raise BadInput(f"{info['file']} is not the checkpoint the bundle's {path} was exported from "
                           "(sha256 differs); pass the run the bundle came from", run)


# --------------------------------------------------------------------------- measurements
def _proc_status(field: str) -> int | None:
    """A /proc/self/status memory field (VmRSS, VmHWM) in bytes; None off Linux."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class GpuMemoryPeak:
    """Highest GPU memory ``nvidia-smi`` lists for this process, polled in a thread (GPU rows only)."""

    def __init__(self, interval: float = 0.2):
        self.peak: int | None = None
        self.note = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(interval,), daemon=True)

    def __enter__(self) -> "GpuMemoryPeak":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if self.peak is None and not self.note:
            self.note = "nvidia-smi did not list this process (another PID namespace?)"

    def _loop(self, interval: float) -> None:
        cmd = ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"]
        pid = str(os.getpid())
        while not self._stop.is_set():
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
            except (OSError, subprocess.SubprocessError) as exc:
                self.note = f"nvidia-smi failed ({type(exc).__name__})"
                return
            for line in out.splitlines():
                parts = [p.strip() for p in line.split(",")]
                if len(parts) == 2 and parts[0] == pid and parts[1].isdigit():
                    self.peak = max(self.peak or 0, int(parts[1]) << 20)
            self._stop.wait(interval)


def latency_stats(samples: list[float]) -> dict:
    a = np.asarray(samples, dtype=np.float64)
    return {"median_s": float(np.median(a)), "p95_s": float(np.percentile(a, 95)), "min_s": float(a.min()),
            "mean_s": float(a.mean()), "max_s": float(a.max()), "runs": int(a.size),
            "samples_s": [round(float(x), 6) for x in a]}


class TorchBackend(Backend):
    """PyTorch eager behind the runtime's Backend interface (same validation, latencies recorded)."""

    def __init__(self, model: CheckedModel, module, device):
        super().__init__(model)
        import torch

        self._torch = torch
        self.device = device
        self.module = module.to(device).eval()
        self.name = f"torch-{device.type}"
        self.details = {"torch": torch.__version__, "device": str(device), "threads": torch.get_num_threads(),
                        "mode": "eager, NCHW, inference_mode"}

    def _run_impl(self, x: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            return self.module(torch.from_numpy(x).to(self.device)).float().cpu().numpy()


def register_torch(manifest: Manifest, run: str, backend: str, threads: int) -> None:
    """Add the PyTorch eager backend ``backend`` (a :data:`TORCH_BACKENDS` name) on ``run``'s checkpoints to the
    runtime's registry: a Bundle loaded with ``backend=backend`` then runs its models in PyTorch."""
    def factory(model: CheckedModel, **_) -> Backend:
        return _torch_backend(manifest, model, run, backend, threads)

    register_backend(TORCH_BACKENDS[backend], factory)


def _torch_backend(manifest: Manifest, model: CheckedModel, run: str, backend: str, threads: int) -> TorchBackend:
    try:
        import torch
    except ImportError:
        raise Unavailable("torch rows need PyTorch (pip install 'rlp[train]')") from None
    from rlp.export.run import load_run

    device = torch.device(backend.split("-", 1)[1])
    if device.type == "cuda" and not torch.cuda.is_available():
        raise Unavailable("torch-cuda: this PyTorch has no CUDA device")
    torch.set_num_threads(threads)
    path = model.key
    loaded = load_run(run, (path,))
    if loaded.geometry != manifest.geometry or loaded.preprocessing != manifest.preprocessing:
        raise BadInput("the run's geometry or preprocessing differs from the bundle's", run)
    arch = model.entry.architecture
    if arch and arch != loaded.models[path].arch:
        raise BadInput(f"the run's {path} architecture {loaded.models[path].arch} is not the bundle's {arch}", run)
    return TorchBackend(model, loaded.models[path].module, device)


def _model_facts(backend: Backend) -> dict:
    entry = backend.model.entry
    if isinstance(backend, TorchBackend):
        sd = backend.module.state_dict().values()
        return {"model": f"{backend.model.key} checkpoint", "precision": "fp32",
                "model_bytes": int(sum(t.numel() * t.element_size() for t in sd)),
                "params": int(sum(p.numel() for p in backend.module.parameters()))}
    extra = sum(int(x.get("size") or 0) for x in entry.external_data if isinstance(x, dict))
    return {"model": backend.model.key, "precision": entry.precision, "model_bytes": int(entry.size) + extra,
            "params": _onnx_params(backend.model)}


def _onnx_params(model: CheckedModel) -> int | None:
    """Elements in the graph's initializers (BatchNorm folded into the convolutions); None without onnx."""
    if model.external_data:
        return None
    try:
        import onnx
    except ImportError:
        return None
    graph = onnx.load_model_from_string(model.data).graph
    return int(sum(int(np.prod(t.dims)) for t in graph.initializer))


def map_record(res) -> dict:
    """What the metrics need of one slice's heatmap (a :class:`~rlp.runtime.heatmap.SliceHeatmap`)."""
    return {"window": res.window_map, "evaluated": res.evaluated, "pixel": res.pixel_map,
            "top": np.asarray(res.top[0].box if res.top else [np.nan] * 4, np.float64)}


def load_maps(path: str | Path, n: int) -> list[dict]:
    """The maps a row process saved, one dict per quality slice (see :func:`map_record`)."""
    with np.load(path, allow_pickle=False) as z:
        return [{k: z[f"{k}_{j}"] for k in ("window", "evaluated", "pixel", "top")} for j in range(n)]


def _timing(bundle: Bundle, backend: Backend, path: str, image, spacing, runs: int,
            windows: int | None, method: str = "plain") -> tuple[dict, int, object]:
    """Warm up, then time ``runs`` heatmaps of one slice: (latency, windows evaluated, last full result).

    With ``windows`` (and more windows than that in the slice) the model part is
    timed on that many evenly spread windows and scaled up; the last result is
    then ``None``.
    """
    geom = bundle.manifest.geometry
    t0 = time.perf_counter()
    prep = preprocess_slice(image, bundle.manifest.preprocessing, spacing)
    pre_s = time.perf_counter() - t0
    ev = geom.evaluated(prep.brain)
    boxes = geom.window_boxes()[ev.ravel()]
    n = len(boxes)
    batch = min(bundle.batch, backend.max_batch or bundle.batch)
    plain = bundle.scorer(path)
    warm = bundle.scorer(path, "incremental") if method == "incremental" else plain
    dense = backend.model.entry.input_kind == InputKind.DENSE  # a dense predictor: one pass per slice, not per window
    warm.score(prep.image, boxes if dense else boxes[: WARMUP_BATCHES * batch])
    samples, model_s, last, used = [], [], None, None
    if windows and n > windows:
        pick = boxes[np.unique(np.linspace(0, n - 1, windows).round().astype(int))]
        used = len(pick)
        t0 = time.perf_counter()  # post-processing of a full map: pixel map, back to the input grid, top windows
        wm = np.ones(geom.grid_shape, np.float32)
        prep.resampler.to_input(geom.pixel_map(wm, ev))
        top_windows(wm, ev, geom, prep.resampler, 5)
        post_s = time.perf_counter() - t0
        for _ in range(runs):
            k = len(plain.latencies)
            t0 = time.perf_counter()
            plain.score(prep.image, pick)
            samples.append(pre_s + post_s + (time.perf_counter() - t0) * n / used)
            model_s.append(sum(plain.latencies[k:]) * n / used)
    else:
        for _ in range(runs):
            last = bundle.heatmap_slice(image, spacing, head=path, method=method)
            samples.append(last.timings["total_s"])
            model_s.append(last.timings["model_s"])
    latency = {**latency_stats(samples), "model_median_s": float(np.median(model_s)),
               "warmup": f"{WARMUP_BATCHES} batches of windows", "extrapolated": used is not None,
               "extrapolated_from_windows": used}
    return latency, n, last


def _volume(bundle: Bundle, path: str, method: str, volume: dict | None, slice_s: float) -> dict | None:
    """One whole-volume heatmap (load, every slice, back on the file's grid), timed once; skipped when the
    slice latency says it would take longer than the limit."""
    if not volume:
        return None
    out = {"file": volume["file"], "slices": volume["slices"], "estimated_s": slice_s * volume["slices"]}
    if out["estimated_s"] > volume["limit_s"]:
        return {**out, "skipped": f"estimated {out['estimated_s']:.0f} s from the slice latency, over the "
                                  f"{volume['limit_s']} s limit (--volume-limit)"}
    t0 = time.perf_counter()
    res = bundle.heatmap_nifti(volume["file"], axis=volume["axis"], head=path, method=method)
    seconds = time.perf_counter() - t0
    return {**out, "seconds": seconds, "s_per_slice": seconds / max(1, len(res.results)),
            "windows": sum(r.n_evaluated for r in res.results), "model_s": res.timings["model_s"]}


def measure(spec: dict) -> dict:
    """Everything one row measures (runs in the row's own process)."""
    row = spec["row"]
    path, kind = row["path"], row["backend"]
    if row["method"] not in METHODS:
        raise BadInput(f"unknown method {row['method']!r} (this rlp knows {', '.join(METHODS)})")
    rss = {"baseline_bytes": _proc_status("VmRSS")}
    torch_row = kind in TORCH_BACKENDS
    bundle = Bundle.load(spec["bundle"], backend=kind, threads=spec["threads"], batch=spec["batch"])
    if torch_row:
        register_torch(bundle.manifest, spec["run"], kind, spec["threads"])
    gpu = GpuMemoryPeak() if row.get("gpu") else None
    with bundle, (gpu or contextlib.nullcontext()):
        backend = bundle.backend(path)
        rss["after_load_bytes"] = _proc_status("VmRSS")
        timing_id = spec["timing_case"]["id"]
        image, spacing, _ = load_case(spec["timing_case"])
        latency, n, last = _timing(bundle, backend, path, image, spacing, spec["runs"],
                                   spec.get("g_windows") if path == "g" and row["method"] == "plain" else None,
                                   row["method"])
        maps, quality = {}, []
        for j, case in enumerate(spec["quality_cases"]):
            if last is not None and case["id"] == timing_id:
                res = last
            else:
                img, sp, _ = load_case(case)
                res = bundle.heatmap_slice(img, sp, head=path, method=row["method"])
                if latency["extrapolated"] and case["id"] == timing_id:
                    latency["full_pass_s"] = res.timings["total_s"]
            maps.update({f"{k}_{j}": v for k, v in map_record(res).items()})
            quality.append({"id": case["id"], "seconds": res.timings["total_s"], "windows": res.n_evaluated,
                            "scored": res.approximate["scored"] if res.approximate else res.n_evaluated})
        np.savez(spec["maps"], **maps)
        volume = _volume(bundle, path, row["method"], spec.get("volume"), latency["median_s"])
        out = {**_model_facts(backend), "backend_details": _plain(backend.describe()), "notes": list(backend.notes),
               "latency": latency, "windows": n, "windows_total": bundle.manifest.geometry.n_windows,
               "quality": quality, "volume": volume, "rss": rss}
        if row["method"] == "incremental":
            out["incremental"] = bundle.scorer(path, "incremental").describe()
        if row["method"] == COARSE:
            out["approximate"] = {**CoarseToFine().describe(), "scored": sum(q["scored"] for q in quality),
                                  "windows": sum(q["windows"] for q in quality)}
        if torch_row and backend.device.type == "cuda":
            out["gpu_torch_max_allocated_bytes"] = int(backend._torch.cuda.max_memory_allocated())
    if gpu is not None:
        out["gpu_peak_bytes"] = gpu.peak
        if gpu.note:
            out["notes"].append(f"GPU memory: {gpu.note}")
    return out


def _plain(obj):
    return json.loads(json.dumps(obj, default=str))


# --------------------------------------------------------------------------- child entry point
def child_main(argv: list[str] | None = None) -> int:
    spec_path, result_path = (sys.argv[1:] if argv is None else argv)[:2]
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    code = 0
    try:
        result = {"status": "ok", **measure(spec)}
    except Unavailable as exc:
        result, code = {"status": "unavailable", "error": str(exc)}, exc.code
    except RlpError as exc:
        result, code = {"status": "failed", "error": str(exc)}, exc.code
    except MemoryError:
        result, code = {"status": "failed", "error": "out of memory (try a smaller --batch)"}, EX_SOFTWARE
    except Exception as exc:  # a bug: the traceback goes to the row's log
        traceback.print_exc()
        result = {"status": "failed",
                  "error": f"internal error ({type(exc).__name__}: {' '.join(str(exc).split())[:300]})"}
        code = EX_SOFTWARE
    result.setdefault("rss", {})["peak_self_bytes"] = _proc_status("VmHWM")
    write_json(result_path, result)
    return code


# --------------------------------------------------------------------------- parent side
def run_row(spec: dict, workdir: Path, tag: str) -> dict:
    """Run one row in a fresh interpreter; its result with ``memory.peak_rss_bytes`` from the child's rusage."""
    spec_path, result_path, log_path = (workdir / f"{tag}.{x}" for x in ("spec.json", "result.json", "log"))
    spec = dict(spec, maps=str(workdir / f"{tag}.maps.npz"))
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    env = dict(os.environ)
    if spec.get("threads"):
        env.setdefault("OMP_NUM_THREADS", str(spec["threads"]))
    t0 = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "rlp.bench.rows", str(spec_path), str(result_path)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    try:
        result = json.loads(result_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
        result = {"status": "failed", "error": f"row process exited with {proc.returncode}: {tail[0][:300]}"}
    # The child's own high-water mark (VmHWM) is its peak RSS since exec. rusage's ru_maxrss is only a
    # fallback: Linux carries the parent's RSS at fork into it, so a small row would inherit a big parent's.
    rss = result.pop("rss", {})
    peak, source = rss.pop("peak_self_bytes", None), "VmHWM"
    if peak is None:
        peak, source = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024), "rusage"
    result["memory"] = {"peak_rss_bytes": int(peak), "peak_rss_source": source, **rss}
    result["process_wall_s"] = wall
    result["maps"] = spec["maps"] if result.get("status") == "ok" else None
    return result


if __name__ == "__main__":
    sys.exit(child_main())
