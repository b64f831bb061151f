"""Slice and volume orchestration: a bundle's window scorer run over one slice, or over every slice of a volume.

One slice (the contracts live in :mod:`.core.preprocess` and :mod:`.core.geometry`):

1. ``preprocess_slice`` normalises the slice and resamples it to the model grid;
   a slice with no brain tissue (or with one value everywhere) gets a heatmap of
   zeros and a warning, never NaN;
2. windows holding no brain tissue are skipped (score 0) unless ``all_windows``;
3. each evaluated window's box is painted with ``geometry.fill`` in the model
   input (a context crop, or the whole slice), in batches:
   head ``g``: G reconstructs the box, and the window's score is the bundle's
   (``manifest.loss.kind``): ``z``, the mean over the box of |x - mu| / b (a Laplace G
   predicts a mean ``mu`` and a scale ``b`` per pixel: the error in units of the error G
   expects there on healthy tissue), or ``l1``, the paper's mean |x - mu| (reachable
   on a z bundle's G head with ``score="l1"``); head ``r``: R's prediction of the
   bundle's score;
4. the window map becomes a pixel map (each pixel the mean of the evaluated
   windows covering it) and goes back on the input grid with the exact inverse
   of the resampling.

Step 3 is a window scorer (:mod:`.scorers`: plain, incremental or coarse to fine), which the
:class:`~rlp.runtime.heatmap.Bundle` builds from its models and backends. A volume is its slices along
one anatomical axis, each one such slice, put back in the file's grid and orientation (:mod:`.results`).
The Bundle's ``heatmap_*`` methods call these functions.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

from .coarse import CoarseToFine
from .core.domain import Domain, check_axis, check_slice, healthy_percentile, slice_stats, summarise
from .core.errors import EX_USAGE, BadInput, RlpError
from .core.manifest import Manifest
from .core.nifti import Volume, load_nifti, volume_from_array
from .core.preprocess import Prepared, preprocess_slice
from .results import AXIS_NAMES, SliceHeatmap, VolumeHeatmap, Window, top_windows
from .scorers import WindowScorer

DEFAULT_TOP_K = 5
#: what happens to NaN/Inf voxels: refused, or replaced by 0 (background) with a warning
NONFINITE = ("error", "zero")
TIMINGS = ("preprocess_s", "model_s", "windows_s", "postprocess_s")


class Bundle(Protocol):
    """What orchestration uses of a :class:`rlp.runtime.heatmap.Bundle` (which calls these functions)."""

    manifest: Manifest
    domain: Domain | None
    score: str

    def check_method(self, head: str, method: str) -> None: ...

    def scorer(self, head: str, method: str, coarse: CoarseToFine | None) -> WindowScorer: ...

    def healthy(self, head: str) -> dict | None: ...


def heatmap_slice(bundle: Bundle, image: np.ndarray, spacing: Sequence[float] = (1.0, 1.0), *, head: str = "r",
                  all_windows: bool = False, top_k: int = DEFAULT_TOP_K, mask: np.ndarray | None = None,
                  nonfinite: str | None = None, source=None, method: str = "plain",
                  coarse: CoarseToFine | None = None) -> SliceHeatmap:
    """Heatmap of one 2D slice (any shape; ``spacing`` = voxel size in mm along its two axes)."""
    bundle.check_method(head, method)
    cfg = bundle.manifest.preprocessing
    if nonfinite is not None:
        _check_nonfinite(nonfinite)
        cfg = dataclasses.replace(cfg, nonfinite=nonfinite)
    t0 = time.perf_counter()
    prep = preprocess_slice(image, cfg, tuple(spacing), mask, path=source)
    return heatmap_prepared(bundle, prep, head, all_windows, top_k, time.perf_counter() - t0, method, coarse)


def heatmap_prepared(bundle: Bundle, prep: Prepared, head: str, all_windows: bool, top_k: int, t_pre: float,
                     method: str = "plain", coarse: CoarseToFine | None = None) -> SliceHeatmap:
    """Steps 2 to 4 of a preprocessed slice (``t_pre``: the seconds its preprocessing took)."""
    geom = bundle.manifest.geometry
    scorer = bundle.scorer(head, method, coarse)
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
    if bundle.domain is not None:
        res.domain = check_slice(slice_stats(prep), bundle.domain)
        res.warnings += list(res.domain.values())
        if not prep.empty:
            res.healthy_percentile = healthy_percentile(res.max_score, bundle.healthy(head))
    return res


def heatmap_volume(bundle: Bundle, volume: Volume, *, axis: str = "axial", slice: int | None = None,
                   head: str = "r", all_windows: bool = False, top_k: int = DEFAULT_TOP_K,
                   nonfinite: str | None = None, progress: Callable[[int, int], None] | None = None,
                   method: str = "plain", coarse: CoarseToFine | None = None) -> VolumeHeatmap:
    """Heatmap of every slice along ``axis`` (or of the one with file index ``slice``); see
    :meth:`rlp.runtime.heatmap.Bundle.heatmap_volume`."""
    t_start = time.perf_counter()
    k, n = volume.slices(axis)
    indices = _slice_indices(volume, k, n, slice)
    canon = [volume.file_to_canonical_index(k, f) for f in indices]
    warnings = list(volume.warnings)
    data, n_bad = _finite_slices(volume, np.take(volume.data, canon, axis=k),
                                 nonfinite or bundle.manifest.preprocessing.nonfinite, warnings)
    heat = np.zeros(volume.data.shape, dtype=np.float32)
    results: list[SliceHeatmap] = []
    windows: list[Window] = []
    index = [np.s_[:]] * 3
    spacing = tuple(z for j, z in enumerate(volume.zooms) if j != k)
    for done, (f, c) in enumerate(zip(indices, canon), 1):
        sl = np.take(data, done - 1, axis=k)
        if n_bad:
            sl = np.where(np.isfinite(sl), sl, 0.0)
        res = heatmap_slice(bundle, sl, spacing, head=head, all_windows=all_windows, top_k=top_k,
                            nonfinite="error", source=volume.path, method=method, coarse=coarse)
        index[k] = c
        heat[tuple(index)] = res.pixel_map
        for w in res.top:
            _locate(w, volume, k, c, f)
        windows.extend(res.top)
        results.append(res)
        if progress is not None:
            progress(done, len(indices))
    domain = _volume_warnings(bundle, results, k, warnings)
    windows.sort(key=lambda w: -w.score)
    top = windows[:top_k]
    for rank, w in enumerate(top, 1):
        w.rank = rank
    timings = {key: sum(r.timings[key] for r in results) for key in TIMINGS}
    timings["total_s"] = time.perf_counter() - t_start
    best = max(results, key=lambda r: r.max_score, default=None)
    return VolumeHeatmap(volume.to_file_grid(heat), volume, k, indices, results, top, head, timings,
                         warnings, heat, bundle.score, domain, best.healthy_percentile if best else None)


def heatmap_nifti(bundle: Bundle, file: str | Path, *, volume_index: int | None = None, **options) -> VolumeHeatmap:
    """:func:`heatmap_volume` of a NIfTI file (2D, 3D, or 4D with one volume, or the volume
    ``volume_index`` of a 4D file), checked on load."""
    t0 = time.perf_counter()
    volume = load_nifti(file, volume_index=volume_index)
    t_load = time.perf_counter() - t0
    out = heatmap_volume(bundle, volume, **options)
    out.timings["load_s"] = t_load
    out.timings["total_s"] += t_load
    return out


def heatmap_array(bundle: Bundle, data: np.ndarray, affine: np.ndarray | None = None, **options) -> VolumeHeatmap:
    """:func:`heatmap_volume` of an in-memory 2D/3D array with its voxel-to-world affine."""
    return heatmap_volume(bundle, volume_from_array(data, affine), **options)


def _check_nonfinite(policy: str) -> None:
    if policy not in NONFINITE:
        raise RlpError(f"nonfinite must be one of {', '.join(NONFINITE)}", code=EX_USAGE)


def _slice_indices(volume: Volume, k: int, n: int, slice: int | None) -> list[int]:
    """The file indices to process along canonical axis ``k`` (``n`` slices): all, or the one asked for."""
    if slice is None:
        return list(range(n))
    if not 0 <= int(slice) < n:
        raise BadInput(f"slice {slice} is out of range: the {AXIS_NAMES[k]} axis has {n} slice(s) "
                       f"(0..{n - 1})", volume.path)
    return [int(slice)]


def _finite_slices(volume: Volume, data: np.ndarray, policy: str, warnings: list[str]) -> tuple[np.ndarray, int]:
    """``data`` (the slices to process) checked for NaN/Inf under ``policy``: (data, how many are non-finite)."""
    _check_nonfinite(policy)
    finite = np.isfinite(data)
    n_bad = int(data.size - finite.sum())
    if n_bad == data.size:
        raise BadInput("every voxel is non-finite (NaN/Inf)", volume.path)
    if n_bad and policy == "error":
        raise BadInput(f"{n_bad} non-finite voxel(s) (NaN/Inf); pass --nonfinite zero "
                       "to replace them with 0", volume.path)
    if n_bad:
        warnings.append(f"replaced {n_bad} non-finite voxel(s) with 0 (--nonfinite zero)")
    return data, n_bad


def _volume_warnings(bundle: Bundle, results: list[SliceHeatmap], k: int, warnings: list[str]) -> list[str] | None:
    """Add the volume's warnings (approximation, training domain, empty slices) to ``warnings``; returns the
    training-domain checks it failed (None: the bundle records no domain)."""
    approx = [r.approximate for r in results if r.approximate]
    if approx:
        a = approx[0]
        warnings.append(f"approximate heatmap ({a['method']}, factor {a['factor']}, refine {a['refine']:g}): "
                        f"{sum(x['scored'] for x in approx)} of {sum(x['evaluated'] for x in approx)} windows "
                        "scored exactly, the others estimated between them; top windows are scored ones")
    domain = None
    if bundle.domain is not None:  # one warning per failed check, over the slices
        axis_problem = check_axis(AXIS_NAMES[k], bundle.domain)
        domain = ([axis_problem] if axis_problem else []) + list(summarise([r.domain for r in results]).values())
        warnings += [f"outside the training domain: {w}" for w in domain]
    n_empty = sum(r.empty for r in results)
    if n_empty:
        what = "the slice holds" if len(results) == 1 else f"{n_empty} of {len(results)} slices hold"
        warnings.append(f"{what} no brain tissue (or one value everywhere): heatmap is 0 there")
    return domain


def _locate(w: Window, volume: Volume, k: int, c: int, f: int) -> None:
    """Fill in a window's file voxel index and world coordinates (slice axis ``k``, canonical index ``c``)."""
    ijk = list(w.centre)
    ijk.insert(k, float(c))
    n = min(3, len(volume.file_shape))
    w.slice = f
    w.voxel = tuple(float(v) for v in volume.canonical_to_file(ijk)[0][:n])
    w.world = tuple(float(v) for v in volume.voxel_to_world(ijk)[0])
