"""One input's outputs: its heatmap made, and the heatmap NIfTI, overlay, summary (and window map) written as one set.

:func:`process_input` is ``rlp-heatmap``'s per-input code, and ``rlp-cohort``'s workers run it for every volume, so
that both commands make the same files the same way: written atomically, all or nothing, under a lock per stem
(core's :func:`~rlp.runtime.core.atomic.write_set`), never over an input.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

import numpy as np

from . import __version__
from .backends import Backend
from .core.atomic import NAME_MAX, write_set
from .core.cliutil import report_internal_error
from .core.errors import EX_SOFTWARE, BadInput, CannotCreate, RlpError
from .core.files import identities, identity_index
from .core.nifti import HEATMAP_DESCRIP, nifti_stem, out_of_memory, save_like
from .heatmap import Bundle
from .options import coarse_settings
from .overlay import MAX_PANELS, Panel, domain_note, heat_label, panel_title, percentile_text, pick_slices, render
from .results import VolumeHeatmap


def make_out_folder(folder: Path) -> None:
    """Create an output folder (and its parents), or a :class:`CannotCreate` naming it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CannotCreate(f"cannot create the output folder ({exc.strerror or exc})", folder) from None


def process_input(inp: str, args, bundle: Bundle, backend: Backend, out_dir: Path, seen: dict[str, str],
                  progress, label: str, inputs: dict | None = None) -> dict:
    """Make one input's outputs in ``out_dir`` and return its summary (``args``: the per-input options of
    :data:`.options.PER_INPUT` and ``force``; ``seen``: stem -> input of this folder's earlier inputs;
    ``progress``: a rich progress or None; ``inputs``: the identity index of every input, never overwritten)."""
    stem = nifti_stem(inp)
    outputs = _outputs(out_dir, stem, args.save_window_map, overlay=not args.no_overlay)
    _check_outputs(inp, outputs, stem, seen, inputs, args.force)
    task = None
    if progress is not None:
        task = progress.add_task(label, total=None)

    def on_slice(done: int, total: int) -> None:
        if task is not None:
            progress.update(task, completed=done, total=total)

    t0 = time.perf_counter()
    try:
        res = bundle.heatmap_nifti(inp, volume_index=args.volume_index, axis=args.axis, slice=args.slice,
                                   head=args.path, all_windows=args.all_windows, top_k=args.top_k,
                                   nonfinite=args.nonfinite, progress=on_slice, method=args.method,
                                   coarse=coarse_settings(args))
    finally:
        if task is not None:
            progress.remove_task(task)
    if args.strict and res.domain_warnings:
        raise BadInput(f"outside the bundle's training domain (--strict): {'; '.join(res.domain_warnings)}", inp)
    t1 = time.perf_counter()
    name = Path(inp).name
    score = {"z": "window z score |x - mu| / b", "l1": "window L1 loss"}.get(res.score, f"window {res.score} score")
    what = f"{score} (G)" if args.path == "g" else f"predicted {score} ({args.path.upper()})"
    png = None if "overlay" not in outputs else render(
        _panels(res), title=f"{name}  path {args.path}  {backend.name}", label=heat_label(what), with_input=True,
        radiological=not args.neurological, note=domain_note(res.domain_warnings))
    summary = _summary(res, bundle, backend, args, outputs)
    summary["timings"]["render_s"] = round(time.perf_counter() - t1, 4)
    summary["timings"]["total_s"] = round(time.perf_counter() - t0, 4)
    why = _heatmap_input(inp, res)
    if why:
        summary["warnings"].append(f"this looks like an rlp heatmap ({why}), not an MRI: a heatmap of a heatmap; "
                                   "leave earlier outputs out of the inputs")
    _write_outputs(outputs, res, png, summary, args.force, inp, out_dir / f".{stem}.lock")
    seen[stem] = inp
    return summary


def failure(inp: str, exc: Exception) -> tuple[str, int]:
    """Why one input failed, as one line naming it, and the exit code: a user error as it says, running out of
    memory with the input's size and what to do, anything else as an internal error (its traceback on stderr
    only when asked for). rlp-heatmap reports it and goes on; rlp-cohort records it in the input's row."""
    if isinstance(exc, RlpError):
        return (str(exc) if exc.path else f"{inp}: {exc}"), exc.code
    if isinstance(exc, MemoryError):
        return f"{inp}: {out_of_memory(inp)}", EX_SOFTWARE
    return f"{inp}: {report_internal_error(exc)}", EX_SOFTWARE


def _check_outputs(inp: str, outputs: dict[str, Path], stem: str, seen: dict[str, str], inputs: dict | None,
                   force: bool) -> None:
    """Refuse, before any work, outputs that cannot be written: too long a name, another input's, an input, or
    (without ``force``) an existing file."""
    for p in outputs.values():  # checked before any file-system call could fail with ENAMETOOLONG
        if len(os.fsencode(p.name)) > NAME_MAX:
            raise CannotCreate(f"its output name {p.name[:24]}...{p.name[-24:]} would be {len(os.fsencode(p.name))} "
                               f"bytes, more than the {NAME_MAX} a file name can have; rename the input", inp)
    if stem in seen:
        raise CannotCreate(f"its outputs would overwrite those of {seen[stem]} (same name {stem!r}); rename one", inp)
    clash = _overwrites_input(outputs, identity_index([inp]) if inputs is None else inputs)
    if clash:
        raise CannotCreate(f"its output {clash[0]} would overwrite the input {clash[1]}; inputs are never "
                           "overwritten, even with --force (choose another --out)", inp)
    if not force:  # a quick check before the work; the one that counts is made under the lock when writing
        for p in outputs.values():
            if os.path.lexists(p):  # a dangling link there is an output too: never replaced without --force
                raise CannotCreate(f"output {p} exists; pass --force to overwrite", inp)


def _outputs(out_dir: Path, stem: str, window_map: bool, overlay: bool = True) -> dict[str, Path]:
    outs = {"heatmap": out_dir / f"{stem}_heatmap.nii.gz", "overlay": out_dir / f"{stem}_overlay.png",
            "summary": out_dir / f"{stem}_summary.json"}
    if not overlay:
        del outs["overlay"]
    if window_map:
        outs["windows"] = out_dir / f"{stem}_windows.npy"
    return outs


def _panels(res: VolumeHeatmap) -> list[Panel]:
    vol, k = res.volume, res.axis
    scores = [r.max_score for r in res.results]
    if max(scores, default=0.0) > 0:
        chosen = pick_slices(scores, MAX_PANELS)
    else:
        chosen = sorted(set(np.linspace(0, len(scores) - 1, min(len(scores), MAX_PANELS)).round().astype(int)))
    spacing = tuple(z for j, z in enumerate(vol.zooms) if j != k)
    axcodes = tuple(c for j, c in enumerate(vol.axcodes()) if j != k)
    panels = []
    for i in chosen:
        c = vol.file_to_canonical_index(k, res.slices[i])
        r = res.results[i]
        title = panel_title(r.max_score, res.slices[i] if len(res.results) > 1 else None)
        title += percentile_text(r.healthy_percentile)
        panels.append(Panel(np.take(vol.data, c, axis=k), np.take(res.canonical_heatmap, c, axis=k), spacing,
                            r.top[0].box if r.top else None, title, axcodes))
    return panels


def _summary(res: VolumeHeatmap, bundle: Bundle, backend: Backend, args, outputs: dict[str, Path]) -> dict:
    body = res.summary()
    warnings = body.pop("warnings")
    warnings += [n for n in backend.notes if n not in warnings]
    out = {
        "rlp_version": __version__,
        "input": body.pop("input"),
        "outputs": {k: str(p) for k, p in outputs.items()},
        "bundle": {**bundle.describe(), "model": backend.model.key, "model_sha256": backend.model.entry.sha256},
        "backend": backend.describe(),
        "batch": bundle.batch,
        "method": args.method,
        "all_windows": bool(args.all_windows),
        **body,
        "warnings": warnings,
    }
    if "windows" in outputs:
        maps = res.window_maps
        out["window_map"] = {"shape": list(maps.shape if len(res.results) > 1 else maps.shape[1:]),
                             "axes": ("slice (file index order), " if len(res.results) > 1 else "")
                             + "window row, window column on the canonical (RAS+) model grid"}
    return out


def _write_outputs(outputs: dict[str, Path], res: VolumeHeatmap, png: bytes | None, summary: dict, force: bool,
                   inp: str, lock: Path) -> None:
    """Write every output of one input, all or nothing, from this process only (core's :func:`write_set`;
    ``lock``: one per stem, so that two runs into one folder publish one after the other)."""
    maps = res.window_maps if "windows" in outputs else None
    writers = {"heatmap": lambda p: save_like(p, res.heatmap, res.volume, force=True)}
    if png is not None:
        writers["overlay"] = lambda p: p.write_bytes(png)
    if maps is not None:
        writers["windows"] = lambda p: _save_npy(p, maps if len(res.results) > 1 else maps[0])
    writers["summary"] = lambda p: p.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    write_set(outputs, writers, force=force, lock=lock, owner=inp)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as fh:  # a file object: np.save would add .npy to a name without it
        np.save(fh, array, allow_pickle=False)


def _overwrites_input(outputs: dict[str, Path], inputs: dict) -> tuple[Path, str] | None:
    for p in outputs.values():
        for key in identities(p):
            if key in inputs:
                return p, inputs[key]
    return None


def _heatmap_input(inp: str, res: VolumeHeatmap) -> str | None:
    """Why ``inp`` looks like an rlp heatmap (its name, or the description rlp writes), or None."""
    if nifti_stem(inp).endswith("_heatmap"):
        return "its name ends in _heatmap"
    with contextlib.suppress(Exception):
        if np.asarray(res.volume.header["descrip"]).tobytes().startswith(HEATMAP_DESCRIP):
            return f"its header says {HEATMAP_DESCRIP.decode()!r}"
    return None
