"""Shared fixtures: small real data made on the fly (nothing downloaded), and the ``gpu`` marker.

Shared helper functions are in the ``helpers`` package beside this file (tests/helpers/), never imported from here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def mni_tiny(tmp_path_factory) -> Path:
    """The real MNI152 template, prepared at 32x32 (about 2 s)."""
    pytest.importorskip("h5py")
    from rlp.train.data import prepare

    out = tmp_path_factory.mktemp("data") / "mni32.h5"
    prepare("mni152", out, size=32, quiet=True)
    return out


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, mni_tiny) -> Path:
    """A tiny trained run (G, D and R for a few steps) on the real template."""
    pytest.importorskip("torch")
    from rlp.train.config import resolve
    from rlp.train.loop import train_gan, train_predictor

    run = tmp_path_factory.mktemp("runs") / "tiny"
    cfg = resolve("tiny", None, {})
    train_gan(cfg, str(mni_tiny), run, quiet=True)
    train_predictor(cfg, str(mni_tiny), run, quiet=True)
    return run


# --------------------------------------------------------------------------- the gpu marker
# A test marked ``gpu`` runs only where the GPU backend it needs can really be created: which onnxruntime
# providers are compiled in says nothing (onnxruntime-gpu reports CUDA and TensorRT on a machine without a GPU).
# The backends are the marker's arguments (``@pytest.mark.gpu("ort-cuda")``), else the test's ``kind``
# parameter, else ``trt``. With RLP_REQUIRE_GPU=1 (a GPU machine's run) a missing device fails instead.
_GPU_PROBES: dict[str, str | None] = {}


def _gpu_kinds(item) -> tuple[str, ...]:
    mark = item.get_closest_marker("gpu")
    if mark.args:
        return tuple(mark.args)
    callspec = getattr(item, "callspec", None)
    kind = callspec.params.get("kind") if callspec is not None else None
    return (kind,) if kind else ("trt",)


def _probe_gpu(kind: str) -> str | None:
    """Why backend ``kind`` cannot be created on this machine (None: it can), found by creating it."""
    import tempfile

    from rlp.runtime import backends
    from rlp.runtime.core.errors import Unavailable

    try:
        if kind == "trt":  # a TrtBackend also needs an engine built on this GPU: what it asks of the machine is this
            _, cudart = backends._import_trt()
            backends.compute_capability(cudart)
            return None
        from helpers.runtime import make_bundle
        from rlp.runtime.heatmap import Bundle

        old_cache = os.environ.get("RLP_TRT_CACHE")
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["RLP_TRT_CACHE"] = str(Path(tmp) / "trt-cache")  # ort-trt's engines stay out of ~/.cache
            try:
                root = make_bundle(Path(tmp) / "probe")
                model = backends.check_model(root, "r", Bundle.load(root).manifest.models["r"])
                backends.create_backend(kind, model).close()
            finally:
                if old_cache is None:
                    os.environ.pop("RLP_TRT_CACHE", None)
                else:
                    os.environ["RLP_TRT_CACHE"] = old_cache
    except Unavailable as exc:
        return str(exc)
    return None


def gpu_unavailable(kind: str) -> str | None:
    """:func:`_probe_gpu`, once per backend and session."""
    if kind not in _GPU_PROBES:
        _GPU_PROBES[kind] = _probe_gpu(kind)
    return _GPU_PROBES[kind]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Skip (before any fixture is made) a ``gpu`` test whose backend cannot be created here."""
    if item.get_closest_marker("gpu") is None:
        return
    for kind in _gpu_kinds(item):
        why = gpu_unavailable(kind)
        if why is not None:
            if os.environ.get("RLP_REQUIRE_GPU") == "1":
                pytest.fail(f"gpu: RLP_REQUIRE_GPU=1 but backend {kind} cannot be created here: {why}")
            pytest.skip(f"gpu: backend {kind} cannot be created here: {why}")
