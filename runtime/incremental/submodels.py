"""The sub-models incremental scoring runs: a stage on crops, a convolution as a matrix product over gathered
receptive fields (im2col) or one per kernel tap, and the rest of the network (onnx.helper graphs)."""

from __future__ import annotations

import numpy as np

from .graph import Stage, helper, image_input, numpy_helper

TO_NCHW, TO_NHWC = [0, 3, 1, 2], [0, 2, 3, 1]


def submodel(src, nodes: list, inputs: list[tuple[str, list]], outputs: list[str], in_perm=None, out_perm=None,
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


def pointwise(src, st: Stage):
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
    return submodel(src, [node] + list(st.nodes[1:]), [(st.input, [1, 1, "outputs", int(w1.dims[1])])],
                     [st.output], TO_NCHW, TO_NHWC, extra=(w1,))


def tap_products(src, st: Stage):
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

