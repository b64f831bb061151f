"""The GPU paths driven on the CPU: fake ``tensorrt``, cuda-python and onnxruntime modules (put in ``sys.modules``)
record every call and fail at a chosen step.

What is asserted: the order of the calls (create, allocate, set shape, copy in, set addresses, execute, copy out,
synchronise, free, destroy), that every device buffer and the stream are freed after a failure part-way, that each
failure is one line with the right exit code, that a CUDA library or driver that cannot load makes the backend
Unavailable so that ``auto`` falls back to onnxruntime on the CPU, that fp32 models get ``use_tf32=0`` wherever a
CUDA session is made, and that the ``gpu`` marker skips unless the backend can really be created.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import types

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import conftest
from helpers.runtime import edit_manifest, make_bundle
from rlp.export import tensorrt as export_trt
from rlp.runtime import backends
from rlp.runtime.backends import check_model, create_backend, ort_sessions
from rlp.runtime.core.errors import EX_DATAERR, EX_SOFTWARE, BadInput, RlpError, Unavailable
from rlp.runtime.core.manifest import sha256_file
from rlp.runtime.heatmap import Bundle
from rlp.runtime.incremental import IncrementalScorer, read_model

H2D, D2H = "cudaMemcpyAsync(H2D)", "cudaMemcpyAsync(D2H)"
LOAD = ["cudaGetDeviceCount", "cudaGetDeviceProperties", "Runtime", "deserialize_cuda_engine",
        "create_execution_context", "cudaStreamCreate", "cudaMalloc", "cudaMalloc"]
RUN = ["set_input_shape", H2D, "set_tensor_address(image)", "set_tensor_address(loss)", "execute_async_v3", D2H,
       "cudaStreamSynchronize"]
CLOSE = ["cudaFree", "cudaFree", "cudaStreamDestroy"]


class Log(list):
    """The calls made, by name; ``fail`` maps ``name`` (every call) or ``name#n`` (the n-th) to what that call gives
    instead of succeeding: an exception to raise, or a result (a cuda-python error tuple, False, None, -1)."""

    def __init__(self, fail: dict | None = None):
        super().__init__()
        self.fail = dict(fail or {})
        self.counts: dict[str, int] = {}

    def step(self, name: str, result):
        n = self.counts[name] = self.counts.get(name, 0) + 1
        self.append(name)
        for key in (f"{name}#{n}", name):
            if key in self.fail:
                how = self.fail.pop(key)
                if isinstance(how, BaseException):
                    raise how
                return how
        return result


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and text.strip() == text, text
    return text


# --------------------------------------------------------------------------- fake cuda-python and tensorrt
class FakeCudart:
    """cuda.bindings.runtime: (err, value) tuples, device memory as bytearrays."""

    cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)

    def __init__(self, log: Log):
        self.log, self.mem, self.streams, self._next = log, {}, set(), 0x1000

    def cudaGetDeviceCount(self):
        return self.log.step("cudaGetDeviceCount", (0, 1))

    def cudaGetDeviceProperties(self, device):
        return self.log.step("cudaGetDeviceProperties", (0, types.SimpleNamespace(major=9, minor=0)))

    def cudaStreamCreate(self):
        result = self.log.step("cudaStreamCreate", (0, 77))
        if result[0] == 0:
            self.streams.add(result[1])
        return result

    def cudaMalloc(self, nbytes):
        result = self.log.step("cudaMalloc", (0, self._next))
        if result[0] == 0:
            self.mem[self._next] = bytearray(nbytes)
            self._next += 0x1000
        return result

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):
        assert stream in self.streams
        result = self.log.step(H2D if kind == 1 else D2H, (0,))
        if result[0] == 0 and kind == 1:
            self.mem[dst][:nbytes] = np.ascontiguousarray(src).tobytes()
        elif result[0] == 0:
            np.copyto(dst, np.frombuffer(bytes(self.mem[src][:nbytes]), dst.dtype).reshape(dst.shape))
        return result

    def cudaStreamSynchronize(self, stream):
        return self.log.step("cudaStreamSynchronize", (0,))

    def cudaFree(self, ptr):
        result = self.log.step("cudaFree", (0,))
        self.mem.pop(ptr)
        return result

    def cudaStreamDestroy(self, stream):
        result = self.log.step("cudaStreamDestroy", (0,))
        self.streams.remove(stream)
        return result


def fake_trt(log: Log, cuda: FakeCudart, s: int, *, engine_out=(-1, 1), run_out=None) -> types.ModuleType:
    """tensorrt with a Runtime whose engine maps image (N, 1, s, s) to loss (N, 1): the mean of each image."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.0.0"
    trt.nptype = lambda dtype: dtype
    trt.Logger = type("Logger", (), {"ERROR": 0, "__init__": lambda self, level: None})
    shapes = {"image": (-1, 1, s, s), "loss": tuple(engine_out)}

    class Context:
        def __init__(self):
            self.n, self.addr = None, {}

        def set_input_shape(self, name, shape):
            ok = log.step("set_input_shape", True)
            self.n = shape[0] if ok else None
            return ok

        def get_tensor_shape(self, name):
            return (self.n, *(run_out or shapes["loss"][1:]))

        def set_tensor_address(self, name, ptr):
            self.addr[name] = ptr
            return log.step(f"set_tensor_address({name})", True)

        def execute_async_v3(self, stream_handle):
            ok = log.step("execute_async_v3", True)
            if ok:
                x = np.frombuffer(bytes(cuda.mem[self.addr["image"]]), np.float32)[: self.n * s * s]
                y = x.reshape(self.n, s * s).mean(axis=1, keepdims=True).astype(np.float32)
                cuda.mem[self.addr["loss"]][: y.nbytes] = y.tobytes()
            return ok

    class Engine:
        num_io_tensors = 2

        def get_tensor_name(self, i):
            return ("image", "loss")[i]

        def get_tensor_dtype(self, name):
            return np.float32

        def get_tensor_shape(self, name):
            return shapes[name]

        def create_execution_context(self):
            return log.step("create_execution_context", Context())

    class Runtime:
        engine_host_code_allowed = True

        def __init__(self, logger):
            log.append("Runtime")
            trt.runtime = self

        def deserialize_cuda_engine(self, blob):
            return log.step("deserialize_cuda_engine", Engine())

    trt.Runtime = Runtime
    return trt


@pytest.fixture()
def trt_bundle(tmp_path):
    """A bundle whose R has a (fake) TensorRT engine for sm 9.0 and TensorRT 10.0.0; the R model and its entries."""
    root = make_bundle(tmp_path / "b")
    plan = root / "r.plan"
    plan.write_bytes(b"a fake plan")
    engine = {"model": "r", "file": "r.plan", "sha256": sha256_file(plan), "size": plan.stat().st_size,
              "precision": "fp32", "tensorrt_version": "10.0.0", "compute_capability": "9.0", "max_batch": 8}
    edit_manifest(root, lambda d: d.update(engines=[engine]))
    manifest = Bundle.load(root).manifest
    model = check_model(root, "r", manifest.models["r"])
    return model, manifest.engines


def _install(monkeypatch, trt=None, cudart=None, *, legacy: bool = False):
    """Put fake modules where ``import tensorrt`` and cuda-python's runtime import find them."""
    if trt is not None:
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
    if cudart is not None:
        monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", None if legacy else cudart)
        monkeypatch.setitem(sys.modules, "cuda.cudart", cudart if legacy else None)


class _FailingImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``import name`` raises ``exc`` (as a wheel whose libraries are missing does)."""

    def __init__(self, name: str, exc: BaseException):
        self.name, self.exc = name, exc

    def find_spec(self, fullname, path=None, target=None):
        return importlib.util.spec_from_loader(fullname, self) if fullname == self.name else None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        raise self.exc


def _failing_import(monkeypatch, name: str, exc: BaseException) -> None:
    monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setattr(sys, "meta_path", [_FailingImport(name, exc), *sys.meta_path])


def _trt_setup(monkeypatch, trt_bundle, fail=None, **shapes):
    model, engines = trt_bundle
    log = Log(fail)
    cuda = FakeCudart(log)
    _install(monkeypatch, fake_trt(log, cuda, model.input.shape[-1], **shapes), cuda)
    return model, engines, log, cuda


# --------------------------------------------------------------------------- the native TensorRT backend
def test_trt_backend_runs_and_closes_in_order(monkeypatch, trt_bundle):
    model, engines, log, cuda = _trt_setup(monkeypatch, trt_bundle)
    be = create_backend("trt", model, engines=engines, max_batch=64)
    assert be.name == "trt" and log == LOAD and be.max_batch == 8
    assert sys.modules["tensorrt"].runtime.engine_host_code_allowed is False
    assert be.describe()["compute_precision"] == "fp32"
    s = model.input.shape[-1]
    n_in, n_out = [len(buf) for buf in cuda.mem.values()]
    assert (n_in, n_out) == (8 * s * s * 4, 8 * 4)  # sized from the manifest, for the largest batch
    x = np.random.default_rng(0).uniform(0, 1, (3, 1, s, s)).astype(np.float32)
    del log[:]
    y = be.run(x)
    assert log == RUN
    np.testing.assert_allclose(y, x.mean(axis=(2, 3)), rtol=1e-6)
    del log[:]
    be.close()
    be.close()
    assert log == CLOSE and cuda.mem == {} and cuda.streams == set()
    with pytest.raises(RlpError, match="closed"):
        be.run(x)


@pytest.mark.parametrize("fail, error, words, made, freed", [
    ({"cudaGetDeviceCount": RuntimeError("Failed to dlopen libcuda.so.1")}, Unavailable,
     "CUDA device count failed (Failed to dlopen libcuda.so.1)", 1, []),
    ({"cudaGetDeviceCount": (35, None)}, Unavailable, "CUDA device count failed (35)", 1, []),
    ({"cudaGetDeviceCount": (0, 0)}, Unavailable, "no CUDA device found", 1, []),
    ({"cudaGetDeviceProperties": OSError("libcuda.so.1: cannot open shared object file")}, Unavailable,
     "CUDA device query failed (libcuda.so.1: cannot open shared object file)", 2, []),
    ({"deserialize_cuda_engine": None}, BadInput, "could not deserialise r.plan", 4, []),
    ({"create_execution_context": None}, Unavailable, "could not create an execution context for r.plan", 5, []),
    ({"cudaStreamCreate": (2, None)}, Unavailable, "CUDA stream creation failed (2)", 6, []),
    ({"cudaMalloc#1": (2, None)}, Unavailable, "CUDA allocation failed (2)", 7, ["cudaStreamDestroy"]),
    ({"cudaMalloc#2": RuntimeError("out of memory")}, Unavailable, "CUDA allocation failed (out of memory)", 8,
     ["cudaFree", "cudaStreamDestroy"]),
])
def test_trt_backend_frees_what_it_made_when_loading_fails(monkeypatch, trt_bundle, fail, error, words, made, freed):
    model, engines, log, cuda = _trt_setup(monkeypatch, trt_bundle, fail)
    with pytest.raises(error) as exc:
        create_backend("trt", model, engines=engines)
    assert words in _one_line(exc.value) and exc.value.code == (EX_DATAERR if error is BadInput else EX_SOFTWARE)
    assert log == LOAD[:made] + freed  # stopped at the failing step, then freed what was made
    assert cuda.mem == {} and cuda.streams == set()  # nothing left on the device


@pytest.mark.parametrize("fail, error, words, last", [
    ({"set_input_shape": False}, RlpError, "TensorRT refused input shape (3, 1,", "set_input_shape"),
    ({H2D: (1,)}, Unavailable, "CUDA copy to GPU failed (1)", H2D),
    ({"set_tensor_address(loss)": False}, RlpError, "refused the device address of tensor 'loss'",
     "set_tensor_address(loss)"),
    ({"execute_async_v3": False}, RlpError, "TensorRT execution failed", "execute_async_v3"),
    ({D2H: RuntimeError("an illegal memory access was encountered")}, Unavailable,
     "CUDA copy from GPU failed (an illegal memory access was encountered)", D2H),
    ({"cudaStreamSynchronize": (700,)}, Unavailable, "CUDA synchronise failed (700)", "cudaStreamSynchronize"),
])
def test_trt_backend_run_failures_are_one_line_and_close_frees_everything(monkeypatch, trt_bundle, fail, error,
                                                                          words, last):
    model, engines, log, cuda = _trt_setup(monkeypatch, trt_bundle, fail)
    be = create_backend("trt", model, engines=engines)
    x = np.ones((3, *model.input.shape[1:]), np.float32)
    del log[:]
    with pytest.raises(error) as exc:
        be.run(x)
    assert words in _one_line(exc.value) and exc.value.code == EX_SOFTWARE
    assert log == RUN[: RUN.index(last) + 1] and be.latencies == []  # nothing after the failing step
    del log[:]
    np.testing.assert_allclose(be.run(x), np.ones((3, 1)))  # the next batch runs
    del log[:]
    be.close()
    assert log == CLOSE and cuda.mem == {} and cuda.streams == set()


def test_trt_engine_output_shape_is_checked_against_the_manifest(monkeypatch, trt_bundle):
    # at load: the engine's own output shape, before any device memory is allocated
    model, engines, log, cuda = _trt_setup(monkeypatch, trt_bundle, engine_out=(-1, 2))
    with pytest.raises(BadInput) as exc:
        create_backend("trt", model, engines=engines)
    assert "engine tensor 'loss' has shape (-1, 2), the manifest declares loss[?,1]" in _one_line(exc.value)
    assert "cudaMalloc" not in log and cuda.mem == {}
    # at run: the shape the context gives for this batch, before anything is copied or executed
    model, engines, log, cuda = _trt_setup(monkeypatch, trt_bundle, engine_out=(-1, -1), run_out=(4,))
    be = create_backend("trt", model, engines=engines)
    del log[:]
    with pytest.raises(BadInput) as exc:
        be.run(np.ones((2, *model.input.shape[1:]), np.float32))
    assert "output for a batch of 2 has shape (2, 4), the manifest declares loss[?,1]" in _one_line(exc.value)
    assert log == ["set_input_shape"]
    be.close()
    assert cuda.mem == {}


# --------------------------------------------------------------------------- no driver, no library: auto falls back
@pytest.mark.parametrize("legacy", [False, True], ids=["cuda.bindings.runtime", "cuda.cudart"])
@pytest.mark.parametrize("failure", [RuntimeError("Failed to dlopen libcuda.so.1"),
                                     OSError("libcuda.so.1: cannot open shared object file: No such file"),
                                     (35, None)])
def test_no_driver_makes_trt_unavailable_and_auto_falls_back_to_the_cpu(monkeypatch, trt_bundle, legacy, failure):
    model, engines = trt_bundle
    log = Log({"cudaGetDeviceCount": failure})
    cuda = FakeCudart(log)
    _install(monkeypatch, fake_trt(log, cuda, model.input.shape[-1]), cuda, legacy=legacy)
    log.fail["cudaGetDeviceCount#2"] = failure
    with pytest.raises(Unavailable) as exc:
        create_backend("trt", model, engines=engines)
    assert _one_line(exc.value).startswith("CUDA device count failed (") and exc.value.code == EX_SOFTWARE
    auto = create_backend("auto", model, engines=engines)  # onnxruntime: on the CPU here, on CUDA where there is one
    assert auto.name in ("ort-cuda", "ort-cpu") and auto.details["auto"]["skipped"]["trt"] == exc.value.message
    assert log == ["cudaGetDeviceCount"] * 2


@pytest.mark.parametrize("exc", [
    FileNotFoundError(2, "No such file or directory", "/site-packages/tensorrt_libs/libnvinfer.so.10"),
    OSError("libcudart.so.12: cannot open shared object file: No such file or directory"),
    RuntimeError("CUDA initialization failure with error: 35.\nPlease check your CUDA installation"),
    ImportError("libnvinfer.so.10: cannot open shared object file: No such file or directory"),
    ModuleNotFoundError("No module named 'tensorrt_bindings'", name="tensorrt_bindings"),
], ids=lambda e: type(e).__name__)
def test_a_tensorrt_that_cannot_be_imported_is_unavailable(monkeypatch, trt_bundle, exc):
    model, engines = trt_bundle
    _failing_import(monkeypatch, "tensorrt", exc)
    with pytest.raises(Unavailable) as err:
        create_backend("trt", model, engines=engines)
    text = _one_line(err.value)
    assert text.startswith(f"backend trt: tensorrt is installed but cannot be imported ({type(exc).__name__}: ")
    assert "trt" not in backends.available_backends(engines)
    auto = create_backend("auto", model, engines=engines)
    assert auto.name in ("ort-cuda", "ort-cpu") and auto.details["auto"]["skipped"]["trt"] == err.value.message
    with pytest.raises(Unavailable) as err:  # rlp-export --trt says so before any work
        export_trt.require_tensorrt()
    assert f"tensorrt is not importable ({type(exc).__name__}: " in _one_line(err.value)


def test_tensorrt_or_cuda_python_missing_or_broken(monkeypatch, trt_bundle):
    model, engines = trt_bundle
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # not installed
    with pytest.raises(Unavailable, match=r"needs the tensorrt package \(pip install 'rlp\[gpu\]'\)"):
        backends._import_trt()
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", None)
    monkeypatch.setitem(sys.modules, "cuda.cudart", None)
    with pytest.raises(Unavailable, match=r"needs cuda-python \(pip install 'rlp\[gpu\]'\)"):
        backends._import_trt()
    for name in ("cuda", "cuda.bindings"):
        pkg = types.ModuleType(name)
        pkg.__path__ = []
        monkeypatch.setitem(sys.modules, name, pkg)
    _failing_import(monkeypatch, "cuda.bindings.runtime", OSError("libcudart.so.12: cannot open shared object"))
    with pytest.raises(Unavailable) as err:
        create_backend("trt", model, engines=engines)
    assert _one_line(err.value) == ("backend trt: cuda-python cannot be imported (OSError: libcudart.so.12: cannot "
                                    "open shared object)")
    assert create_backend("auto", model, engines=engines).name in ("ort-cuda", "ort-cpu")


# --------------------------------------------------------------------------- onnxruntime's CUDA provider (faked)
def _cuda_ort(monkeypatch, *, start_error: BaseException | None = None, falls_back: bool = False) -> list:
    """onnxruntime-gpu as seen from Python: it lists the GPU providers; a session records its providers and runs on
    the real CPU onnxruntime. ``start_error``: creating a GPU session raises it (no device); ``falls_back``: the
    session silently runs on the CPU provider. Returns the providers of every session made."""
    import onnxruntime as real

    made = []

    class InferenceSession:
        def __init__(self, source, sess_options=None, providers=None):
            made.append(providers)
            names = [p[0] if isinstance(p, tuple) else p for p in providers]
            if start_error is not None and names[0] != "CPUExecutionProvider":
                raise start_error
            self._session = real.InferenceSession(source, sess_options=sess_options,
                                                  providers=["CPUExecutionProvider"])
            self._used = ["CPUExecutionProvider"] if falls_back else names

        def get_providers(self):
            return list(self._used)

        def __getattr__(self, name):
            return getattr(self._session, name)

    fake = types.ModuleType("onnxruntime")
    for name in ("SessionOptions", "GraphOptimizationLevel", "ExecutionMode", "__version__"):
        setattr(fake, name, getattr(real, name))
    fake.get_available_providers = lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                            "CPUExecutionProvider"]
    fake.InferenceSession = InferenceSession
    monkeypatch.setitem(sys.modules, "onnxruntime", fake)
    return made


def test_cuda_provider_options_turn_tf32_off_for_fp32_models_only():
    assert backends.cuda_provider_options("fp32") == {"device_id": 0, "use_tf32": 0}
    assert backends.cuda_provider_options("fp16") == {"device_id": 0}
    assert backends.ort_session_providers("ort-cuda", "fp32") == [
        ("CUDAExecutionProvider", {"device_id": 0, "use_tf32": 0}), "CPUExecutionProvider"]
    assert backends.ort_session_providers("ort-cpu", "fp32") == ["CPUExecutionProvider"]
    with pytest.raises(ValueError):
        backends.ort_session_providers("ort-trt", "fp32")


@pytest.mark.parametrize("precision, cuda_opts, compute", [
    ("fp32", {"device_id": 0, "use_tf32": 0}, "fp32 (TF32 off: use_tf32=0)"),
    ("fp16", {"device_id": 0}, "fp16"),
])
def test_ort_cuda_sessions_get_use_tf32_0_for_fp32_and_say_so(monkeypatch, tmp_path, precision, cuda_opts, compute):
    made = _cuda_ort(monkeypatch)
    root = make_bundle(tmp_path / "b")
    edit_manifest(root, lambda d: d["models"]["r"].update(precision=precision))
    model = check_model(root, "r", Bundle.load(root).manifest.models["r"])
    with create_backend("ort-cuda", model) as be:
        assert made == [[("CUDAExecutionProvider", cuda_opts), "CPUExecutionProvider"]]
        assert be.describe()["compute_precision"] == compute and be.describe()["precision"] == precision
    with create_backend("ort-cpu", model) as be:
        assert be.details["compute_precision"] == precision
    monkeypatch.setenv("RLP_TRT_CACHE", str(tmp_path / "cache"))
    with create_backend("ort-trt", model) as be:  # TensorRT first; its CUDA fallback also without TF32 for fp32
        trt, cuda, cpu = made[-1]
        assert trt[0] == "TensorrtExecutionProvider" and trt[1]["trt_fp16_enable"] == (precision == "fp16")
        assert cuda == ("CUDAExecutionProvider", cuda_opts) and cpu == "CPUExecutionProvider"
        assert be.details["compute_precision"] == (precision if precision == "fp16" else
                                                   "fp32, TF32 allowed (onnxruntime's TensorRT provider has no switch "
                                                   "for it: set NVIDIA_TF32_OVERRIDE=0)")


def _conv_r(size: int) -> onnx.ModelProto:
    """A small image-kind R: 3x3 convolution, ReLU, a weighted sum (N, 1, S, S) -> (N, 1)."""
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, (2, 1, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.zeros(2, np.float32), "b"),
             numpy_helper.from_array(rng.normal(0, 0.1, (1, 2, size, size)).astype(np.float32), "head"),
             numpy_helper.from_array(np.array([1, 2, 3], np.int64), "axes")]
    nodes = [helper.make_node("Conv", ["image", "w", "b"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("Mul", ["r", "head"], ["m"]),
             helper.make_node("ReduceSum", ["m", "axes"], ["s"]), helper.make_node("Flatten", ["s"], ["loss"], axis=1)]
    graph = helper.make_graph(nodes, "r", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                         ["batch", 1, size, size])],
                              [helper.make_tensor_value_info("loss", TensorProto.FLOAT, ["batch", 1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_the_incremental_scorer_on_ort_cuda_turns_tf32_off_too(monkeypatch, tmp_path):
    made = _cuda_ort(monkeypatch)
    root = make_bundle(tmp_path / "b", size=30, window=6, stride=4, fill=0.9, g=None, r=None,
                       models={"r": _conv_r(30)}, r_input_kind="image")
    cuda_fp32 = [("CUDAExecutionProvider", {"device_id": 0, "use_tf32": 0}), "CPUExecutionProvider"]
    with Bundle.load(root, backend="ort-cuda") as bundle:
        backend = bundle.backend("r")
        assert backend.name == "ort-cuda"
        bundle.scorer("r", "incremental")  # the Bundle gives the scorer its backend's session factory
        assert len(made) >= 2 and all(p == cuda_fp32 for p in made), made
        # split: recompute the convolution, so that it really is incremental, with sessions of its own
        scorer = IncrementalScorer.from_model(read_model(backend.model), bundle.manifest.geometry, split=1,
                                              sessions=ort_sessions("ort-cuda", "fp32"))
        assert scorer.plan, scorer.note
        assert len(made) > 4 and all(p == cuda_fp32 for p in made), made


@pytest.mark.parametrize("how", ["raises", "falls back"])
def test_onnxruntime_gpu_without_a_gpu_is_unavailable_and_auto_takes_the_cpu(monkeypatch, trt_bundle, how):
    model, engines = trt_bundle
    error = RuntimeError("CUDA failure 100: no CUDA-capable device is detected ; GPU=0\nexpr=cudaSetDevice")
    _cuda_ort(monkeypatch, start_error=error if how == "raises" else None, falls_back=how == "falls back")
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(Unavailable) as exc:
        create_backend("ort-cuda", model)
    text = _one_line(exc.value)
    assert ("could not start CUDAExecutionProvider (CUDA failure 100" in text if how == "raises" else
            "onnxruntime fell back to CPUExecutionProvider" in text)
    auto = create_backend("auto", model, engines=engines)
    assert auto.name == "ort-cpu" and set(auto.details["auto"]["skipped"]) == {"trt", "ort-cuda"}
    # the gpu marker: a backend that cannot be created here skips, whatever providers onnxruntime lists
    monkeypatch.setattr(conftest, "_GPU_PROBES", {})
    assert "ort-cuda" in backends.available_backends() and conftest.gpu_unavailable("ort-cuda") == str(exc.value)


def test_a_model_onnxruntime_cannot_load_is_still_a_bad_bundle_on_the_gpu(monkeypatch, tmp_path):
    _cuda_ort(monkeypatch, start_error=RuntimeError("CUDA failure 100"))
    root = make_bundle(tmp_path / "b")
    model = check_model(root, "r", Bundle.load(root).manifest.models["r"])
    model.data = b"not an onnx model"  # what reaches onnxruntime (the hash was checked before)
    with pytest.raises(BadInput, match="onnxruntime cannot load r.onnx"):
        create_backend("ort-cuda", model)


# --------------------------------------------------------------------------- the gpu marker (tests/conftest.py)
class _Item:
    def __init__(self, mark, params=None):
        self.mark = mark
        if params is not None:
            self.callspec = types.SimpleNamespace(params=params)

    def get_closest_marker(self, name):
        return self.mark if name == "gpu" else None


def test_the_gpu_marker_skips_unless_the_backend_can_be_created(monkeypatch):
    monkeypatch.setattr(conftest, "_GPU_PROBES", {})
    monkeypatch.delenv("RLP_REQUIRE_GPU", raising=False)
    assert conftest._gpu_kinds(_Item(pytest.mark.gpu.mark)) == ("trt",)
    assert conftest._gpu_kinds(_Item(pytest.mark.gpu.mark, {"kind": "ort-trt"})) == ("ort-trt",)
    assert conftest._gpu_kinds(_Item(pytest.mark.gpu("ort-cuda").mark, {"kind": "x"})) == ("ort-cuda",)
    conftest.pytest_runtest_setup(_Item(None))  # not marked: nothing happens
    monkeypatch.setitem(conftest._GPU_PROBES, "ort-cuda", "no GPU")
    with pytest.raises(pytest.skip.Exception, match="gpu: backend ort-cuda cannot be created here: no GPU"):
        conftest.pytest_runtest_setup(_Item(pytest.mark.gpu("ort-cuda").mark))
    monkeypatch.setenv("RLP_REQUIRE_GPU", "1")  # a GPU machine's run: a missing device is a failure
    with pytest.raises(pytest.fail.Exception, match="RLP_REQUIRE_GPU=1"):
        conftest.pytest_runtest_setup(_Item(pytest.mark.gpu("ort-cuda").mark))
    monkeypatch.setitem(conftest._GPU_PROBES, "ort-cuda", None)
    conftest.pytest_runtest_setup(_Item(pytest.mark.gpu("ort-cuda").mark))  # a device: it runs


def test_the_gpu_probe_creates_the_backend(monkeypatch):
    # onnxruntime-gpu on a machine without a GPU: the providers are compiled in, the backend cannot be made
    monkeypatch.setattr(conftest, "_GPU_PROBES", {})
    _cuda_ort(monkeypatch, falls_back=True)
    assert "fell back to CPUExecutionProvider" in conftest._probe_gpu("ort-cuda")
    _cuda_ort(monkeypatch)  # a session on the CUDA provider starts: the gpu tests run
    assert conftest._probe_gpu("ort-cuda") is None
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert "needs the tensorrt package" in conftest._probe_gpu("trt")
    log = Log({"cudaGetDeviceCount": RuntimeError("Failed to dlopen libcuda.so.1")})
    cuda = FakeCudart(log)
    _install(monkeypatch, fake_trt(log, cuda, 8), cuda)
    assert "Failed to dlopen libcuda.so.1" in conftest._probe_gpu("trt")
    assert conftest._probe_gpu("trt") is None  # the fake's next call finds its device


# --------------------------------------------------------------------------- the engine builder (rlp-export --trt)
def fake_builder_trt(log: Log) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.BuilderFlag = types.SimpleNamespace(TF32="TF32")
    trt.Logger = type("Logger", (), {"ERROR": 0, "__init__": lambda self, level: None})

    class Cache:
        def __init__(self, blob):
            self.blob = blob

        def serialize(self):
            return b"tactics:" + self.blob

    class Config:
        def set_memory_pool_limit(self, pool, size):
            log.append(f"set_memory_pool_limit({pool})")

        def clear_flag(self, flag):
            log.append(f"clear_flag({flag})")

        def add_optimization_profile(self, profile):
            return log.step("add_optimization_profile", 0)

        def create_timing_cache(self, blob):
            return log.step(f"create_timing_cache({'seed' if blob else 'empty'})", Cache(bytes(blob)))

        def set_timing_cache(self, cache, ignore_mismatch):
            assert ignore_mismatch is False
            return log.step("set_timing_cache", True)

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            log.append(f"set_shape({name}, {lo[0]}/{opt[0]}/{hi[0]})")

    class OnnxParser:
        num_errors = 1

        def __init__(self, network, logger):
            log.append("OnnxParser")

        def parse_from_file(self, path):
            return log.step("parse_from_file", True)

        def get_error(self, i):
            return "In node 0 (Conv): unsupported\nattribute"

    class Builder:
        def __init__(self, logger):
            log.append("Builder")

        def create_network(self, flags):
            log.append(f"create_network({flags})")
            return object()

        def create_builder_config(self):
            log.append("create_builder_config")
            return Config()

        def create_optimization_profile(self):
            log.append("create_optimization_profile")
            return Profile()

        def build_serialized_network(self, network, config):
            return log.step("build_serialized_network", b"PLAN")

    trt.Builder, trt.OnnxParser = Builder, OnnxParser
    return trt


BUILD = ["create_network(2)", "OnnxParser", "parse_from_file", "create_builder_config",
         "set_memory_pool_limit(WORKSPACE)", "clear_flag(TF32)", "create_optimization_profile",
         "set_shape(image, 1/64/256)", "add_optimization_profile"]


def _builder(tmp_path, fail=None, seed=b""):
    log = Log(fail)
    env = export_trt.TrtEnvironment(fake_builder_trt(log), "10.0.0", "9.0", "a fake GPU")
    builder = export_trt.EngineBuilder(env, tmp_path / "timing.cache", seed)
    (tmp_path / "r.onnx").write_bytes(b"onnx")
    del log[:]  # Builder

    def build(key="r"):
        return builder.build(tmp_path / "r.onnx", tmp_path / f"{key}.plan", model_key=key, input_name="image",
                             side=32, precision="fp32")

    return builder, build, log


def test_engine_builder_calls_in_order_and_reuses_its_timing_cache(tmp_path):
    builder, build, log = _builder(tmp_path, seed=b"old")
    entry = build()
    assert log == BUILD + ["create_timing_cache(seed)", "set_timing_cache", "build_serialized_network"]
    assert (tmp_path / "r.plan").read_bytes() == b"PLAN" and (tmp_path / "timing.cache").read_bytes() == b"tactics:old"
    assert (entry.model, entry.file, entry.precision, entry.tensorrt_version, entry.compute_capability) == (
        "r", "r.plan", "fp32", "10.0.0", "9.0")
    assert (entry.min_batch, entry.opt_batch, entry.max_batch) == (1, 64, 256) and entry.size == 4
    assert entry.sha256 == sha256_file(tmp_path / "r.plan") and builder.notes == []
    del log[:]
    build("g")
    assert log == BUILD + ["set_timing_cache", "build_serialized_network"]  # the same cache, not made again


@pytest.mark.parametrize("fail", [{"create_timing_cache(seed)": None}, {"set_timing_cache#1": False}],
                         ids=["unreadable", "another GPU"])
def test_a_stale_timing_cache_is_replaced_with_a_note(tmp_path, fail):
    builder, build, log = _builder(tmp_path, fail, seed=b"stale")
    build()
    assert log[len(BUILD):] == ["create_timing_cache(seed)"] + ["set_timing_cache"] * ("set_timing_cache#1" in fail) + [
        "create_timing_cache(empty)", "set_timing_cache", "build_serialized_network"]
    assert (tmp_path / "timing.cache").read_bytes() == b"tactics:"
    assert builder.notes == ["the timing cache timing.cache was made by another GPU or TensorRT version (or is "
                             "corrupt): starting a fresh one"]


def test_no_seed_starts_a_fresh_cache_without_a_note(tmp_path):
    builder, build, log = _builder(tmp_path)
    build()
    assert log[len(BUILD):] == ["create_timing_cache(empty)", "set_timing_cache", "build_serialized_network"]
    assert builder.notes == []


@pytest.mark.parametrize("fail, words, last", [
    ({"parse_from_file": False}, "TensorRT cannot parse the model: In node 0 (Conv): unsupported attribute",
     "parse_from_file"),
    ({"add_optimization_profile": -1}, "TensorRT refused the optimisation profile (input 'image', batch 1/64/256, "
                                       "32x32)", "add_optimization_profile"),
    ({"create_timing_cache(empty)": None}, "TensorRT could not create a timing cache", "create_timing_cache(empty)"),
    ({"set_timing_cache": False}, "TensorRT refused its own timing cache", "set_timing_cache"),
    ({"build_serialized_network": None}, "TensorRT could not build an engine", "build_serialized_network"),
])
def test_engine_builder_failures_are_one_line_and_write_nothing(tmp_path, fail, words, last):
    builder, build, log = _builder(tmp_path, fail)
    with pytest.raises(RlpError) as exc:
        build()
    assert words in _one_line(exc.value) and exc.value.code == EX_SOFTWARE
    assert log[-1] == last and "build_serialized_network" not in log[:-1]
    assert not (tmp_path / "r.plan").exists() and not (tmp_path / "timing.cache").exists()


def test_engine_runner_checks_its_execution_context(monkeypatch, tmp_path):
    pytest.importorskip("torch")
    log = Log({"create_execution_context": None})
    trt = fake_trt(log, FakeCudart(log), 8)
    plan = tmp_path / "r.plan"
    plan.write_bytes(b"PLAN")
    env = export_trt.TrtEnvironment(trt, "10.0.0", "9.0", "a fake GPU")
    with pytest.raises(RlpError, match="could not create an execution context") as exc:
        export_trt.EngineRunner(env, plan, "image", "loss")
    assert exc.value.code == EX_SOFTWARE and log == ["Runtime", "deserialize_cuda_engine", "create_execution_context"]
