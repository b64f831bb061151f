"""TensorRT engines for ``rlp-export --trt`` (TensorRT 10 Python API), and a runner for their parity check.

``tensorrt`` is imported only here and only when asked for; :func:`require_tensorrt`
runs before any export work, so a machine without the package or without a
CUDA GPU gets one clear error and nothing else happens.

Engines are plain serialized plans: no plugins. They are built from the
bundle's ONNX files as *strongly typed* networks, so the fp16 ONNX gives an
fp16 engine and the fp32 ONNX an fp32 engine (TF32 off), with exactly the
precision the ONNX graph declares; inputs and outputs stay float32. One
optimisation profile covers batch sizes ``min``/``opt``/``max``. The tactic
timing cache lives in the bundle and seeds the next build (``--force``); a
cache TensorRT cannot use (another GPU or TensorRT version, or corrupt) is
replaced by a fresh one, with a note in :attr:`EngineBuilder.notes`.

Real engines are built only on a GPU (tests marked ``gpu``); on CPU-only CI the builder's calls and failures
are driven with a fake ``tensorrt`` module (``tests/runtime/test_gpu_fakes.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rlp.runtime.core.errors import EX_SOFTWARE, RlpError, Unavailable, one_line
from rlp.runtime.core.manifest import EngineEntry, file_entry_fields

TIMING_CACHE = "timing.cache"
PROFILE = (1, 64, 256)  # min, opt, max batch
WORKSPACE = 4 << 30


@dataclass(frozen=True)
class TrtEnvironment:
    trt: Any  # the tensorrt module
    version: str
    compute_capability: str  # "9.0"
    device: str

    @property
    def tag(self) -> str:
        """``sm90.trt10.3``: what an engine is only valid for."""
        major_minor = ".".join(self.version.split(".")[:2])
        return f"sm{self.compute_capability.replace('.', '')}.trt{major_minor}"

    def logger(self):
        return self.trt.Logger(self.trt.Logger.ERROR)


def require_tensorrt() -> TrtEnvironment:
    """The tensorrt module and the GPU it builds for; a clear :class:`Unavailable` error otherwise."""
    try:
        import tensorrt as trt
    except (ImportError, OSError, RuntimeError) as exc:  # the wheel raises FileNotFoundError without its libraries
        raise Unavailable(f"--trt needs the tensorrt package and a CUDA GPU; tensorrt is not importable "
                          f"({type(exc).__name__}: {one_line(exc)}). Install it with pip install 'rlp[gpu]', "
                          "or leave out --trt") from None
    import torch

    if not torch.cuda.is_available():
        raise Unavailable("--trt needs a CUDA GPU, and PyTorch sees none (no GPU, no driver, or a CPU build of torch); "
                          "leave out --trt, or export on the GPU machine")
    major, minor = torch.cuda.get_device_capability(0)
    return TrtEnvironment(trt, str(trt.__version__), f"{major}.{minor}", torch.cuda.get_device_name(0))


def engine_file(model_key: str, env: TrtEnvironment) -> str:
    return f"{model_key}.{env.tag}.plan"


class EngineBuilder:
    """Builds engines that share one timing cache (read from and written back to ``cache_path``)."""

    def __init__(self, env: TrtEnvironment, cache_path: Path, seed_cache: bytes = b""):
        self.env = env
        self.cache_path = cache_path
        self.trt_logger = env.logger()
        self.builder = env.trt.Builder(self.trt_logger)
        self._seed = seed_cache
        self._cache = None
        self.notes: list[str] = []

    def _attach_cache(self, config) -> None:
        if self._cache is None:
            cache = config.create_timing_cache(self._seed) if self._seed else None  # None: a blob it cannot read
            if cache is not None and config.set_timing_cache(cache, False):  # False: another GPU or TensorRT
                self._cache = cache
                return
            if self._seed:
                self.notes.append(f"the timing cache {self.cache_path.name} was made by another GPU or TensorRT "
                                  "version (or is corrupt): starting a fresh one")
            self._cache = config.create_timing_cache(b"")
            if self._cache is None:
                raise RlpError("TensorRT could not create a timing cache", self.cache_path, EX_SOFTWARE)
        if not config.set_timing_cache(self._cache, False):
            raise RlpError("TensorRT refused its own timing cache", self.cache_path, EX_SOFTWARE)

    def build(self, onnx_path: Path, plan_path: Path, *, model_key: str, input_name: str, side: int,
              precision: str, profile: tuple[int, int, int] = PROFILE) -> EngineEntry:
        trt = self.env.trt
        network = self.builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
        parser = trt.OnnxParser(network, self.trt_logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)) or "unknown error"
            raise RlpError(f"TensorRT cannot parse the model: {errors}", onnx_path, EX_SOFTWARE)
        config = self.builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE)
        config.clear_flag(trt.BuilderFlag.TF32)  # fp32 stays fp32; fp16 comes from the typed fp16 graph
        opt = self.builder.create_optimization_profile()
        lo, mid, hi = profile
        opt.set_shape(input_name, (lo, 1, side, side), (mid, 1, side, side), (hi, 1, side, side))
        if config.add_optimization_profile(opt) < 0:
            raise RlpError(f"TensorRT refused the optimisation profile (input {input_name!r}, batch {lo}/{mid}/{hi}, "
                           f"{side}x{side})", onnx_path, EX_SOFTWARE)
        self._attach_cache(config)
        plan = self.builder.build_serialized_network(network, config)
        if plan is None:
            raise RlpError("TensorRT could not build an engine (see its log above)", onnx_path, EX_SOFTWARE)
        plan_path.write_bytes(bytes(memoryview(plan)))
        self.cache_path.write_bytes(bytes(memoryview(self._cache.serialize())))
        return EngineEntry(
            model=model_key, file=plan_path.name, **file_entry_fields(plan_path), precision=precision,
            tensorrt_version=self.env.version, compute_capability=self.env.compute_capability,
            min_batch=lo, opt_batch=mid, max_batch=hi,
        )


class EngineRunner:
    """Runs a plan on the GPU with PyTorch CUDA tensors as buffers: numpy in, numpy out."""

    def __init__(self, env: TrtEnvironment, plan_path: Path, input_name: str, output_name: str):
        import torch

        self.torch = torch
        self.runtime = env.trt.Runtime(env.logger())
        self.engine = self.runtime.deserialize_cuda_engine(plan_path.read_bytes())
        if self.engine is None:
            raise RlpError("TensorRT could not load the engine it just built", plan_path, EX_SOFTWARE)
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise RlpError("TensorRT could not create an execution context (out of GPU memory?)", plan_path,
                           EX_SOFTWARE)
        self.input_name, self.output_name = input_name, output_name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        torch = self.torch
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).cuda()
        if not self.context.set_input_shape(self.input_name, tuple(xt.shape)):
            raise RlpError(f"TensorRT refused input shape {tuple(xt.shape)}", code=EX_SOFTWARE)
        yt = torch.empty(tuple(self.context.get_tensor_shape(self.output_name)), dtype=torch.float32, device="cuda")
        self.context.set_tensor_address(self.input_name, xt.data_ptr())
        self.context.set_tensor_address(self.output_name, yt.data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RlpError("TensorRT engine execution failed", code=EX_SOFTWARE)
        stream.synchronize()
        return yt.cpu().numpy()
