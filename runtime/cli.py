"""``rlp-heatmap``: anomaly heatmaps for NIfTI slices and volumes, without PyTorch."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Sequence

from .backends import TABLE, Backend, available_backends
from .core.cliutil import UsageError, command_parser, int_at_least, run_main
from .core.errors import EX_OK
from .core.files import identity_index
from .core.progress import progress
from .demo_table import demo_table
from .heatmap import NO_BUNDLE, Bundle, default_bundle, demo_slices
from .inputs import LAYOUTS, list_inputs, output_folders
from .options import add_closing_options, add_scoring_options, coarse_settings
from .outputs import failure, make_out_folder, process_input
from .overlay import MAX_PANELS, percentile_text

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


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(PROG, epilog=EPILOG,
                       description="Anomaly heatmaps for brain MRI slices and volumes (NIfTI) from an rlp bundle: "
                                   "R predicts each window's score (fast); G computes it (exact, slow): by default "
                                   "how far G's reconstruction of the box is from the tissue in units of the error G "
                                   "expects there on healthy tissue (|x - mu| / b), or the paper's raw L1 (--score "
                                   "l1, path g).")
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="NIfTI files (.nii, .nii.gz): 2D, 3D or 4D with one volume (or --volume-index); folders "
                        "(every NIfTI file below them), quoted globs ('scans/**/*.nii.gz') or CSV/TSV tables with a "
                        "path column; none: the demo slices that ship with rlp (held-out MNI152 slices with synthetic "
                        "lesions), with a table of top-window hits")
    p.add_argument("--bundle", metavar="DIR",
                   help="model bundle written by rlp-export (default: the embedded demo bundle)" if default_bundle()
                   else "model bundle written by rlp-export (required: this install has no embedded demo bundle)")
    p.add_argument("--out", metavar="DIR", default="rlp-out", help="output folder (default: ./rlp-out)")
    p.add_argument("--out-layout", choices=LAYOUTS, default="auto",
                   help="flat: every output in --out; mirror: in --out/<the input's folder, relative to the folder all "
                        "inputs share>, so inputs with one name in different folders cannot collide; auto (default): "
                        "flat unless two inputs have one name")
    add_scoring_options(p, before={"score": _list_backends, "axis": _threads, "strict": _force})
    add_closing_options(p, quiet="no progress bar, warnings or notes on stderr",
                        json="print the summaries as one JSON list on stdout")
    return p


def _list_backends(p: argparse.ArgumentParser) -> None:
    p.add_argument("--list-backends", action="store_true",
                   help="print the backends (GPU, auto order, incremental, install) and which are available here")


def _threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int_at_least(1), default=None,
                   help="CPU threads for onnxruntime (default: all cores)")


def _force(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")


# --------------------------------------------------------------------------- helpers
_live = None  # the rich console while a progress bar is shown (messages must go through it)


def _say(msg: str) -> None:
    if _live is not None:  # printed above the bar; soft wrap keeps one message one line
        _live.print(f"{PROG}: {msg}", soft_wrap=True, markup=False, highlight=False, emoji=False)
    else:
        print(f"{PROG}: {msg}", file=sys.stderr, flush=True)


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
            demo_table(args)
        return rc


def _run(args) -> int:
    args.inputs = [i.path for i in list_inputs(args.inputs)]  # folders, globs and tables -> files
    bundle = Bundle.load(args.bundle, backend=args.backend, threads=args.threads, batch=args.batch,
                         precision=args.precision, score=args.score)
    backend = bundle.backend(args.path)
    coarse_settings(args)  # usage errors before any work
    bundle.check_method(args.path, args.method)  # a usage error for a model it cannot serve; notes join the backend's
    out_dir = Path(args.out)
    made = [p for p in (out_dir, *out_dir.parents) if not os.path.lexists(p)]  # folders this call creates
    make_out_folder(out_dir)
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


def _attempt(inp: str, *context) -> tuple[dict, int]:
    """Process one input; a failure is reported in one line and does not stop the others."""
    try:
        summary = process_input(inp, *context)
        return {**summary, "ok": True}, EX_OK
    except Exception as exc:  # one input: a user error, out of memory, a bug (Ctrl-C and SIGTERM stop the run)
        msg, code = failure(inp, exc)
    _say(msg)
    return {"input": inp, "ok": False, "error": msg, "exit_code": code}, code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
