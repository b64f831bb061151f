"""Reading the graph: the chain of local stages at the start of an image-kind predictor, and the rest of it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

try:
    import onnx
    from onnx import helper, numpy_helper
except ImportError:  # the base install: the Bundle says what to install
    onnx = helper = numpy_helper = None

#: elementwise nodes with one activation input (attributes only, or constant extra inputs such as Clip's bounds)
UNARY = frozenset({"Relu", "LeakyRelu", "Sigmoid", "Tanh", "Elu", "Selu", "Celu", "Softplus", "Softsign",
                   "HardSigmoid", "HardSwish", "Mish", "Gelu", "ThresholdedRelu", "Identity", "Neg", "Abs", "Exp",
                   "Log", "Sqrt", "Reciprocal", "Erf", "Floor", "Ceil", "Round", "Sign", "Clip"})
#: elementwise with a constant that must not vary along the spatial axes (per-channel at most)
BINARY = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "PRelu", "BatchNormalization"})
SPATIAL = frozenset({"Conv", "MaxPool", "AveragePool", "Pad"})


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



def rest_nodes(graph, split: str) -> list | None:
    """The nodes that compute the graph's output from tensor ``split`` (None: they also need another input)."""
    need = {o.name for o in graph.output}
    keep = []
    for n in reversed(graph.node):
        if any(o in need for o in n.output):
            keep.append(n)
            need.update(i for i in n.input if i and i != split)
    have = {t.name for t in graph.initializer} | {o for n in keep for o in n.output} | {split, ""}
    return list(reversed(keep)) if need <= have else None

