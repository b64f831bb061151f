"""rlp.runtime: the torch-free bottom layer (contracts, NIfTI I/O, bundles, heatmaps).

This package must never import torch; ``tests/project/test_layering.py`` proves it.

Heatmaps from Python::

    from rlp.runtime import Bundle

    with Bundle.load("bundles/demo") as bundle:
        res = bundle.heatmap_slice(slice2d, spacing=(1.0, 1.0))    # res.pixel_map: the slice's shape
        vol = bundle.heatmap_nifti("t1.nii.gz", axis="axial")     # vol.heatmap: the file's shape
        vol = bundle.heatmap_array(data3d, affine)                # any array with its affine

The names below are imported on first use (PEP 562), so that importing ``rlp.runtime.core`` (or
``rlp.runtime.__version__``) loads neither the backends nor onnxruntime.
"""

from __future__ import annotations

import importlib

#: public name -> the module (relative to this package) that defines it
_EXPORTS = {
    **dict.fromkeys(("BACKENDS", "Backend", "available_backends", "create_backend", "register_backend"), ".backends"),
    "RlpError": ".core.errors",
    **dict.fromkeys(("WindowGeometry", "window_positions"), ".core.geometry"),
    **dict.fromkeys(("DEFAULT_BUNDLE", "Bundle", "default_bundle"), ".heatmap"),
    **dict.fromkeys(("SliceHeatmap", "VolumeHeatmap", "Window", "top_windows"), ".results"),
    **dict.fromkeys(("Manifest", "load_bundle_manifest"), ".core.manifest"),
    **dict.fromkeys(("Volume", "load_nifti", "save_like", "volume_from_array"), ".core.nifti"),
    **dict.fromkeys(("Preprocessing", "Resampler", "preprocess_slice"), ".core.preprocess"),
    **dict.fromkeys(("WindowScorer", "score_windows"), ".scorers"),
}
__all__ = list(_EXPORTS)

try:
    from importlib.metadata import version as _version

    __version__ = _version("rlp")
except Exception:  # running from a source tree without an install
    __version__ = "0.0.0+unknown"


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value  # once: later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
