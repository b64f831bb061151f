"""``rlp-cohort``: heatmaps for a whole cohort of volumes, in local worker processes or on a Ray cluster.

A verb of its own rather than more ``rlp-heatmap`` flags: a cohort run has another contract. It
resumes (volumes already made by the same bundle and settings are skipped, never refused as
existing outputs), retries volumes whose worker was lost, always mirrors the inputs' folders, and
ends with an index and a report over all volumes; ``rlp-heatmap`` stays the one-process command whose
per-file behaviour (exit 73 on existing outputs, ``--force``) scripts rely on. Both list their inputs
with :func:`rlp.runtime.inputs.list_inputs` and make each volume's outputs with the same code.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Sequence

from rlp.runtime.core.atomic import NAME_MAX
from rlp.runtime.core.cliutil import UsageError, command_parser, int_at_least, run_main
from rlp.runtime.core.errors import EX_DATAERR, EX_OK, EX_USAGE, InputMissing
from rlp.runtime.core.nifti import nifti_stem
from rlp.runtime.core.progress import progress
from rlp.runtime.heatmap import Bundle
from rlp.runtime.inputs import list_inputs, output_folders
from rlp.runtime.options import add_closing_options, add_scoring_options, coarse_settings
from rlp.runtime.outputs import make_out_folder

from .engines import LocalEngine, RayEngine, drive, split_threads
from .report import INDEX_CSV, INDEX_JSONL, REPORT_MD, write_index, write_report
from .work import FAILED, SKIPPED, BundleSpec, Settings, done_row, failed_row

PROG = "rlp-cohort"
VOLUMES = "volumes"

EPILOG = f"""\
outputs (in --out):
  {VOLUMES}/<folder>/<stem>_*     rlp-heatmap's outputs per volume (heatmap, overlay, summary), in the input's
                              folder relative to the folder all inputs share, and <stem>_cohort.json (its row and
                              the key of the bundle sha256 and settings that made it)
  {INDEX_CSV}, {INDEX_JSONL}   a row per volume: input, metadata columns, status, reason, max score, top
                              windows in mm, output paths, bundle sha256, seconds
  {REPORT_MD}            the most anomalous volumes, with cohort_scores.png and cohort_top.png (montage)

a rerun skips volumes made by the same bundle and settings and computes the rest; killing it at any
moment loses nothing. A volume whose worker dies is tried again (--retries); a bad volume fails at once.
exit status: 0 every volume done; 65 some failed (the index says which and why); 2 usage; 66 no inputs
or no bundle; 70 workers could not start; 130 interrupted.
"""


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(PROG, epilog=EPILOG,
                       description="Anomaly heatmaps for a cohort of NIfTI volumes, in local worker processes or on a "
                                   "Ray cluster: resumable, with an index and a report.")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="NIfTI files, folders (every NIfTI file below them), quoted globs, or CSV/TSV tables with a "
                        "path column (path, file, image, input or filename; other columns are kept as metadata)")
    p.add_argument("--out", metavar="DIR", default="rlp-cohort-out", help="output folder (default ./rlp-cohort-out)")
    p.add_argument("--bundle", metavar="DIR", help="model bundle (default: the embedded demo bundle)")
    p.add_argument("--ray", nargs="?", const="auto", metavar="auto|ADDRESS",
                   help="run on Ray: auto (the cluster RAY_ADDRESS or `ray start` names, else a Ray started on this "
                        "machine) or a cluster's address; without --ray: local worker processes")
    p.add_argument("--workers", type=int_at_least(1), default=None,
                   help="worker processes or Ray actors (default: local, the CPU cores; Ray, its CPUs / --threads)")
    p.add_argument("--threads", type=int_at_least(1), default=None,
                   help="onnxruntime threads per worker (default: local, cores / workers; Ray, 1)")
    p.add_argument("--retries", type=int_at_least(0), default=2,
                   help="tries again for a volume whose worker died (default 2)")
    # rlp-heatmap's scoring options, from one table (rlp.runtime.options): the same flags, choices and defaults
    add_scoring_options(p, backend=dict(default="ort-cpu", help="inference backend of every worker (default ort-cpu)"),
                        strict=dict(help="a volume outside the bundle's training domain fails (a failed row) instead "
                                         "of a warning"))
    p.add_argument("--report-top", type=int_at_least(1), default=6, metavar="N",
                   help="volumes in the report's montage (default 6)")
    add_closing_options(p, quiet="no progress bar or messages on stderr",
                        json="print the cohort's counts and files as JSON on stdout")
    return p


def settings_of(args) -> Settings:
    return Settings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Settings)})


def make_tasks(args, out: Path) -> tuple[list[dict], list[dict]]:
    """(tasks to run, rows already failed): every input, numbered, with its mirrored output folder."""
    inputs = list_inputs(args.inputs)
    if not inputs:
        raise InputMissing("no inputs")
    folders = output_folders([i.path for i in inputs], "mirror")
    tasks, failed, taken = [], [], {}
    for n, inp in enumerate(inputs):
        task = {"n": n, "path": inp.path, "meta": inp.meta, "out_dir": str(out / VOLUMES / folders[inp.path])}
        name = (task["out_dir"], nifti_stem(inp.path))
        why = None
        if name in taken:
            why = (f"its outputs would overwrite those of {taken[name]} (same name {name[1]!r} in one folder); "
                   "rename one")
        elif len(os.fsencode(name[1] + "_summary.json")) > NAME_MAX:
            why = f"its output names would be longer than the {NAME_MAX} bytes a file name can have; rename it"
        if why:
            failed.append({**failed_row(task, f"{inp.path}: {why}"), "n": n})
        else:
            taken[name] = inp.path
            tasks.append(task)
    return tasks, failed


def _engine(args, spec: BundleSpec, settings: Settings, todo: int):
    if args.ray:
        return RayEngine(spec, settings, args.ray, args.workers, args.threads or 1)
    workers, threads = split_threads(min(args.workers or os.cpu_count() or 1, max(1, todo)), args.threads)
    return LocalEngine(dataclasses.replace(spec, threads=threads), settings, workers)


def run_cohort(args) -> dict:
    """Run the cohort ``args`` describe; returns the counts and files (the ``--json`` output)."""
    out = Path(args.out)
    settings = settings_of(args)
    coarse_settings(args)
    with Bundle.load(args.bundle, backend=args.backend, batch=args.batch, precision=args.precision,
                     score=args.score) as bundle:  # checked once here: usage errors before any worker starts
        bundle.backend(settings.path)
        bundle.check_method(settings.path, settings.method)
        spec = BundleSpec(str(bundle.root), bundle.manifest_sha256, args.backend, args.threads, args.batch,
                          args.precision, args.score)
    tasks, failed = make_tasks(args, out)  # a table that cannot be read stops here, before --out is made
    make_out_folder(out)
    key = settings.key(spec.sha256)
    rows: dict[int, dict] = {r["n"]: {**r, "attempts": 0} for r in failed}
    todo = []
    for t in tasks:
        row = done_row(t, key)
        if row is None:
            todo.append(t)
        else:
            rows[t["n"]] = {**row, "input": t["path"], "meta": t["meta"], "status": SKIPPED, "attempts": 0}
    t0 = time.monotonic()
    engine_name = f"ray ({args.ray})" if args.ray else "local"
    with progress(args.quiet, extra="{task.fields[info]}") as bar:
        say = (lambda msg: None) if args.quiet else (lambda msg: _say(bar, msg))
        task_id = bar.add_task("cohort", total=len(tasks) + len(failed), completed=len(rows), info="")
        computed = []

        def on_row(row: dict) -> None:
            rows[row["n"]] = row
            computed.append(row["n"])
            if row["status"] == FAILED:
                say(row["reason"])
            bar.update(task_id, advance=1, info=_info(rows, len(computed), t0))

        for r in failed:
            say(r["reason"])
        if todo:
            engine = _engine(args, spec, settings, len(todo))
            try:
                drive(engine, todo, args.retries, on_row)
            finally:
                engine.close()
    ordered = [rows[n] for n in sorted(rows)]
    files = [*write_index(out, ordered), write_report(out, ordered, dataclasses.asdict(settings), engine_name,
                                                      args.report_top)]
    counts = {s: sum(r["status"] == s for r in ordered) for s in ("ok", SKIPPED, FAILED)}
    return {"volumes": len(ordered), **counts, "engine": engine_name, "seconds": round(time.monotonic() - t0, 3),
            "files": [str(f) for f in files]}


def _info(rows: dict, computed: int, t0: float) -> str:
    failed = sum(r["status"] == FAILED for r in rows.values())
    rate = 60 * computed / max(time.monotonic() - t0, 1e-9)
    return f"failed {failed}, {rate:.1f} vol/min"


def _say(bar, msg: str) -> None:
    console = getattr(bar, "console", None)
    if console is not None:
        console.print(f"{PROG}: {msg}", soft_wrap=True, markup=False, highlight=False, emoji=False)
    else:
        print(f"{PROG}: {msg}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EX_USAGE
    except SystemExit as exc:  # --help, --version
        return int(exc.code or 0)

    def body() -> int:
        with warnings.catch_warnings():
            if not os.environ.get("RLP_DEBUG"):
                warnings.simplefilter("ignore")
            result = run_cohort(args)
        if args.json:
            print(json.dumps(result, indent=2))
        if not args.quiet:
            print(f"{PROG}: {result['volumes']} volumes: {result['ok']} done, {result[SKIPPED]} already done, "
                  f"{result[FAILED]} failed; index {Path(args.out) / INDEX_CSV}, report {Path(args.out) / REPORT_MD}",
                  file=sys.stderr)
        return EX_DATAERR if result[FAILED] else EX_OK

    return run_main(PROG, body)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
