"""Backends by name: the built-in rows of :data:`.table.TABLE` and any a caller registers (the bench's PyTorch).

A factory is ``factory(model, *, threads, engines, max_batch) -> Backend``; a
backend it cannot create here (library, device, engine missing) raises
:class:`~rlp.runtime.core.errors.Unavailable`.
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

from ..core.errors import EX_USAGE, RlpError, Unavailable
from ..core.manifest import EngineEntry
from .base import Backend
from .checks import CheckedModel
from .ort import OrtBackend, ort_providers
from .table import AUTO_ORDER, BACKENDS, TABLE, BackendInfo
from .trt import TrtBackend, _import_trt


class Factory(Protocol):
    def __call__(self, model: CheckedModel, *, threads: int | None, engines: Sequence[EngineEntry],
                 max_batch: int) -> Backend: ...


def _ort(name: str) -> Factory:
    return lambda model, *, threads, engines, max_batch: OrtBackend(model, name, threads=threads, max_batch=max_batch)


def _trt(model: CheckedModel, *, threads, engines, max_batch) -> Backend:
    return TrtBackend(model, engines, max_batch=max_batch)


_REGISTRY: dict[str, tuple[BackendInfo, Factory]] = {b.name: (b, _trt if b.name == "trt" else _ort(b.name))
                                                    for b in TABLE}


def register_backend(info: BackendInfo, factory: Factory) -> None:
    """Add (or replace) a backend: ``create_backend(info.name, ...)`` and a Bundle's ``backend=info.name`` use it.

    A built-in backend cannot be replaced; a registered one is never in ``auto``'s order."""
    if info.name in BACKENDS or info.name == "auto":
        raise ValueError(f"{info.name!r} is a built-in backend name")
    _REGISTRY[info.name] = (info, factory)


def backend_info(name: str) -> BackendInfo:
    """The facts of a backend (built in or registered); a usage error for an unknown name."""
    if name not in _REGISTRY:
        raise RlpError(f"unknown backend {name!r}; choose auto or one of {', '.join(_REGISTRY)}", code=EX_USAGE)
    return _REGISTRY[name][0]


def available_backends(engines: Sequence[EngineEntry] = ()) -> list[str]:
    """Built-in backends whose libraries are importable here (a device is only checked when one is created)."""
    out = []
    providers = ort_providers()
    for info in TABLE:
        if info.provider is None:
            try:
                _import_trt()
            except Unavailable:
                continue
            out.append(info.name)
        elif info.provider in providers:
            out.append(info.name)
    return out


def create_backend(name: str, model: CheckedModel | Callable[[str], CheckedModel], *,
                   threads: int | None = None, engines: Sequence[EngineEntry] = (), max_batch: int = 64) -> Backend:
    """A backend by name, or the best available one for ``"auto"``.

    ``model`` may be a callable mapping a backend name to the model it should
    run (a bundle picks its fp16 model for GPU backends). With ``"auto"`` the
    backends of :data:`~.table.AUTO_ORDER` are tried in turn; one that is
    :class:`~rlp.runtime.core.errors.Unavailable` is skipped (other errors, such as a
    hash mismatch, are raised), and ``details["auto"]`` says what was picked and why.
    """
    if name != "auto":
        backend_info(name)
    pick = model if callable(model) else (lambda _kind: model)
    skipped: dict[str, str] = {}
    for k in (AUTO_ORDER if name == "auto" else (name,)):
        try:
            backend = _REGISTRY[k][1](pick(k), threads=threads, engines=engines, max_batch=max_batch)
        except Unavailable as exc:
            if name != "auto":
                raise
            skipped[k] = exc.message
            continue
        if name == "auto":
            backend.details["auto"] = {"picked": k, "skipped": skipped}
        return backend
    raise Unavailable("no backend is available: " + "; ".join(f"{k}: {m}" for k, m in skipped.items()))
