"""PyTorch's bicubic x2 upsampling, rewritten as two constant matrix products.

onnxruntime's cubic ``Resize`` kernel is slow on CPU (93% of G's time was
measured in it). For an integer scale of 2 an exact rewrite exists:

``F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False)`` maps
output pixel ``o`` to source coordinate ``o / 2 - 1/4`` (half-pixel centres).
Even outputs ``2i`` sit at ``i - 1/4`` and read source pixels ``i-2 .. i+1``;
odd outputs ``2i+1`` sit at ``i + 1/4`` and read ``i-1 .. i+2``. The fractional
offset is the same for every pixel of a phase, so each phase is a fixed 4-tap
filter: Keys' cubic convolution with ``a = -0.75`` (PyTorch's constant) at
distances 1.75, 0.75, 0.25, 1.25. PyTorch clamps source indices into the image
(a replicate border). Bicubic upsampling is separable, so along each axis it is
a constant banded ``(2n, n)`` matrix ``U`` holding both phases, the interleave
and the clamped border, and::

    upsample(x) = U_h @ x @ U_w.T        (x: (N, C, H, W))

In ONNX that is two ``MatMul`` nodes, which onnxruntime runs as large GEMMs.
Measured on the 2-core dev CPU against the other exact form (edge ``Pad`` +
5x5 convolution producing the four phases + ``DepthToSpace``), one upsampling
of 64x128x6x6 takes 2.5 ms instead of 40 ms, and of 8x16x128x128 24 ms instead
of 72 ms. The matrices depend on the spatial size, which is fixed per model
(only the batch axis is dynamic).
"""

from __future__ import annotations

import copy
import functools

import numpy as np
import torch
from torch import nn

from rlp.train.models import Upsample

# PyTorch's cubic convolution constant (aten/src/ATen/native/UpSample.h).
CUBIC_A = -0.75


def _cubic_near(x: float, a: float = CUBIC_A) -> float:
    """Keys' kernel for |x| <= 1."""
    return ((a + 2) * x - (a + 3)) * x * x + 1


def _cubic_far(x: float, a: float = CUBIC_A) -> float:
    """Keys' kernel for 1 < |x| < 2."""
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a


def phase_taps(a: float = CUBIC_A) -> tuple[list[float], list[float]]:
    """The 5-tap filters (offsets -2..+2 around source pixel i) of the even and odd output phases."""
    t = 0.75  # even outputs: source i - 1/4 = (i - 1) + 0.75
    even = [_cubic_far(t + 1, a), _cubic_near(t, a), _cubic_near(1 - t, a), _cubic_far(2 - t, a), 0.0]
    t = 0.25  # odd outputs: source i + 1/4 = i + 0.25
    odd = [0.0, _cubic_far(t + 1, a), _cubic_near(t, a), _cubic_near(1 - t, a), _cubic_far(2 - t, a)]
    return even, odd


@functools.lru_cache(maxsize=64)
def upsample_matrix(n: int, a: float = CUBIC_A) -> np.ndarray:
    """(2n, n) float64 matrix: row ``o`` holds the weights of output pixel ``o`` (indices clamped into 0..n-1).

    Plain numpy (read-only, cached), so that tracing for export sees one constant, not the loops.
    """
    even, odd = phase_taps(a)
    u = np.zeros((2 * n, n))
    for i in range(n):
        for taps, row in ((even, 2 * i), (odd, 2 * i + 1)):
            for offset, weight in zip(range(-2, 3), taps):
                u[row, min(max(i + offset, 0), n - 1)] += weight
    u.flags.writeable = False
    return u


class Bicubic2x(nn.Module):
    """Drop-in, export-friendly equal of ``F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        rows = torch.tensor(upsample_matrix(int(h)), dtype=x.dtype, device=x.device)
        cols_t = torch.tensor(upsample_matrix(int(w)).T, dtype=x.dtype, device=x.device)
        return torch.matmul(rows, torch.matmul(x, cols_t))


def swap_bicubic(model: nn.Module) -> tuple[nn.Module, int]:
    """A copy of ``model`` whose bicubic :class:`~rlp.train.models.Upsample` modules are :class:`Bicubic2x`.

    The original model is left untouched. Returns the copy and how many modules
    were replaced.
    """
    model = copy.deepcopy(model)
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Upsample) and child.mode == "bicubic":
                setattr(parent, name, Bicubic2x())
                swapped += 1
    return model, swapped
