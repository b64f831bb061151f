"""Planning: which region of each stage a box can change, the crops that region needs, how each convolution is
recomputed (crops, gemm or delta), and where to stop recomputing (an estimate of the work per window)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..core.geometry import WindowGeometry
from .graph import Stage

#: work per copied element (gather, paste), in FLOPs (a multiply-add is 2): numpy gathers about one element
#: per nanosecond while onnxruntime's convolutions run at up to ~170 FLOPs per nanosecond on 2 cores, well
#: below that on small layers (measured on the paper's R at 256: with 16 the estimate preferred im2col columns
#: for its second convolution, 0.05 s a slice slower than its crops)
COPY_FLOPS = 64.0
#: a delta stage's products are one matrix product per kernel tap, over the layer's input channels only: below
#: this many the products run well under the machine's peak (measured on the paper's R at 256: its second
#: convolution, 64 input channels, took longer as deltas than on crops), so the estimate scales their work by
#: DELTA_MIN_CIN / channels
DELTA_MIN_CIN = 128
#: how a convolution can be recomputed (StagePlan.how)
HOWS = ("gemm", "delta", "crops")


def reach(lo: np.ndarray, hi: np.ndarray, k: int, s: int, d: int, pb: int, n_out: int
             ) -> tuple[np.ndarray, np.ndarray]:
    """The outputs ``[lo', hi']`` (inclusive, one range per window) that inputs ``[lo, hi]`` reach along one axis.

    Output ``o`` reads inputs ``o*s - pb + j*d`` (``j < k``, unpadded coordinates).
    """
    return np.clip(-((-(lo + pb - d * (k - 1))) // s), 0, n_out - 1), np.clip((hi + pb) // s, 0, n_out - 1)


def grow(a: np.ndarray, h: int, k: int, s: int, d: int, pb: int, n_out: int,
          size: int | None = None) -> tuple[np.ndarray, int]:
    """Output starts (and the common size) of the region a layer recomputes along one axis.

    The input region is ``[a, a + h)`` (one start per window). The size is the
    largest changed extent over the windows (or ``size``); every window's region
    is shifted inside the output, so it always covers the changed outputs.
    """
    lo, hi = reach(a, a + h - 1, k, s, d, pb, n_out)
    if size is None:
        size = int(max(1, (hi - lo + 1).max()))
    return np.clip(lo, 0, n_out - size), size


@dataclass
class StagePlan:
    stage: Stage
    in_shape: tuple[int, int, int]  # C, H, W of the stage's input
    out_shape: tuple[int, int, int]
    region: tuple[int, int]  # rows, cols recomputed per window
    crop: tuple[int, int]  # rows, cols of the input crop it needs
    pads: tuple[int, int, int, int]  # padding of the kept input: begin rows, begin cols, end rows, end cols
    in_region: tuple[int, int]  # the previous region (pasted into the crop)
    exact: tuple[float, float] = (0.0, 0.0)  # mean rows, cols over the windows that really change
    #: mean (changed output, kernel tap reading a changed input) pairs per window, rows and cols
    pairs: tuple[float, float] = (0.0, 0.0)
    #: how the layer is recomputed: "crops" (run on the crops side by side, every output of the region), "gemm"
    #: (only the outputs that change, as one matrix product over the batch's gathered receptive fields) or
    #: "delta" (only the outputs that change, as the kept pre-activation plus the kernel taps that read a changed
    #: input times the change: the convolution is linear, so the taps over unchanged inputs are never redone)
    how: str = "crops"

    @property
    def gemm(self) -> bool:
        """Does the stage compute only the outputs that change (``how`` "gemm" or "delta")?"""
        return self.how != "crops"

    def flops(self, rows: float, cols: float) -> float:
        return (self.stage.flops_per_output + len(self.stage.nodes) - (self.stage.op != "elementwise")) \
            * self.out_shape[0] * rows * cols

    @property
    def incremental_flops(self) -> float:
        c_in, copied = self.in_shape[0], self.crop[0] * self.crop[1] + self.in_region[0] * self.in_region[1]
        if self.how == "delta":  # the changed taps' products, the elementwise nodes on the changed outputs, and the
            # change of the input region, the taps, the kept pre-activations and the region copied
            st, n_out = self.stage, self.exact[0] * self.exact[1]
            taps = self.pairs[0] * self.pairs[1]
            return self.out_shape[0] * (st.flops_per_output / (st.kernel[0] * st.kernel[1]) * taps
                                        * max(1.0, DELTA_MIN_CIN / c_in) + (len(st.nodes) - 1) * n_out) \
                + COPY_FLOPS * (c_in * (2 * self.in_region[0] * self.in_region[1] + taps)
                                + self.out_shape[0] * (2 * n_out + self.region[0] * self.region[1]))
        if self.gemm:  # the exact outputs, each gathering its receptive field, and the region copied from the kept map
            taps = self.stage.kernel[0] * self.stage.kernel[1] * self.exact[0] * self.exact[1]
            return self.flops(*self.exact) + COPY_FLOPS * (c_in * (copied + taps)
                                                          + self.out_shape[0] * self.region[0] * self.region[1])
        # side by side, each crop is widened to a multiple of the stride and all its outputs are computed
        return self.flops(self.region[0], -(-self.crop[1] // self.stage.stride[1])) + COPY_FLOPS * c_in * copied

    @property
    def full_flops(self) -> float:
        return self.flops(*self.out_shape[1:])


def _resolve_pads(st: Stage, n_in: tuple[int, int]) -> tuple[int, int, int, int]:
    if st.auto_pad == "VALID":
        return (0, 0, 0, 0)
    if st.auto_pad == "NOTSET":
        return st.pads
    begin, end = [], []
    for ax in range(2):
        s, eff = st.stride[ax], st.dilation[ax] * (st.kernel[ax] - 1) + 1
        total = max((-(-n_in[ax] // s) - 1) * s + eff - n_in[ax], 0)
        small = total // 2
        b = small if st.auto_pad == "SAME_UPPER" else total - small
        begin.append(b)
        end.append(total - b)
    return (begin[0], begin[1], end[0], end[1])


def plan_stages(stages: list[Stage], shapes: list[tuple[int, int, int]], geometry: WindowGeometry
                ) -> tuple[list[StagePlan], str]:
    """Region sizes and crops of every stage for the geometry's windows (stops at a stage it cannot plan)."""
    pos = geometry.positions
    a, h = (pos, pos), (geometry.window, geometry.window)
    exact = [(pos, pos + geometry.window - 1)] * 2  # what really changes, per window and axis (inclusive)
    plans: list[StagePlan] = []
    for st, cin, cout in zip(stages, shapes, shapes[1:]):
        pads = _resolve_pads(st, cin[1:])
        starts, sizes, crop, end, pairs = [], [], [], [], []
        for ax in range(2):
            k, s, d, n_in, n_out = st.kernel[ax], st.stride[ax], st.dilation[ax], cin[1 + ax], cout[1 + ax]
            eff, pb, pe = d * (k - 1) + 1, pads[ax], pads[2 + ax]
            span = n_in + pb + pe - eff
            ok = span >= 0 and (n_out == span // s + 1 or (st.ceil_ok and n_out == -(-span // s) + 1))
            if not ok:
                return plans, f"stage {st.name}: output size {n_out} does not follow from input {n_in}, kernel {k}, " \
                              f"stride {s}, padding {pb}+{pe}"
            start, size = grow(a[ax], h[ax], k, s, d, pb, n_out)
            lo, hi = exact[ax]
            exact[ax] = reach(lo, hi, k, s, d, pb, n_out)
            pairs.append(float(np.mean(_tap_pairs(lo, hi, *exact[ax], k, s, d, pb))))
            starts.append(start)
            sizes.append(size)
            crop.append((size - 1) * s + eff)
            end.append(max(pe, (n_out - 1) * s + eff - pb - n_in))
        if st.op == "elementwise" and cin != cout:
            return plans, f"stage {st.name} changes the shape {cin} -> {cout}"
        plan = StagePlan(st, cin, cout, (sizes[0], sizes[1]), (crop[0], crop[1]),
                         (pads[0], pads[1], end[0], end[1]), (h[0], h[1]),
                         tuple(float(np.mean(np.maximum(hi - lo + 1, 0))) for lo, hi in exact), (pairs[0], pairs[1]))
        if gemm_ok(st):  # whichever the estimate says is less work
            plan = min([plan] + [replace(plan, how=how) for how in ("gemm", "delta")],
                       key=lambda q: q.incremental_flops)
        plans.append(plan)
        a, h = starts, (sizes[0], sizes[1])
    return plans, ""


def _tap_pairs(lo: np.ndarray, hi: np.ndarray, o_lo: np.ndarray, o_hi: np.ndarray, k: int, s: int, d: int,
               pb: int) -> np.ndarray:
    """Along one axis, per window: the (output in ``[o_lo, o_hi]``, tap ``j < k``) pairs whose input
    ``o*s - pb + j*d`` lies in ``[lo, hi]`` (the changed inputs)."""
    n = np.zeros(np.shape(lo), np.int64)
    for j in range(k):
        first = np.maximum(o_lo, -((pb - j * d - lo) // s))  # ceil((lo + pb - j*d) / s)
        last = np.minimum(o_hi, (hi + pb - j * d) // s)
        n += np.maximum(last - first + 1, 0)
    return n


def gemm_ok(st: Stage) -> bool:
    """Can the stage's layer be recomputed as one matrix product over the changed outputs (an ungrouped Conv)?"""
    return st.op == "Conv" and st.group == 1


def choose_split(plans: list[StagePlan], shapes: list[tuple[int, int, int]]) -> tuple[int, list[float]]:
    """How many stages to recompute incrementally (0: none pays), and the estimated work per window for each."""
    costs = []
    for j in range(len(plans) + 1):
        c, hh, ww = shapes[j]
        costs.append(sum(p.incremental_flops for p in plans[:j]) + sum(p.full_flops for p in plans[j:])
                     + COPY_FLOPS * c * hh * ww)
    return int(np.argmin(costs)), costs

