"""rlp.runtime: the torch-free bottom layer (contracts, NIfTI I/O, bundles, heatmaps).

This package must never import torch; ``tests/test_layering.py`` proves it.
"""

from .errors import RlpError
from .geometry import WindowGeometry, window_positions
from .preprocess import Preprocessing, Resampler, preprocess_slice

__all__ = ["RlpError", "WindowGeometry", "window_positions", "Preprocessing", "Resampler", "preprocess_slice"]

try:
    from importlib.metadata import PackageNotFoundError, version as _version

    __version__ = _version("rlp")
except Exception:  # running from a source tree without an install
    __version__ = "0.0.0+unknown"
