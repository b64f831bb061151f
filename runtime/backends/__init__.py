"""Inference backends: one small interface over onnxruntime and TensorRT.

A :class:`Backend` runs one model of a bundle on a batch of numpy arrays. As in
Polygraphy's runners, the public :meth:`Backend.run` validates the batch against
the model's manifest entry, calls the implementation's ``_run_impl`` and checks
what comes back (shape, and every value finite); every call's latency is kept in
:attr:`Backend.latencies`. Backends are context managers (``close`` frees the
session, device memory and streams).

The backends and their facts (GPU, ``auto``'s order, incremental scoring,
fp16 models, install) are one table, :data:`.table.TABLE` (printed by
``rlp-heatmap --list-backends``); :func:`.registry.create_backend` makes them,
and :func:`.registry.register_backend` adds others (the bench's PyTorch rows).
Modules: :mod:`.table`, :mod:`.registry`, :mod:`.checks` (model checks),
:mod:`.base` (the interface), :mod:`.ort` (onnxruntime, and the one function
that builds session options), :mod:`.trt` (native TensorRT).

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

from .base import Backend
from .checks import STANDARD_DOMAINS, CheckedModel, TensorIO, check_model
from .ort import (
    OrtBackend,
    cuda_provider_options,
    import_ort,
    ort_providers,
    ort_session_options,
    ort_session_providers,
    ort_sessions,
    trt_cache_dir,
)
from .registry import available_backends, backend_info, create_backend, register_backend
from .table import AUTO_ORDER, BACKENDS, GPU_BACKENDS, TABLE, BackendInfo, markdown_table
from .trt import REBUILD_TRT, TrtBackend, _import_trt, compute_capability, matching_engines

__all__ = [
    "Backend", "STANDARD_DOMAINS", "CheckedModel", "TensorIO", "check_model", "OrtBackend", "cuda_provider_options",
    "import_ort", "ort_providers", "ort_session_options", "ort_session_providers", "ort_sessions", "trt_cache_dir",
    "available_backends", "backend_info", "create_backend", "register_backend", "AUTO_ORDER", "BACKENDS",
    "GPU_BACKENDS", "TABLE", "BackendInfo", "markdown_table", "REBUILD_TRT", "TrtBackend", "_import_trt",
    "compute_capability", "matching_engines",
]
