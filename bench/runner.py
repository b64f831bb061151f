"""One ``rlp-bench`` run: the slices, the rows, the exact G reference, each row in its own process, the report.

:mod:`rlp.bench.cli` parses the command line and hands it to :class:`Bench`.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from rlp.runtime import __version__
from rlp.runtime.backends import available_backends
from rlp.runtime.coarse import NAME as COARSE
from rlp.runtime.core.atomic import atomic_dir, write_bytes, write_json, write_text
from rlp.runtime.core.errors import EX_SOFTWARE, EX_USAGE, CannotCreate, InputMissing, RlpError, Unavailable
from rlp.runtime.core.manifest import MANIFEST, load_bundle_manifest, model_head, sha256_file
from rlp.runtime.core.nifti import load_nifti
from rlp.runtime.core.progress import progress
from rlp.runtime.core.runfolder import RunFolder
from rlp.runtime.heatmap import HEADS, NO_BUNDLE, Bundle, default_bundle, demo_slices

from . import plots
from .cases import HELDOUT, LESION, brain_of, find_inputs, heldout_cases, load_case, nifti_cases
from .environment import environment, gpus
from .panels import misses, panels
from .quality import fidelity_block, localisation_block
from .report import MB, SCHEMA, SCHEMA_VERSION, add_equality, add_speedups, clean, latency_label, summary
from .report_md import headline_lines, markdown, terminal_table
from .rows import TORCH_BACKENDS, WARMUP_BATCHES, Row, backend_facts, check_run_matches, load_maps, map_record, run_row
from .suite import SUITE_HEALTHY, SUITE_LESIONS, suite_cases

PROG = "rlp-bench"
#: mode defaults: timed runs, lesion slices (None: all), held-out slices, G windows timed (None: all)
MODES = {"quick": {"runs": 3, "slices": 1, "heldout": 0, "g_windows": 256},
         "full": {"runs": 5, "slices": None, "heldout": 4, "g_windows": None}}
REFERENCE_BACKEND = "ort-cpu"  # the exact G maps (fidelity reference) are made with it, in the parent


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
                              f"healthy ones (seed {self.args.seed}); every third slice of each set rotated and "
                              "shifted")
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
                backends += ["torch-cpu"] + (["torch-cuda"] if gpus() else [])
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
        bundle_dir, out, manifest, run, volume = self._check_args()
        with tempfile.TemporaryDirectory(prefix="rlp-bench-") as tmp:
            workdir = Path(tmp)
            cases, source = self._cases(run, workdir)
            rows, skipped = self._rows(manifest, run)
            loaded = [load_case(c) for c in cases]
            truth = _truth(cases, loaded)
            lesion_cases = [c for c in cases if c["set"] == LESION]
            timing = lesion_cases[0] if lesion_cases else cases[0]
            self.say(f"bundle {bundle_dir}; {len(rows)} row(s): {', '.join(r.name for r in rows)}; "
                     f"{len(lesion_cases)} lesion + {len(cases) - len(lesion_cases)} healthy or held-out slice(s); "
                     f"{self.mode} mode, {self.runs} runs, {self.threads} threads")
            spec = {"bundle": str(bundle_dir), "run": None if run is None else str(run), "threads": self.threads,
                    "batch": self.args.batch, "runs": self.runs, "g_windows": self.g_windows, "timing_case": timing,
                    "quality_cases": cases, "volume": volume}
            results, ref, ref_info = self._measure(spec, rows, cases, loaded, truth, skipped, workdir)
            add_speedups(results)
            add_equality(results, lambda r: load_maps(r["map_file"], len(cases)))
            figures = {"panels": panels(cases, loaded, truth, ref, results),
                       "misses": misses(cases, loaded, truth, ref, results)}
            body = self._report(created, bundle_dir, manifest, run, cases, loaded, source, timing, results,
                                skipped, ref_info)
            pngs = {"latency": plots.latency_png(body), "memory": plots.memory_png(body),
                    **{k: plots.panels_png(v) for k, v in figures.items()}}
            body["plots"] = {k: f"{k}.png" if v else None for k, v in pngs.items()}
            body["duration_s"] = time.time() - t0
            body = clean(body)
            _write(out, body, pngs, self.args.force)
        self._print_summary(body, out)
        failed = [r for r in body["rows"] if r["status"] != "ok"]
        for r in failed:
            print(f"{PROG}: row {r['name']} {r['status']}: {r.get('error')}", file=sys.stderr)
        return EX_SOFTWARE if failed else 0

    def _check_args(self) -> tuple[Path, Path, object, Path | None, dict | None]:
        """Refuse what can be refused before any work: the bundle, --out, --run and --volume."""
        args = self.args
        torch_rows = [b for b in args.backends or () if b in TORCH_BACKENDS]
        if torch_rows and not args.run:
            raise RlpError(f"backend {torch_rows[0]} runs the training run's checkpoints: pass --run RUN",
                           code=EX_USAGE)
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
        return bundle_dir, out, manifest, run, volume

    def _measure(self, spec, rows, cases, loaded, truth, skipped,
                 workdir) -> tuple[list[dict], list | None, dict | None]:
        """The exact G reference, then every row in a process of its own; refuses a bench where no row ran."""
        results = []
        with progress(self.args.quiet) as bar:
            task = bar.add_task("exact G reference", total=len(cases))
            ref, ref_info = self._reference(Path(spec["bundle"]), loaded, bar, task)
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
        return results, ref, ref_info

    def _print_summary(self, body: dict, out: Path) -> None:
        if self.args.quiet:
            return
        from rich.console import Console

        console = Console(stderr=True)
        if not console.is_terminal:  # logs: wide enough for the table instead of rich's default 80 columns
            console = Console(stderr=True, width=140)
        console.print(terminal_table(body))
        for line in headline_lines(body):
            self.say(line)
        self.say(f"wrote {out}/report.md, report.json and plots ({body['duration_s']:.0f} s)")

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
        out["latency_label"] = latency_label(res.get("latency"))
        out["fidelity"] = out["localisation"] = None
        if out["status"] == "ok" and cases:
            maps = load_maps(res["maps"], len(cases))
            out["fidelity"] = fidelity_block(maps, ref, cases) if ref is not None else None
            out["localisation"] = localisation_block(maps, cases, truth)
        elif out["status"] == "ok":
            out["notes"].append("--quick: no full maps for this row (no fidelity or localisation)")
        if out["status"] == "ok":
            out["map_file"] = out.pop("maps")
            lat = out["latency"]
            self.say(f"{row.name}: median {lat['median_s']:.3f} s per slice ({out['latency_label']}), "
                     f"peak RSS {out['memory']['peak_rss_bytes'] / MB:.0f} MB")
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
            "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "rlp_version": __version__,
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
            "summary": summary(results),
            "notes": self.notes + _standing_notes(geo, self.runs),
            "plots": {},
        }


def _ident(row: Row) -> dict:
    return {"name": row.name, "path": row.path, "backend": row.backend}


def _standing_notes(geo, runs: int) -> list[str]:
    notes = [f"window positions are 0, stride, 2*stride, ... and always size - window: {geo.n_windows} windows per "
             "slice (the paper's 60x60 = 3600 at 256/16/4 leaves the last rows and columns uncovered; here "
             "61x61 = 3721)",
             "windows without brain tissue are not evaluated (score 0), as in rlp-heatmap; latency is per slice for "
             "the evaluated windows",
             "the paper's '28x less memory' compares model sizes (852 MB G vs 30 MB R); 'model MB' is that "
             "comparison here, peak RSS is the memory a process really needs",
             "PyTorch eager rows: plain NCHW, torch.inference_mode, the same batches and threads; onnxruntime G is the "
             "exported graph (bicubic upsampling rewritten as exact fixed matrix products)"]
    if runs < 5:
        notes.append(f"{runs} timed runs per row (fewer than 5): p95 is interpolated from few samples")
    return notes


def _truth(cases: list[dict], loaded: list) -> dict:
    """Brain and lesion masks of the lesion slices whose lesion lies in the brain (what localisation scores)."""
    truth = {}
    for c, (image, _, lesion) in zip(cases, loaded):
        if c["set"] == LESION and lesion is not None and (lesion & brain_of(image)).any():
            truth[c["id"]] = {"brain": brain_of(image), "lesion": lesion}
    return truth


def _write(out: Path, body: dict, pngs: dict, force: bool) -> None:
    with atomic_dir(out, force=force) as folder:
        write_json(folder / "report.json", body)
        write_text(folder / "report.md", markdown(body) + "\n")
        for k, png in pngs.items():
            if png:
                write_bytes(folder / f"{k}.png", png)
