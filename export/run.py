"""Reading a training run folder (written by ``rlp-train``) for export.

The layout is :class:`rlp.runtime.core.runfolder.RunFolder`'s: ``config.json``, the best checkpoints
of G (``checkpoints/gan_best.pt``), R and its variants, and ``heldout.npz``.

Checkpoints load with ``weights_only=True`` only (:func:`rlp.train.checkpoint.load_checkpoint`);
every problem is a one-line :class:`~rlp.runtime.core.errors.RlpError` naming the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from rlp.runtime.core.errors import BadInput, InputMissing, RlpError
from rlp.runtime.core.files import read_json_object, read_npz
from rlp.runtime.core.geometry import WindowGeometry
from rlp.runtime.core.kinds import InputKind, PredictorKind
from rlp.runtime.core.manifest import head_role, sha256_file
from rlp.runtime.core.preprocess import Preprocessing
from rlp.runtime.core.runfolder import MODEL_STAGES, RunFolder
from rlp.train.checkpoint import load_checkpoint
from rlp.train.models import ScaledOutput, build, target_scale

#: the models a run folder holds besides the predictor variants r-NAME
ROLES = tuple(MODEL_STAGES)


def run_models(path: Path) -> tuple[str, ...]:
    """Every model key a run folder has a checkpoint for: g, r, then the variants r-NAME."""
    return RunFolder(path).models()


LOSS_REGIONS = ("window", "image")


@dataclass
class RunModel:
    """One trained model of a run, rebuilt in eval mode from its checkpoint."""

    key: str  # "g" | "r" | "r-NAME"
    module: nn.Module
    arch: dict
    checkpoint: Path
    state: dict  # the checkpoint without its weights: stage, step, config, data, metrics, ...

    @property
    def role(self) -> str:
        return head_role(self.key)

    @property
    def input_size(self) -> int:
        return int(self.arch.get("input_size", self.arch.get("size", 0)))


@dataclass
class Run:
    path: Path
    config: dict
    geometry: WindowGeometry
    preprocessing: Preprocessing
    models: dict[str, RunModel]
    images: np.ndarray  # (N, S, S) float32 in [0, preprocessing.ceiling]
    brains: np.ndarray  # (N, S, S) bool
    heldout_sha256: str
    provenance: dict = field(default_factory=dict)
    loss_region: str = "window"  # the L1 region R predicts: "window" (default) or "image" (the paper's)
    target_transform: str = "identity"  # how R's output maps to an L1 loss
    score: str = "l1"  # the window score (geometry.SCORES): what G's path computes and the predictors learned
    g_scores: tuple[str, ...] = ("l1",)  # every score G's output allows


def _predictor_setting(config: dict, key: str):
    section = config.get("predictor")
    return section.get(key) if isinstance(section, dict) else None


def _read_config(path: Path) -> dict:
    if not path.is_file():
        raise InputMissing(f"no {path.name}; is this an rlp-train run folder?", path.parent)
    return read_json_object(path, "the training config")


def _read_heldout(path: Path, size: int, ceiling: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    arrays = read_npz(path, ("images", "brains"), missing="held-out slices not found (the parity gate runs on them)")
    images, brains = arrays["images"], arrays["brains"]
    if images.ndim != 3 or images.shape[1:] != (size, size) or len(images) == 0:
        raise BadInput(f"images have shape {images.shape}, expected (N, {size}, {size}) with N >= 1", path)
    if brains.shape != images.shape:
        raise BadInput(f"brains have shape {brains.shape}, images {images.shape}", path)
    if not np.issubdtype(images.dtype, np.floating):
        raise BadInput(f"images have dtype {images.dtype}, expected float32", path)
    images = images.astype(np.float32, copy=False)
    if not np.isfinite(images).all():
        raise BadInput("images hold non-finite values", path)
    if images.min() < 0 or images.max() > ceiling:
        raise BadInput(f"images range over [{images.min():.3g}, {images.max():.3g}], expected preprocessed values "
                       f"in [0, {ceiling:g}]", path)
    brains = brains.astype(bool, copy=False)
    if not brains.any():
        raise BadInput("no held-out slice has any brain pixel", path)
    return images, brains


def _rebuild(ckpt_path: Path, state: dict, key: str) -> tuple[nn.Module, dict]:
    try:
        arch = dict(state["arch"][key])
        weights = state["models"][key]
    except (KeyError, TypeError):
        raise BadInput(f"checkpoint has no model {key!r} (arch/models)", ckpt_path) from None
    try:
        module = build(arch)
    except (TypeError, ValueError) as exc:
        raise BadInput(f"cannot rebuild model {key!r} from its arch {arch}: {exc}", ckpt_path) from None
    try:
        module.load_state_dict(weights, strict=True)
    except (RuntimeError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise BadInput(f"weights of {key!r} do not match its architecture: {first}", ckpt_path) from None
    return module.eval(), arch


def _contract(state: dict, ckpt_path: Path) -> tuple[WindowGeometry, Preprocessing]:
    try:
        return WindowGeometry.from_dict(state["geometry"]), Preprocessing.from_dict(state["preprocessing"])
    except (KeyError, TypeError, ValueError) as exc:
        raise BadInput(f"checkpoint lacks a valid geometry/preprocessing contract ({exc})", ckpt_path) from None


def load_run(path: str | os.PathLike, models: tuple[str, ...] | None = None) -> Run:
    """Read a run folder. ``models`` names the models to export; ``None``: every one the run has."""
    path = Path(path)
    if not path.is_dir():
        raise InputMissing("run folder not found", path)
    folder = RunFolder(path)
    config = _read_config(folder.config())
    wanted = folder.models() if models is None else tuple(models)
    loaded: dict[str, RunModel] = {}
    contracts = {}
    for key in wanted:
        try:
            ckpt_path, stage, inner = folder.model_checkpoint(key)
        except ValueError:
            raise BadInput(f"{key!r} is not a model name (g, r or r-NAME; this run has "
                           f"{', '.join(folder.models()) or 'none'})", path) from None
        if not ckpt_path.is_file():
            if models is None:
                continue
            raise InputMissing(f"checkpoint for {key.upper()} not found (train it, or leave {key} out of --models)",
                               ckpt_path)
        state = load_checkpoint(ckpt_path)
        if state.get("stage") != stage:
            raise BadInput(f"checkpoint stage is {state.get('stage')!r}, expected {stage!r}", ckpt_path)
        module, arch = _rebuild(ckpt_path, state, inner)
        contracts[key] = _contract(state, ckpt_path)
        meta = {k: v for k, v in state.items() if k not in ("models", "optim", "sched", "rng")}
        loaded[key] = RunModel(key, module, arch, ckpt_path, meta)
    if not loaded:
        looked = ", ".join(folder.relative(folder.model_checkpoint(k)[0]) for k in ROLES)
        raise InputMissing(f"no checkpoint to export (looked for {looked})", path)
    (first, (geometry, preprocessing)), *others = contracts.items()
    for key, (geo, pre) in others:
        if geo != geometry or pre != preprocessing:
            raise BadInput(f"{key.upper()} and {first.upper()} were trained with different geometry or preprocessing; "
                           "retrain the predictor against this G", loaded[key].checkpoint)
    if preprocessing.size != geometry.size:
        raise BadInput(f"preprocessing size {preprocessing.size} != geometry size {geometry.size}",
                       loaded[first].checkpoint)
    _check_inputs(loaded, geometry)
    images, brains = _read_heldout(folder.heldout, geometry.size, preprocessing.ceiling)
    g_scores, score = _scores(loaded, path)
    provenance = next((m.state.get("data") for m in loaded.values() if m.state.get("data")), {}) or {}
    region = _predictor_setting(config, "target") or "window"
    if region not in LOSS_REGIONS:
        raise BadInput(f"predictor.target {region!r} is not one of {', '.join(LOSS_REGIONS)}", folder.config())
    r = loaded.get("r")
    transform = (r.state.get("target_transform") if r else None) or _predictor_setting(config, "target_transform")
    return Run(path, config, geometry, preprocessing, loaded, images, brains, sha256_file(folder.heldout),
               dict(provenance), str(region), str(transform or "identity"), score, g_scores)


def _scores(models: dict[str, RunModel], path: Path) -> tuple[tuple[str, ...], str]:
    """The scores G allows and the run's score: the one its predictors learned (all the same), else G's best.

    A crop or paper predictor (sigmoid) learned the z score divided by its target scale: it is wrapped so
    that the exported model gives the score itself."""
    g = models.get("g")
    laplace = (g.arch if g else {}).get("output") == "laplace"
    if g is None:  # predictors alone: G's output is not known here, their score is
        laplace = any(m.state.get("score") == "z" for m in models.values())
    g_scores = ("l1", "z") if laplace else ("l1",)
    learned = {m.state.get("score") or "l1" for m in models.values() if m.role == "r"}
    if len(learned) > 1:
        raise BadInput(f"the run's predictors learned different window scores ({', '.join(sorted(learned))}); "
                       "export them from separate runs or retrain one", path)
    score = learned.pop() if learned else ("z" if laplace else "l1")
    if score not in g_scores:
        raise BadInput(f"the predictors learned the {score} score, which this run's G cannot compute", path)
    scale = target_scale(score)
    for m in models.values():
        if m.role == "r" and m.arch.get("kind") in (PredictorKind.CROP, PredictorKind.PAPER) and scale != 1.0:
            m.module = ScaledOutput(m.module, scale).eval()
            m.arch = m.module.arch
    return g_scores, score


def _check_inputs(models: dict[str, RunModel], geometry: WindowGeometry) -> None:
    g = models.get("g")
    for m in models.values():
        if m.role == "r":
            input_kind(m, geometry)  # raises when R reads neither the crop nor the slice
    if g is not None:
        depth = int(g.arch.get("depth", 0))
        if geometry.input_size % (2**depth):
            raise BadInput(f"G has {depth} downsampling levels but reads {geometry.input_size}x{geometry.input_size} "
                           f"inputs (not a multiple of {2**depth})", g.checkpoint)


def input_kind(model: RunModel, geometry: WindowGeometry) -> InputKind:
    """What the model reads: the context crop around the box, the whole inpainted slice, or (a dense predictor)
    the slice, read once for every window. Checkpoints record it (``input_kind``); older ones do not, and
    :func:`_legacy_input_kind` infers it from the layer sizes as export did before."""
    recorded = model.state.get("input_kind")
    if isinstance(recorded, dict) and model.role in recorded:
        try:
            kind = InputKind(recorded[model.role])
        except ValueError:
            raise BadInput(f"unknown input_kind {recorded[model.role]!r} (expected one of "
                           f"{', '.join(InputKind.values())})", model.checkpoint) from None
    else:
        kind = _legacy_input_kind(model, geometry)
    _check_reads(model, geometry, kind)
    return kind


def _legacy_input_kind(model: RunModel, geometry: WindowGeometry) -> InputKind:
    """LEGACY: checkpoints written before they recorded ``input_kind`` (e.g. runs/demo2): inferred from G's
    geometry, R's architecture kind and the side of what R reads."""
    if model.key == "g":
        return InputKind.CROP if geometry.context is not None else InputKind.IMAGE
    if model.arch.get("kind") == PredictorKind.DENSE:
        return InputKind.DENSE
    side = model.input_size
    if geometry.context is not None and side == geometry.context:
        return InputKind.CROP
    if side == geometry.size:
        return InputKind.IMAGE
    raise BadInput(f"R reads {side}x{side} inputs, but the geometry has slices of {geometry.size} "
                   f"and context crops of {geometry.context}", model.checkpoint)


def _check_reads(model: RunModel, geometry: WindowGeometry, kind: InputKind) -> None:
    """The model's architecture fits what it reads under this geometry."""
    if kind == InputKind.DENSE:
        want = (geometry.size, geometry.window, geometry.stride)
        if (model.arch.get("size"), model.arch.get("window"),
            model.arch.get("stride")) != want or not geometry.dense_ok():
            raise BadInput(f"the dense predictor was built for size/window/stride {model.arch.get('size')}/"
                           f"{model.arch.get('window')}/{model.arch.get('stride')}, "
                           f"the geometry is {'/'.join(map(str, want))}",
                           model.checkpoint)
    elif model.role == "r" and model.input_size != geometry.for_input(kind).input_size:
        raise BadInput(f"R reads {model.input_size}x{model.input_size} inputs, but {kind} inputs of this geometry are "
                       f"{geometry.for_input(kind).input_size}x{geometry.for_input(kind).input_size}", model.checkpoint)


def input_side(model: RunModel, geometry: WindowGeometry) -> int:
    """Side of the square the model reads (the contract written into the manifest)."""
    return geometry.for_input(input_kind(model, geometry)).input_size


def dataset_of(run: Run) -> tuple[Path | None, str]:
    """The run's prepared dataset (``data.path`` in its checkpoints, checked against ``data.sha256``), or None
    and why not. A relative path is tried from here, then beside the run folder."""
    recorded = run.provenance.get("path")
    if not recorded:
        return None, "the run records no dataset"
    for p in (Path(recorded), run.path.parent / Path(recorded).name):
        if p.is_file():
            want = run.provenance.get("sha256")
            if want and sha256_file(p) != want:
                return None, f"{p} is not the dataset the run was trained on (sha256 differs)"
            return p, ""
    return None, f"the run's dataset {recorded} is not found"


def source_geometry(sources: list, axis: str) -> tuple[list[float], list[float]]:
    """Field of view (largest in-plane extent, mm) and largest in-plane voxel (mm) of each source volume along
    ``axis``, from the NIfTI headers; sources no longer readable (or changed: sha256) are left out."""
    import nibabel as nib

    from rlp.runtime.core.nifti import AXES

    fovs, voxels = [], []
    for src in sources[:500]:
        path = Path(str(src.get("image", ""))) if isinstance(src, dict) else None
        if path is None or not path.is_file() or (src.get("sha256") and sha256_file(path) != src["sha256"]):
            continue
        try:
            img = nib.load(str(path))
            zooms, shape = img.header.get_zooms()[:3], img.shape[:3]
            canonical = nib.io_orientation(img.affine)[:, 0]
        except Exception:  # an unreadable header: that source says nothing about the domain
            continue
        plane = [i for i in range(min(3, len(shape))) if int(canonical[i]) != AXES[axis]]
        fovs.append(max(float(shape[i]) * float(zooms[i]) for i in plane))
        voxels.append(max(float(zooms[i]) for i in plane))
    return fovs, voxels


def training_slices(run: Run) -> tuple[np.ndarray, np.ndarray, str, str]:
    """The prepared slices the training domain is measured on: the dataset's train split when the run's dataset
    is here (images, brains, what they are, a note), else the run's held-out slices (and a note saying so)."""
    path, why = dataset_of(run)
    if path is not None:
        try:
            from rlp.train.data import SliceData

            data = SliceData(path)
            idx = data.indices("train")
            if len(idx):
                return data.images[idx], data.brains[idx], f"{path}: train split ({len(idx)} slices)", ""
            why = f"{path} has no train split"
        except (ImportError, RlpError) as exc:
            why = f"cannot read {path} ({exc})"
    return run.images, run.brains, f"{RunFolder(run.path).heldout.name} ({len(run.images)} held-out slices)", \
        f"{why}: the training domain is measured on the run's held-out slices"
