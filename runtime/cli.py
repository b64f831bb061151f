"""``rlp-heatmap``: anomaly heatmaps for NIfTI slices and volumes, without PyTorch."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from . import __version__
from .core.atomic import NAME_MAX, write_set
from .backends import AUTO_ORDER, BACKENDS, TABLE, Backend, available_backends
from .coarse import NAME as COARSE
from .coarse import CoarseToFine
from .core.cliutil import OneLineParser, UsageError, int_at_least, report_internal_error, run_main
from .core.files import identities, identity_index
from .core.errors import EX_OK, EX_SOFTWARE, EX_USAGE, BadInput, CannotCreate, RlpError
from .core.geometry import SCORES
from .inputs import LAYOUTS, list_inputs, output_folders
from .heatmap import DEFAULT_BATCH, METHODS, NO_BUNDLE, PRECISIONS, Bundle, default_bundle, demo_slices
from .orchestrate import DEFAULT_TOP_K, NONFINITE
from .results import VolumeHeatmap, box_hits
from .core.manifest import head_role
from .core.nifti import AXES, HEATMAP_DESCRIP, LESION_SUFFIX, load_nifti, nifti_stem, out_of_memory, save_like
from .overlay import MAX_PANELS, Panel, domain_note, heat_label, panel_title, percentile_text, pick_slices, render
from .core.progress import progress

PROG = "rlp-heatmap"

EPILOG = f"""\
outputs (in --out, per input <stem>):
  <stem>_heatmap.nii.gz   float32 heatmap with the input's shape, affine, qform and sform, no scaling
                          (scl_slope stored as NaN: unset); each voxel the mean of the windows covering it
  <stem>_overlay.png      the slice (or, for volumes, a montage of the {MAX_PANELS} slices with the
                          highest scores) in grey beside the same with the heatmap in colour, the top
                          window boxed; sides marked (L/R, A/P, S/I), radiological unless --neurological;
                          titles: the top window's score; colours: per-voxel mean of window scores
  <stem>_summary.json     bundle and manifest hash, path, backend, timings, windows evaluated,
                          top windows with voxel and world (mm) coordinates, the top window's score
                          (max_score) and the heatmap's largest voxel (heatmap_max), warnings
  <stem>_windows.npy      with --save-window-map: the window map (rows x cols; slices x rows x cols
                          for volumes), 0 where a window was skipped

existing outputs are never overwritten without --force: an input whose outputs exist fails
(exit 73) and the other inputs still run; inputs are never overwritten, even with --force.
All files are written atomically; an input that fails (or Ctrl-C) leaves none of its outputs
behind. Runs sharing one --out publish each output set under a lock (--out/.<stem>.lock):
every set is complete and from one run.

non-finite voxels (NaN/Inf): refused by default (the bundle's preprocessing policy);
--nonfinite zero replaces them with 0 (background) and warns. Slices with no brain tissue,
or with one value everywhere, get a heatmap of 0 and a warning.

valid inputs: what the bundle was trained on (the demo bundle: skull-stripped T1 slices of a whole
brain, background exactly 0, axial, about 1 mm voxels and a 150-350 mm field of view). A bundle that
records its training domain checks every input against it (axis, brain fraction of the field of view,
field of view, voxel size, brain intensity profile after normalisation); each failed check is a
warning on stderr and in the summary's "warnings" and "domain", and the overlay says so; --strict
refuses such an input instead (exit 65, no output). The summary, the overlay and the printed line
give the top score as a percentile of the bundle's healthy held-out slices ("healthy_percentile").

exit status: 0 all inputs done; otherwise the first failure's code: 2 usage, 65 bad input
data, 66 input or bundle missing, 70 internal or backend failure, 73 cannot create output,
74 I/O error, 77 refused for security (bundle hashes, paths, custom operators), 130 interrupted
(Ctrl-C), 143 terminated (SIGTERM: the same cleanup as Ctrl-C).
"""


def _heatmap_path(text: str) -> str:
    try:
        head_role(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a heatmap path (g, r or r-NAME)") from None
    return text


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction in [0, 1]")
    return v


def _coarse(args) -> CoarseToFine | None:
    """The coarse-to-fine settings (None for the other methods; the options must not be given then)."""
    given = {k: v for k, v in (("factor", args.coarse_factor), ("refine", args.refine)) if v is not None}
    if args.method != COARSE:
        if given:
            raise RlpError(f"--coarse-factor and --refine apply to --method {COARSE} only", code=EX_USAGE)
        return None
    return CoarseToFine(**given)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
                description="Anomaly heatmaps for brain MRI slices and volumes (NIfTI) from an rlp bundle: "
                            "R predicts each window's score (fast); G computes it (exact, slow): by default how far G's "
                            "reconstruction of the box is from the tissue in units of the error G expects there on "
                            "healthy tissue (|x - mu| / b), or the paper's raw L1 (--score l1, path g).")
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="NIfTI files (.nii, .nii.gz): 2D, 3D or 4D with one volume (or --volume-index); folders (every "
                        "NIfTI file below them), quoted globs ('scans/**/*.nii.gz') or CSV/TSV tables with a path column; none: the demo "
                        "slices that ship with rlp (held-out MNI152 slices with synthetic lesions), with a table of "
                        "top-window hits")
    p.add_argument("--bundle", metavar="DIR",
                   help="model bundle written by rlp-export (default: the embedded demo bundle)" if default_bundle()
                   else "model bundle written by rlp-export (required: this install has no embedded demo bundle)")
    p.add_argument("--out", metavar="DIR", default="rlp-out", help="output folder (default: ./rlp-out)")
    p.add_argument("--out-layout", choices=LAYOUTS, default="auto",
                   help="flat: every output in --out; mirror: in --out/<the input's folder, relative to the folder all "
                        "inputs share>, so inputs with one name in different folders cannot collide; auto (default): "
                        "flat unless two inputs have one name")
    p.add_argument("--path", type=_heatmap_path, default="r",
                   help="r: the bundle's predictor (default, fast); r-NAME: a predictor variant the bundle also holds; "
                        "g: G, exact and slow")
    p.add_argument("--method", choices=METHODS, default="plain",
                   help="plain (default): every window through the model; incremental: the same scores, recomputing "
                        "only what each box changes (predictors that read the whole slice, on onnxruntime); "
                        "coarse-to-fine: APPROXIMATE, a coarse lattice of windows, then exactly only the windows it "
                        "finds high, the others estimated between them")
    p.add_argument("--coarse-factor", type=int_at_least(2), default=None, metavar="N",
                   help=f"coarse-to-fine: score every N-th window row and column first (default {CoarseToFine.factor})")
    p.add_argument("--refine", type=_fraction, default=None, metavar="F",
                   help=f"coarse-to-fine: then score exactly the fraction F of the other windows with the highest "
                        f"estimates (default {CoarseToFine.refine})")
    p.add_argument("--backend", choices=("auto",) + BACKENDS, default="auto",
                   help=f"inference backend (default auto: {', then '.join(AUTO_ORDER)}; --list-backends)")
    p.add_argument("--list-backends", action="store_true",
                   help="print the backends (GPU, auto order, incremental, install) and which are available here")
    p.add_argument("--score", choices=tuple(SCORES), default=None,
                   help="the G path's window score (default: the bundle's, normally z: |x - mu| / b, G's error in "
                        "units of the error it expects on healthy tissue there); l1: the paper's raw L1 (--path g only)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto: the bundle's fp16 models on GPU backends, fp32 on the CPU")
    p.add_argument("--batch", type=int_at_least(1), default=DEFAULT_BATCH, help=f"windows per model call (default {DEFAULT_BATCH})")
    p.add_argument("--threads", type=int_at_least(1), default=None, help="CPU threads for onnxruntime (default: all cores)")
    p.add_argument("--axis", choices=tuple(AXES), default="axial",
                   help="slice orientation for volumes (default axial; single-slice files use their own)")
    p.add_argument("--slice", type=int_at_least(0), default=None, metavar="N",
                   help="only the slice with voxel index N along the file axis closest to --axis (as viewers show it)")
    p.add_argument("--volume-index", type=int_at_least(0), default=None, metavar="N",
                   help="4D files: use volume N (0-based, along the fourth axis) instead of refusing a file with "
                        "several volumes; the outputs have the 3D grid")
    p.add_argument("--all-windows", action="store_true", help="evaluate windows without brain tissue too")
    p.add_argument("--save-window-map", action="store_true", help="also write <stem>_windows.npy")
    p.add_argument("--neurological", action="store_true",
                   help="overlays in the neurological convention (the patient's left on the left); default: "
                        "radiological (the patient's left on the right), sides marked from the input's affine")
    p.add_argument("--top-k", type=int_at_least(0), default=DEFAULT_TOP_K, metavar="K",
                   help=f"windows listed in the summary (default {DEFAULT_TOP_K})")
    p.add_argument("--nonfinite", choices=NONFINITE, default=None,
                   help="NaN/Inf voxels: error (default, from the bundle) or zero (replace with 0 and warn)")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    p.add_argument("--strict", action="store_true",
                   help="refuse an input that fails a training-domain check (exit 65, no output) instead of warning")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar, warnings or notes on stderr")
    p.add_argument("--json", action="store_true", help="print the summaries as one JSON list on stdout")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


# --------------------------------------------------------------------------- helpers
_live = None  # the rich console while a progress bar is shown (messages must go through it)


def _say(msg: str) -> None:
    if _live is not None:  # printed above the bar; soft wrap keeps one message one line
        _live.print(f"{PROG}: {msg}", soft_wrap=True, markup=False, highlight=False, emoji=False)
    else:
        print(f"{PROG}: {msg}", file=sys.stderr, flush=True)


def _outputs(out_dir: Path, stem: str, window_map: bool) -> dict[str, Path]:
    outs = {"heatmap": out_dir / f"{stem}_heatmap.nii.gz", "overlay": out_dir / f"{stem}_overlay.png",
            "summary": out_dir / f"{stem}_summary.json"}
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


def _write_outputs(outputs: dict[str, Path], res: VolumeHeatmap, png: bytes, summary: dict, force: bool,
                   inp: str, lock: Path) -> None:
    """Write every output of one input, all or nothing, from this process only (core's :func:`write_set`;
    ``lock``: one per stem, so that two runs into one folder publish one after the other)."""
    maps = res.window_maps if "windows" in outputs else None
    writers = {"heatmap": lambda p: save_like(p, res.heatmap, res.volume, force=True),
               "overlay": lambda p: p.write_bytes(png)}
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

@contextlib.contextmanager
def _progress(quiet: bool):
    """A transient progress bar on stderr, only on a terminal (logs get the one-line messages alone)."""
    global _live
    with progress(quiet, transient=True, silent=lambda: None) as bar:
        _live = None if bar is None else bar.console
        try:
            yield bar
        finally:
            _live = None


# --------------------------------------------------------------------------- main
def _process(inp: str, args, bundle: Bundle, backend: Backend, out_dir: Path, seen: dict[str, str],
             progress, label: str, inputs: dict | None = None) -> dict:
    stem = nifti_stem(inp)
    outputs = _outputs(out_dir, stem, args.save_window_map)
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
    if not args.force:  # a quick check before the work; the one that counts is made under the lock when writing
        for p in outputs.values():
            if os.path.lexists(p):  # a dangling link there is an output too: never replaced without --force
                raise CannotCreate(f"output {p} exists; pass --force to overwrite", inp)
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
                                   coarse=_coarse(args))
    finally:
        if task is not None:
            progress.remove_task(task)
    if args.strict and res.domain_warnings:
        raise BadInput(f"outside the bundle's training domain (--strict): {'; '.join(res.domain_warnings)}", inp)
    t1 = time.perf_counter()
    name = Path(inp).name
    score = {"z": "window z score |x - mu| / b", "l1": "window L1 loss"}.get(res.score, f"window {res.score} score")
    what = f"{score} (G)" if args.path == "g" else f"predicted {score} ({args.path.upper()})"
    png = render(_panels(res), title=f"{name}  path {args.path}  {backend.name}", label=heat_label(what),
                 with_input=True, radiological=not args.neurological, note=domain_note(res.domain_warnings))
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


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(PROG, lambda: _main(argv))  # usage and bundle-level errors, Ctrl-C (130), bugs as one line


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.list_backends:
        print(backend_table())
        return EX_OK
    if args.bundle is None and default_bundle() is None:
        raise UsageError(NO_BUNDLE)
    demo = not args.inputs
    if demo:
        args.inputs = [str(p) for p in demo_slices()]
        if not args.inputs:
            raise UsageError(f"no INPUT given and this install ships no demo slices (see {PROG} --help)")
    with warnings.catch_warnings():
        if not os.environ.get("RLP_DEBUG"):  # library RuntimeWarnings are not for users; our own notes are
            warnings.simplefilter("ignore")
        args.done = []
        rc = _run(args)
        if demo:
            _demo_table(args)
        return rc


def _run(args) -> int:
    args.inputs = [i.path for i in list_inputs(args.inputs)]  # folders, globs and tables -> files
    bundle = Bundle.load(args.bundle, backend=args.backend, threads=args.threads, batch=args.batch,
                         precision=args.precision, score=args.score)
    backend = bundle.backend(args.path)
    _coarse(args)  # usage errors before any work
    bundle.check_method(args.path, args.method)  # a usage error for a model it cannot serve; notes join the backend's
    out_dir = Path(args.out)
    made = [p for p in (out_dir, *out_dir.parents) if not os.path.lexists(p)]  # folders this call creates
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CannotCreate(f"cannot create the output folder ({exc.strerror or exc})", out_dir) from None
    try:
        return _run_inputs(args, bundle, backend, out_dir)
    finally:  # every input failed (or an interrupt): no empty folder is left behind by this call
        for folder in made:
            try:
                folder.rmdir()  # only if empty
            except OSError:
                break


def _run_inputs(args, bundle: Bundle, backend: Backend, out_dir: Path) -> int:
    if not args.quiet:
        auto = backend.details.get("auto")
        how = ""
        if auto:
            how = " (auto" + (f"; unavailable: {', '.join(auto['skipped'])}" if auto["skipped"] else "") + ")"
        _say(f"backend {backend.name}{how}, model {backend.model.key} from {bundle.root}")
        for note in backend.notes:
            _say(f"note: {note}")
    first_failure = EX_OK
    reports: list[dict] = []
    seen: dict[str, dict[str, str]] = {}  # output folder -> stem -> input
    inputs = identity_index(args.inputs)
    folders = output_folders(args.inputs, args.out_layout)
    with bundle, _progress(args.quiet) as progress:
        for n, inp in enumerate(args.inputs, 1):
            label = f"[{n}/{len(args.inputs)}] {Path(inp).name}"
            sub = out_dir / folders[inp]
            made = [p for p in (sub, *sub.parents) if p != out_dir and out_dir in p.parents and not p.exists()]
            sub.mkdir(parents=True, exist_ok=True)
            report, code = _attempt(inp, args, bundle, backend, sub, seen.setdefault(str(sub), {}), progress, label,
                                    inputs)
            for folder in made:  # a mirrored folder this input created and left empty (it failed)
                with contextlib.suppress(OSError):
                    folder.rmdir()
            reports.append(report)
            if code == EX_OK and isinstance(getattr(args, "done", None), list):
                args.done.append(inp)  # what this call computed: the demo's table shows only these
            first_failure = first_failure or code
            if code == EX_OK and not args.quiet:
                for w in report["warnings"]:
                    if w not in backend.notes:  # those were said once, above
                        _say(f"{inp}: warning: {w}")
                top = report["top_windows"][0] if report["top_windows"] else None
                where = f" at voxel {top['voxel']} ({top['world_mm']} mm)" if top else ""
                where += percentile_text(report["healthy_percentile"])
                _say(f"{inp}: max score {report['max_score']:.4g}{where} -> {report['outputs']['heatmap']} "
                     f"({report['timings']['total_s']:.1f} s)")
    if args.json:
        print(json.dumps(reports, indent=2))
    return first_failure


#: the bundled demo model's measured weakness (runtime/demo/MODEL_CARD.md, the lesion suite of its run, seed 0),
#: printed under the demo's table while it lasts
DEMO_WEAKNESS = ("demo model, measured on its lesion suite (model card): R's top window misses lesions G's finds, "
                 "55/72 against 59/72 (bright uniform 13/15 against 15/15); dark uniform lesions are missed most "
                 "(R 8/14, G 9/14)")


def _demo_table(args) -> None:
    """The zero-argument demo: where the top window is, and whether it hits the inserted lesion."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"rlp demo: path {args.path}, outputs in {args.out}")
    for col in ("slice", "lesion", "max score", "healthy pct", "top window (voxel)", "hits lesion"):
        t.add_column(col, no_wrap=True)
    hits = n = 0
    for inp in getattr(args, "done", args.inputs):  # only the inputs this call computed, never an earlier run's
        summary = Path(args.out) / f"{nifti_stem(inp)}_summary.json"
        mask_file = Path(inp).with_name(f"{nifti_stem(inp)}{LESION_SUFFIX}.nii.gz")
        if not summary.is_file() or not mask_file.is_file():
            continue
        rep = json.loads(summary.read_text(encoding="utf-8"))
        top = rep["top_windows"][0] if rep["top_windows"] else None
        hit = top is not None and box_hits(top["box_slice"], _lesion_slice(load_nifti(mask_file), top["slice"]))
        hits += hit
        n += 1
        t.add_row(Path(inp).name, nifti_stem(inp).rsplit("_", 1)[-1],  # the demo names end in the lesion's kind
                  f"{rep['max_score']:.4g}", _pct(rep.get("healthy_percentile")),
                  "-" if top is None else str([round(v) for v in top["voxel"]]), "yes" if hit else "no")
    if n:
        t.caption = f"top window in the lesion: {hits}/{n}"
        console = Console()
        if not console.is_terminal:
            console = Console(width=140)  # pipes and logs: no column truncation
        console.print(t)
        if args.bundle is None:  # the embedded demo bundle: its known weakness, where its user looks
            console.print(DEMO_WEAKNESS, soft_wrap=True, markup=False, highlight=False)


def _pct(p: float | None) -> str:
    return "-" if p is None else f"{p:.0f}"


def backend_table() -> str:
    """The backend table (:data:`rlp.runtime.backends.TABLE`) as text, with whether each is installed here."""
    here = set(available_backends())
    head = ("name", "GPU", "auto", "incremental", "installed here", "runs the model; install")
    rows = [(b.name, "yes" if b.gpu else "no", "-" if b.auto is None else str(b.auto), "yes" if b.incremental else "no",
             "yes" if b.name in here else "no", f"{b.runs}; {b.install}") for b in TABLE]
    width = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, width)) + "  " + r[-1] for r in (head, *rows)]
    return "\n".join(lines + ["auto tries the backends in the auto column's order, on the first that starts "
                              "(installed here: its library imports; a GPU is checked when it starts)"])


def _lesion_slice(mask, index: int) -> np.ndarray:
    """The lesion mask's slice with file index ``index`` (along its slice axis), as booleans."""
    k = mask.slice_axis()
    return np.take(mask.data, mask.file_to_canonical_index(k, index), axis=k) > 0


def _attempt(inp: str, *context) -> tuple[dict, int]:
    """Process one input; a failure is reported in one line and does not stop the others."""
    try:
        summary = _process(inp, *context)
        return {**summary, "ok": True}, EX_OK
    except RlpError as exc:
        msg, code = (str(exc) if exc.path else f"{inp}: {exc}"), exc.code
    except MemoryError:
        msg, code = f"{inp}: {out_of_memory(inp)}", EX_SOFTWARE
    except Exception as exc:  # a bug: one line, the traceback only on request
        msg, code = f"{inp}: {report_internal_error(exc)}", EX_SOFTWARE
    _say(msg)
    return {"input": inp, "ok": False, "error": msg, "exit_code": code}, code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
