"""Exact incremental scoring for predictors that read the whole slice (``input_kind`` ``"image"``).

Every model input of such a predictor is the same slice with one ``window`` x
``window`` box painted with ``geometry.fill``. A convolution's output can change
only inside the box's projective field, which stays small through the first
layers (the paper's R at 256/16/4: 9x9 of 128x128 after its first conv, 5x5 of
64x64 after its second, 3x3 of 32x32 after the first pool). Following Krypton
(Nakandala et al., SIGMOD 2019):

1. the ONNX graph is read as a *prefix*, a chain of local stages (a Conv,
   MaxPool, AveragePool or constant Pad, each followed by any number of
   elementwise nodes: activations, BatchNormalization, arithmetic with
   per-channel constants), and the *rest* of the network;
2. the prefix runs once on the unpainted slice, and every stage's input is kept;
3. for each window, each prefix stage is recomputed only on the region of its
   output that the box can change (grown stage by stage from the kernel,
   stride, padding and dilation in the graph), from an input crop with exactly
   the halo that region needs: the kept input, padded as the layer pads it
   (zeros, or -inf for a max-pool), with the window's recomputed region of the
   previous stage pasted in. The layer runs on the crop with its padding
   removed, so every value is the one the whole network computes;
4. the last recomputed region is pasted into a copy of the kept activation and
   the rest of the network runs on the batch of these.

A stage runs once per batch of windows, in one of three ways, whichever the work
estimate prefers. An ungrouped convolution can recompute only the outputs a box
really changes (a box's changed extent varies with its alignment to the
strides: 2 or 3 of the 3 recomputed rows after the paper's R's first pool),
either each from its gathered receptive field, as one matrix product over the
batch (``gemm``: a 1x1 convolution on im2col columns), or, since a convolution
is linear, as its kept output (before the elementwise nodes after it) plus the
change of its input times the weights of only those kernel taps that read a
changed input (``delta``: one matrix product per tap; deep in the network a
changed output reads a changed input through about half of its taps); the
region's other outputs are the kept map's. Any other layer runs on the batch's
crops side by side in one image, so that its work stays in large calls although each crop is small. numpy moves whole pixels
(channels last); a Transpose in each sub-model, which onnxruntime folds into its
own layout change, gives the layers their NCHW. The sub-models' thread pools do
not spin between calls (they take turns with numpy), and keep no memory arena.

Where to stop the prefix is chosen by an estimate of the work per window
(multiply-adds and copied elements) at every stage boundary. A graph this
module cannot reason about (its first node is not a local layer, control flow,
a weight that is not a constant, ...) is scored plainly through
:func:`~rlp.runtime.heatmap.score_windows`, with a note saying why; the answer
is never approximate. Only numpy, onnx and onnxruntime are used.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from .backends import _import_ort, ort_session_providers
from .core.errors import EX_USAGE, BadInput, RlpError, Unavailable, one_line
from .core.geometry import WindowGeometry, iter_batches
from .heatmap import DEFAULT_BATCH, TARGET_TRANSFORMS, model_geometry, score_windows
from .core.manifest import REBUILD, path_role

try:
    import onnx
    from onnx import helper, numpy_helper
except ImportError:  # the base install: Bundle.incremental says what to install
    onnx = helper = numpy_helper = None

#: elementwise nodes with one activation input (attributes only, or constant extra inputs such as Clip's bounds)
UNARY = frozenset({"Relu", "LeakyRelu", "Sigmoid", "Tanh", "Elu", "Selu", "Celu", "Softplus", "Softsign",
                   "HardSigmoid", "HardSwish", "Mish", "Gelu", "ThresholdedRelu", "Identity", "Neg", "Abs", "Exp",
                   "Log", "Sqrt", "Reciprocal", "Erf", "Floor", "Ceil", "Round", "Sign", "Clip"})
#: elementwise with a constant that must not vary along the spatial axes (per-channel at most)
BINARY = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "PRelu", "BatchNormalization"})
SPATIAL = frozenset({"Conv", "MaxPool", "AveragePool", "Pad"})
#: work per copied element (gather, paste), in FLOPs (a multiply-add is 2): numpy gathers about one element
#: per nanosecond while onnxruntime's convolutions run at up to ~170 FLOPs per nanosecond on 2 cores, well
#: below that on small layers (measured on the paper's R at 256: with 16 the estimate preferred im2col columns
#: for its second convolution, 0.05 s a slice slower than its crops)
COPY_FLOPS = 64.0
TO_NCHW, TO_NHWC = [0, 3, 1, 2], [0, 2, 3, 1]
#: a delta stage's products are one matrix product per kernel tap, over the layer's input channels only: below
#: this many the products run well under the machine's peak (measured on the paper's R at 256: its second
#: convolution, 64 input channels, took longer as deltas than on crops), so the estimate scales their work by
#: DELTA_MIN_CIN / channels
DELTA_MIN_CIN = 128
#: windows per stage call (the plain path's batch does not apply); measured on the paper's R at 256: as fast as
#: 512 and about 110 MB less peak memory
BATCH = 256
#: how a convolution can be recomputed (StagePlan.how)
HOWS = ("gemm", "delta", "crops")
#: the backends incremental scoring runs on; their sessions' providers are the backend's own
#: (backends.ort_session_providers: fp32 models get the CUDA provider's use_tf32=0)
ORT_PROVIDERS = ("ort-cpu", "ort-cuda")


# --------------------------------------------------------------------------- reading the graph
@dataclass
class Stage:
    """A local layer (or none: elementwise only) and the elementwise nodes after it."""

    nodes: list  # the ONNX nodes, in order; the first is the local layer unless ``op`` is "elementwise"
    input: str
    output: str
    op: str = "elementwise"
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)  # begin rows, begin cols, end rows, end cols
    auto_pad: str = "NOTSET"
    pad_value: float = 0.0
    flops_per_output: float = 0.0  # of the local layer, per output element
    ceil_ok: bool = False  # an output size rounded up is allowed (MaxPool ceil_mode)
    weight: np.ndarray | None = None  # a Conv's weights (a constant of the graph)
    group: int = 1  # a Conv's groups

    @property
    def name(self) -> str:
        first = self.nodes[0] if self.nodes else None
        return (first.name or first.output[0]) if first is not None and self.op != "elementwise" else self.op

    @property
    def crop_input(self) -> str:
        """The tensor a crop stands for: the stage's input (a Pad's output: the crop is taken padded)."""
        return self.nodes[0].output[0] if self.op == "Pad" else self.input

    def crop_nodes(self) -> list:
        """The nodes run on a crop: the local layer without its padding (a Pad disappears), then the rest."""
        if self.op == "elementwise":
            return list(self.nodes)
        head, rest = self.nodes[0], list(self.nodes[1:])
        if self.op == "Pad":
            return rest
        node = onnx.NodeProto()
        node.CopyFrom(head)
        del node.attribute[:]
        for a in head.attribute:
            if a.name not in ("pads", "auto_pad"):
                node.attribute.append(a)
        return [node] + rest


def image_input(graph):
    """The graph's input that is not an initializer (older models list their initializers as inputs too)."""
    inits = {t.name for t in graph.initializer}
    return next((i for i in graph.input if i.name not in inits), None)


def _attrs(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _constants(graph) -> dict[str, np.ndarray]:
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            a = node.attribute[0] if len(node.attribute) == 1 else None
            if a is None:
                continue
            v = helper.get_attribute_value(a)
            consts[node.output[0]] = numpy_helper.to_array(v) if a.name == "value" else np.asarray(v)
    return consts


def _channelwise(c: np.ndarray) -> bool:
    """Does a constant broadcast against (N, C, H, W) without varying along N, H or W?"""
    s = (1,) * (4 - c.ndim) + tuple(c.shape) if c.ndim <= 4 else None
    return s is not None and s[0] == 1 and s[2] == 1 and s[3] == 1


def _pair(v, default) -> tuple[int, int]:
    v = list(v) if v is not None else list(default)
    if len(v) != 2:
        raise ValueError("not a 2-D layer")
    return int(v[0]), int(v[1])


def _local_stage(node, x: str, consts: dict) -> Stage | str:
    """A Stage for a local layer, or why it is not one this module can recompute on crops."""
    op, a = node.op_type, _attrs(node)
    auto = a.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    if auto not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
        return f"auto_pad {auto}"
    w = None  # a Conv's weights
    try:
        if op == "Conv":
            w = consts.get(node.input[1])
            if w is None or w.ndim != 4:
                return "a convolution whose weights are not a constant 4-D tensor"
            kernel = _pair(a.get("kernel_shape"), w.shape[2:])
            flops = 2.0 * w.shape[1] * kernel[0] * kernel[1]
            pad_value = 0.0
        elif op in ("MaxPool", "AveragePool"):
            if len([o for o in node.output if o]) != 1:
                return "a max-pool that also returns indices"
            kernel = _pair(a.get("kernel_shape"), None)
            pads = a.get("pads", [0, 0, 0, 0])
            if op == "AveragePool" and (a.get("ceil_mode", 0) or (any(pads) or auto.startswith("SAME"))
                                        and not a.get("count_include_pad", 0)):
                return "an average-pool whose divisor changes at the border (ceil_mode, or padding not counted)"
            flops = float(kernel[0] * kernel[1])
            pad_value = float("-inf") if op == "MaxPool" else 0.0
        else:  # Pad
            if a.get("mode", b"constant") not in (b"constant", "constant"):
                return f"a Pad in {a.get('mode')!r} mode"
            if len(node.input) > 3 and node.input[3]:
                return "a Pad with axes"
            p = consts.get(node.input[1]) if len(node.input) > 1 else np.asarray(a.get("pads", []))
            value = consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else \
                np.asarray(a.get("value", 0.0))
            if p is None or p.size != 8 or any(p[[0, 1, 4, 5]]) or (p < 0).any() or value is None or value.size != 1:
                return "a Pad that is not a constant, non-negative padding of the spatial axes"
            return Stage([node], x, node.output[0], op, pads=(int(p[2]), int(p[3]), int(p[6]), int(p[7])),
                         pad_value=float(value.reshape(())))
        pads = a.get("pads", [0, 0, 0, 0])
        if len(pads) != 4 or min(pads) < 0:
            return "padding that is not 2-D and non-negative"
        return Stage([node], x, node.output[0], op, kernel, _pair(a.get("strides"), (1, 1)),
                     _pair(a.get("dilations"), (1, 1)), tuple(int(p) for p in pads), auto, pad_value, flops,
                     ceil_ok=op == "MaxPool" and bool(a.get("ceil_mode", 0)), weight=w, group=int(a.get("group", 1)))
    except ValueError as exc:
        return f"{op}: {exc}"


def _elementwise(node, consts: dict) -> str | None:
    """None when ``node`` is elementwise on its activation, else why not."""
    op, a = node.op_type, _attrs(node)
    if op not in UNARY and op not in BINARY:
        return f"{op} is not a layer this module can recompute on crops"
    if len([o for o in node.output if o]) != 1:
        return f"{op} with more than one output"
    if op == "BatchNormalization" and a.get("training_mode", 0):
        return "BatchNormalization in training mode"
    extra = [consts[i] for i in node.input if i in consts]
    if op in BINARY and op != "BatchNormalization" and not all(_channelwise(c) for c in extra):
        return f"{op} with a constant that varies over the image"
    return None


def read_chain(model) -> tuple[list[Stage], str]:
    """The local stages at the start of ``model``'s graph, and why the chain stops where it does."""
    g = model.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in g.node for a in n.attribute):
        return [], "the graph has control flow (subgraphs)"
    consts = _constants(g)
    inputs = [i.name for i in g.input if i.name not in consts]
    if len(inputs) != 1 or len(g.output) != 1:
        return [], "the graph does not have exactly one input and one output"
    users: dict[str, list] = {}
    for n in g.node:
        for i in set(n.input):
            users.setdefault(i, []).append(n)
    x, outputs, stages = inputs[0], {o.name for o in g.output}, []
    while True:
        nxt = users.get(x, [])
        if len(nxt) != 1:
            return stages, f"tensor {x!r} feeds {len(nxt)} nodes"
        node = nxt[0]
        acts = {i for i in node.input if i and i not in consts}
        if node.domain not in ("", "ai.onnx") or acts != {x}:
            return stages, f"node {node.name or node.op_type} ({node.op_type}) is not a layer of one activation"
        if node.output[0] in outputs:
            return stages, "the next node makes the output"
        if node.op_type in SPATIAL:
            if node.input[0] != x:
                return stages, f"{node.op_type} does not read the activation as its first input"
            st = _local_stage(node, x, consts)
            if isinstance(st, str):
                return stages, st
            stages.append(st)
        else:
            why = _elementwise(node, consts)
            if why is not None:
                return stages, why
            if not stages:
                stages.append(Stage([], x, x))
            stages[-1].nodes.append(node)
            stages[-1].output = node.output[0]
        x = node.output[0]


# --------------------------------------------------------------------------- regions
def _changed(lo: np.ndarray, hi: np.ndarray, k: int, s: int, d: int, pb: int, n_out: int
             ) -> tuple[np.ndarray, np.ndarray]:
    """The outputs ``[lo', hi']`` (inclusive, one range per window) that inputs ``[lo, hi]`` reach along one axis.

    Output ``o`` reads inputs ``o*s - pb + j*d`` (``j < k``, unpadded coordinates).
    """
    return np.clip(-((-(lo + pb - d * (k - 1))) // s), 0, n_out - 1), np.clip((hi + pb) // s, 0, n_out - 1)


def _grow(a: np.ndarray, h: int, k: int, s: int, d: int, pb: int, n_out: int,
          size: int | None = None) -> tuple[np.ndarray, int]:
    """Output starts (and the common size) of the region a layer recomputes along one axis.

    The input region is ``[a, a + h)`` (one start per window). The size is the
    largest changed extent over the windows (or ``size``); every window's region
    is shifted inside the output, so it always covers the changed outputs.
    """
    lo, hi = _changed(a, a + h - 1, k, s, d, pb, n_out)
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
            start, size = _grow(a[ax], h[ax], k, s, d, pb, n_out)
            lo, hi = exact[ax]
            exact[ax] = _changed(lo, hi, k, s, d, pb, n_out)
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
        if _gemm_ok(st):  # whichever the estimate says is less work
            plan = min([plan] + [replace(plan, how=how) for how in ("gemm", "delta")], key=lambda q: q.incremental_flops)
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


def _gemm_ok(st: Stage) -> bool:
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


# --------------------------------------------------------------------------- sub-models
def _submodel(src, nodes: list, inputs: list[tuple[str, list]], outputs: list[str], in_perm=None, out_perm=None,
              extra: tuple = ()):
    """A model of ``nodes`` (plus the constants they read) from ``inputs`` (name, shape) to ``outputs``.

    With ``in_perm`` (``out_perm``) the inputs (outputs) are channels last, turned to and from the graph's
    layout by a Transpose that onnxruntime folds into its own layout change: numpy then copies whole pixels.
    """
    g = src.graph
    elem = image_input(g).type.tensor_type.elem_type
    if in_perm:
        nodes = [helper.make_node("Transpose", [f"{n}__cl"], [n], perm=in_perm) for n, _ in inputs] + list(nodes)
        inputs = [(f"{n}__cl", shape) for n, shape in inputs]
    if out_perm:
        nodes = list(nodes) + [helper.make_node("Transpose", [o], [f"{o}__cl"], perm=out_perm) for o in outputs]
        outputs = [f"{o}__cl" for o in outputs]
    produced = {o for n in nodes for o in n.output}
    used = {i for n in nodes for i in n.input} | set(outputs)
    const_nodes = [n for n in g.node if n.op_type == "Constant" and n.output[0] in used - produced]
    graph = helper.make_graph(const_nodes + list(nodes), "rlp_incremental",
                              [helper.make_tensor_value_info(n, elem, s) for n, s in inputs],
                              [helper.make_tensor_value_info(o, elem, None) for o in outputs],
                              [t for t in g.initializer if t.name in used] + list(extra))
    model = helper.make_model(graph, opset_imports=list(src.opset_import), producer_name="rlp-incremental")
    model.ir_version = src.ir_version
    model.functions.extend(src.functions)
    return model


def _pointwise(src, st: Stage):
    """The stage with its convolution as a 1x1 convolution over gathered receptive fields (im2col).

    Input ``(1, 1, outputs, kh * kw * C)``, channels last, the receptive field
    of each output in (row, col, channel) order; the elementwise nodes after the
    layer are kept, so the output is the stage's, ``(1, 1, outputs, C_out)``.
    """
    conv, w = st.nodes[0], st.weight
    name = f"{conv.input[1]}__im2col"
    w1 = numpy_helper.from_array(np.ascontiguousarray(w.transpose(0, 2, 3, 1).reshape(w.shape[0], -1, 1, 1)), name)
    node = helper.make_node("Conv", [st.input, name, *conv.input[2:]], list(conv.output), name=conv.name,
                            kernel_shape=[1, 1])
    return _submodel(src, [node] + list(st.nodes[1:]), [(st.input, [1, 1, "outputs", int(w1.dims[1])])],
                     [st.output], TO_NCHW, TO_NHWC, extra=(w1,))


def _tap_products(src, st: Stage):
    """One matrix product per kernel tap of the stage's convolution: input ``t<k>`` (rows, C_in) times the tap's
    weights gives (rows, C_out); ``k`` counts the taps row by row."""
    w = st.weight
    elem = image_input(src.graph).type.tensor_type.elem_type
    nodes, inputs, outputs, inits = [], [], [], []
    for k, (i, j) in enumerate(np.ndindex(*w.shape[2:])):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(w[:, :, i, j].T), f"w{k}"))
        nodes.append(helper.make_node("MatMul", [f"t{k}", f"w{k}"], [f"y{k}"]))
        inputs.append(helper.make_tensor_value_info(f"t{k}", elem, ["rows", int(w.shape[1])]))
        outputs.append(helper.make_tensor_value_info(f"y{k}", elem, ["rows", int(w.shape[0])]))
    model = helper.make_model(helper.make_graph(nodes, "rlp_incremental_taps", inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", 13)], producer_name="rlp-incremental")
    model.ir_version = 7  # what opset 13 needs
    return model


def _rest_nodes(graph, split: str) -> list | None:
    """The nodes that compute the graph's output from tensor ``split`` (None: they also need another input)."""
    need = {o.name for o in graph.output}
    keep = []
    for n in reversed(graph.node):
        if any(o in need for o in n.output):
            keep.append(n)
            need.update(i for i in n.input if i and i != split)
    have = {t.name for t in graph.initializer} | {o for n in keep for o in n.output} | {split, ""}
    return list(reversed(keep)) if need <= have else None


# --------------------------------------------------------------------------- scoring
class _Kept:
    """A kept map (rows, cols, channels) in a buffer with room after its pixels for a batch's recomputed ones.

    A window's map is the kept one with its recomputed region in place: each gather is one ``np.take`` of
    whole pixels from this buffer, after the batch's new pixels are copied into its tail (the kept pixels are
    copied once per image, not once per batch).
    """

    def __init__(self, a: np.ndarray):
        self.map = a
        self._n = a.shape[0] * a.shape[1]
        self._buf = np.empty((0, a.shape[2]), a.dtype)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.map.shape

    @property
    def dtype(self) -> np.dtype:
        return self.map.dtype

    def pick(self, second: np.ndarray, in_second: np.ndarray, at_second: np.ndarray, at_first: np.ndarray
             ) -> np.ndarray:
        """Pixels at flat indices ``at_first`` of the map, or of ``second`` (any shape, channels last) at flat
        indices ``at_second`` where ``in_second``."""
        ch = self.shape[2]
        m = second.size // ch
        if len(self._buf) < self._n + m:  # grown for the largest batch, then reused
            self._buf = np.empty((self._n + m, ch), self.dtype)
            self._buf[: self._n] = self.map.reshape(-1, ch)
        self._buf[self._n: self._n + m].reshape(second.shape)[...] = second  # one copy, whatever its strides
        return np.take(self._buf, np.where(in_second, self._n + at_second, at_first), axis=0)

    def gather(self, patch: np.ndarray, pr: np.ndarray, pc: np.ndarray, rows: np.ndarray, cols: np.ndarray,
               win: np.ndarray) -> np.ndarray:
        """Pixels ``(rows, cols)`` of window ``win``'s map: this map with the window's ``patch`` (rows,
        windows, cols, channels) in place at ``(pr[win], pc[win])``.

        The index arrays broadcast together; the result has their shape plus the channels. One copy of whole
        pixels, whichever map each comes from.
        """
        (ph, n, pw), w = patch.shape[:3], self.shape[1]
        ir, ic = rows - pr[win], cols - pc[win]
        inside = (ir >= 0) & (ir < ph) & (ic >= 0) & (ic < pw)
        return self.pick(patch, inside, (ir * n + win) * pw + ic, rows * w + cols)


class _Refused(Exception):
    """onnxruntime could not build or run a part of the graph."""


@dataclass
class IncrementalScorer:
    """Scores windows of one image-kind predictor by recomputing only what each box changes.

    Build it with :meth:`from_model` (or :meth:`for_bundle`); ``plan`` is empty
    and ``note`` says why when the graph cannot be scored incrementally, and
    :meth:`score_windows` then scores plainly. ``latencies`` receives the
    seconds of every onnxruntime call.
    """

    geometry: WindowGeometry
    dtype: np.dtype
    plan: list[StagePlan] = field(default_factory=list)
    note: str = ""
    costs: list[float] = field(default_factory=list)
    transform: Callable[[np.ndarray], np.ndarray] = TARGET_TRANSFORMS["identity"]
    latencies: list[float] = field(default_factory=list)
    batch: int = BATCH
    _cache: object = None
    _stages: list = field(default_factory=list)
    _pre: dict = field(default_factory=dict)  # delta stage index -> index of its convolution's output in the cache
    _rest: object = None

    @classmethod
    def from_model(cls, model, geometry: WindowGeometry, *, providers=("CPUExecutionProvider",),
                   threads: int | None = None, split: int | None = None, conv: str | None = None,
                   **options) -> "IncrementalScorer":
        """Read and plan ``model`` (an ``onnx.ModelProto`` mapping (B, 1, S, S) to (B, ...)) for ``geometry``.

        ``split`` forces the number of stages recomputed incrementally (at most
        what the graph allows); by default the cheapest by the work estimate.
        ``conv`` forces how convolutions are recomputed, ``"gemm"`` or ``"delta"``
        (every ungrouped one) or ``"crops"``; by default each the cheapest by the
        estimate.
        """
        if conv not in (None,) + HOWS:
            raise ValueError(f"conv must be None, 'gemm', 'delta' or 'crops', not {conv!r}")
        if onnx is None:
            raise Unavailable("incremental scoring needs the onnx package (pip install 'rlp[cpu]')")
        geometry = geometry.for_input("image")
        inp = image_input(model.graph)
        elem = inp.type.tensor_type.elem_type if inp is not None else onnx.TensorProto.FLOAT
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(elem))
        self = cls(geometry, dtype, **options)
        ort = _import_ort()
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.inter_op_num_threads = 1
        so.intra_op_num_threads = int(threads) if threads else 0
        so.log_severity_level = 3
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # measured: spinning pools of
        so.enable_cpu_mem_arena = False  # the 7 sub-models starved numpy and each other; arenas kept every peak
        so.enable_mem_pattern = False  # a pattern kept per input shape grew 10 MB a slice over a volume (measured)

        def session(m):
            try:
                return ort.InferenceSession(m.SerializeToString(), sess_options=so, providers=list(providers))
            except Exception as exc:  # onnxruntime's own exception types
                raise _Refused(one_line(exc)) from None

        stages, why = read_chain(model)
        if not stages:
            return self._plainly(f"is not possible for this model ({why})")
        try:
            return self._build(model, stages, session, split, conv)
        except _Refused as exc:  # say so and score plainly, never wrongly
            self.plan, self._stages = [], []
            return self._plainly(f"is not possible for this model (onnxruntime refused a part of it: {exc})")

    def _build(self, model, stages: list[Stage], session, split: int | None, conv: str | None) -> "IncrementalScorer":
        x0, s, dtype = stages[0].input, self.geometry.size, self.dtype
        probe = session(_submodel(model, [n for st in stages for n in st.nodes], [(x0, [1, 1, s, s])],
                                  [st.output for st in stages]))
        try:
            outs = probe.run(None, {x0: np.zeros((1, 1, s, s), dtype)})
        except Exception as exc:  # onnxruntime's own exception types
            raise _Refused(one_line(exc)) from None
        shapes = [(1, s, s)] + [tuple(int(v) for v in o.shape[1:]) for o in outs]
        if any(len(sh) != 3 for sh in shapes):
            return self._plainly("is not possible for this model (a layer is not 2-D)")
        plans, why = plan_stages(stages, shapes, self.geometry)
        if conv is not None:
            plans = [replace(p, how=conv if _gemm_ok(p.stage) else "crops") for p in plans]
        if not plans:
            return self._plainly(f"is not possible for this model ({why})")
        best, self.costs = choose_split(plans, shapes)
        if split is not None:
            best = max(0, min(int(split), len(plans)))
        if best == 0:
            return self._plainly("would not save work for this model (by the estimate of the work per window)")
        rest = _rest_nodes(model.graph, plans[best - 1].stage.output)
        if rest is None:
            return self._plainly("is not possible for this model (the rest of the network reads more than the "
                                 "recomputed layers)")
        self.plan = plans[:best]
        last = self.plan[-1]
        outs = [p.stage.output for p in self.plan]
        for i, p in enumerate(self.plan):  # a delta stage adds the change to its convolution's kept output
            if p.how == "delta":  # (before the elementwise nodes after it)
                conv_out = p.stage.nodes[0].output[0]
                if conv_out not in outs:
                    outs.append(conv_out)
                self._pre[i] = outs.index(conv_out)
        self._cache = session(_submodel(model, [n for p in self.plan for n in p.stage.nodes], [(x0, [1, 1, s, s])],
                                        outs, out_perm=TO_NHWC))
        for p in self.plan:  # a Pad alone needs no session: its crop is its recomputed region
            if p.how == "delta":
                st = p.stage
                elem = _submodel(model, st.nodes[1:], [(st.nodes[0].output[0], [1, 1, "outputs", p.out_shape[0]])],
                                 [st.output], TO_NCHW, TO_NHWC) if len(st.nodes) > 1 else None
                self._stages.append((session(_tap_products(model, st)), elem and session(elem)))
                continue
            if p.gemm:
                self._stages.append(session(_pointwise(model, p.stage)))
                continue
            nodes = p.stage.crop_nodes()
            crop_in = [(p.stage.crop_input, [1, p.crop[0], "crops_x_width", p.in_shape[0]])]
            self._stages.append(session(_submodel(model, nodes, crop_in, [p.stage.output], TO_NCHW, TO_NHWC))
                                if nodes else None)
        c, h, w = last.out_shape  # the rest reads (windows, rows, cols, channels)
        self._rest = session(_submodel(model, rest, [(last.stage.output, ["batch", h, w, c])],
                                       [model.graph.output[0].name], in_perm=TO_NCHW))
        return self

    def _plainly(self, why: str) -> "IncrementalScorer":
        self.note = f"incremental scoring {why}: every window is scored plainly"
        return self

    @classmethod
    def for_bundle(cls, bundle, path: str = "r", **options) -> "IncrementalScorer":
        """The scorer of ``bundle``'s predictor ``path`` on its backend (onnxruntime's CPU or CUDA provider)."""
        backend = bundle.backend(path)
        entry = backend.model.entry
        if path_role(path) != "r" or entry.input_kind != "image":
            what = "G" if path_role(path) == "g" else f"a predictor that reads {entry.input_kind!r} input"
            raise RlpError(f"method incremental needs a predictor that reads the whole slice (input_kind image); "
                           f"path {path} is {what}", code=EX_USAGE)
        if backend.name not in ORT_PROVIDERS:
            raise RlpError(f"method incremental runs on onnxruntime, not on {backend.name}: pass --backend "
                           f"{' or '.join(ORT_PROVIDERS)} (Bundle.load(..., backend=...))", code=EX_USAGE)
        if onnx is None:
            raise Unavailable("method incremental needs the onnx package (pip install 'rlp[cpu]')")
        model = backend.model
        try:
            proto = onnx.load(str(model.path)) if model.external_data else onnx.load_model_from_string(model.data)
        except Exception as exc:
            raise BadInput(f"onnx cannot read {entry.file} ({exc}); {REBUILD}", model.bundle) from None
        scorer = cls.from_model(proto, model_geometry(bundle.manifest.geometry, entry, bundle.root),
                                providers=ort_session_providers(backend.name, entry.precision), threads=bundle.threads,
                                transform=TARGET_TRANSFORMS[entry.target_transform], latencies=backend.latencies,
                                **options)
        if scorer.note and scorer.note not in backend.notes:
            backend.notes.append(scorer.note)
        return scorer

    # -- running
    def _run(self, sess, x: np.ndarray) -> list[np.ndarray]:
        return self._run_feeds(sess, {sess.get_inputs()[0].name: x})

    def _run_feeds(self, sess, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        t0 = time.perf_counter()
        out = sess.run(None, feeds)
        self.latencies.append(time.perf_counter() - t0)
        return out

    def kept(self, image: np.ndarray) -> tuple[list[_Kept], dict[int, np.ndarray]]:
        """The unpainted slice's activations, channels last: every stage's input, padded as that layer pads,
        then the last stage's output; and each delta stage's convolution output (by stage index)."""
        x = np.asarray(image, dtype=self.dtype)
        got = [a[0] for a in self._run(self._cache, x[None, None])]
        acts = [x[:, :, None]] + got[: len(self.plan)]
        out = []
        for p, a in zip(self.plan, acts):
            b0, b1, e0, e1 = p.pads
            out.append(np.pad(a, ((b0, e0), (b1, e1), (0, 0)), constant_values=np.asarray(p.stage.pad_value, a.dtype)))
        return [_Kept(a) for a in out + [acts[-1]]], {i: got[k] for i, k in self._pre.items()}

    def score(self, image: np.ndarray, boxes: np.ndarray, *, batch: int | None = None,
              on_batch: Callable[[int], None] | None = None) -> np.ndarray:
        """The predictor's scores (transformed) of the windows at ``boxes`` (top-left rows, cols) of ``image``.

        Each stage runs once per batch. A convolution the plan marks ``gemm`` computes only the outputs that
        really change, each from its gathered receptive field, as one matrix product; one marked ``delta``
        computes the same outputs as their kept values plus the input's change through the taps that read it;
        the rest of its region is the kept map's. Any other layer runs on one image: the batch's input crops side by side (each widened
        to a multiple of the stride), so that its work stays in large calls; the outputs between crops are never
        read. Arrays are (rows, windows, cols, channels).
        """
        boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 2)
        pos, w = self.geometry.positions, self.geometry.window
        if not np.isin(boxes, pos).all():
            raise ValueError("incremental scoring is planned for the geometry's window positions only")
        image = np.asarray(image, dtype=self.dtype)
        kept, pre = self.kept(image)
        out = np.empty(len(boxes), dtype=np.float64)
        for sl in iter_batches(len(boxes), max(1, int(batch or self.batch))):
            r, c = boxes[sl, 0], boxes[sl, 1]
            n = len(r)
            under = image[(r[:, None] + np.arange(w))[:, :, None], (c[:, None] + np.arange(w))[:, None, :]]
            patch = np.where(self.geometry.paint_mask(under), self.geometry.fill, under).astype(self.dtype)
            patch = patch.transpose(1, 0, 2)[..., None]  # the painted box, (rows, windows, cols, 1)
            changed = [(r, r + w - 1), (c, c + w - 1)]  # what really differs from the kept maps, inclusive
            win = np.arange(n)
            for i, (p, sess, src) in enumerate(zip(self.plan, self._stages, kept)):
                st, (sr, sc) = p.stage, p.stage.stride
                r_out, _ = _grow(r, patch.shape[0], st.kernel[0], sr, st.dilation[0], p.pads[0], p.out_shape[1],
                                 p.region[0])
                c_out, _ = _grow(c, patch.shape[2], st.kernel[1], sc, st.dilation[1], p.pads[1], p.out_shape[2],
                                 p.region[1])
                changed_in, changed = changed, [_changed(*changed[ax], st.kernel[ax], st.stride[ax],
                                                         st.dilation[ax], p.pads[ax], p.out_shape[1 + ax])
                                                for ax in range(2)]
                pr, pc = r + p.pads[0], c + p.pads[1]  # the patch in the padded input
                nxt = self.plan[i + 1].pads[:2] if i + 1 < len(self.plan) else (0, 0)  # of the next stage's input
                if p.how == "delta":
                    patch = self._delta(p, sess, src, pre[i], patch, pr, pc, r_out, c_out, changed_in, changed,
                                        kept[i + 1], nxt)
                elif p.gemm:
                    patch = self._recompute(p, sess, src, patch, pr, pc, r_out, c_out, changed, kept[i + 1], nxt)
                else:
                    width = -(-p.crop[1] // sc) * sc
                    rows = (r_out * sr)[:, None] + np.arange(p.crop[0])
                    cols = np.minimum((c_out * sc)[:, None] + np.arange(width), src.shape[1] - 1)
                    crop = src.gather(patch, pr, pc, rows.T[:, :, None], cols[None], win[None, :, None])
                    if sess is None:
                        patch = crop[:, :, : p.region[1]]
                    else:
                        y = self._run(sess, crop.reshape(1, p.crop[0], n * width, -1))[0][0]
                        patch = y[:, (np.arange(n) * (width // sc))[:, None] + np.arange(p.region[1])]
                r, c = r_out, c_out
            h, w_, _ = kept[-1].shape  # the rest reads (windows, rows, cols, channels): whole pixels move
            x = kept[-1].gather(patch, r, c, np.arange(h)[None, :, None], np.arange(w_)[None, None], win[:, None, None])
            y = self.transform(np.asarray(self._run(self._rest, x)[0]).astype(np.float32, copy=False))
            if not np.isfinite(y).all():
                raise BadInput("model produced non-finite value(s) (NaN/Inf); the bundle is broken")
            out[sl] = np.asarray(y, dtype=np.float64).reshape(n, -1)[:, 0]
            if on_batch is not None:
                on_batch(n)
        return out

    def _needed(self, p: StagePlan, r_out: np.ndarray, c_out: np.ndarray, changed: list):
        """Which outputs of each window's region really change: ``need`` (rows, windows, cols), its nonzero
        (row, window, col) indices, and the region's rows and cols (windows, size)."""
        (rh, rw) = p.region
        rows, cols = r_out[:, None] + np.arange(rh), c_out[:, None] + np.arange(rw)  # (windows, rh), (windows, rw)
        (r_lo, r_hi), (c_lo, c_hi) = changed
        need = ((rows >= r_lo[:, None]) & (rows <= r_hi[:, None])).T[:, :, None] \
            & ((cols >= c_lo[:, None]) & (cols <= c_hi[:, None]))[None]
        return need, np.nonzero(need), rows, cols

    def _paste(self, y: np.ndarray, need: np.ndarray, idx: tuple, rows: np.ndarray, cols: np.ndarray,
               base: _Kept, offset: tuple[int, int]) -> np.ndarray:
        """The region (rows, windows, cols, channels): ``y`` (the outputs at ``idx``) over the kept ``base``."""
        at = np.zeros(need.shape, np.int64)
        at[idx] = np.arange(len(idx[0]))
        return base.pick(y, need, at, (rows + offset[0]).T[:, :, None] * base.shape[1] + (cols + offset[1])[None])

    def _delta(self, p: StagePlan, sess, src: _Kept, pre: np.ndarray, patch: np.ndarray, pr: np.ndarray,
               pc: np.ndarray, r_out: np.ndarray, c_out: np.ndarray, changed_in: list, changed: list, base: _Kept,
               offset: tuple[int, int]) -> np.ndarray:
        """A ``delta`` stage's region: each output in ``changed`` is its kept pre-activation (``pre``) plus, for
        every kernel tap that reads an input in ``changed_in``, the tap's weights times the input's change
        (``patch`` at ``pr, pc`` minus the kept ``src``), then the elementwise nodes; the others are ``base``'s."""
        taps_sess, elem_sess = sess
        st, (ph, n, pw) = p.stage, patch.shape[:3]
        need, (i, b, j), rows, cols = self._needed(p, r_out, c_out, changed)
        if not len(i):
            return self._paste(np.empty((0, base.shape[2]), base.dtype), need, (i, b, j), rows, cols, base, offset)
        o_r, o_c = r_out[b] + i, c_out[b] + j
        under = src.map[(pr[:, None] + np.arange(ph)).T[:, :, None], (pc[:, None] + np.arange(pw))[None]]
        change = (patch - under).reshape(-1, patch.shape[-1])  # (ph, n, pw) pixels
        (r_lo, r_hi), (c_lo, c_hi) = changed_in
        feeds, sel = {}, []
        for k, (ki, kj) in enumerate(np.ndindex(*st.kernel)):
            ir = o_r * st.stride[0] - p.pads[0] + ki * st.dilation[0]  # the tap's input, unpadded
            ic = o_c * st.stride[1] - p.pads[1] + kj * st.dilation[1]
            m = np.flatnonzero((ir >= r_lo[b]) & (ir <= r_hi[b]) & (ic >= c_lo[b]) & (ic <= c_hi[b]))
            at = ((ir[m] + p.pads[0] - pr[b[m]]) * n + b[m]) * pw + ic[m] + p.pads[1] - pc[b[m]]
            feeds[f"t{k}"] = change[at]
            sel.append(m)
        acc = pre[o_r, o_c]  # a copy: fancy indexing
        for m, y in zip(sel, self._run_feeds(taps_sess, feeds)):
            acc[m] += y  # each output once per tap
        if elem_sess is not None:
            acc = self._run(elem_sess, acc.reshape(1, 1, len(acc), -1))[0].reshape(len(acc), -1)
        return self._paste(acc, need, (i, b, j), rows, cols, base, offset)

    def _recompute(self, p: StagePlan, sess, src: _Kept, patch: np.ndarray, pr: np.ndarray, pc: np.ndarray,
                   r_out: np.ndarray, c_out: np.ndarray, changed: list, base: _Kept,
                   offset: tuple[int, int]) -> np.ndarray:
        """A ``gemm`` stage's region (rows, windows, cols, channels): the outputs in ``changed`` computed from
        their receptive fields (in ``src`` with ``patch`` at ``pr, pc``), the others the kept output ``base``
        (padded by ``offset``)."""
        st = p.stage
        need, (i, b, j), rows, cols = self._needed(p, r_out, c_out, changed)
        (kh, kw), (sr, sc), (dr, dc) = st.kernel, st.stride, st.dilation
        taps = src.gather(patch, pr, pc, ((r_out[b] + i) * sr)[:, None, None] + (np.arange(kh) * dr)[:, None],
                       ((c_out[b] + j) * sc)[:, None, None] + np.arange(kw) * dc, b[:, None, None])
        y = self._run(sess, taps.reshape(1, 1, len(i), -1))[0].reshape(len(i), -1) if len(i) else \
            np.empty((0, base.shape[2]), base.dtype)
        return self._paste(y, need, (i, b, j), rows, cols, base, offset)

    def score_windows(self, image: np.ndarray, geometry: WindowGeometry, boxes: np.ndarray,
                      predict: Callable[[np.ndarray], np.ndarray], *, path: str = "r", batch: int = DEFAULT_BATCH,
                      on_batch: Callable[[int], None] | None = None, dense: bool = False, score: str = "l1") -> np.ndarray:
        """:func:`~rlp.runtime.heatmap.score_windows`, incrementally in batches of :attr:`batch` windows (plainly,
        through ``predict`` in batches of ``batch``, without a plan). A predictor's output is its score, so
        ``score`` (G's window score) changes nothing here."""
        if not self.plan:
            return score_windows(image, geometry, boxes, predict, path=path, batch=batch, on_batch=on_batch,
                                 dense=dense, score=score)
        if geometry.for_input("image") != self.geometry or dense or path_role(path) != "r":
            raise ValueError("this incremental scorer was planned for another geometry or path")
        return self.score(image, boxes, on_batch=on_batch)

    def describe(self) -> dict:
        """What is recomputed per window, and the estimated work (FLOPs per window) against plain scoring."""
        if not self.plan:
            return {"incremental": False, "note": self.note}
        n = len(self.plan)
        return {"incremental": True, "split_after": self.plan[-1].stage.name,
                "stages": [{"layer": p.stage.name, "op": p.stage.op, "region": list(p.region),
                            "of": list(p.out_shape[1:]), "crop": list(p.crop),
                            "changed": [round(v, 2) for v in p.exact], "as": p.how}
                           for p in self.plan],
                "flops_per_window": self.costs[n], "plain_flops_per_window": self.costs[0]}
