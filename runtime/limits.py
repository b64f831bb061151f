"""The stated bound on a run's peak memory, and the input limit it implies (README "Limits").

A run's peak RSS is at most :data:`PEAK_BASE` plus :data:`PEAK_MULTIPLE` times its input's voxel data as
float32 (voxels x 4 bytes), for every step from loading to the overlay (measured: 8.3x for a 4000x4000
slice, 7.0x for a 512x512x40 volume). Inputs that the bound says would need more than ``RLP_MAX_MEMORY``
are refused from their header (:func:`rlp.runtime.nifti.check_header`), before any voxel is allocated.
"""

from __future__ import annotations

import math
import os

PEAK_MULTIPLE = 10
PEAK_BASE = 512 << 20
#: the memory a run may use (RLP_MAX_MEMORY, bytes; default 8 GiB)
MAX_MEMORY = int(os.environ.get("RLP_MAX_MEMORY", 8 << 30))
#: the largest voxel data (float32 bytes) accepted: derived from MAX_MEMORY, or set outright (RLP_MAX_VOXEL_BYTES)
MAX_VOXEL_BYTES = int(os.environ.get("RLP_MAX_VOXEL_BYTES", max(1 << 20, (MAX_MEMORY - PEAK_BASE) // PEAK_MULTIPLE)))


def size(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def advice() -> str:
    """What the voxel-data limit is, where it comes from, and what to do about an input over it."""
    if "RLP_MAX_VOXEL_BYTES" in os.environ:
        return (f"over the limit of {size(MAX_VOXEL_BYTES)} of voxel data (RLP_MAX_VOXEL_BYTES; raise it, "
                "or crop or downsample the image)")
    return (f"over the limit of {size(MAX_VOXEL_BYTES)} of voxel data that a run within RLP_MAX_MEMORY="
            f"{size(MAX_MEMORY)} can take (it needs up to {PEAK_MULTIPLE}x the voxel data, plus "
            f"{size(PEAK_BASE)}); crop or downsample the image, or raise RLP_MAX_MEMORY")


def out_of_memory(shape: tuple[int, ...] | None) -> str:
    """The message for a MemoryError on an input of ``shape`` (None: unknown): the cause and what to do."""
    what = "its voxel data" if shape is None else \
        f"its {'x'.join(map(str, shape))} voxels ({size(4 * math.prod(shape))} as float32)"
    return (f"out of memory: {what} need up to {PEAK_MULTIPLE}x that plus {size(PEAK_BASE)} (README \"Limits\"), "
            "more than this machine had free; free memory, crop or downsample the image, or lower RLP_MAX_MEMORY "
            "so that such inputs are refused before they are read")
