"""The Bundle: a bundle loaded and verified, its models checked, and the backends and scorers that run them.

Load a bundle once, then ask for heatmaps::

    from rlp.runtime import Bundle

    with Bundle.load("bundles/demo", backend="auto", batch=64) as bundle:
        res = bundle.heatmap_slice(array2d, spacing=(1.0, 1.0), head="r")
        res.pixel_map          # float32, the input's shape
        vol = bundle.heatmap_nifti("sub-01_T1w.nii.gz", axis="axial")
        vol.heatmap            # float32, the file's shape and orientation

A heatmap head is ``g`` (G, exact), ``r`` (the bundle's predictor R) or ``r-NAME`` (a predictor variant);
``rlp-heatmap --path`` and the summaries' ``path`` name it. The Bundle loads, verifies and chooses models
(a head's model at a precision, on a backend, through a scoring method); what a heatmap is lives in
:mod:`.results`, how a slice or a volume becomes one in :mod:`.orchestrate`, and how windows are scored in
:mod:`.scorers` (plain, :mod:`.incremental`, :mod:`.coarse`). :func:`~rlp.runtime.scorers.score_windows`
scores windows as a pure function of a predictor callable, for use without a bundle.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Sequence

import numpy as np

from . import orchestrate
from .backends import TABLE, Backend, CheckedModel, backend_info, check_model, create_backend, ort_sessions
from .coarse import NAME as COARSE
from .coarse import CoarseScorer, CoarseToFine
from .core.domain import Domain
from .core.errors import EX_USAGE, BadInput, InputMissing, RlpError
from .core.geometry import SCORES
from .core.kinds import InputKind
from .core.manifest import (
    HEAD_PATTERN,
    MANIFEST,
    REBUILD,
    Manifest,
    head_role,
    load_bundle_manifest,
    model_head,
    model_key,
    model_shapes,
    sha256_file,
)
from .core.nifti import LESION_SUFFIX, Volume, nifti_stem
from .results import SliceHeatmap, VolumeHeatmap
from .scorers import DEFAULT_BATCH, TARGET_TRANSFORMS, WindowScorer, model_geometry, plain_scorer

DEFAULT_BUNDLE = files("rlp.runtime") / "demo"
NO_BUNDLE = ("no bundle given: pass --bundle DIR (a folder written by rlp-export); "
             "this install has no embedded demo bundle yet")
#: the heads every bundle can have (besides predictor variants r-NAME)
HEADS = ("r", "g")
PRECISIONS = ("auto", "fp32", "fp16")
#: how windows are scored: every one through the model (plain), only what each box changes (.incremental, exact),
#: or a coarse lattice and the windows it finds high (.coarse, approximate)
METHODS = ("plain", "incremental", COARSE)
__all__ = ["Bundle", "DEFAULT_BUNDLE", "NO_BUNDLE", "HEADS", "PRECISIONS", "METHODS", "DEFAULT_BATCH",
           "demo_slices", "default_bundle"]


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


# --------------------------------------------------------------------------- bundle
class Bundle:
    """A verified bundle and its backends (created on first use, once per head)."""

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
        self.backend_name = backend  # the backend asked for: a name of the table, or auto
        self.threads = threads
        self.batch = int(batch)
        self.precision = precision
        #: the bundle's window score (what its predictors learned), and the one the G head computes
        self.bundle_score = manifest.loss.get("kind", "l1")
        self.score = score or self.bundle_score
        self._checked: dict[str, CheckedModel] = {}
        self._backends: dict[str, Backend] = {}
        self._scorers: dict[tuple[str, str], WindowScorer] = {}  # (head, method) -> its scorer, built once
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
        bundle has them), ``score`` (the G head's window score: the bundle's by
        default; ``"l1"`` gives the paper's raw L1 from a Laplace G).
        """
        root = Path(path) if path is not None else default_bundle()
        if root is None:
            raise InputMissing(NO_BUNDLE)
        manifest = load_bundle_manifest(root)
        return cls(root, manifest, sha256_file(root / MANIFEST), **options)

    # -- models and backends
    def _model_key(self, head: str, backend_name: str) -> str:
        """The model key of ``head`` at this bundle's precision on backend ``backend_name``."""
        models = self.manifest.models
        if not isinstance(head, str) or not HEAD_PATTERN.fullmatch(head):
            raise RlpError(f"path must be g, r or r-NAME (this bundle: {', '.join(self.manifest.heads())}), "
                           f"got {head!r}", code=EX_USAGE)
        fp16 = model_key(head, "fp16")
        # a GPU backend: fp16 when there is one
        auto = self.precision == "auto" and backend_info(backend_name).fp16_models
        if self.precision == "fp16" or (auto and fp16 in models):
            if fp16 not in models:
                raise BadInput(f"the bundle has no fp16 model for path {head} (models: {', '.join(models)})", self.root)
            return fp16
        if head not in models:
            raise BadInput(f"the bundle has no model for path {head} (models: {', '.join(models) or 'none'})",
                           self.root)
        return head

    def checked_model(self, key: str) -> CheckedModel:
        """The hash-checked model ``key``, validated against the geometry contract."""
        if key not in self._checked:
            entry = self.manifest.models[key]
            try:
                role = head_role(model_head(key))
            except ValueError:
                raise BadInput(f"model key {key!r} names no heatmap path (g, r, r-NAME); {REBUILD}",
                               self.root) from None
            if entry.role and entry.role != role:
                raise BadInput(f"model {key!r} has role {entry.role!r}; {REBUILD}", self.root)
            if entry.input_kind == InputKind.DENSE and (role != "r" or not self.manifest.geometry.dense_ok()):
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

    def backend(self, head: str = "r") -> Backend:
        """The backend running ``head``'s model (created once, then reused)."""
        if head not in self._backends:
            self._model_key(head, "ort-cpu")  # a clear error for a head the bundle lacks
            self._backends[head] = create_backend(
                self.backend_name, lambda name: self.checked_model(self._model_key(head, name)),
                threads=self.threads, engines=self.manifest.engines, max_batch=self.batch)
        return self._backends[head]

    def scorer(self, head: str = "r", method: str = "plain", coarse: CoarseToFine | None = None) -> WindowScorer:
        """The window scorer of ``head`` by ``method`` (:mod:`.scorers`), built once per head and method;
        coarse to fine (settings ``coarse``) wraps the head's plain scorer."""
        if method not in METHODS:
            raise RlpError(f"method must be one of {', '.join(METHODS)}, got {method!r}", code=EX_USAGE)
        if method == COARSE:
            return CoarseScorer(self.scorer(head), coarse or CoarseToFine())
        if (head, method) not in self._scorers:
            backend = self.backend(head)
            self._scorers[head, method] = (plain_scorer(backend, self.manifest.geometry, head, batch=self.batch,
                                                        score=self.score)
                                           if method == "plain" else self._incremental(head, backend))
        return self._scorers[head, method]

    def _incremental(self, head: str, backend: Backend) -> WindowScorer:
        """The exact incremental scorer of an image-kind predictor (:mod:`.incremental`) on its backend."""
        entry = backend.model.entry
        if head_role(head) != "r" or entry.input_kind != InputKind.IMAGE:
            what = "G" if head_role(head) == "g" else f"a predictor that reads '{entry.input_kind}' input"
            raise RlpError(f"method incremental needs a predictor that reads the whole slice (input_kind image); "
                           f"path {head} is {what}", code=EX_USAGE)
        if not backend_info(backend.name).incremental:
            ok = " or ".join(b.name for b in TABLE if b.incremental)
            raise RlpError(f"method incremental runs on onnxruntime, not on {backend.name}: pass --backend {ok} "
                           "(Bundle.load(..., backend=...))", code=EX_USAGE)
        from .incremental import IncrementalScorer, read_model  # onnx is needed only here

        scorer = IncrementalScorer.from_model(
            read_model(backend.model), model_geometry(self.manifest.geometry, entry, self.root),
            sessions=ort_sessions(backend.name, entry.precision, self.threads, spinning=False, arenas=False),
            transform=TARGET_TRANSFORMS[entry.target_transform], latencies=backend.latencies,
            fallback=self.scorer(head))
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

    # -- heatmaps (:mod:`.orchestrate`)
    def heatmap_slice(self, image: np.ndarray, spacing: Sequence[float] = (1.0, 1.0), **options) -> SliceHeatmap:
        """Heatmap of one 2D slice (any shape; ``spacing`` = voxel size in mm along its two axes).

        Options: ``head`` (r, r-NAME or g), ``all_windows``, ``top_k``, ``mask`` (the brain, else found),
        ``nonfinite``, ``source`` (named in errors), ``method`` and ``coarse``. ``method="incremental"`` (a
        predictor that reads the whole slice) gives the same scores, recomputing only what each box changes
        (:mod:`.incremental`). ``method="coarse-to-fine"`` is approximate: a coarse lattice of windows, then the
        windows it finds high (:mod:`.coarse`; settings ``coarse``)."""
        return orchestrate.heatmap_slice(self, image, spacing, **options)

    def heatmap_volume(self, volume: Volume, **options) -> VolumeHeatmap:
        """Heatmap of every slice along ``axis`` (or of the one with file index ``slice``).

        ``axis`` is anatomical (axial, coronal, sagittal: the slices are normal
        to that world axis); for a single-slice image its singleton axis is
        used. ``slice`` is the voxel index along the file's own array axis
        closest to ``axis``, as image viewers show it. Non-finite voxels follow
        ``nonfinite`` (default: the bundle's preprocessing, normally "error").
        ``progress(done, total)`` is called after each slice; the other options
        are :meth:`heatmap_slice`'s.
        """
        return orchestrate.heatmap_volume(self, volume, **options)

    def heatmap_nifti(self, file: str | Path, *, volume_index: int | None = None, **options) -> VolumeHeatmap:
        """:meth:`heatmap_volume` of a NIfTI file (2D, 3D, or 4D with one volume, or the volume
        ``volume_index`` of a 4D file), checked on load."""
        return orchestrate.heatmap_nifti(self, file, volume_index=volume_index, **options)

    def heatmap_array(self, data: np.ndarray, affine: np.ndarray | None = None, **options) -> VolumeHeatmap:
        """:meth:`heatmap_volume` of an in-memory 2D/3D array with its voxel-to-world affine."""
        return orchestrate.heatmap_array(self, data, affine, **options)

    def check_method(self, head: str, method: str) -> None:
        """A usage error now, even for an empty slice, for a method or score the head's model cannot serve."""
        if self.score != self.bundle_score and head != "g":
            raise RlpError(f"path {head} predicts this bundle's {self.bundle_score} score; score {self.score} "
                           "is computed on the G path only (--path g)", code=EX_USAGE)
        alts = self.manifest.loss.get("alternatives")
        allowed = [a for a in alts if isinstance(a, str)] if isinstance(alts, list) and alts else [self.bundle_score]
        if self.score not in allowed:
            raise RlpError(f"this bundle's G allows the {', '.join(allowed)} score(s), not {self.score} (the z score "
                           "needs a G that predicts a scale)", code=EX_USAGE)
        if method not in METHODS:
            raise RlpError(f"method must be one of {', '.join(METHODS)}, got {method!r}", code=EX_USAGE)
        if method == "incremental":
            self.scorer(head, method)
        elif method == COARSE and self.backend(head).model.entry.input_kind == InputKind.DENSE:
            raise RlpError(f"method {COARSE} needs a path scored window by window; path {head} is a dense "
                           "predictor, which reads each slice once already", code=EX_USAGE)

    def healthy(self, head: str) -> dict | None:
        """The bundle's healthy reference for ``head`` at this bundle's score (None: none recorded)."""
        ref = (self.domain.healthy or {}).get(head) if self.domain is not None else None
        return ref if ref and ref.get("score") == self.score else None
