"""Heatmaps of predicted (R) or exact (G) window reconstruction loss, without PyTorch.

Load a bundle once, then ask for heatmaps::

    from rlp.runtime import Bundle

    with Bundle.load("bundles/demo", backend="auto", batch=64) as bundle:
        res = bundle.heatmap_slice(array2d, spacing=(1.0, 1.0), path="r")
        res.pixel_map          # float32, the input's shape
        vol = bundle.heatmap_nifti("sub-01_T1w.nii.gz", axis="axial")
        vol.heatmap            # float32, the file's shape and orientation

One slice (the contracts live in :mod:`.preprocess` and :mod:`.geometry`):

1. ``preprocess_slice`` normalises the slice and resamples it to the model grid;
   a slice with no brain tissue (or with one value everywhere) gets a heatmap of
   zeros and a warning, never NaN;
2. windows holding no brain tissue are skipped (score 0) unless ``all_windows``;
3. each evaluated window's box is painted with ``geometry.fill`` in the model
   input (a context crop, or the whole slice), in batches:
   path ``g``: G reconstructs the box, and the window's score is the bundle's
   (``manifest.loss.kind``): ``z``, the mean over the box of |x - mu| / b (a Laplace G
   predicts a mean ``mu`` and a scale ``b`` per pixel: the error in units of the error G
   expects there on healthy tissue), or ``l1``, the paper's mean |x - mu| (reachable
   on a z bundle's G path with ``score="l1"``); path ``r``: R's prediction of the
   bundle's score;
4. the window map becomes a pixel map (each pixel the mean of the evaluated
   windows covering it) and goes back on the input grid with the exact inverse
   of the resampling.

Step 3 is a window scorer (:mod:`.scorers`: plain, incremental or coarse to
fine), which the Bundle builds from its models and backends;
:func:`~rlp.runtime.scorers.score_windows` is step 3 as a pure function of a
predictor callable, for use without a bundle.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .backends import TABLE, Backend, CheckedModel, backend_info, check_model, create_backend, ort_sessions
from .coarse import NAME as COARSE
from .coarse import CoarseScorer, CoarseToFine
from .core.domain import Domain, check_axis, check_slice, healthy_percentile, slice_stats, summarise
from .core.errors import EX_USAGE, BadInput, InputMissing, RlpError
from .core.geometry import SCORES, WindowGeometry
from .core.manifest import (MANIFEST, PATH_PATTERN, REBUILD, Manifest, load_bundle_manifest, model_key,
                            model_path, model_shapes, path_role, sha256_file)
from .core.nifti import AXES, LESION_SUFFIX, Volume, load_nifti, nifti_stem, volume_from_array
from .core.preprocess import Prepared, Resampler, preprocess_slice
from .scorers import DEFAULT_BATCH, TARGET_TRANSFORMS, WindowScorer, model_geometry, plain_scorer, score_windows

DEFAULT_BUNDLE = files("rlp.runtime") / "demo"
NO_BUNDLE = ("no bundle given: pass --bundle DIR (a folder written by rlp-export); "
             "this install has no embedded demo bundle yet")
DEFAULT_TOP_K = 5
PATHS = ("r", "g")
PRECISIONS = ("auto", "fp32", "fp16")
#: how windows are scored: every one through the model (plain), only what each box changes (.incremental, exact),
#: or a coarse lattice and the windows it finds high (.coarse, approximate)
METHODS = ("plain", "incremental", COARSE)
NONFINITE = ("error", "zero")
AXIS_NAMES = {v: k for k, v in AXES.items()}
__all__ = ["Bundle", "SliceHeatmap", "VolumeHeatmap", "Window", "score_windows", "top_windows", "box_hits",
           "model_geometry", "TARGET_TRANSFORMS", "DEFAULT_BATCH", "demo_slices", "default_bundle"]


def demo_slices() -> list[Path]:
    """The demo inputs that ship with rlp (held-out slices with synthetic lesions; masks excluded)."""
    folder = Path(str(DEFAULT_BUNDLE)) / "slices"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.nii.gz") if not nifti_stem(p).endswith(LESION_SUFFIX))


def default_bundle() -> Path | None:
    """The embedded demo bundle, when this install ships one."""
    p = Path(str(DEFAULT_BUNDLE))
    return p if (p / MANIFEST).is_file() else None


# --------------------------------------------------------------------------- results
@dataclass
class Window:
    """One scored window, located on the model grid, the input slice and (volumes) in the file and world."""

    score: float
    grid: tuple[int, int]  # (row, col) in the window map
    box_model: tuple[int, int, int, int]  # r0, c0, r1, c1 on the model grid, end exclusive
    centre: tuple[float, float]  # window centre, continuous (row, col) index on the input slice
    box: tuple[float, float, float, float]  # a0, b0, a1, b1: window edges on the input slice (may reach the padding)
    rank: int = 0
    slice: int | None = None  # file index along the slice axis (volumes)
    voxel: tuple[float, ...] | None = None  # window centre, continuous voxel index in the file's array
    world: tuple[float, float, float] | None = None  # window centre in mm, through the input's affine

    def to_dict(self) -> dict:
        d = {"rank": self.rank, "score": float(self.score), "grid": list(self.grid), "box_model": list(self.box_model),
             "centre_slice": [round(float(v), 3) for v in self.centre],
             "box_slice": [round(float(v), 3) for v in self.box]}
        if self.slice is not None:
            d["slice"] = int(self.slice)
        if self.voxel is not None:
            d["voxel"] = [round(float(v), 3) for v in self.voxel]
        if self.world is not None:
            d["world_mm"] = [round(float(v), 3) for v in self.world]
        return d


@dataclass
class SliceHeatmap:
    pixel_map: np.ndarray  # on the input slice's grid, float32
    window_map: np.ndarray  # geometry.grid_shape, float32; 0 where not evaluated
    evaluated: np.ndarray  # geometry.grid_shape, bool
    model_map: np.ndarray  # pixel map on the model grid (size x size)
    top: list[Window]
    n_evaluated: int
    n_windows: int
    timings: dict[str, float]
    warnings: list[str] = field(default_factory=list)
    empty: bool = False
    resampler: Resampler | None = None
    #: an approximate method's settings and how many windows it scored exactly (None: every score is exact)
    approximate: dict | None = None
    #: the training-domain checks this slice failed (:mod:`.domain`; check -> words), and its top score as a
    #: percentile of the bundle's healthy slices (None: the bundle has no reference for this path and score)
    domain: dict = field(default_factory=dict)
    healthy_percentile: float | None = None

    @property
    def max_score(self) -> float:
        return float(self.window_map.max()) if self.n_evaluated else 0.0


@dataclass
class VolumeHeatmap:
    """A heatmap for a NIfTI image (or an array with an affine), on the input's own grid."""

    heatmap: np.ndarray  # the file's shape and orientation, float32
    volume: Volume
    axis: int  # canonical (RAS+) axis the slices are normal to
    slices: list[int]  # file indices along that axis, ascending
    results: list[SliceHeatmap]
    top: list[Window]
    path: str
    timings: dict[str, float]
    warnings: list[str]
    canonical_heatmap: np.ndarray  # same values on the canonical grid of volume.data
    score: str = "l1"  # the window score the values are (geometry.SCORES)
    #: the training-domain checks it failed (:mod:`.domain`), also in ``warnings``; None: the bundle records no domain
    domain_warnings: list[str] | None = None
    healthy_percentile: float | None = None  # the top slice's top score as a percentile of healthy slices

    @property
    def axis_name(self) -> str:
        return AXIS_NAMES[self.axis]

    @property
    def window_maps(self) -> np.ndarray:
        """(slices, rows, cols) window maps, slices in file-index order."""
        return np.stack([r.window_map for r in self.results])

    @property
    def max_score(self) -> float:
        return max((r.max_score for r in self.results), default=0.0)

    def summary(self) -> dict:
        v = self.volume
        n_ev = sum(r.n_evaluated for r in self.results)
        n_all = sum(r.n_windows for r in self.results)
        file_axis, _ = v.file_axis(self.axis)
        return {
            "input": str(v.path),
            **({} if v.volume_index is None else {"volume_index": v.volume_index}),
            "shape": list(v.file_shape),
            "path": self.path,
            "score": self.score,
            "axis": self.axis_name,
            "file_axis": file_axis,
            "slices": {"processed": len(self.slices), "total": int(v.data.shape[self.axis]),
                       "empty": sum(r.empty for r in self.results)},
            "windows": {"evaluated": n_ev, "total": n_all,
                        "scored_exactly": sum(r.approximate["scored"] if r.approximate else r.n_evaluated
                                              for r in self.results)},
            "max_score": self.max_score,
            "heatmap_max": float(self.heatmap.max()) if self.heatmap.size else 0.0,
            "healthy_percentile": self.healthy_percentile,
            "domain": {"checked": self.domain_warnings is not None, "warnings": list(self.domain_warnings or [])},
            "top_windows": [w.to_dict() for w in self.top],
            "per_slice": [{"slice": s, "max_score": r.max_score, "windows_evaluated": r.n_evaluated,
                           "empty": r.empty, "healthy_percentile": r.healthy_percentile}
                          for s, r in zip(self.slices, self.results)],
            "timings": {k: round(t, 4) for k, t in self.timings.items()},
            "warnings": list(self.warnings),
        }


# --------------------------------------------------------------------------- bundle
class Bundle:
    """A verified bundle and its backends (created on first use, once per path)."""

    def __init__(self, root: Path, manifest: Manifest, manifest_sha256: str, *, backend: str = "auto",
                 threads: int | None = None, batch: int = DEFAULT_BATCH, precision: str = "auto",
                 score: str | None = None):
        if precision not in PRECISIONS:
            raise RlpError(f"precision must be one of {', '.join(PRECISIONS)}", code=EX_USAGE)
        if score is not None and score not in SCORES:
            raise RlpError(f"score must be one of {', '.join(SCORES)}, got {score!r}", code=EX_USAGE)
        if int(batch) < 1:
            raise RlpError("batch must be at least 1", code=EX_USAGE)
        if threads is not None and int(threads) < 1:
            raise RlpError("threads must be at least 1", code=EX_USAGE)
        self.root = Path(root)
        self.manifest = manifest
        self.manifest_sha256 = manifest_sha256
        self.backend_kind = backend
        self.threads = threads
        self.batch = int(batch)
        self.precision = precision
        #: the bundle's window score (what its predictors learned), and the one the G path computes
        self.bundle_score = manifest.loss.get("kind", "l1")
        self.score = score or self.bundle_score
        self._checked: dict[str, CheckedModel] = {}
        self._backends: dict[str, Backend] = {}
        self._scorers: dict[tuple[str, str], WindowScorer] = {}  # (path, method) -> its scorer, built once
        #: the training domain and healthy reference (:mod:`.domain`); None: the manifest records none, no checks
        self.domain = Domain.from_dict(manifest.domain) if manifest.domain is not None else None
        if manifest.preprocessing.size != manifest.geometry.size:
            raise BadInput(f"preprocessing size {manifest.preprocessing.size} != geometry size "
                           f"{manifest.geometry.size}; {REBUILD}", self.root / MANIFEST)

    @classmethod
    def load(cls, path: str | Path | None = None, **options) -> "Bundle":
        """Read and verify a bundle (schema, sizes, sha256 of every file) before any model is parsed.

        ``path`` defaults to the embedded demo bundle when there is one. Options:
        ``backend`` (auto, ort-cpu, ort-cuda, ort-trt, trt), ``threads``,
        ``batch``, ``precision`` (auto: fp16 models on GPU backends when the
        bundle has them), ``score`` (the G path's window score: the bundle's by
        default; ``"l1"`` gives the paper's raw L1 from a Laplace G).
        """
        root = Path(path) if path is not None else default_bundle()
        if root is None:
            raise InputMissing(NO_BUNDLE)
        manifest = load_bundle_manifest(root)
        return cls(root, manifest, sha256_file(root / MANIFEST), **options)

    # -- models and backends
    def _model_key(self, path: str, kind: str) -> str:
        models = self.manifest.models
        if not isinstance(path, str) or not PATH_PATTERN.fullmatch(path):
            raise RlpError(f"path must be g, r or r-NAME (this bundle: {', '.join(self.manifest.paths())}), got {path!r}",
                           code=EX_USAGE)
        fp16 = model_key(path, "fp16")
        auto = self.precision == "auto" and backend_info(kind).fp16_models  # a GPU backend: fp16 when there is one
        if self.precision == "fp16" or (auto and fp16 in models):
            if fp16 not in models:
                raise BadInput(f"the bundle has no fp16 model for path {path} (models: {', '.join(models)})", self.root)
            return fp16
        if path not in models:
            raise BadInput(f"the bundle has no model for path {path} (models: {', '.join(models) or 'none'})", self.root)
        return path

    def checked_model(self, key: str) -> CheckedModel:
        """The hash-checked model ``key``, validated against the geometry contract."""
        if key not in self._checked:
            entry = self.manifest.models[key]
            try:
                role = path_role(model_path(key))
            except ValueError:
                raise BadInput(f"model key {key!r} names no heatmap path (g, r, r-NAME); {REBUILD}", self.root) from None
            if entry.role and entry.role != role:
                raise BadInput(f"model {key!r} has role {entry.role!r}; {REBUILD}", self.root)
            if entry.input_kind == "dense" and (role != "r" or not self.manifest.geometry.dense_ok()):
                raise BadInput(f"model {key!r} is dense, which only a predictor on a regular window grid can be; "
                               f"{REBUILD}", self.root)
            if role == "r" and entry.target_transform not in TARGET_TRANSFORMS:
                raise BadInput(f"model {key!r} has target_transform {entry.target_transform!r}, which this rlp "
                               f"does not know (it knows {', '.join(TARGET_TRANSFORMS)}); upgrade rlp", self.root)
            s = model_geometry(self.manifest.geometry, entry, self.root).input_size
            model = check_model(self.root, key, entry)
            # G: a reconstruction, or a Laplace G's mean and scale (what a z score needs)
            channels = model.output.shape[1] if len(model.output.shape) == 4 else None
            channels = 2 if self.bundle_score == "z" else channels if channels in (1, 2) else 1
            ins, outs = model_shapes(role, entry.input_kind, s, self.manifest.geometry.grid_shape, channels)
            want_in, want_out = (None, *ins), (None, *outs)
            for what, spec, want in (("input", model.input, want_in), ("output", model.output, want_out)):
                if len(spec.shape) != len(want) or any(
                        a is not None and b is not None and a != b for a, b in zip(spec.shape, want)):
                    raise BadInput(f"model {key!r} {what} {spec.describe()} does not fit the geometry "
                                   f"(expected [batch,{','.join(map(str, want[1:]))}]); {REBUILD}", self.root)
            self._checked[key] = model
        return self._checked[key]

    def backend(self, path: str = "r") -> Backend:
        """The backend running ``path``'s model (created once, then reused)."""
        if path not in self._backends:
            self._model_key(path, "ort-cpu")  # a clear error for a path the bundle lacks
            self._backends[path] = create_backend(
                self.backend_kind, lambda kind: self.checked_model(self._model_key(path, kind)),
                threads=self.threads, engines=self.manifest.engines, max_batch=self.batch)
        return self._backends[path]

    def scorer(self, path: str = "r", method: str = "plain", coarse: CoarseToFine | None = None) -> WindowScorer:
        """The window scorer of ``path`` by ``method`` (:mod:`.scorers`), built once per path and method;
        coarse to fine (settings ``coarse``) wraps the path's plain scorer."""
        if method not in METHODS:
            raise RlpError(f"method must be one of {', '.join(METHODS)}, got {method!r}", code=EX_USAGE)
        if method == COARSE:
            return CoarseScorer(self.scorer(path), coarse or CoarseToFine())
        if (path, method) not in self._scorers:
            backend = self.backend(path)
            self._scorers[path, method] = (plain_scorer(backend, self.manifest.geometry, path, batch=self.batch,
                                                        score=self.score)
                                           if method == "plain" else self._incremental(path, backend))
        return self._scorers[path, method]

    def _incremental(self, path: str, backend: Backend) -> WindowScorer:
        """The exact incremental scorer of an image-kind predictor (:mod:`.incremental`) on its backend."""
        entry = backend.model.entry
        if path_role(path) != "r" or entry.input_kind != "image":
            what = "G" if path_role(path) == "g" else f"a predictor that reads {entry.input_kind!r} input"
            raise RlpError(f"method incremental needs a predictor that reads the whole slice (input_kind image); "
                           f"path {path} is {what}", code=EX_USAGE)
        if not backend_info(backend.name).incremental:
            ok = " or ".join(b.name for b in TABLE if b.incremental)
            raise RlpError(f"method incremental runs on onnxruntime, not on {backend.name}: pass --backend {ok} "
                           "(Bundle.load(..., backend=...))", code=EX_USAGE)
        from .incremental import IncrementalScorer, read_model  # onnx is needed only here

        scorer = IncrementalScorer.from_model(
            read_model(backend.model), model_geometry(self.manifest.geometry, entry, self.root),
            sessions=ort_sessions(backend.name, entry.precision, self.threads, spinning=False, arenas=False),
            transform=TARGET_TRANSFORMS[entry.target_transform], latencies=backend.latencies,
            fallback=self.scorer(path))
        if scorer.note and scorer.note not in backend.notes:
            backend.notes.append(scorer.note)
        return scorer

    def close(self) -> None:
        self._scorers.clear()
        for b in self._backends.values():
            b.close()
        self._backends.clear()

    def __enter__(self) -> "Bundle":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def describe(self) -> dict:
        return {"path": str(self.root.resolve()), "manifest_sha256": self.manifest_sha256,
                "rlp_version": self.manifest.rlp_version, "created": self.manifest.created}

    # -- heatmaps
    def heatmap_slice(self, image: np.ndarray, spacing: Sequence[float] = (1.0, 1.0), *, path: str = "r",
                      all_windows: bool = False, top_k: int = DEFAULT_TOP_K, mask: np.ndarray | None = None,
                      nonfinite: str | None = None, source=None, method: str = "plain",
                      coarse: CoarseToFine | None = None) -> SliceHeatmap:
        """Heatmap of one 2D slice (any shape; ``spacing`` = voxel size in mm along its two axes).

        ``method="incremental"`` (a predictor that reads the whole slice) gives the same scores, recomputing
        only what each box changes (:mod:`.incremental`). ``method="coarse-to-fine"`` is approximate: a
        coarse lattice of windows, then the windows it finds high (:mod:`.coarse`; settings ``coarse``)."""
        self.check_method(path, method)
        cfg = self.manifest.preprocessing
        if nonfinite is not None:
            if nonfinite not in NONFINITE:
                raise RlpError(f"nonfinite must be one of {', '.join(NONFINITE)}", code=EX_USAGE)
            cfg = dataclasses.replace(cfg, nonfinite=nonfinite)
        t0 = time.perf_counter()
        prep = preprocess_slice(image, cfg, tuple(spacing), mask, path=source)
        return self._heatmap_prepared(prep, path, all_windows, top_k, time.perf_counter() - t0, method, coarse)

    def check_method(self, path: str, method: str) -> None:
        """A usage error now, even for an empty slice, for a method or score the path's model cannot serve."""
        if self.score != self.bundle_score and path != "g":
            raise RlpError(f"path {path} predicts this bundle's {self.bundle_score} score; score {self.score} "
                           "is computed on the G path only (--path g)", code=EX_USAGE)
        alts = self.manifest.loss.get("alternatives")
        allowed = [a for a in alts if isinstance(a, str)] if isinstance(alts, list) and alts else [self.bundle_score]
        if self.score not in allowed:
            raise RlpError(f"this bundle's G allows the {', '.join(allowed)} score(s), not {self.score} (the z score "
                           "needs a G that predicts a scale)", code=EX_USAGE)
        if method not in METHODS:
            raise RlpError(f"method must be one of {', '.join(METHODS)}, got {method!r}", code=EX_USAGE)
        if method == "incremental":
            self.scorer(path, method)
        elif method == COARSE and self.backend(path).model.entry.input_kind == "dense":
            raise RlpError(f"method {COARSE} needs a path scored window by window; path {path} is a dense "
                           "predictor, which reads each slice once already", code=EX_USAGE)

    def _heatmap_prepared(self, prep: Prepared, path: str, all_windows: bool, top_k: int,
                          t_pre: float, method: str = "plain", coarse: CoarseToFine | None = None) -> SliceHeatmap:
        geom = self.manifest.geometry
        scorer = self.scorer(path, method, coarse)
        warnings = []
        if prep.n_nonfinite:
            warnings.append(f"replaced {prep.n_nonfinite} non-finite voxel(s) with 0")
        t0 = time.perf_counter()
        model_s = 0.0
        wm = np.zeros(geom.grid_shape, dtype=np.float32)
        approximate = None
        if prep.empty:
            ev = scored = np.zeros(geom.grid_shape, dtype=bool)
            warnings.append("no brain tissue (or one value everywhere): heatmap is 0")
        else:
            ev = geom.evaluated(prep.brain, all_windows)
            n0 = len(scorer.latencies)
            full, scored = scorer.score_grid(prep.image, ev)
            wm[ev] = full[ev]
            if scorer.approximate:
                approximate = {**scorer.describe(), "scored": int(scored.sum()), "evaluated": int(ev.sum())}
            model_s = float(sum(scorer.latencies[n0:]))
        t1 = time.perf_counter()
        model_map = geom.pixel_map(wm, ev) if ev.any() else np.zeros((geom.size, geom.size), np.float32)
        pixel = prep.resampler.to_input(model_map).astype(np.float32)
        top = top_windows(wm, scored, geom, prep.resampler, top_k)  # scored windows: never an estimate
        t2 = time.perf_counter()
        timings = {"preprocess_s": t_pre, "model_s": model_s, "windows_s": (t1 - t0) - model_s,
                   "postprocess_s": t2 - t1, "total_s": t_pre + (t2 - t0)}
        res = SliceHeatmap(pixel, wm, ev, model_map, top, int(ev.sum()), geom.n_windows, timings, warnings,
                           prep.empty, prep.resampler, approximate)
        if self.domain is not None:
            res.domain = check_slice(slice_stats(prep), self.domain)
            res.warnings += list(res.domain.values())
            if not prep.empty:
                res.healthy_percentile = healthy_percentile(res.max_score, self.healthy(path))
        return res

    def healthy(self, path: str) -> dict | None:
        """The bundle's healthy reference for ``path`` at this bundle's score (None: none recorded)."""
        ref = (self.domain.healthy or {}).get(path) if self.domain is not None else None
        return ref if ref and ref.get("score") == self.score else None

    def heatmap_volume(self, volume: Volume, *, axis: str = "axial", slice: int | None = None, path: str = "r",
                       all_windows: bool = False, top_k: int = DEFAULT_TOP_K, nonfinite: str | None = None,
                       progress: Callable[[int, int], None] | None = None, method: str = "plain",
                       coarse: CoarseToFine | None = None) -> VolumeHeatmap:
        """Heatmap of every slice along ``axis`` (or of the one with file index ``slice``).

        ``axis`` is anatomical (axial, coronal, sagittal: the slices are normal
        to that world axis); for a single-slice image its singleton axis is
        used. ``slice`` is the voxel index along the file's own array axis
        closest to ``axis``, as image viewers show it. Non-finite voxels follow
        ``nonfinite`` (default: the bundle's preprocessing, normally "error").
        """
        t_start = time.perf_counter()
        k, n = volume.slices(axis)
        if slice is None:
            indices = list(range(n))
        else:
            if not 0 <= int(slice) < n:
                raise BadInput(f"slice {slice} is out of range: the {AXIS_NAMES[k]} axis has {n} slice(s) "
                               f"(0..{n - 1})", volume.path)
            indices = [int(slice)]
        canon = [volume.file_to_canonical_index(k, f) for f in indices]
        policy = nonfinite or self.manifest.preprocessing.nonfinite
        if policy not in NONFINITE:
            raise RlpError(f"nonfinite must be one of {', '.join(NONFINITE)}", code=EX_USAGE)
        warnings = list(volume.warnings)
        data = np.take(volume.data, canon, axis=k)
        finite = np.isfinite(data)
        n_bad = int(data.size - finite.sum())
        if n_bad == data.size:
            raise BadInput("every voxel is non-finite (NaN/Inf)", volume.path)
        if n_bad and policy == "error":
            raise BadInput(f"{n_bad} non-finite voxel(s) (NaN/Inf); pass --nonfinite zero "
                           "to replace them with 0", volume.path)
        if n_bad:
            warnings.append(f"replaced {n_bad} non-finite voxel(s) with 0 (--nonfinite zero)")
        heat = np.zeros(volume.data.shape, dtype=np.float32)
        results: list[SliceHeatmap] = []
        windows: list[Window] = []
        index = [np.s_[:]] * 3
        for done, (f, c) in enumerate(zip(indices, canon), 1):
            sl = np.take(data, done - 1, axis=k)
            if n_bad:
                sl = np.where(np.isfinite(sl), sl, 0.0)
            spacing = tuple(z for j, z in enumerate(volume.zooms) if j != k)
            res = self.heatmap_slice(sl, spacing, path=path, all_windows=all_windows, top_k=top_k,
                                     nonfinite="error", source=volume.path, method=method, coarse=coarse)
            index[k] = c
            heat[tuple(index)] = res.pixel_map
            for w in res.top:
                _locate(w, volume, k, c, f)
            windows.extend(res.top)
            results.append(res)
            if progress is not None:
                progress(done, len(indices))
        approx = [r.approximate for r in results if r.approximate]
        if approx:
            a = approx[0]
            warnings.append(f"approximate heatmap ({a['method']}, factor {a['factor']}, refine {a['refine']:g}): "
                            f"{sum(x['scored'] for x in approx)} of {sum(x['evaluated'] for x in approx)} windows "
                            "scored exactly, the others estimated between them; top windows are scored ones")
        domain = None
        if self.domain is not None:  # one warning per failed check, over the slices
            axis_problem = check_axis(AXIS_NAMES[k], self.domain)
            domain = ([axis_problem] if axis_problem else []) + list(summarise([r.domain for r in results]).values())
            warnings += [f"outside the training domain: {w}" for w in domain]
        n_empty = sum(r.empty for r in results)
        if n_empty:
            what = "the slice holds" if len(results) == 1 else f"{n_empty} of {len(results)} slices hold"
            warnings.append(f"{what} no brain tissue (or one value everywhere): heatmap is 0 there")
        windows.sort(key=lambda w: -w.score)
        top = windows[:top_k]
        for rank, w in enumerate(top, 1):
            w.rank = rank
        timings = {key: sum(r.timings[key] for r in results) for key in ("preprocess_s", "model_s", "windows_s",
                                                                          "postprocess_s")}
        timings["total_s"] = time.perf_counter() - t_start
        best = max(results, key=lambda r: r.max_score, default=None)
        return VolumeHeatmap(volume.to_file_grid(heat), volume, k, indices, results, top, path, timings,
                             warnings, heat, self.score, domain, best.healthy_percentile if best else None)

    def heatmap_nifti(self, file: str | Path, *, volume_index: int | None = None, **options) -> VolumeHeatmap:
        """:meth:`heatmap_volume` of a NIfTI file (2D, 3D, or 4D with one volume, or the volume
        ``volume_index`` of a 4D file), checked on load."""
        t0 = time.perf_counter()
        volume = load_nifti(file, volume_index=volume_index)
        t_load = time.perf_counter() - t0
        out = self.heatmap_volume(volume, **options)
        out.timings["load_s"] = t_load
        out.timings["total_s"] += t_load
        return out

    def heatmap_array(self, data: np.ndarray, affine: np.ndarray | None = None, **options) -> VolumeHeatmap:
        """:meth:`heatmap_volume` of an in-memory 2D/3D array with its voxel-to-world affine."""
        return self.heatmap_volume(volume_from_array(data, affine), **options)


def top_windows(window_map: np.ndarray, evaluated: np.ndarray, geometry: WindowGeometry,
                resampler: Resampler, k: int) -> list[Window]:
    """The ``k`` evaluated windows with the highest scores, located on the input slice."""
    idx = np.flatnonzero(evaluated.ravel())
    if k <= 0 or idx.size == 0:
        return []
    scores = window_map.ravel()[idx]
    order = np.argsort(-scores, kind="stable")[:k]
    pos, w = geometry.positions, geometry.window
    cols = geometry.grid_shape[1]
    out = []
    for rank, o in enumerate(order, 1):
        i, j = divmod(int(idx[o]), cols)
        r0, c0 = int(pos[i]), int(pos[j])
        centre = resampler.model_to_input_coords(r0 + (w - 1) / 2, c0 + (w - 1) / 2)
        lo = resampler.model_to_input_coords(r0 - 0.5, c0 - 0.5)
        hi = resampler.model_to_input_coords(r0 + w - 0.5, c0 + w - 0.5)
        out.append(Window(float(scores[o]), (i, j), (r0, c0, r0 + w, c0 + w),
                          (float(centre[0]), float(centre[1])),
                          (float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])), rank))
    return out


def box_hits(box, lesion: np.ndarray) -> bool:
    """Does a window box (continuous index edges a0, b0, a1, b1 on the slice: ``Window.box``, a summary's
    ``box_slice``) hold a lesion pixel (a non-zero of the 2D ``lesion``)? The demo's table and the bench's
    top-window hit rate both ask this."""
    if box is None or not np.all(np.isfinite(box)):
        return False
    a0, b0, a1, b1 = box
    h, w = lesion.shape
    r0, r1 = max(0, math.ceil(a0)), min(h - 1, math.floor(a1))
    c0, c1 = max(0, math.ceil(b0)), min(w - 1, math.floor(b1))
    return r0 <= r1 and c0 <= c1 and bool(lesion[r0 : r1 + 1, c0 : c1 + 1].any())


def _locate(w: Window, volume: Volume, k: int, c: int, f: int) -> None:
    """Fill in a window's file voxel index and world coordinates (slice axis ``k``, canonical index ``c``)."""
    ijk = list(w.centre)
    ijk.insert(k, float(c))
    n = min(3, len(volume.file_shape))
    w.slice = f
    w.voxel = tuple(float(v) for v in volume.canonical_to_file(ijk)[0][:n])
    w.world = tuple(float(v) for v in volume.voxel_to_world(ijk)[0])
