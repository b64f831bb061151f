"""PyTorch -> ONNX for rlp's models: graph preparation, export, fp16, metadata and structural checks.

The exporter is ``torch.onnx.export(..., dynamo=True)`` (torch.export + onnxscript):
on torch 2.13 it gives a small, standard-domain graph with a symbolic batch
axis. Before export the model is copied and prepared:

- eval mode, so BatchNorm uses its running statistics;
- every bicubic :class:`~rlp.train.models.Upsample` is replaced by the exact
  convolution rewrite of :mod:`rlp.export.bicubic` (onnxruntime's cubic
  ``Resize`` is slow on CPU);
- every ``Conv2d`` directly followed by ``BatchNorm2d`` is fused into one
  ``Conv2d``. A BatchNorm behind an activation (the paper's R) cannot be folded
  exactly into the next convolution, because that convolution zero-pads; it
  stays a standard ``BatchNormalization`` node.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import warnings
from collections import Counter
from typing import Iterator, Mapping

import onnx
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from rlp.runtime.core.errors import EX_SOFTWARE, EX_USAGE, BadInput, RlpError

from .bicubic import swap_bicubic

#: Operator domains a bundle may use; anything else (custom ops, contrib ops) is refused.
STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})
#: The torch.export-based exporter emits opset 18 and newer.
MIN_OPSET = 18
DEFAULT_OPSET = 18
BATCH = "batch"


def fold_conv_bn(model: nn.Module) -> int:
    """Fuse, in place, every ``Conv2d`` that a ``BatchNorm2d`` directly follows in an ``nn.Sequential``.

    The BatchNorm is replaced by ``nn.Identity``. ``model`` must be in eval mode.
    Returns the number of fused pairs.
    """
    if model.training:
        raise ValueError("fold_conv_bn needs a model in eval mode")
    folded = 0
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = seq._modules[a], seq._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                setattr(seq, a, fuse_conv_bn_eval(conv, bn))
                setattr(seq, b, nn.Identity())
                folded += 1
    return folded


def prepare_for_export(model: nn.Module) -> tuple[nn.Module, dict]:
    """An eval-mode copy with bicubic upsampling rewritten and Conv+BatchNorm fused.

    The original model is not modified. Returns the copy and a summary of what was changed.
    """
    model = copy.deepcopy(model).eval()
    model, swapped = swap_bicubic(model)
    folded = fold_conv_bn(model)
    for p in model.parameters():
        p.requires_grad_(False)
    return model, {"bicubic_rewritten": swapped, "batchnorm_folded": folded}


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's deprecation warnings and registry chatter (they are not the user's business)."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lvl in zip(loggers, levels):
            lg.setLevel(lvl)


def check_opset(opset: int) -> int:
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise RlpError(f"--opset {opset} is not supported: this exporter writes opset {MIN_OPSET} to {newest}",
                       code=EX_USAGE)
    return opset


def export_onnx(model: nn.Module, example: torch.Tensor, input_name: str, output_name: str,
                opset: int) -> onnx.ModelProto:
    """Export ``model`` (already prepared) with a dynamic batch axis; returns the ONNX model in memory."""
    check_opset(opset)
    batch = torch.export.Dim(BATCH, min=1)
    try:
        with _quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(
                model, (example,), None, input_names=[input_name], output_names=[output_name],
                opset_version=opset, dynamo=True, dynamic_shapes=({0: batch},), optimize=True, verbose=False,
            )
    except Exception as exc:  # the exporter raises many types; all mean "this model cannot be exported"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RlpError(f"torch.onnx.export failed for {type(model).__name__}: {first}", code=EX_SOFTWARE) from exc
    proto = program.model_proto
    _name_batch_axis(proto)
    strip_source_paths(proto)
    return proto


#: Metadata keys the PyTorch exporter writes that name files on the exporting machine (the Python stack of
#: each node: absolute paths of the source tree and the virtual environment). They carry no meaning for the
#: graph and would make the file's bytes depend on where the source lives.
PATH_BEARING_KEYS = frozenset({"pkg.torch.onnx.stack_trace"})


def strip_source_paths(model: onnx.ModelProto) -> int:
    """Remove path-bearing exporter metadata from every node, value and graph (subgraphs included), in place.

    Model-level ``metadata_props`` (rlp's own), the producer and all other metadata are kept.
    Returns the number of entries removed.
    """
    removed = 0
    for holder in _metadata_holders(model):
        keep = [p for p in holder.metadata_props if p.key not in PATH_BEARING_KEYS]
        if len(keep) != len(holder.metadata_props):
            removed += len(holder.metadata_props) - len(keep)
            kept = [copy.deepcopy(p) for p in keep]
            del holder.metadata_props[:]
            holder.metadata_props.extend(kept)
    return removed


def _metadata_holders(model: onnx.ModelProto) -> Iterator:
    """Every graph, node and value description of ``model`` that can carry ``metadata_props``."""
    graphs: list = [model.graph, *model.functions]
    while graphs:
        graph = graphs.pop()
        yield graph
        colls = ("input", "output", "value_info", "initializer") if isinstance(graph, onnx.GraphProto) else ()
        for coll in colls:
            yield from getattr(graph, coll)
        for node in graph.node:
            yield node
            for attr in node.attribute:
                graphs.extend([attr.g] if attr.HasField("g") else [])
                graphs.extend(attr.graphs)


def _name_batch_axis(model: onnx.ModelProto) -> None:
    """Give the graph inputs' and outputs' first axis the symbolic name ``batch``."""
    for vi in list(model.graph.input) + list(model.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if dims:
            dims[0].Clear()
            dims[0].dim_param = BATCH


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """fp16 weights and activations; graph inputs and outputs stay float32 (casts inside the graph).

    Uses onnxruntime's maintained converter (the same code as onnxconverter-common).
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it warns about values clipped to the fp16 range; parity judges them
        half = convert_float_to_float16(copy.deepcopy(model), keep_io_types=True, disable_shape_infer=False)
    _sort_topologically(half.graph)  # the converter appends its input casts after their consumers
    return half


def _sort_topologically(graph: onnx.GraphProto) -> None:
    """Reorder ``graph.node`` so that every node comes after the producers of its inputs (stable)."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise BadInput(f"graph has a cycle or a dangling input near node {pending[0].name or pending[0].op_type}")
        for n in ready:
            available.update(n.output)
        ordered.extend(ready)
        ready_ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ready_ids]
    copies = [copy.deepcopy(n) for n in ordered]
    del graph.node[:]
    graph.node.extend(copies)


def set_metadata(model: onnx.ModelProto, props: Mapping[str, object]) -> None:
    """Write ``props`` into ``metadata_props`` (non-string values as JSON)."""
    existing = {p.key: p for p in model.metadata_props}
    for key, value in props.items():
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        if key in existing:
            existing[key].value = text
        else:
            entry = model.metadata_props.add()
            entry.key, entry.value = key, text


def get_metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def check_onnx(model: onnx.ModelProto, what: str) -> dict:
    """Structural gate: ``onnx.checker`` full check and standard operator domains only.

    Returns a summary (opset, node count, operator histogram); raises
    :class:`~rlp.runtime.core.errors.BadInput` naming the problem otherwise.
    """
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadInput(f"{what}: onnx.checker rejects the graph: {first}") from None
    domains = {o.domain for o in model.opset_import} | {n.domain for n in model.graph.node}
    foreign = sorted(domains - STANDARD_DOMAINS)
    if foreign:
        raise BadInput(f"{what}: non-standard operator domain(s) {', '.join(foreign)}; "
                       f"only {sorted(STANDARD_DOMAINS)} are allowed")
    if model.functions:
        raise BadInput(f"{what}: graph has {len(model.functions)} local function(s); expected a flat graph")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    return {
        "opset": opset,
        "nodes": len(model.graph.node),
        "ops": dict(sorted(Counter(n.op_type for n in model.graph.node).items())),
    }


def tensor_shape(value_info: onnx.ValueInfoProto) -> list:
    """Shape of a graph input/output as ints and symbolic names."""
    return [d.dim_param if d.dim_param else int(d.dim_value) for d in value_info.type.tensor_type.shape.dim]


def tensor_dtype(value_info: onnx.ValueInfoProto) -> str:
    return onnx.helper.tensor_dtype_to_np_dtype(value_info.type.tensor_type.elem_type).name
