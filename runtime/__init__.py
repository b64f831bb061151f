"""rlp.runtime: the torch-free bottom layer (contracts, NIfTI I/O, bundles, heatmaps).

This package must never import torch; ``tests/project/test_layering.py`` proves it.

Heatmaps from Python::

    from rlp.runtime import Bundle

    with Bundle.load("bundles/demo") as bundle:
        res = bundle.heatmap_slice(slice2d, spacing=(1.0, 1.0))    # res.pixel_map: the slice's shape
        vol = bundle.heatmap_nifti("t1.nii.gz", axis="axial")     # vol.heatmap: the file's shape
        vol = bundle.heatmap_array(data3d, affine)                # any array with its affine
"""

from .backends import BACKENDS, Backend, available_backends, create_backend, register_backend
from .core.errors import RlpError
from .core.geometry import WindowGeometry, window_positions
from .core.manifest import Manifest, load_bundle_manifest
from .core.nifti import Volume, load_nifti, save_like, volume_from_array
from .core.preprocess import Preprocessing, Resampler, preprocess_slice
from .heatmap import DEFAULT_BUNDLE, Bundle, SliceHeatmap, VolumeHeatmap, Window, default_bundle, top_windows
from .scorers import WindowScorer, score_windows

__all__ = [
    "RlpError", "WindowGeometry", "window_positions", "Preprocessing", "Resampler", "preprocess_slice",
    "Bundle", "SliceHeatmap", "VolumeHeatmap", "Window", "score_windows", "top_windows", "DEFAULT_BUNDLE",
    "default_bundle", "Backend", "BACKENDS", "available_backends", "create_backend", "register_backend", "WindowScorer",
    "Manifest",
    "load_bundle_manifest", "Volume", "load_nifti", "save_like", "volume_from_array",
]

try:
    from importlib.metadata import version as _version

    __version__ = _version("rlp")
except Exception:  # running from a source tree without an install
    __version__ = "0.0.0+unknown"
