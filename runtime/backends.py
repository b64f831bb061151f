"""Inference backends: one small interface over onnxruntime and TensorRT.

A :class:`Backend` runs one model of a bundle on a batch of numpy arrays. As in
Polygraphy's runners, the public :meth:`Backend.run` validates the batch against
the model's manifest entry, calls the implementation's ``_run_impl`` and checks
what comes back (shape, and every value finite); every call's latency is kept in
:attr:`Backend.latencies`. Backends are context managers (``close`` frees the
session, device memory and streams).

========== =========================================================== ==========================
name       what                                                        needs
========== =========================================================== ==========================
ort-cpu    onnxruntime, CPUExecutionProvider                           ``onnxruntime``
ort-cuda   onnxruntime, CUDAExecutionProvider                          ``onnxruntime-gpu``, a GPU
ort-trt    onnxruntime, TensorrtExecutionProvider (engines cached)     ``onnxruntime-gpu``, TensorRT
trt        a TensorRT engine listed in the manifest (hash-checked)     ``tensorrt``, ``cuda-python``
========== =========================================================== ==========================

``auto`` tries ``trt``, then ``ort-cuda``, then ``ort-cpu`` and reports which it
took and why it skipped the others. ``ort-trt`` is never picked by ``auto``:
it builds TensorRT engines when the session is created (minutes, once per
model and shape range); ask for it by name.

Before any session is created, :func:`check_model` re-reads the model file,
re-checks its sha256 against the manifest (the bytes checked are the bytes
handed to onnxruntime), and, when the ``onnx`` package is importable, runs the
full ONNX checker, allows only operators of the standard domains (and local
functions built from them), and refuses external data that is not a plain file
inside the bundle listed in the manifest. Without ``onnx`` those structural
checks are skipped (the hashes still are checked) and a note says so.

GPU libraries are imported lazily, inside the backends that need them; a
missing library or device is an :class:`~rlp.runtime.core.errors.Unavailable` error
that lists what is available. That includes a library that is installed but
cannot load (``import tensorrt`` raising ``OSError``/``FileNotFoundError`` or
``RuntimeError``) and a CUDA call that raises instead of returning an error code
(cuda-python before 12.9 raises ``RuntimeError`` without ``libcuda.so.1``), so
``auto`` always falls back to the CPU.

fp32 models run in fp32 on the GPU too: onnxruntime's CUDA provider uses TF32
by default on Ampere and newer, so its sessions for fp32 models get
``use_tf32=0``; ``details["compute_precision"]`` says what a backend runs in
(onnxruntime's TensorRT provider has no such switch: there it says TF32 may be
used, unless ``NVIDIA_TF32_OVERRIDE=0`` is set).
"""

from __future__ import annotations

import hashlib
import importlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Sequence

import numpy as np

from .core.errors import EX_SOFTWARE, EX_USAGE, BadInput, RlpError, SecurityRefusal, Unavailable
from .core.manifest import REBUILD, EngineEntry, ModelEntry, TensorSpec, resolve_inside, verify_file

BACKENDS = ("ort-cpu", "ort-cuda", "ort-trt", "trt")
AUTO_ORDER = ("trt", "ort-cuda", "ort-cpu")
GPU_BACKENDS = frozenset({"ort-cuda", "ort-trt", "trt"})
STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})
REBUILD_TRT = "rebuild with rlp-export --trt"
_DTYPES = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16)}
_ORT_PROVIDER = {
    "ort-cpu": "CPUExecutionProvider",
    "ort-cuda": "CUDAExecutionProvider",
    "ort-trt": "TensorrtExecutionProvider",
}


# --------------------------------------------------------------------------- model checks
@dataclass(frozen=True)
class TensorIO:
    """One graph input or output as the manifest declares it (``None``: a dynamic axis)."""

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype

    @classmethod
    def from_spec(cls, spec: TensorSpec, where) -> "TensorIO":
        if spec.dtype not in _DTYPES:
            raise BadInput(f"tensor {spec.name!r} has unsupported dtype {spec.dtype!r}; {REBUILD}", where)
        shape = tuple(int(d) if isinstance(d, int) and not isinstance(d, bool) else None for d in spec.shape)
        if any(d is not None and d <= 0 for d in shape):
            raise BadInput(f"tensor {spec.name!r} has a non-positive dimension {spec.shape}; {REBUILD}", where)
        return cls(spec.name, shape, _DTYPES[spec.dtype])

    def describe(self) -> str:
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}[{dims}] {self.dtype.name}"


@dataclass
class CheckedModel:
    """A bundle model whose bytes were hash-checked (and, with onnx, structurally checked)."""

    key: str
    entry: ModelEntry
    path: Path
    bundle: Path
    data: bytes
    input: TensorIO
    output: TensorIO
    external_data: bool = False
    notes: list[str] = field(default_factory=list)


def _import_onnx():
    try:
        return importlib.import_module("onnx")
    except ImportError:
        return None


def check_model(bundle: str | os.PathLike, key: str, entry: ModelEntry) -> CheckedModel:
    """Read, hash-check and (with ``onnx``) structurally check one model of a bundle."""
    bundle = Path(bundle)
    path = resolve_inside(bundle, entry.file, "model")
    if len(entry.inputs) != 1 or len(entry.outputs) != 1:
        raise BadInput(f"model {key!r} must have exactly one input and one output in the manifest; {REBUILD}", bundle)
    inp = TensorIO.from_spec(entry.inputs[0], bundle)
    out = TensorIO.from_spec(entry.outputs[0], bundle)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BadInput(f"cannot read model {entry.file} ({exc.strerror or exc})", bundle) from None
    if hashlib.sha256(data).hexdigest() != entry.sha256:
        raise SecurityRefusal(f"{entry.file} changed after the manifest was checked (sha256 mismatch); {REBUILD}", bundle)
    if not data:
        raise BadInput(f"model file {entry.file} is empty; {REBUILD}", bundle)
    model = CheckedModel(key, entry, path, bundle, data, inp, out)
    onnx = _import_onnx()
    if onnx is None:
        model.notes.append("the onnx package is not installed: model files were checked by sha256 only "
                           "(pip install onnx for the ONNX checker, operator-domain and external-data checks)")
        return model
    _check_onnx_structure(onnx, model)
    return model


def _check_onnx_structure(onnx, model: CheckedModel) -> None:
    where, rel = model.bundle, model.entry.file
    try:
        proto = onnx.load_model_from_string(model.data)  # never follows external data
    except Exception as exc:
        raise BadInput(f"{rel} is not a valid ONNX file ({_one_line(exc)}); {REBUILD}", where) from None
    listed = {_norm(x.get("file", "")) for x in model.entry.external_data if isinstance(x, dict)}
    for tensor in _iter_tensors(proto):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            info = {e.key: e.value for e in tensor.external_data}
            _check_external_location(model, info.get("location", ""), listed)
            model.external_data = True
    functions = {(f.domain, f.name): f for f in proto.functions}
    bad = sorted({f"{d or 'ai.onnx'}::{op}" for d, op in _iter_ops(proto.graph, functions)})
    if bad:
        raise SecurityRefusal(f"{rel} uses operators outside the standard ONNX domains ({', '.join(bad[:5])}); "
                              "custom operators are refused", where)
    try:
        if model.external_data:
            onnx.checker.check_model(str(model.path), full_check=True)
        else:
            onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise BadInput(f"{rel} fails the ONNX checker ({_one_line(exc)}); {REBUILD}", where) from None
    _check_graph_io(proto, model)


def _iter_graphs(graph) -> Iterable:
    yield graph
    for node in graph.node:
        yield from _iter_node_subgraphs(node)


def _iter_node_subgraphs(node) -> Iterable:
    for attr in node.attribute:
        if attr.HasField("g"):
            yield from _iter_graphs(attr.g)
        for g in attr.graphs:
            yield from _iter_graphs(g)


def _iter_tensors(proto) -> Iterable:
    """Every TensorProto of the model: initializers, sparse ones, and tensor attributes, recursively."""
    nodes = []
    for graph in _iter_graphs(proto.graph):
        yield from graph.initializer
        for sp in graph.sparse_initializer:
            yield sp.values
            yield sp.indices
        nodes.extend(graph.node)
    for fn in proto.functions:
        nodes.extend(fn.node)
        for node in fn.node:
            for g in _iter_node_subgraphs(node):
                nodes.extend(g.node)
    for node in nodes:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("sparse_tensor"):
                yield attr.sparse_tensor.values
                yield attr.sparse_tensor.indices


def _iter_ops(graph, functions: dict, seen: set | None = None) -> Iterable[tuple[str, str]]:
    """(domain, op) of every operator outside the standard domains, local functions expanded."""
    seen = set() if seen is None else seen
    for g in _iter_graphs(graph):
        for node in g.node:
            if node.domain in STANDARD_DOMAINS:
                continue
            fn = functions.get((node.domain, node.op_type))
            if fn is None:
                yield node.domain, node.op_type
            elif (node.domain, node.op_type) not in seen:
                seen.add((node.domain, node.op_type))
                body = type(graph)()
                body.node.extend(fn.node)
                yield from _iter_ops(body, functions, seen)


def _norm(rel: str) -> str:
    return str(PurePosixPath(os.path.normpath(rel))) if rel else ""


def _check_external_location(model: CheckedModel, location: str, listed: set[str]) -> None:
    where, rel = model.bundle, model.entry.file
    if not location or os.path.isabs(location) or location.startswith(("/", "\\")) or "\\" in location:
        raise SecurityRefusal(f"{rel}: external data location {location!r} is not a relative path; refused", where)
    if ".." in PurePosixPath(location).parts:
        raise SecurityRefusal(f"{rel}: external data location {location!r} leaves the model's folder; refused", where)
    model_dir = PurePosixPath(rel).parent
    target = _norm(str(model_dir / location))
    resolve_inside(where, target, "external data")  # symlinks, hard links, anything resolving outside
    if target not in listed:
        raise SecurityRefusal(f"{rel}: external data file {target!r} is not listed (with its sha256) in the "
                              f"manifest; {REBUILD}", where)


def _check_graph_io(proto, model: CheckedModel) -> None:
    """The graph's input and output must be the ones the manifest declares."""
    init = {t.name for t in proto.graph.initializer}
    graph_in = [v for v in proto.graph.input if v.name not in init]
    for what, values, spec in (("input", graph_in, model.input), ("output", list(proto.graph.output), model.output)):
        if len(values) != 1 or values[0].name != spec.name:
            names = [v.name for v in values]
            raise BadInput(f"{model.entry.file}: graph {what}s {names} do not match the manifest's "
                           f"{spec.describe()}; {REBUILD}", model.bundle)
        tt = values[0].type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        ok_rank = not tt.HasField("shape") or len(dims) == len(spec.shape)
        ok_dims = ok_rank and all(a is None or b is None or a == b for a, b in zip(dims, spec.shape))
        if not ok_dims:
            raise BadInput(f"{model.entry.file}: graph {what} shape {dims} does not match the manifest's "
                           f"{spec.describe()}; {REBUILD}", model.bundle)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text[:300] + "...") if len(text) > 300 else (text or type(exc).__name__)


# --------------------------------------------------------------------------- the interface
class Backend:
    """Runs one checked model on numpy batches (N, ...) -> (N, ...)."""

    name = "base"

    def __init__(self, model: CheckedModel):
        self.model = model
        self.input = model.input
        self.output = model.output
        self.latencies: list[float] = []
        self.max_batch: int | None = None
        self.notes: list[str] = list(model.notes)
        self.details: dict = {}
        self._closed = False

    # -- public
    @property
    def input_dtype(self) -> np.dtype:
        return self.input.dtype

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Validate ``batch``, run the model, check the output; the latency is recorded."""
        if self._closed:
            raise RlpError(f"backend {self.name} is closed", self.model.path, EX_SOFTWARE)
        x = self._check_input(batch)
        t0 = time.perf_counter()
        y = self._run_impl(x)
        self.latencies.append(time.perf_counter() - t0)
        return self._check_output(y, x.shape[0])

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._close_impl()

    def describe(self) -> dict:
        return {"backend": self.name, "model": self.model.key, "file": self.model.entry.file,
                "precision": self.model.entry.precision, **self.details}

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} model={self.model.key} {self.input.describe()}>"

    # -- implementation hooks
    def _run_impl(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _close_impl(self) -> None:
        pass

    # -- checks
    def _check_input(self, batch) -> np.ndarray:
        where = self.model.path
        if not isinstance(batch, np.ndarray):
            raise RlpError(f"model input must be a numpy array, got {type(batch).__name__}", where, EX_SOFTWARE)
        spec = self.input
        if batch.dtype != spec.dtype:
            raise RlpError(f"model input has dtype {batch.dtype}, the model expects {spec.dtype}", where, EX_SOFTWARE)
        if batch.ndim != len(spec.shape) or batch.shape[0] < 1 or any(
                want is not None and got != want for got, want in zip(batch.shape, spec.shape)):
            raise RlpError(f"model input has shape {batch.shape}, the model expects {spec.describe()}", where, EX_SOFTWARE)
        if self.max_batch is not None and batch.shape[0] > self.max_batch:
            raise RlpError(f"batch of {batch.shape[0]} is over this backend's limit of {self.max_batch}", where, EX_SOFTWARE)
        return np.ascontiguousarray(batch)

    def _check_output(self, y, n: int) -> np.ndarray:
        where, spec = self.model.path, self.output
        y = np.asarray(y)
        if y.ndim != len(spec.shape) or y.shape[0] != n or any(
                want is not None and got != want for got, want in zip(y.shape[1:], spec.shape[1:])):
            raise BadInput(f"model output has shape {y.shape}, the manifest declares {spec.describe()} "
                           f"for a batch of {n}; {REBUILD}", where)
        finite = np.isfinite(y)
        if not finite.all():
            bad = int(y.size - finite.sum())
            raise BadInput(f"model produced {bad} non-finite value(s) (NaN/Inf) out of {y.size}; "
                           "the bundle is broken (an fp16 overflow?)", where)
        return y


# --------------------------------------------------------------------------- onnxruntime
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


def ort_session_providers(kind: str, precision: str) -> list:
    """The ``providers`` argument of an onnxruntime session for ``ort-cpu`` or ``ort-cuda``."""
    if kind == "ort-cpu":
        return ["CPUExecutionProvider"]
    if kind == "ort-cuda":
        return [("CUDAExecutionProvider", cuda_provider_options(precision)), "CPUExecutionProvider"]
    raise ValueError(f"not an onnxruntime CPU or CUDA backend: {kind}")


def _compute_precision(kind: str, precision: str) -> str:
    """What a session of ``kind`` computes an fp32 or fp16 model in."""
    if precision != "fp32" or kind == "ort-cpu":
        return precision
    if kind == "ort-cuda":
        return "fp32 (TF32 off: use_tf32=0)"
    if os.environ.get("NVIDIA_TF32_OVERRIDE") == "0":
        return "fp32 (TF32 off: NVIDIA_TF32_OVERRIDE=0)"
    return "fp32, TF32 allowed (onnxruntime's TensorRT provider has no switch for it: set NVIDIA_TF32_OVERRIDE=0)"


def _import_ort():
    try:
        return importlib.import_module("onnxruntime")
    except ImportError:
        raise Unavailable("onnxruntime is not installed; pip install 'rlp[cpu]' (or 'rlp[gpu]')") from None


def ort_providers() -> list[str]:
    """Execution providers of the installed onnxruntime ([] when it is missing)."""
    try:
        return list(_import_ort().get_available_providers())
    except Unavailable:
        return []


def trt_cache_dir() -> Path:
    """Where ``ort-trt`` keeps the TensorRT engines it builds (``RLP_TRT_CACHE`` overrides)."""
    env = os.environ.get("RLP_TRT_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rlp" / "ort-trt"


class OrtBackend(Backend):
    """onnxruntime with one execution provider (CPU, CUDA or TensorRT) first in line."""

    def __init__(self, model: CheckedModel, kind: str = "ort-cpu", *, threads: int | None = None,
                 max_batch: int = 64):
        super().__init__(model)
        if kind not in _ORT_PROVIDER:
            raise ValueError(f"not an onnxruntime backend: {kind}")
        self.name = kind
        ort = _import_ort()
        want = _ORT_PROVIDER[kind]
        available = list(ort.get_available_providers())
        if want not in available:
            raise Unavailable(f"backend {kind} needs onnxruntime's {want}, which is not available here "
                              f"(available: {', '.join(available) or 'none'}); "
                              + ("install onnxruntime-gpu and the CUDA libraries" if kind != "ort-cpu" else
                                 "reinstall onnxruntime"))
        providers = self._providers(kind, model, max_batch)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.inter_op_num_threads = 1
        so.intra_op_num_threads = int(threads) if threads else 0  # 0: one thread per physical core
        so.log_severity_level = 3  # errors only: keep stderr for rlp's own one-line messages
        # External data (checked by check_model) is resolved next to the model file, so pass the path;
        # otherwise hand over the very bytes whose hash was checked.
        source = str(model.path) if model.external_data else model.data
        try:
            self.session = ort.InferenceSession(source, sess_options=so, providers=providers)
        except Exception as exc:
            if kind != "ort-cpu" and _loads_on_cpu(ort, source, so):  # the provider failed, not the model
                raise Unavailable(f"backend {kind}: onnxruntime could not start {want} ({_one_line(exc)}); "
                                  "is a GPU present and are the CUDA/TensorRT libraries on the library path?") from None
            raise BadInput(f"onnxruntime cannot load {model.entry.file} ({_one_line(exc)}); {REBUILD}",
                           model.bundle) from None
        used = self.session.get_providers()
        if not used or used[0] != want:
            raise Unavailable(f"backend {kind}: onnxruntime fell back to {used[0] if used else 'nothing'} "
                              f"(is a GPU present and are the CUDA/TensorRT libraries on the library path?)")
        self._check_session_io(model)
        if kind == "ort-trt":
            self.max_batch = int(max_batch)  # the TensorRT profile's largest shape
        self.details = {"providers": used, "threads": so.intra_op_num_threads or "default",
                        "compute_precision": _compute_precision(kind, model.entry.precision)}

    @staticmethod
    def _providers(kind: str, model: CheckedModel, max_batch: int) -> list:
        if kind != "ort-trt":
            return ort_session_providers(kind, model.entry.precision)
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
            raise RlpError(f"onnxruntime failed ({_one_line(exc)})", self.model.path, EX_SOFTWARE) from None

    def _close_impl(self) -> None:
        self.session = None


def _loads_on_cpu(ort, source, so) -> bool:
    try:
        ort.InferenceSession(source, sess_options=so, providers=["CPUExecutionProvider"])
    except Exception:
        return False
    return True


# --------------------------------------------------------------------------- TensorRT
#: what a library that is installed but cannot load raises on import (the tensorrt wheel raises
#: FileNotFoundError when its libraries are missing; a CUDA library mismatch is an OSError from dlopen)
_IMPORT_FAILURES = (ImportError, OSError, RuntimeError)
#: what a cuda-python call raises instead of returning an error code (cuda-python 12.0-12.8 without
#: libcuda.so.1: RuntimeError "Failed to dlopen libcuda.so.1")
_CUDA_FAILURES = (RuntimeError, OSError)
_NO_DRIVER = "is an NVIDIA GPU with a working driver present?"


def _import_trt():
    """(tensorrt, cudart) or Unavailable; cuda-python moved cudart to cuda.bindings in 12.6."""
    try:
        trt = importlib.import_module("tensorrt")
    except _IMPORT_FAILURES as exc:
        if isinstance(exc, ModuleNotFoundError) and exc.name == "tensorrt":
            raise Unavailable("backend trt needs the tensorrt package (pip install 'rlp[gpu]')") from None
        raise Unavailable(f"backend trt: tensorrt is installed but cannot be imported ({type(exc).__name__}: "
                          f"{_one_line(exc)}); reinstall it with pip install 'rlp[gpu]'") from None
    try:
        cudart = importlib.import_module("cuda.bindings.runtime")
    except _IMPORT_FAILURES as first:
        try:
            cudart = importlib.import_module("cuda.cudart")
        except ModuleNotFoundError:
            if isinstance(first, ModuleNotFoundError):
                raise Unavailable("backend trt needs cuda-python (pip install 'rlp[gpu]')") from None
            raise Unavailable(f"backend trt: cuda-python cannot be imported ({type(first).__name__}: "
                              f"{_one_line(first)})") from None
        except _IMPORT_FAILURES as exc:
            raise Unavailable(f"backend trt: cuda-python cannot be imported ({type(exc).__name__}: "
                              f"{_one_line(exc)})") from None
    return trt, cudart


def _cuda(cudart, result, what: str):
    """Unpack a cuda-python (err, *values) tuple; a failure is Unavailable."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise Unavailable(f"CUDA {what} failed ({err}); {_NO_DRIVER}")
    return values[0] if len(values) == 1 else values


def _cuda_call(cudart, what: str, fn: Callable, *args):
    """Call a cuda-python function and unpack its result; an exception it raises is Unavailable too."""
    try:
        result = fn(*args)
    except _CUDA_FAILURES as exc:
        raise Unavailable(f"CUDA {what} failed ({_one_line(exc)}); {_NO_DRIVER}") from None
    return _cuda(cudart, result, what)


def compute_capability(cudart, device: int = 0) -> str:
    n = _cuda_call(cudart, "device count", cudart.cudaGetDeviceCount)
    if n is None or int(n) < 1:
        raise Unavailable("no CUDA device found")
    prop = _cuda_call(cudart, "device query", cudart.cudaGetDeviceProperties, device)
    return f"{prop.major}.{prop.minor}"


def matching_engines(engines: Sequence[EngineEntry], key: str) -> list[EngineEntry]:
    return [e for e in engines if e.model == key]


class TrtBackend(Backend):
    """A TensorRT engine from the bundle, run with cuda-python and numpy (no torch).

    Only engines listed in the manifest for this model, with a matching sha256,
    TensorRT version and GPU compute capability, are deserialised. TensorRT
    returns ``None`` for an engine built elsewhere or corrupted: that is a clean
    error asking to rebuild. Engine host code and plugin libraries stay disabled.
    """

    name = "trt"

    def __init__(self, model: CheckedModel, engines: Sequence[EngineEntry], *, max_batch: int = 64):
        super().__init__(model)
        trt, cudart = _import_trt()
        self._trt, self._cudart = trt, cudart
        self._stream = None
        self._dev: dict[str, int] = {}
        listed = matching_engines(engines, model.key)
        if not listed:
            raise Unavailable(f"the bundle has no TensorRT engine for model {model.key!r}; {REBUILD_TRT}")
        cc = compute_capability(cudart)
        ok = [e for e in listed if e.tensorrt_version == trt.__version__ and e.compute_capability == cc]
        if not ok:
            have = ", ".join(f"TensorRT {e.tensorrt_version} sm {e.compute_capability}" for e in listed)
            raise Unavailable(f"no TensorRT engine for this GPU (sm {cc}) and TensorRT {trt.__version__} "
                              f"(the bundle has: {have}); {REBUILD_TRT}")
        entry = ok[0]
        self.max_batch = int(max_batch)
        path = verify_file(model.bundle, entry.file, entry.sha256, entry.size)
        blob = path.read_bytes()
        if hashlib.sha256(blob).hexdigest() != entry.sha256:
            raise SecurityRefusal(f"{entry.file} changed after the manifest was checked; {REBUILD_TRT}", model.bundle)
        self._engine = self._context = None
        try:
            self._load(entry, blob, cc)
        except BaseException:
            self._close_impl()
            raise

    def _load(self, entry: EngineEntry, blob: bytes, cc: str) -> None:
        trt, cudart, model = self._trt, self._cudart, self.model
        self._logger = trt.Logger(trt.Logger.ERROR)
        self._runtime = trt.Runtime(self._logger)
        if hasattr(self._runtime, "engine_host_code_allowed"):  # TensorRT >= 10: never run code shipped in a plan
            self._runtime.engine_host_code_allowed = False
        engine = self._runtime.deserialize_cuda_engine(blob)
        if engine is None:
            raise BadInput(f"TensorRT could not deserialise {entry.file} (built for another GPU or TensorRT "
                           f"version, or corrupt); {REBUILD_TRT}", model.bundle)
        self._engine = engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        if sorted(names) != sorted([model.input.name, model.output.name]):
            raise BadInput(f"{entry.file}: engine tensors {names} do not match the manifest; {REBUILD_TRT}", model.bundle)
        for spec in (model.input, model.output):
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(spec.name)))
            if dtype != spec.dtype:
                raise BadInput(f"{entry.file}: engine tensor {spec.name!r} is {dtype}, the manifest says {spec.dtype}; "
                               f"{REBUILD_TRT}", model.bundle)
            # the device buffers are sized from the manifest: the engine's own shape must be the same
            shape = tuple(int(d) for d in engine.get_tensor_shape(spec.name))
            if None in spec.shape[1:] or len(shape) != len(spec.shape) or any(
                    e != -1 and e != m for e, m in zip(shape[1:], spec.shape[1:])):
                raise BadInput(f"{entry.file}: engine tensor {spec.name!r} has shape {shape}, the manifest declares "
                               f"{spec.describe()}; {REBUILD_TRT}", model.bundle)
        self._context = engine.create_execution_context()
        if self._context is None:
            raise Unavailable(f"TensorRT could not create an execution context for {entry.file} "
                              "(out of GPU memory?)")
        self.max_batch = min(self.max_batch, int(entry.max_batch))
        self._stream = _cuda_call(cudart, "stream creation", cudart.cudaStreamCreate)
        for spec in (model.input, model.output):
            nbytes = int(np.prod(spec.shape[1:])) * spec.dtype.itemsize * self.max_batch
            self._dev[spec.name] = _cuda_call(cudart, "allocation", cudart.cudaMalloc, nbytes)
        self.details = {"engine": entry.file, "tensorrt": trt.__version__, "compute_capability": cc,
                        "max_batch": self.max_batch, "compute_precision": entry.precision}

    def _run_impl(self, x: np.ndarray) -> np.ndarray:
        cudart, ctx = self._cudart, self._context
        i_name, o_name = self.input.name, self.output.name
        if not ctx.set_input_shape(i_name, tuple(x.shape)):
            raise RlpError(f"TensorRT refused input shape {x.shape}", self.model.path, EX_SOFTWARE)
        out_shape = tuple(int(d) for d in ctx.get_tensor_shape(o_name))
        if out_shape != (x.shape[0], *self.output.shape[1:]):  # before anything is written to the output buffer
            raise BadInput(f"the TensorRT engine's output for a batch of {x.shape[0]} has shape {out_shape}, the "
                           f"manifest declares {self.output.describe()}; {REBUILD_TRT}", self.model.path)
        y = np.empty(out_shape, dtype=self.output.dtype)
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _cuda_call(cudart, "copy to GPU", cudart.cudaMemcpyAsync, self._dev[i_name], x, x.nbytes, h2d, self._stream)
        for name in (i_name, o_name):
            if not ctx.set_tensor_address(name, self._dev[name]):
                raise RlpError(f"TensorRT refused the device address of tensor {name!r}", self.model.path, EX_SOFTWARE)
        if not ctx.execute_async_v3(stream_handle=int(self._stream)):
            raise RlpError("TensorRT execution failed", self.model.path, EX_SOFTWARE)
        _cuda_call(cudart, "copy from GPU", cudart.cudaMemcpyAsync, y, self._dev[o_name], y.nbytes, d2h, self._stream)
        _cuda_call(cudart, "synchronise", cudart.cudaStreamSynchronize, self._stream)
        return y

    def _close_impl(self) -> None:
        cudart = self._cudart
        for ptr in self._dev.values():  # every buffer, even when freeing one fails
            try:
                cudart.cudaFree(ptr)
            except _CUDA_FAILURES:
                pass
        self._dev.clear()
        if self._stream is not None:
            try:
                cudart.cudaStreamDestroy(self._stream)
            except _CUDA_FAILURES:
                pass
            self._stream = None
        self._context = self._engine = None


# --------------------------------------------------------------------------- factory
def available_backends(engines: Sequence[EngineEntry] = ()) -> list[str]:
    """Backends whose libraries are importable here (a device is only checked when one is created)."""
    out = []
    providers = ort_providers()
    for kind in BACKENDS:
        if kind == "trt":
            try:
                _import_trt()
            except Unavailable:
                continue
            out.append(kind)
        elif _ORT_PROVIDER[kind] in providers:
            out.append(kind)
    return out


def create_backend(kind: str, model: CheckedModel | Callable[[str], CheckedModel], *,
                   threads: int | None = None, engines: Sequence[EngineEntry] = (), max_batch: int = 64) -> Backend:
    """A backend by name, or the best available one for ``"auto"``.

    ``model`` may be a callable mapping a backend name to the model it should
    run (a bundle picks its fp16 model for GPU backends). With ``"auto"`` the
    backends of :data:`AUTO_ORDER` are tried in turn; one that is
    :class:`~rlp.runtime.core.errors.Unavailable` is skipped (other errors, such as a
    hash mismatch, are raised), and ``details["auto"]`` says what was picked and why.
    """
    if kind != "auto" and kind not in BACKENDS:
        raise RlpError(f"unknown backend {kind!r}; choose auto or one of {', '.join(BACKENDS)}", code=EX_USAGE)
    pick = model if callable(model) else (lambda _kind: model)
    skipped: dict[str, str] = {}
    for k in (AUTO_ORDER if kind == "auto" else (kind,)):
        try:
            if k == "trt":
                backend: Backend = TrtBackend(pick(k), engines, max_batch=max_batch)
            else:
                backend = OrtBackend(pick(k), k, threads=threads, max_batch=max_batch)
        except Unavailable as exc:
            if kind != "auto":
                raise
            skipped[k] = exc.message
            continue
        if kind == "auto":
            backend.details["auto"] = {"picked": k, "skipped": skipped}
        return backend
    raise Unavailable("no backend is available: " + "; ".join(f"{k}: {m}" for k, m in skipped.items()))
