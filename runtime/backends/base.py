"""The backend interface: one checked model run on numpy batches, validated on the way in and out."""

from __future__ import annotations

import time

import numpy as np

from ..core.errors import EX_SOFTWARE, BadInput, RlpError
from ..core.manifest import REBUILD
from .checks import CheckedModel


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
            raise RlpError(f"model input has shape {batch.shape}, the model expects {spec.describe()}", where,
                           EX_SOFTWARE)
        if self.max_batch is not None and batch.shape[0] > self.max_batch:
            raise RlpError(f"batch of {batch.shape[0]} is over this backend's limit of {self.max_batch}", where,
                           EX_SOFTWARE)
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

