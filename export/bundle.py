"""Run folder -> bundle folder, behind the parity gate.

The bundle is built in a temporary folder beside the target
(:func:`rlp.runtime.core.atomic.atomic_dir`) and moved into place only when every
file is written and the gate passed; a failure or Ctrl-C leaves no bundle and
an existing one untouched.

:data:`IO` names each role's graph input and output; their shapes
(:func:`~rlp.runtime.core.manifest.model_shapes`) and each precision's model key and file name
(:func:`~rlp.runtime.core.manifest.model_key`) come from the manifest contract, which the runtime checks
bundles against.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from rlp.runtime import __version__ as RLP_VERSION
from rlp.runtime.backends import ort_session_options
from rlp.runtime.core.atomic import atomic_dir, write_json
from rlp.runtime.core.domain import healthy_reference, training_domain
from rlp.runtime.core.errors import EX_SOFTWARE, CannotCreate, RlpError
from rlp.runtime.core.geometry import SCORES
from rlp.runtime.core.manifest import (
    MANIFEST,
    SCHEMA,
    SCHEMA_VERSION,
    Manifest,
    ModelEntry,
    TensorSpec,
    file_entry_fields,
    model_head,
    model_key,
    model_shapes,
    sha256_file,
)
from rlp.runtime.core.nifti import AXES
from rlp.runtime.core.progress import Reporter

from . import onnx_export
from .parity import Candidate, ParityGate, ParityResult, Tolerances
from .run import Run, RunModel, input_kind, input_side, load_run, source_geometry, training_slices

#: role -> (input name, output name); the shapes are the manifest's model_shapes, the keys its model_key
IO = {"g": ("image", "recon"), "r": ("image", "loss")}


class ParityFailure(RlpError):
    """The gate failed; carries the results so that the caller can show them."""

    def __init__(self, result: ParityResult, path):
        self.result = result
        worst = "; ".join(f"{c.model} vs {c.reference} {c.quantity}: {c.problem}" for c in result.failures()[:3])
        more = len(result.failures()) - 3
        super().__init__(f"parity gate failed, no bundle written (an existing one is kept): {worst}"
                         + (f" (+{more} more)" if more > 0 else ""), path)


@dataclass
class ExportOptions:
    out: Path
    fp16: bool = False
    trt: bool = False
    models: tuple[str, ...] | None = None  # None: every model the run has
    opset: int = onnx_export.DEFAULT_OPSET
    force: bool = False
    parity_slices: int = 4
    parity_windows: int = 32
    map_windows: int = 4096
    reference_slices: int = 32  # held-out healthy slices scored for the healthy reference (manifest domain)
    tolerances: Tolerances = field(default_factory=Tolerances)

    @property
    def precisions(self) -> tuple[str, ...]:
        return ("fp32", "fp16") if self.fp16 else ("fp32",)


def _ort_runner(path: Path, output: str):
    session = ort.InferenceSession(str(path), ort_session_options(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run([output], {name: x})[0]


def _torch_runner(module: torch.nn.Module):
    def run(x):
        with torch.inference_mode():
            return module(torch.from_numpy(x)).numpy()

    return run


def _metadata(run: Run, model: RunModel, key: str, precision: str, kind: str, info: dict) -> dict:
    """Key fields mirrored into the ONNX file's ``metadata_props``."""
    return {
        "rlp.schema": f"{SCHEMA}/{SCHEMA_VERSION}",
        "rlp.version": RLP_VERSION,
        "rlp.model": key,
        "rlp.role": model.role,
        "rlp.precision": precision,
        "rlp.io_dtype": "float32",
        "rlp.input_kind": kind,
        "rlp.geometry": run.geometry.to_dict(),
        "rlp.preprocessing": run.preprocessing.to_dict(),
        "rlp.loss": {"kind": run.score, "region": run.loss_region},
        "rlp.target_transform": run.target_transform if model.role == "r" else "identity",
        "rlp.architecture": model.arch,
        "rlp.export": info,
    }


def _loss(run: Run) -> dict:
    """The manifest's score definition: what G's path computes and what the predictors learned."""
    where = "inside the window box" if run.loss_region == "window" else "over the whole model input"
    return {"kind": run.score, "region": run.loss_region, "definition": f"{SCORES[run.score]}, {where}",
            "alternatives": sorted(run.g_scores)}


def _write_models(run: Run, model: RunModel, opts: ExportOptions, folder: Path,
                  reporter: Reporter) -> tuple[dict, dict]:
    """Export one trained model to every requested precision; returns manifest entries and graph summaries."""
    kind, side = input_kind(model, run.geometry), input_side(model, run.geometry)
    in_name, out_name = IO[model.role]
    channels = 2 if model.arch.get("output") == "laplace" else 1  # G: a reconstruction, or a Laplace G's mean and scale
    in_tail, out_tail = model_shapes(model.role, kind, side, run.geometry.grid_shape, channels)
    with reporter.step(f"export {model.key}: ONNX opset {opts.opset}"):
        prepared, info = onnx_export.prepare_for_export(model.module)
        example = torch.rand(2, 1, side, side, generator=torch.Generator().manual_seed(0))
        proto = onnx_export.export_onnx(prepared, example, in_name, out_name, opts.opset)
    entries, graphs = {}, {}
    for precision in opts.precisions:
        key = model_key(model.key, precision)
        path = folder / f"{key}.onnx"
        with reporter.step(f"check and write {path.name}"):
            variant = onnx_export.to_fp16(proto) if precision == "fp16" else proto
            onnx_export.set_metadata(variant, _metadata(run, model, key, precision, kind, info))
            graphs[key] = onnx_export.check_onnx(variant, key) | info
            path.write_bytes(variant.SerializeToString())
            entries[key] = ModelEntry(
                role=model.role, file=path.name, **file_entry_fields(path),
                inputs=[TensorSpec(in_name, [onnx_export.BATCH, *in_tail], "float32")],
                outputs=[TensorSpec(out_name, [onnx_export.BATCH, *out_tail], "float32")],
                opset=graphs[key]["opset"], precision=precision, io_dtype="float32", input_kind=kind,
                architecture=dict(model.arch),
                target_transform=run.target_transform if model.role == "r" else "identity",
            )
            _check_io(path, entries[key])
    return entries, graphs


def _check_io(path: Path, entry: ModelEntry) -> None:
    """The written graph's inputs and outputs are exactly what the manifest promises."""
    model = onnx.load(str(path), load_external_data=False)
    got = [(v.name, onnx_export.tensor_shape(v), onnx_export.tensor_dtype(v))
           for v in (*model.graph.input, *model.graph.output)]
    want = [(t.name, t.shape, t.dtype) for t in (*entry.inputs, *entry.outputs)]
    if got != want:
        raise RlpError(f"exported graph has inputs/outputs {got}, the manifest contract says {want}", path, EX_SOFTWARE)


def export_bundle(run_path: str | os.PathLike, opts: ExportOptions,
                  reporter: Reporter | None = None) -> tuple[Manifest, ParityResult]:
    """Export a run folder into a bundle folder at ``opts.out``; raises :class:`ParityFailure` when the gate fails."""
    reporter = reporter or Reporter(quiet=True)
    out = Path(opts.out)
    trt_env = None
    if opts.trt:  # before any work: a missing GPU or package is a clear error, not a late one
        from .tensorrt import require_tensorrt

        trt_env = require_tensorrt()
    onnx_export.check_opset(opts.opset)
    if out.exists() and not opts.force:
        raise CannotCreate("exists; pass --force to replace it", out)
    if out.exists() and not out.is_dir():
        raise CannotCreate("exists and is not a bundle folder", out)
    with reporter.step(f"read run {run_path}"):
        run = load_run(run_path, opts.models)
    gate = ParityGate(run.geometry, run.images, run.brains, slices=opts.parity_slices, windows=opts.parity_windows,
                      map_windows=opts.map_windows, tolerances=opts.tolerances, reporter=reporter, score=run.score)
    with atomic_dir(out, force=opts.force) as tmp:
        models, graphs = {}, {}
        for model in run.models.values():
            entries, g = _write_models(run, model, opts, tmp, reporter)
            models.update(entries)
            graphs.update(g)
        engines = _build_engines(trt_env, models, tmp, out, reporter) if trt_env else []
        result = ParityResult(data=gate.describe(), tolerances=opts.tolerances)
        for model in run.models.values():
            result.checks += _gate_model(gate, run, model, models, engines, tmp, trt_env)
        if not result.passed:
            raise ParityFailure(result, run.path)
        manifest = Manifest(
            preprocessing=run.preprocessing,
            geometry=run.geometry,
            models=models,
            loss=_loss(run),
            training=_plain({"config": run.config, "checkpoints": _checkpoint_info(run)}),
            data=_plain(run.provenance),
            parity={
                "passed": True,
                "data": result.data | {"sha256": run.heldout_sha256},
                "tolerances": asdict(opts.tolerances),
                "structure": {"checker": "onnx.checker.check_model(full_check=True)",
                              "domains": sorted(onnx_export.STANDARD_DOMAINS), "models": graphs},
                "checks": [c.to_dict() for c in result.checks],
            },
            engines=engines,
            rlp_version=RLP_VERSION,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        manifest.domain = _domain(run, manifest, tmp, opts.reference_slices, reporter)
        write_json(tmp / MANIFEST, manifest.to_dict())
    return manifest, result


def _domain(run: Run, manifest: Manifest, folder: Path, n: int, reporter: Reporter) -> dict:
    """The manifest's ``domain`` section (:mod:`rlp.runtime.core.domain`): the training domain, measured on the run's
    dataset, and the healthy reference, scored through the runtime on the exported models."""
    images, brains, source, note = training_slices(run)
    if note:
        reporter.line(f"note: {note}")
    axis = run.provenance.get("axis") if run.provenance.get("axis") in AXES else None
    fovs, voxels = source_geometry(run.provenance.get("sources") or [], axis) if axis else ([], [])
    if not fovs:
        reporter.line("note: the training volumes' headers are not readable here: field of view and voxel size "
                      "are not checked by this bundle")
    with reporter.step(f"training domain: {source}"):
        aug = run.config.get("augment") if isinstance(run.config.get("augment"), dict) else {}
        gamma = float(aug.get("gamma", 0.0) or 0.0) if aug.get("enabled", True) else 0.0
        domain = training_domain(images, brains, axis, fovs, voxels, source, gamma, run.preprocessing.percentile)
    return dataclasses.replace(domain, healthy=_healthy(run, manifest, folder, n, reporter)).to_dict()


def _healthy(run: Run, manifest: Manifest, folder: Path, n: int, reporter: Reporter) -> dict:
    """Each path's top-window scores on up to ``n`` held-out healthy slices (evenly spaced), through the runtime."""
    from rlp.runtime.heatmap import Bundle

    have = np.flatnonzero(run.brains.reshape(len(run.brains), -1).sum(axis=1) >= run.preprocessing.min_brain_pixels)
    chosen = have[np.unique(np.linspace(0, len(have) - 1, min(n, len(have))).round().astype(int))] if n > 0 else []
    out = {}
    with Bundle(folder, manifest, "", backend="ort-cpu", precision="fp32") as bundle:
        for path in manifest.heads():
            tops = []
            what = f"healthy reference: path {path}, {len(chosen)} held-out slices"
            with reporter.step(what, len(chosen)) as advance:
                for i in chosen:
                    res = bundle.heatmap_slice(run.images[i], head=path, mask=run.brains[i])
                    if not res.empty:
                        tops.append(res.max_score)
                    advance(1)
            if tops:
                out[path] = healthy_reference(tops, run.score)
    return out


def _plain(obj):
    """JSON-able copy of checkpoint metadata (tensors and numpy scalars become numbers or lists)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (torch.Tensor, np.ndarray, np.generic)):
        return obj.tolist()
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)


def _checkpoint_info(run: Run) -> dict:
    return {
        m.key: {"file": str(m.checkpoint.relative_to(run.path)), "sha256": sha256_file(m.checkpoint),
                "stage": m.state.get("stage"), "step": m.state.get("step"), "metrics": m.state.get("metrics", {})}
        for m in run.models.values()
    }


def _gate_model(gate: ParityGate, run: Run, model: RunModel, models: dict, engines: list, folder: Path,
                trt_env) -> list:
    in_name, out_name = IO[model.role]
    reduced = []
    for key, entry in models.items():
        if model_head(key) == model.key and entry.precision != "fp32":
            reduced.append(Candidate(key, _ort_runner(folder / entry.file, out_name), entry.precision))
    for e in engines:
        if model_head(e.model) == model.key:
            from .tensorrt import EngineRunner

            runner = EngineRunner(trt_env, folder / e.file, in_name, out_name)
            reduced.append(Candidate(e.file, runner, e.precision, e.max_batch))
    fp32 = _ort_runner(folder / models[model.key].file, out_name)
    return gate.check(model.key, input_kind(model, run.geometry), input_side(model, run.geometry),
                      _torch_runner(model.module), fp32, reduced)


def _build_engines(trt_env, models: dict, folder: Path, out: Path, reporter: Reporter) -> list:
    from .tensorrt import TIMING_CACHE, EngineBuilder, engine_file

    old_cache = out / TIMING_CACHE
    seed = old_cache.read_bytes() if old_cache.is_file() else b""
    builder = EngineBuilder(trt_env, folder / TIMING_CACHE, seed)
    engines = []
    for key, entry in models.items():
        # one engine per model: from the fp16 ONNX when there is one, else from the fp32 ONNX
        if entry.precision == "fp32" and model_key(key, "fp16") in models:
            continue
        with reporter.step(f"TensorRT {trt_env.version}: {key} engine for sm{trt_env.compute_capability}"):
            engines.append(builder.build(folder / entry.file, folder / engine_file(key, trt_env), model_key=key,
                                         input_name=entry.inputs[0].name, side=int(entry.inputs[0].shape[-1]),
                                         precision=entry.precision))
    for note in builder.notes:  # e.g. a stale timing cache replaced by a fresh one
        reporter.line(f"note: {note}")
    return engines
