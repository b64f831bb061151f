"""``rlp-bench``: the R path against the full G path, side by side, on this machine, in one run.

    rlp-bench --out bench-out                       # the embedded demo bundle and demo slices
    rlp-bench --bundle B --run RUN --quick          # a smoke run in under two minutes
    rlp-bench --bundle B --inputs slices/ --paths r --backends ort-cpu

Every row (path x backend, see :mod:`rlp.bench.rows`) runs in a process of its
own; the exact G maps that fidelity is measured against are computed in this
process, independently of the rows. The report's schema is documented in
:mod:`rlp.bench.report`.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from rlp.runtime import __version__
from rlp.runtime.core.atomic import atomic_dir, write_bytes, write_json, write_text
from rlp.runtime.backends import available_backends, ort_providers
from rlp.runtime.coarse import NAME as COARSE
from rlp.runtime.core.cliutil import OneLineParser, comma_subset, int_at_least, run_main
from rlp.runtime.core.errors import EX_SOFTWARE, EX_USAGE, CannotCreate, InputMissing, RlpError, Unavailable
from rlp.runtime.heatmap import DEFAULT_BATCH, HEADS, NO_BUNDLE, Bundle, default_bundle, demo_slices
from rlp.runtime.core.manifest import HEAD_PATTERN, MANIFEST, load_bundle_manifest, model_head, sha256_file
from rlp.runtime.core.nifti import load_nifti
from rlp.runtime.core.progress import progress
from rlp.runtime.core.runfolder import RunFolder

from . import plots, report as rep
from .cases import HELDOUT, LESION, brain_of, find_inputs, heldout_cases, load_case, nifti_cases
from .suite import SUITE_HEALTHY, SUITE_LESIONS, suite_cases
from .rows import (ALL_BACKENDS, TORCH_BACKENDS, WARMUP_BATCHES, Row, backend_facts, check_run_matches, load_maps,
                   map_record, run_row)

PROG = "rlp-bench"
#: mode defaults: timed runs, lesion slices (None: all), held-out slices, G windows timed (None: all)
MODES = {"quick": {"runs": 3, "slices": 1, "heldout": 0, "g_windows": 256},
         "full": {"runs": 5, "slices": None, "heldout": 4, "g_windows": None}}
PANELS = 3
REFERENCE_BACKEND = "ort-cpu"  # the exact G maps (fidelity reference) are made with it, in the parent

EPILOG = f"""\
rows: every heatmap path (--paths) on every backend available here (--backends): onnxruntime (and
TensorRT) on the bundle's ONNX models; torch-cpu/torch-cuda: PyTorch eager on the checkpoints of
--run (the paper's setting), when PyTorch is installed. Each row runs in a process of its own.

slices: --inputs (NIfTI slices; a lesion mask <stem>_lesion.nii.gz beside an image is used for the
localisation metrics), else (with --run) the lesion suite built from the run's held-out slices
(validation and test splits; {SUITE_LESIONS} lesion slices of five kinds and {SUITE_HEALTHY} healthy ones, a third
of each rotated and shifted; from --seed), else the demo slices that ship with rlp.

--quick: {MODES['quick']['runs']} runs, {MODES['quick']['slices']} lesion slice, no held-out slice; G timed on \
{MODES['quick']['g_windows']} windows and extrapolated to the
whole slice (labelled "extrapolated from N windows" in every output); only the {REFERENCE_BACKEND} G row
makes full G maps. Full runs: {MODES['full']['runs']} runs, every lesion slice, {MODES['full']['heldout']} held-out \
slices, G timed on every window.

outputs (in --out, written atomically; an existing --out is refused without --force):
  report.json   every number, schema "rlp.bench.report" version {rep.SCHEMA_VERSION} (documented in rlp.bench.report)
  report.md     tables, the command that produced them, the environment
  latency.png, memory.png, panels.png   bars per row; input, lesion, G and R heatmaps for a few slices

exit status: 0 every row ran; 70 a row failed (the report is still written); 2 usage; 65 bad input;
66 input or bundle missing; 73 cannot create --out; 130 interrupted; 143 terminated (SIGTERM).
"""


_positive, _count = int_at_least(1), int_at_least(0)
VOLUME_LIMIT_S = 120


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
                description="Measure rlp's heatmap paths side by side on this machine: latency, peak memory, "
                            "fidelity of R to the exact G map, and lesion localisation.")
    p.add_argument("--bundle", metavar="DIR", help="bundle written by rlp-export (default: the embedded demo bundle)")
    p.add_argument("--run", metavar="RUN", help="the training run the bundle came from: PyTorch eager rows and "
                                               "held-out slices")
    p.add_argument("--inputs", nargs="+", metavar="PATH", help="NIfTI slices or folders (default: the demo slices)")
    p.add_argument("--out", default="bench-out", metavar="DIR", help="report folder (default: ./bench-out)")
    p.add_argument("--quick", action="store_true", help="a smoke run: fewer runs and slices, G extrapolated")
    p.add_argument("--runs", type=_positive, metavar="N", help="timed heatmaps per row (default 5; --quick 3)")
    p.add_argument("--threads", type=_positive, metavar="N", help="CPU threads per row (default: the usable cores)")
    p.add_argument("--batch", type=_positive, default=DEFAULT_BATCH, metavar="N",
                   help=f"windows per model call, every row (default {DEFAULT_BATCH})")
    p.add_argument("--paths", type=comma_subset(HEADS, HEAD_PATTERN, " (and predictor variants r-NAME)"), default=None,
                   metavar="r,g", help="paths to measure (default: every path of the bundle: g, r and its predictor "
                                       "variants r-NAME)")
    p.add_argument("--backends", type=comma_subset(ALL_BACKENDS), metavar="LIST",
                   help=f"backends, comma-separated, of {','.join(ALL_BACKENDS)} (default: every one available; "
                        "ort-trt only by name, it builds engines first)")
    p.add_argument("--slices", type=_positive, metavar="N",
                   help=f"lesion slices to use (default all; the suite: {SUITE_LESIONS}; --quick 1)")
    p.add_argument("--healthy", type=_positive, metavar="N",
                   help=f"healthy slices of the lesion suite (default {SUITE_HEALTHY}; --quick 1)")
    p.add_argument("--heldout", type=_count, metavar="N", help="held-out slices of --run for fidelity (default 4; --quick 0)")
    p.add_argument("--g-windows", type=_count, metavar="N",
                   help="time G on N windows and extrapolate (default: all windows; --quick 256; 0: never)")
    p.add_argument("--volume", metavar="FILE", help="also time a whole NIfTI volume (every axial slice, as "
                                                    "rlp-heatmap does) on each row expected to finish it within "
                                                    "--volume-limit")
    p.add_argument("--volume-limit", type=_positive, default=VOLUME_LIMIT_S, metavar="S",
                   help=f"skip the volume on rows whose slice latency x slices exceeds S seconds (default "
                        f"{VOLUME_LIMIT_S})")
    p.add_argument("--seed", type=int, default=0, help="seed of the lesion suite (with --run)")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress or table on stderr, only errors")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_main(PROG, lambda: Bench(build_parser().parse_args(argv), argv).run())


# --------------------------------------------------------------------------- environment
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _gpus() -> list[dict]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.stdout.splitlines() if out.returncode == 0 else []:
        parts = [x.strip() for x in line.split(",")]
        if len(parts) == 3:
            gpus.append({"name": parts[0], "memory": parts[1], "driver": parts[2]})
    return gpus


def environment(threads: int) -> dict:
    libs = ("numpy", "scipy", "onnxruntime", "onnxruntime-gpu", "onnx", "torch", "nibabel", "matplotlib",
            "tensorrt", "rich")
    return {"cpu": _cpu_model(), "cores": os.cpu_count(), "affinity_cores": len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity") else os.cpu_count(), "threads": threads,
            "loadavg_start": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
            "nice": os.nice(0) if hasattr(os, "nice") else None, "python": platform.python_version(),
            "platform": platform.platform(), "libraries": {k: _version(k) for k in libs},
            "ort_providers": ort_providers(), "gpu": _gpus()}


# --------------------------------------------------------------------------- the run
class Bench:
    def __init__(self, args: argparse.Namespace, argv: list[str]):
        self.args = args
        self.command = " ".join([PROG, *map(shlex.quote, argv)])
        mode = MODES["quick" if args.quick else "full"]
        self.mode = "quick" if args.quick else "full"
        self.runs = args.runs or mode["runs"]
        self.n_slices = args.slices or mode["slices"]
        self.n_heldout = mode["heldout"] if args.heldout is None else args.heldout
        g_windows = mode["g_windows"] if args.g_windows is None else args.g_windows
        self.g_windows = g_windows or None
        self.threads = args.threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                        else os.cpu_count() or 1)
        self.notes: list[str] = []
        self.suite: dict | None = None

    def say(self, msg: str) -> None:
        if not self.args.quiet:
            print(f"{PROG}: {msg}", file=sys.stderr, flush=True)

    # -- inputs
    def _bundle_dir(self) -> Path:
        if self.args.bundle:
            return Path(self.args.bundle)
        found = default_bundle()
        if found is None:
            raise RlpError(NO_BUNDLE, code=EX_USAGE)
        return found

    def _cases(self, run: Path | None, workdir: Path) -> tuple[list[dict], str]:
        if not self.args.inputs and run is not None:  # the lesion suite, from the run's held-out slices
            n_les = self.args.slices or (SUITE_LESIONS if self.mode == "full" else self.n_slices)
            n_healthy = SUITE_HEALTHY if self.args.healthy is None and self.mode == "full" else (self.args.healthy or 1)
            cases = suite_cases(run, workdir / "suite.npz", self.args.seed, n_les, n_healthy)
            self.suite = {"seed": self.args.seed, "lesions": n_les, "healthy": n_healthy,
                          "source": f"{RunFolder(run).heldout}: validation and test slices",
                          "cases": [{"id": c["id"], "set": c["set"], **c["suite"]} for c in cases]}
            self.notes.append(f"lesion suite: {n_les} held-out slices with one synthetic lesion each and {n_healthy} "
                              f"healthy ones (seed {self.args.seed}); every third slice of each set rotated and shifted")
            if self.args.heldout:
                cases += heldout_cases(run, self.n_heldout)
            return cases, "suite"
        if self.args.inputs:
            pairs, source = find_inputs(self.args.inputs), "inputs"
        elif demo := demo_slices():
            pairs, source = find_inputs(demo), "demo"
        else:
            raise InputMissing("no slices to measure: pass --inputs SLICES (NIfTI, with <stem>_lesion.nii.gz masks) "
                               "or --run RUN (the lesion suite is built from its held-out slices); this install has "
                               "no demo slices")
        cases = nifti_cases(pairs)[: self.n_slices]
        if run is not None and self.n_heldout:
            cases += heldout_cases(run, self.n_heldout)
        if not cases:
            raise InputMissing("no slices to measure (only lesion masks were given?)")
        return cases, source

    def paths(self, manifest) -> tuple[str, ...]:
        """--paths, or every heatmap path the bundle has (g, r, then its predictor variants r-NAME)."""
        return self.args.paths or manifest.heads() or HEADS

    def _rows(self, manifest, run: Path | None) -> tuple[list[Row], list[dict]]:
        args, skipped = self.args, []
        torch_ok = importlib.util.find_spec("torch") is not None
        if args.backends:
            for b in args.backends:
                if b in TORCH_BACKENDS and not torch_ok:
                    raise Unavailable(f"backend {b} needs PyTorch (pip install 'rlp[train]')")
            backends, requested = list(args.backends), True
        else:
            # what auto may pick (ort-trt builds engines for minutes: asked for by name only)
            backends = [b for b in available_backends(manifest.engines) if backend_facts(b).auto is not None]
            if run is not None and torch_ok:
                backends += ["torch-cpu"] + (["torch-cuda"] if _gpus() else [])
            elif run is None:
                skipped.append({"name": "torch rows", "path": None, "backend": "torch-cpu",
                                "reason": "PyTorch eager rows need --run RUN (the checkpoints)"})
            else:
                skipped.append({"name": "torch rows", "path": None, "backend": "torch-cpu",
                                "reason": "PyTorch is not installed"})
            requested = False
        rows = []
        for b in backends:
            for path in self.paths(manifest):
                row = Row(path, b, requested=requested)
                if path not in manifest.models:
                    skipped.append({**_ident(row), "reason": f"the bundle has no {path} model"})
                elif b == "trt" and not any(model_head(e.model) == path for e in manifest.engines):
                    skipped.append({**_ident(row), "reason": "the bundle has no TensorRT engine for it"})
                else:
                    rows.append(row)
                    if backend_facts(b).incremental and path[0] == "r" and manifest.models[path].input_kind == "image":
                        rows.append(Row(path, b, "incremental", requested))  # exact: checked against the row above
                    if b in ("ort-cpu", "ort-cuda") and path == "g":
                        rows.append(Row(path, b, COARSE, requested))  # approximate: measured against the row above
        if run is not None and any(r.source == "run" for r in rows):
            check_run_matches(manifest, run, sorted({r.path for r in rows if r.source == "run"}))
        if not rows:
            raise Unavailable("no row can run here: " + "; ".join(f"{s['name']}: {s['reason']}" for s in skipped))
        return rows, skipped

    def _reference(self, bundle_dir: Path, loaded: list, bar, task) -> tuple[list[dict] | None, dict | None]:
        """Exact G maps of the quality slices, computed here (G fp32 on onnxruntime's CPU provider)."""
        if REFERENCE_BACKEND not in available_backends():
            self.notes.append("no exact G reference: onnxruntime's CPU provider is missing")
            return None, None
        with Bundle.load(bundle_dir, backend=REFERENCE_BACKEND, threads=self.threads, batch=self.args.batch,
                         precision="fp32") as bundle:
            if "g" not in bundle.manifest.models:
                self.notes.append("no exact G reference: the bundle has no G model (fidelity and G localisation "
                                  "need one)")
                return None, None
            maps = []
            for image, spacing, _ in loaded:
                maps.append(map_record(bundle.heatmap_slice(image, spacing, head="g")))
                bar.advance(task)
        return maps, {"backend": REFERENCE_BACKEND, "model": "g", "precision": "fp32",
                      "where": "computed in the bench's parent process, independently of the rows"}

    def run(self) -> int:
        t0 = time.time()
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        args = self.args
        torch_rows = [b for b in args.backends or () if b in TORCH_BACKENDS]
        if torch_rows and not args.run:
            raise RlpError(f"backend {torch_rows[0]} runs the training run's checkpoints: pass --run RUN", code=EX_USAGE)
        bundle_dir = self._bundle_dir()
        out = Path(args.out)
        if out.exists() and not args.force:
            raise CannotCreate("exists; pass --force to overwrite", out)
        manifest = load_bundle_manifest(bundle_dir)
        run = None
        if args.run:
            run = Path(args.run)
            if not run.is_dir():
                raise InputMissing("run folder not found", run)
        volume = None
        if args.volume:  # a clear error now for a missing or broken file, not one per row
            vol = load_nifti(args.volume)
            volume = {"file": str(Path(args.volume).resolve()), "axis": "axial", "slices": vol.slices("axial")[1],
                      "limit_s": args.volume_limit}
            del vol
        with tempfile.TemporaryDirectory(prefix="rlp-bench-") as tmp:
            workdir = Path(tmp)
            cases, source = self._cases(run, workdir)
            rows, skipped = self._rows(manifest, run)
            loaded = [load_case(c) for c in cases]
            truth = {}
            for c, (image, _, lesion) in zip(cases, loaded):
                if c["set"] == LESION and lesion is not None and (lesion & brain_of(image)).any():
                    truth[c["id"]] = {"brain": brain_of(image), "lesion": lesion}
            lesion_cases = [c for c in cases if c["set"] == LESION]
            timing = lesion_cases[0] if lesion_cases else cases[0]
            self.say(f"bundle {bundle_dir}; {len(rows)} row(s): {', '.join(r.name for r in rows)}; "
                     f"{len(lesion_cases)} lesion + {len(cases) - len(lesion_cases)} healthy or held-out slice(s); "
                     f"{self.mode} mode, {self.runs} runs, {self.threads} threads")
            spec = {"bundle": str(bundle_dir), "run": None if run is None else str(run), "threads": self.threads,
                    "batch": args.batch, "runs": self.runs, "g_windows": self.g_windows, "timing_case": timing,
                    "quality_cases": cases, "volume": volume}
            results = []
            with progress(args.quiet) as bar:
                task = bar.add_task("exact G reference", total=len(cases))
                ref, ref_info = self._reference(bundle_dir, loaded, bar, task)
                task = bar.add_task("rows", total=len(rows))
                for i, row in enumerate(rows):
                    bar.update(task, description=row.name)
                    mine = cases if self._makes_maps(row) else []
                    res = run_row({**spec, "row": row.to_dict(), "quality_cases": mine}, workdir, f"row{i}")
                    results.append(self._finish_row(row, res, mine, ref, truth, skipped))
                    bar.advance(task)
            results = [r for r in results if r is not None]
            if not any(r["status"] == "ok" for r in results):
                why = [f"{r['name']}: {r.get('error')}" for r in results]
                why += [f"{s['name']}: {s['reason']}" for s in skipped]
                raise Unavailable(f"no row ran: {'; '.join(why)}")
            rep.add_speedups(results)
            rep.add_equality(results, lambda r: load_maps(r["map_file"], len(cases)))
            panels = self._panels(cases, loaded, truth, ref, results)
            misses = self._misses(cases, loaded, truth, ref, results)
            body = self._report(created, bundle_dir, manifest, run, cases, loaded, source, timing, results,
                                skipped, ref_info)
            pngs = {"latency": plots.latency_png(body), "memory": plots.memory_png(body),
                    "panels": plots.panels_png(panels),
                    "misses": plots.panels_png(misses)}
            body["plots"] = {k: f"{k}.png" if v else None for k, v in pngs.items()}
            body["duration_s"] = time.time() - t0
            body = rep.clean(body)
            with atomic_dir(out, force=args.force) as folder:
                write_json(folder / "report.json", body)
                write_text(folder / "report.md", rep.markdown(body) + "\n")
                for k, png in pngs.items():
                    if png:
                        write_bytes(folder / f"{k}.png", png)
        if not args.quiet:
            from rich.console import Console

            console = Console(stderr=True)
            if not console.is_terminal:  # logs: wide enough for the table instead of rich's default 80 columns
                console = Console(stderr=True, width=140)
            console.print(rep.terminal_table(body))
            for line in rep.headline_lines(body):
                self.say(line)
            self.say(f"wrote {out}/report.md, report.json and plots ({body['duration_s']:.0f} s)")
        failed = [r for r in body["rows"] if r["status"] != "ok"]
        for r in failed:
            print(f"{PROG}: row {r['name']} {r['status']}: {r.get('error')}", file=sys.stderr)
        return EX_SOFTWARE if failed else 0

    def _makes_maps(self, row: Row) -> bool:
        """--quick: a G row off the reference backend times a subset only and makes no full maps."""
        return not (self.mode == "quick" and row.path == "g" and row.backend != REFERENCE_BACKEND)

    def _finish_row(self, row: Row, res: dict, cases, ref, truth, skipped) -> dict | None:
        if res.get("status") == "unavailable" and not row.requested:
            skipped.append({**_ident(row), "reason": res.get("error")})
            self.say(f"{row.name}: skipped ({res.get('error')})")
            return None
        out = {**row.to_dict(), **res}
        if out["status"] == "unavailable":
            out["status"] = "failed"
        out["latency_label"] = rep.latency_label(res.get("latency"))
        out["fidelity"] = out["localisation"] = None
        if out["status"] == "ok" and cases:
            maps = load_maps(res["maps"], len(cases))
            out["fidelity"] = rep.fidelity_block(maps, ref, cases) if ref is not None else None
            out["localisation"] = rep.localisation_block(maps, cases, truth)
        elif out["status"] == "ok":
            out["notes"].append("--quick: no full maps for this row (no fidelity or localisation)")
        if out["status"] == "ok":
            out["map_file"] = out.pop("maps")
            lat = out["latency"]
            self.say(f"{row.name}: median {lat['median_s']:.3f} s per slice ({out['latency_label']}), "
                     f"peak RSS {out['memory']['peak_rss_bytes'] / rep.MB:.0f} MB")
        else:
            out.pop("maps", None)
            self.say(f"{row.name}: {out['status']}: {out.get('error')}")
        return out

    def _report(self, created, bundle_dir, manifest, run, cases, loaded, source, timing, results, skipped,
                ref_info) -> dict:
        geo = manifest.geometry
        lesion = [c for c in cases if c["set"] == LESION]
        desc = []
        for c, (image, spacing, les) in zip(cases, loaded):
            if c["set"] == LESION:
                desc.append({"id": c["id"], "file": c.get("file"), "lesion_file": c.get("lesion"),
                             "shape": list(image.shape), "spacing": [float(s) for s in spacing],
                             "brain_voxels": int(brain_of(image).sum()),
                             "lesion_voxels": None if les is None else int(les.sum())})
        for r in results:
            r.pop("map_file", None)  # temporary files, gone with the work folder
        return {
            "schema": rep.SCHEMA, "schema_version": rep.SCHEMA_VERSION, "rlp_version": __version__,
            "created": created, "duration_s": None, "command": self.command, "mode": self.mode,
            "settings": {"runs": self.runs, "threads": self.threads, "batch": self.args.batch,
                         "warmup": f"{WARMUP_BATCHES} batches of windows", "g_windows": self.g_windows,
                         "paths": list(self.paths(manifest)), "backends": list(self.args.backends or ["auto"]),
                         "slices": len(lesion), "heldout": len(cases) - len(lesion), "seed": self.args.seed,
                         "volume": self.args.volume, "volume_limit_s": self.args.volume_limit},
            "bundle": {"path": str(bundle_dir.resolve()), "manifest_sha256": sha256_file(bundle_dir / MANIFEST),
                       "geometry": geo.to_dict(), "windows_per_slice": geo.n_windows,
                       "models": {k: {"file": m.file, "bytes": m.size, "precision": m.precision,
                                      "input_kind": m.input_kind, "architecture": m.architecture}
                                  for k, m in manifest.models.items()}},
            "run": None if run is None else {"path": str(run.resolve())},
            "inputs": {"source": source, "timing_slice": timing["id"], "lesion": desc,
                       "heldout": [{"id": c["id"], "index": c["index"]} for c in cases if c["set"] == HELDOUT],
                       "suite": self.suite},
            "environment": environment(self.threads),
            "reference": ref_info,
            "rows": results,
            "skipped": skipped,
            "summary": rep.summary(results),
            "notes": self.notes + _standing_notes(geo, self.runs),
            "plots": {},
        }

    def _panels(self, cases, loaded, truth, ref, results) -> list[dict]:
        """Input, lesion, exact G (the reference) and R (the headline backend's R row) for a few lesion slices."""
        r_row = _headline_row(results, "r")
        r_maps = load_maps(r_row["map_file"], len(cases)) if r_row else None
        out = []
        for j, (c, (image, spacing, lesion)) in enumerate(zip(cases, loaded)):
            if c["id"] not in truth or len(out) == PANELS:
                continue
            out.append({"title": c["id"], "image": image, "spacing": spacing, "lesion": lesion,
                        "g": (ref[j]["pixel"], ref[j]["top"]) if ref else None,
                        "r": (r_maps[j]["pixel"], r_maps[j]["top"]) if r_maps else None})
        return out

    def _misses(self, cases, loaded, truth, ref, results, n: int = 6) -> list[dict]:
        """The worst misses, so a person sees why: lesion slices whose top window (G's plain row, else R's)
        missed the dilated lesion, lowest pixel AUROC first, with both paths' maps."""
        by_path = {p: _headline_row(results, p) for p in ("g", "r")}
        judge = by_path["g"] or by_path["r"]
        if judge is None:
            return []
        per = {p["id"]: p for p in judge["localisation"]["per_slice"]}
        missed = sorted((p for p in per.values() if not p["top_window_hit_dilated"]),
                        key=lambda p: (p["auroc"] if p["auroc"] is not None else 0.0))[:n]
        maps = {p: load_maps(x["map_file"], len(cases)) if x else None for p, x in by_path.items()}
        index = {c["id"]: j for j, c in enumerate(cases)}
        out = []
        for p in missed:
            j = index[p["id"]]
            image, spacing, lesion = loaded[j]
            out.append({"title": f"{p['id']}: {judge['path'].upper()} missed (AUROC {p['auroc']:.2f})",
                        "image": image, "spacing": spacing, "lesion": lesion,
                        **{k: (m[j]["pixel"], m[j]["top"]) if m else None for k, m in maps.items()}})
        return out


def _headline_row(results: list[dict], path: str) -> dict | None:
    """The plain row of ``path`` with localisation figures on the first backend of the headline order."""
    ok = [r for r in results if r["status"] == "ok" and r["localisation"] is not None and r["method"] == "plain"]
    return next((x for b in rep.HEADLINE_ORDER for x in ok if x["backend"] == b and x["path"] == path), None)


def _ident(row: Row) -> dict:
    return {"name": row.name, "path": row.path, "backend": row.backend}


def _standing_notes(geo, runs: int) -> list[str]:
    notes = [f"window positions are 0, stride, 2*stride, ... and always size - window: {geo.n_windows} windows per "
             "slice (the paper's 60x60 = 3600 at 256/16/4 leaves the last rows and columns uncovered; here 61x61 = 3721)",
             "windows without brain tissue are not evaluated (score 0), as in rlp-heatmap; latency is per slice for "
             "the evaluated windows",
             "the paper's '28x less memory' compares model sizes (852 MB G vs 30 MB R); 'model MB' is that "
             "comparison here, peak RSS is the memory a process really needs",
             "PyTorch eager rows: plain NCHW, torch.inference_mode, the same batches and threads; onnxruntime G is the "
             "exported graph (bicubic upsampling rewritten as exact fixed matrix products)"]
    if runs < 5:
        notes.append(f"{runs} timed runs per row (fewer than 5): p95 is interpolated from few samples")
    return notes


if __name__ == "__main__":
    sys.exit(main())
