"""The backends' facts in one table, in the spirit of Ultralytics' export-format table.

One row per backend: its name (``--backend``), what runs the model, whether it
needs a GPU, its place in ``auto``'s order, whether ``--method incremental``
runs on it, whether ``--precision auto`` gives it the bundle's fp16 models,
whether CI exercises it, and what to install. :mod:`.registry` creates backends
from these rows; the bench adds its PyTorch rows there
(:func:`~rlp.runtime.backends.registry.register_backend`), never by changing
the Bundle. ``rlp-heatmap --list-backends`` prints the table, and the README's
backend table is :func:`markdown_table` (a test keeps them equal).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BackendInfo:
    """One backend's facts (a row of :data:`TABLE`)."""

    name: str
    runs: str  # what runs the model: an onnxruntime execution provider, a TensorRT engine, ...
    gpu: bool
    auto: int | None  # place in ``auto``'s order (1 is tried first); None: only when asked for by name
    incremental: bool  # ``--method incremental`` runs on it (onnxruntime sessions of its own)
    fp16_models: bool  # ``--precision auto`` takes the bundle's fp16 models
    ci: bool  # exercised in CI (a 2-core machine without a GPU)
    install: str
    provider: str | None = None  # the onnxruntime execution provider first in line (onnxruntime backends)

    def row(self) -> list[str]:
        yes = {True: "yes", False: "no"}
        return [self.name, self.runs, yes[self.gpu], "-" if self.auto is None else str(self.auto),
                yes[self.incremental], yes[self.fp16_models], yes[self.ci], self.install]


COLUMNS = ("name", "runs the model", "GPU", "auto order", "incremental", "fp16 models (auto)", "in CI", "install")

#: the runtime's backends (``--backend``)
TABLE: tuple[BackendInfo, ...] = (
    BackendInfo("ort-cpu", "onnxruntime, CPUExecutionProvider", False, 3, True, False, True,
                "pip install 'rlp[cpu]'", "CPUExecutionProvider"),
    BackendInfo("ort-cuda", "onnxruntime, CUDAExecutionProvider (fp32 with use_tf32=0)", True, 2, True, True, False,
                "pip install 'rlp[gpu]' (onnxruntime-gpu, CUDA 12, cuDNN 9)", "CUDAExecutionProvider"),
    BackendInfo("ort-trt", "onnxruntime, TensorrtExecutionProvider (engines built at start, cached)", True, None,
                False, True, False, "pip install 'rlp[gpu]' (onnxruntime-gpu, TensorRT 10)",
                "TensorrtExecutionProvider"),
    BackendInfo("trt", "a TensorRT engine listed in the manifest (rlp-export --trt; hash-checked)", True, 1, False,
                True, False, "pip install 'rlp[gpu]' (tensorrt-cu12, cuda-python)"),
)
BACKENDS = tuple(b.name for b in TABLE)
#: what ``auto`` tries, in turn
AUTO_ORDER = tuple(b.name for b in sorted((b for b in TABLE if b.auto is not None), key=lambda b: b.auto))
GPU_BACKENDS = frozenset(b.name for b in TABLE if b.gpu)
#: backend name -> its onnxruntime execution provider
ORT_PROVIDER = {b.name: b.provider for b in TABLE if b.provider}


def markdown_table(rows=TABLE) -> str:
    """The table as Markdown (the README's backend table)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(f"`{c}`" if i in (0, 7) else c for i, c in enumerate(b.row())) + " |" for b in rows]
    return "\n".join(lines)
