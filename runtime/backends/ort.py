"""onnxruntime backends (CPU, CUDA and TensorRT execution providers), and the one place that builds onnxruntime
session options and providers (the backends, incremental scoring, export's parity runs and the bench use it)."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Callable

import numpy as np

from ..core.errors import EX_SOFTWARE, BadInput, RlpError, Unavailable
from ..core.manifest import REBUILD
from .base import Backend
from .checks import CheckedModel, one_line_capped
from .table import ORT_PROVIDER


def cuda_provider_options(precision: str) -> dict:
    """Options of onnxruntime's CUDAExecutionProvider for a model of ``precision`` ("fp32" or "fp16").

    The provider's default ``use_tf32=1`` rounds fp32 convolutions and matrix
    products to TF32 (about 1e-3 relative error on Ampere and newer): fp32
    models get ``use_tf32=0`` so that they match the CPU and the fp32 TensorRT
    engines (built with the TF32 flag cleared).
    """
    opts: dict = {"device_id": 0}
    if precision == "fp32":
        opts["use_tf32"] = 0
    return opts


def ort_session_providers(name: str, precision: str) -> list:
    """The ``providers`` argument of an onnxruntime session for ``ort-cpu`` or ``ort-cuda``."""
    if name == "ort-cpu":
        return ["CPUExecutionProvider"]
    if name == "ort-cuda":
        return [("CUDAExecutionProvider", cuda_provider_options(precision)), "CPUExecutionProvider"]
    raise ValueError(f"not an onnxruntime CPU or CUDA backend: {name}")


def _compute_precision(name: str, precision: str) -> str:
    """What a session of ``name`` computes an fp32 or fp16 model in."""
    if precision != "fp32" or name == "ort-cpu":
        return precision
    if name == "ort-cuda":
        return "fp32 (TF32 off: use_tf32=0)"
    if os.environ.get("NVIDIA_TF32_OVERRIDE") == "0":
        return "fp32 (TF32 off: NVIDIA_TF32_OVERRIDE=0)"
    return "fp32, TF32 allowed (onnxruntime's TensorRT provider has no switch for it: set NVIDIA_TF32_OVERRIDE=0)"


def import_ort():
    try:
        return importlib.import_module("onnxruntime")
    except ImportError:
        raise Unavailable("onnxruntime is not installed; pip install 'rlp[cpu]' (or 'rlp[gpu]')") from None


def ort_providers() -> list[str]:
    """Execution providers of the installed onnxruntime ([] when it is missing)."""
    try:
        return list(import_ort().get_available_providers())
    except Unavailable:
        return []


def ort_session_options(threads: int | None = None, *, spinning: bool = True, arenas: bool = True):
    """The ``onnxruntime.SessionOptions`` of every rlp session (backends, incremental scoring, export, bench).

    All graph optimisations, one sequential executor, ``threads`` intra-op
    threads (None: one per physical core), errors only on stderr (rlp says its
    own things in one line). ``spinning=False``: idle pool threads do not spin
    between calls (for sessions that take turns with numpy or with another
    framework); ``arenas=False``: no memory arena and no memory pattern (for
    many small sessions run on changing shapes: each would keep its peak).
    """
    ort = import_ort()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.inter_op_num_threads = 1
    so.intra_op_num_threads = int(threads) if threads else 0  # 0: one thread per physical core
    so.log_severity_level = 3  # errors only: keep stderr for rlp's own one-line messages
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not arenas:
        so.enable_cpu_mem_arena = False
        so.enable_mem_pattern = False
    return so


def ort_sessions(name: str, precision: str, threads: int | None = None, **options) -> Callable:
    """A session factory for backend ``name`` (``ort-cpu`` or ``ort-cuda``): serialised ONNX bytes -> an
    ``onnxruntime.InferenceSession`` with that backend's providers and :func:`ort_session_options` (``options``)."""
    ort = import_ort()
    providers = ort_session_providers(name, precision)
    so = ort_session_options(threads, **options)
    return lambda data: ort.InferenceSession(data, sess_options=so, providers=list(providers))


def trt_cache_dir() -> Path:
    """Where ``ort-trt`` keeps the TensorRT engines it builds (``RLP_TRT_CACHE`` overrides)."""
    env = os.environ.get("RLP_TRT_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rlp" / "ort-trt"


class OrtBackend(Backend):
    """onnxruntime with one execution provider (CPU, CUDA or TensorRT) first in line."""

    def __init__(self, model: CheckedModel, name: str = "ort-cpu", *, threads: int | None = None,
                 max_batch: int = 64):
        super().__init__(model)
        if name not in ORT_PROVIDER:
            raise ValueError(f"not an onnxruntime backend: {name}")
        self.name = name
        ort = import_ort()
        want = ORT_PROVIDER[name]
        available = list(ort.get_available_providers())
        if want not in available:
            raise Unavailable(f"backend {name} needs onnxruntime's {want}, which is not available here "
                              f"(available: {', '.join(available) or 'none'}); "
                              + ("install onnxruntime-gpu and the CUDA libraries" if name != "ort-cpu" else
                                 "reinstall onnxruntime"))
        providers = self._providers(name, model, max_batch)
        so = ort_session_options(threads)
        # External data (checked by check_model) is resolved next to the model file, so pass the path;
        # otherwise hand over the very bytes whose hash was checked.
        source = str(model.path) if model.external_data else model.data
        try:
            self.session = ort.InferenceSession(source, sess_options=so, providers=providers)
        except Exception as exc:
            if name != "ort-cpu" and _loads_on_cpu(ort, source, so):  # the provider failed, not the model
                raise Unavailable(f"backend {name}: onnxruntime could not start {want} ({one_line_capped(exc)}); "
                                  "is a GPU present and are the CUDA/TensorRT libraries on the library path?") from None
            raise BadInput(f"onnxruntime cannot load {model.entry.file} ({one_line_capped(exc)}); {REBUILD}",
                           model.bundle) from None
        used = self.session.get_providers()
        if not used or used[0] != want:
            raise Unavailable(f"backend {name}: onnxruntime fell back to {used[0] if used else 'nothing'} "
                              f"(is a GPU present and are the CUDA/TensorRT libraries on the library path?)")
        self._check_session_io(model)
        if name == "ort-trt":
            self.max_batch = int(max_batch)  # the TensorRT profile's largest shape
        self.details = {"providers": used, "threads": so.intra_op_num_threads or "default",
                        "compute_precision": _compute_precision(name, model.entry.precision)}

    @staticmethod
    def _providers(name: str, model: CheckedModel, max_batch: int) -> list:
        if name != "ort-trt":
            return ort_session_providers(name, model.entry.precision)
        cuda = ("CUDAExecutionProvider", cuda_provider_options(model.entry.precision))  # nodes TensorRT does not take
        dims = "x".join(str(d) for d in model.input.shape[1:])
        name = model.input.name
        cache = trt_cache_dir() / model.entry.sha256[:16]
        cache.mkdir(parents=True, exist_ok=True)
        trt_opts = {
            "device_id": 0,
            "trt_fp16_enable": model.entry.precision == "fp16",
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache),
            "trt_profile_min_shapes": f"{name}:1x{dims}",
            "trt_profile_opt_shapes": f"{name}:{max_batch}x{dims}",
            "trt_profile_max_shapes": f"{name}:{max_batch}x{dims}",
        }
        return [("TensorrtExecutionProvider", trt_opts), cuda, "CPUExecutionProvider"]

    def _check_session_io(self, model: CheckedModel) -> None:
        ins, outs = self.session.get_inputs(), self.session.get_outputs()
        want_type = "tensor(float16)" if model.input.dtype == np.float16 else "tensor(float)"
        if len(ins) != 1 or ins[0].name != model.input.name or ins[0].type != want_type:
            got = [(i.name, i.type) for i in ins]
            raise BadInput(f"{model.entry.file}: session inputs {got} do not match the manifest's "
                           f"{model.input.describe()}; {REBUILD}", model.bundle)
        if model.output.name not in [o.name for o in outs]:
            raise BadInput(f"{model.entry.file}: no output {model.output.name!r} in the graph; {REBUILD}", model.bundle)

    def _run_impl(self, x: np.ndarray) -> np.ndarray:
        try:
            return self.session.run([self.output.name], {self.input.name: x})[0]
        except Exception as exc:
            raise RlpError(f"onnxruntime failed ({one_line_capped(exc)})", self.model.path, EX_SOFTWARE) from None

    def _close_impl(self) -> None:
        self.session = None


def _loads_on_cpu(ort, source, so) -> bool:
    try:
        ort.InferenceSession(source, sess_options=so, providers=["CPUExecutionProvider"])
    except Exception:
        return False
    return True

