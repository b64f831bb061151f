"""Model checks before any session is created: hash, and (with ``onnx``) the ONNX checker, standard operator
domains only, external data only inside the bundle and listed in the manifest (see :mod:`rlp.runtime.backends`)."""

from __future__ import annotations

import hashlib
import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterable

import numpy as np

from ..core.errors import BadInput, SecurityRefusal
from ..core.manifest import REBUILD, ModelEntry, TensorSpec, resolve_inside

STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})
_DTYPES = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16)}


@dataclass(frozen=True)
class TensorIO:
    """One graph input or output as the manifest declares it (``None``: a dynamic axis)."""

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype

    @classmethod
    def from_spec(cls, spec: TensorSpec, where) -> "TensorIO":
        if spec.dtype not in _DTYPES:
            raise BadInput(f"tensor {spec.name!r} has unsupported dtype {spec.dtype!r}; {REBUILD}", where)
        shape = tuple(int(d) if isinstance(d, int) and not isinstance(d, bool) else None for d in spec.shape)
        if any(d is not None and d <= 0 for d in shape):
            raise BadInput(f"tensor {spec.name!r} has a non-positive dimension {spec.shape}; {REBUILD}", where)
        return cls(spec.name, shape, _DTYPES[spec.dtype])

    def describe(self) -> str:
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}[{dims}] {self.dtype.name}"


@dataclass
class CheckedModel:
    """A bundle model whose bytes were hash-checked (and, with onnx, structurally checked)."""

    key: str
    entry: ModelEntry
    path: Path
    bundle: Path
    data: bytes
    input: TensorIO
    output: TensorIO
    external_data: bool = False
    notes: list[str] = field(default_factory=list)


def _import_onnx():
    try:
        return importlib.import_module("onnx")
    except ImportError:
        return None


def check_model(bundle: str | os.PathLike, key: str, entry: ModelEntry) -> CheckedModel:
    """Read, hash-check and (with ``onnx``) structurally check one model of a bundle."""
    bundle = Path(bundle)
    path = resolve_inside(bundle, entry.file, "model")
    if len(entry.inputs) != 1 or len(entry.outputs) != 1:
        raise BadInput(f"model {key!r} must have exactly one input and one output in the manifest; {REBUILD}", bundle)
    inp = TensorIO.from_spec(entry.inputs[0], bundle)
    out = TensorIO.from_spec(entry.outputs[0], bundle)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BadInput(f"cannot read model {entry.file} ({exc.strerror or exc})", bundle) from None
    if hashlib.sha256(data).hexdigest() != entry.sha256:
        raise SecurityRefusal(f"{entry.file} changed after the manifest was checked (sha256 mismatch); {REBUILD}",
                              bundle)
    if not data:
        raise BadInput(f"model file {entry.file} is empty; {REBUILD}", bundle)
    model = CheckedModel(key, entry, path, bundle, data, inp, out)
    onnx = _import_onnx()
    if onnx is None:
        model.notes.append("the onnx package is not installed: model files were checked by sha256 only "
                           "(pip install onnx for the ONNX checker, operator-domain and external-data checks)")
        return model
    _check_onnx_structure(onnx, model)
    return model


def _check_onnx_structure(onnx, model: CheckedModel) -> None:
    where, rel = model.bundle, model.entry.file
    try:
        proto = onnx.load_model_from_string(model.data)  # never follows external data
    except Exception as exc:
        raise BadInput(f"{rel} is not a valid ONNX file ({one_line_capped(exc)}); {REBUILD}", where) from None
    listed = {_norm(x.get("file", "")) for x in model.entry.external_data if isinstance(x, dict)}
    for tensor in _iter_tensors(proto):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            info = {e.key: e.value for e in tensor.external_data}
            _check_external_location(model, info.get("location", ""), listed)
            model.external_data = True
    functions = {(f.domain, f.name): f for f in proto.functions}
    bad = sorted({f"{d or 'ai.onnx'}::{op}" for d, op in _iter_ops(proto.graph, functions)})
    if bad:
        raise SecurityRefusal(f"{rel} uses operators outside the standard ONNX domains ({', '.join(bad[:5])}); "
                              "custom operators are refused", where)
    try:
        if model.external_data:
            onnx.checker.check_model(str(model.path), full_check=True)
        else:
            onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise BadInput(f"{rel} fails the ONNX checker ({one_line_capped(exc)}); {REBUILD}", where) from None
    _check_graph_io(proto, model)


def _iter_graphs(graph) -> Iterable:
    yield graph
    for node in graph.node:
        yield from _iter_node_subgraphs(node)


def _iter_node_subgraphs(node) -> Iterable:
    for attr in node.attribute:
        if attr.HasField("g"):
            yield from _iter_graphs(attr.g)
        for g in attr.graphs:
            yield from _iter_graphs(g)


def _iter_tensors(proto) -> Iterable:
    """Every TensorProto of the model: initializers, sparse ones, and tensor attributes, recursively."""
    nodes = []
    for graph in _iter_graphs(proto.graph):
        yield from graph.initializer
        for sp in graph.sparse_initializer:
            yield sp.values
            yield sp.indices
        nodes.extend(graph.node)
    for fn in proto.functions:
        nodes.extend(fn.node)
        for node in fn.node:
            for g in _iter_node_subgraphs(node):
                nodes.extend(g.node)
    for node in nodes:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("sparse_tensor"):
                yield attr.sparse_tensor.values
                yield attr.sparse_tensor.indices


def _iter_ops(graph, functions: dict, seen: set | None = None) -> Iterable[tuple[str, str]]:
    """(domain, op) of every operator outside the standard domains, local functions expanded."""
    seen = set() if seen is None else seen
    for g in _iter_graphs(graph):
        for node in g.node:
            if node.domain in STANDARD_DOMAINS:
                continue
            fn = functions.get((node.domain, node.op_type))
            if fn is None:
                yield node.domain, node.op_type
            elif (node.domain, node.op_type) not in seen:
                seen.add((node.domain, node.op_type))
                body = type(graph)()
                body.node.extend(fn.node)
                yield from _iter_ops(body, functions, seen)


def _norm(rel: str) -> str:
    return str(PurePosixPath(os.path.normpath(rel))) if rel else ""


def _check_external_location(model: CheckedModel, location: str, listed: set[str]) -> None:
    where, rel = model.bundle, model.entry.file
    if not location or os.path.isabs(location) or location.startswith(("/", "\\")) or "\\" in location:
        raise SecurityRefusal(f"{rel}: external data location {location!r} is not a relative path; refused", where)
    if ".." in PurePosixPath(location).parts:
        raise SecurityRefusal(f"{rel}: external data location {location!r} leaves the model's folder; refused", where)
    model_dir = PurePosixPath(rel).parent
    target = _norm(str(model_dir / location))
    resolve_inside(where, target, "external data")  # symlinks, hard links, anything resolving outside
    if target not in listed:
        raise SecurityRefusal(f"{rel}: external data file {target!r} is not listed (with its sha256) in the "
                              f"manifest; {REBUILD}", where)


def _check_graph_io(proto, model: CheckedModel) -> None:
    """The graph's input and output must be the ones the manifest declares."""
    init = {t.name for t in proto.graph.initializer}
    graph_in = [v for v in proto.graph.input if v.name not in init]
    for what, values, spec in (("input", graph_in, model.input), ("output", list(proto.graph.output), model.output)):
        if len(values) != 1 or values[0].name != spec.name:
            names = [v.name for v in values]
            raise BadInput(f"{model.entry.file}: graph {what}s {names} do not match the manifest's "
                           f"{spec.describe()}; {REBUILD}", model.bundle)
        tt = values[0].type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        ok_rank = not tt.HasField("shape") or len(dims) == len(spec.shape)
        ok_dims = ok_rank and all(a is None or b is None or a == b for a, b in zip(dims, spec.shape))
        if not ok_dims:
            raise BadInput(f"{model.entry.file}: graph {what} shape {dims} does not match the manifest's "
                           f"{spec.describe()}; {REBUILD}", model.bundle)


def one_line_capped(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text[:300] + "...") if len(text) > 300 else (text or type(exc).__name__)

