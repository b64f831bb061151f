"""The stated bound on a run's peak memory, and the input limit it implies (README "Limits").

A run's peak RSS is at most :func:`need`: :data:`PEAK_BASE`, plus :data:`PEAK_MULTIPLE` times its input's
voxel data as float32 (voxels x 4 bytes), plus :data:`PEAK_PER_SLICE` per slice (each slice's maps on the
model grid), for every step from loading to the overlay (measured on the demo bundle: 8.3x the voxel data
for a 4000x4000 slice, 7.0x for 512x512x40, 165 KiB per slice for 64x64x1000). Inputs that the bound says
would need more than ``RLP_MAX_MEMORY`` are refused from their header (:func:`rlp.runtime.nifti.check_header`),
before any voxel is allocated.
"""

from __future__ import annotations

import math
import os

PEAK_MULTIPLE = 10
PEAK_BASE = 512 << 20
#: a slice's maps on the model grid (12 bytes a pixel) for model grids up to 256x256
PEAK_PER_SLICE = 12 * 256 * 256
#: the memory a run may use (RLP_MAX_MEMORY, bytes; default 8 GiB)
MAX_MEMORY = int(os.environ.get("RLP_MAX_MEMORY", 8 << 30))
#: the largest voxel data (bytes, as float32 and as stored) accepted: set outright (RLP_MAX_VOXEL_BYTES), or
#: what the bound allows within MAX_MEMORY for a single slice
MAX_VOXEL_BYTES = int(os.environ.get("RLP_MAX_VOXEL_BYTES", max(1 << 20, (MAX_MEMORY - PEAK_BASE - PEAK_PER_SLICE)
                                                                     // PEAK_MULTIPLE)))


def need(shape: tuple[int, ...]) -> int:
    """The bound on a run's peak memory for an input of ``shape`` (any slice axis: the most slices counted)."""
    slices = max(shape[:3]) if len(shape) >= 3 else 1
    return PEAK_BASE + PEAK_MULTIPLE * 4 * math.prod(shape) + PEAK_PER_SLICE * slices


def refusal(shape: tuple[int, ...], nbytes: int) -> str | None:
    """Why an input of ``shape`` (``nbytes`` of voxel data as stored) is too large, or None where it is not."""
    voxels = math.prod(shape)
    what = f"header declares {'x'.join(map(str, shape))} voxels ({size(4 * voxels)} as float32)"
    if max(nbytes, 4 * voxels) > MAX_VOXEL_BYTES:
        return f"{what}; {advice()}"
    if "RLP_MAX_VOXEL_BYTES" not in os.environ and need(shape) > MAX_MEMORY:
        return (f"{what}; a run needs up to {size(need(shape))} for it (README \"Limits\"), over RLP_MAX_MEMORY="
                f"{size(MAX_MEMORY)}; crop or downsample the image, or raise RLP_MAX_MEMORY")
    return None


def size(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def advice() -> str:
    """What the voxel-data limit is, where it comes from, and what to do about an input over it."""
    if "RLP_MAX_VOXEL_BYTES" in os.environ:
        return (f"over the limit of {size(MAX_VOXEL_BYTES)} of voxel data (RLP_MAX_VOXEL_BYTES; raise it, "
                "or crop or downsample the image)")
    return (f"over the limit of {size(MAX_VOXEL_BYTES)} of voxel data that a run within RLP_MAX_MEMORY="
            f"{size(MAX_MEMORY)} can take (it needs up to {PEAK_MULTIPLE}x the voxel data, plus "
            f"{size(PEAK_BASE + PEAK_PER_SLICE)}); crop or downsample the image, or raise RLP_MAX_MEMORY")


def out_of_memory(shape: tuple[int, ...] | None) -> str:
    """The message for a MemoryError on an input of ``shape`` (None: unknown): the cause and what to do."""
    what = "its voxel data" if shape is None else \
        f"its {'x'.join(map(str, shape))} voxels ({size(4 * math.prod(shape))} as float32)"
    return (f"out of memory: {what} need up to {PEAK_MULTIPLE}x that and more (README \"Limits\"), "
            "more than this machine had free; free memory, crop or downsample the image, or lower RLP_MAX_MEMORY "
            "so that such inputs are refused before they are read")
