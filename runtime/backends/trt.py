"""The native TensorRT backend: an engine listed in the manifest, run with cuda-python and numpy (no torch)."""

from __future__ import annotations

import hashlib
import importlib
from typing import Callable, Sequence

import numpy as np

from ..core.errors import EX_SOFTWARE, BadInput, RlpError, SecurityRefusal, Unavailable
from ..core.manifest import EngineEntry, verify_file
from .base import Backend
from .checks import CheckedModel, one_line_capped

REBUILD_TRT = "rebuild with rlp-export --trt"
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
                          f"{one_line_capped(exc)}); reinstall it with pip install 'rlp[gpu]'") from None
    try:
        cudart = importlib.import_module("cuda.bindings.runtime")
    except _IMPORT_FAILURES as first:
        try:
            cudart = importlib.import_module("cuda.cudart")
        except ModuleNotFoundError:
            if isinstance(first, ModuleNotFoundError):
                raise Unavailable("backend trt needs cuda-python (pip install 'rlp[gpu]')") from None
            raise Unavailable(f"backend trt: cuda-python cannot be imported ({type(first).__name__}: "
                              f"{one_line_capped(first)})") from None
        except _IMPORT_FAILURES as exc:
            raise Unavailable(f"backend trt: cuda-python cannot be imported ({type(exc).__name__}: "
                              f"{one_line_capped(exc)})") from None
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
        raise Unavailable(f"CUDA {what} failed ({one_line_capped(exc)}); {_NO_DRIVER}") from None
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
            raise BadInput(f"{entry.file}: engine tensors {names} do not match the manifest; {REBUILD_TRT}",
                           model.bundle)
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


