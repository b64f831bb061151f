"""Cohort throughput: ``rlp-cohort`` with 1 and 2 local worker processes and on a local Ray, side by side.

    python -m rlp.bench.cohort_speed [--volumes 8] [--depth 6] [--bundle DIR] [--path r] [--no-ray] [--out DIR]

Synthetic volumes are stacked from the demo slices that ship with rlp (``--depth`` axial slices each, on the
demo's 197 x 233 grid; nothing is downloaded). Every configuration runs the same cohort into a fresh output
folder, so nothing is skipped. Per configuration: wall seconds (worker start and bundle loading included),
volumes per minute, slices per second, the median of the per-volume seconds the workers measured, and the
overhead (wall minus the volumes' own seconds divided by the workers), and the share of the volumes'
own seconds each stage took (``time_split``, from the summaries' timings: load, preprocess, model, render...).
The 1-minute load average is recorded before and after each configuration: on a shared machine other work
slows every figure. Writes ``cohort_speed.json`` and ``cohort_speed.md`` in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from rlp.cohort.cli import build_parser, run_cohort
from rlp.cohort.report import INDEX_JSONL
from rlp.runtime.heatmap import demo_slices


def make_volumes(folder: Path, n: int, depth: int) -> list[Path]:
    """``n`` volumes of ``depth`` demo slices each (a different run of slices per volume)."""
    slices = [nib.load(p) for p in demo_slices()]
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        picked = [slices[(i + k) % len(slices)] for k in range(depth)]
        data = np.concatenate([np.asarray(s.dataobj, dtype=np.float32) for s in picked], axis=2)
        path = folder / f"vol{i:03d}.nii.gz"
        nib.save(nib.Nifti1Image(data, picked[0].affine), path)
        out.append(path)
    return out


def measure(name: str, folder: Path, out: Path, extra: list[str], bundle: str | None, path: str) -> dict:
    argv = [str(folder), "--out", str(out), "--path", path, "--quiet", *extra]
    argv += ["--bundle", bundle] if bundle else []
    args = build_parser().parse_args(argv)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    result = run_cohort(args)
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in (out / INDEX_JSONL).read_text().splitlines()]
    done = [r for r in rows if r["status"] == "ok"]
    slices = sum(r["slices"] for r in done)
    workers = int(extra[extra.index("--workers") + 1]) if "--workers" in extra else 2
    own = sum(r["seconds"] for r in done)
    parts: dict[str, float] = {}  # where a volume's time goes, from the summaries' timings
    for r in done:
        for k, v in json.loads(Path(r["outputs"]["summary"]).read_text())["timings"].items():
            if k != "total_s":
                parts[k] = parts.get(k, 0.0) + v
    return {"time_split": {k: round(v / max(own, 1e-9), 3) for k, v in sorted(parts.items(), key=lambda kv: -kv[1])},
            "config": name, "volumes": len(done), "failed": result["failed"], "slices": slices,
            "wall_s": round(wall, 2), "volumes_per_min": round(60 * len(done) / wall, 2),
            "slices_per_s": round(slices / wall, 2),
            "median_volume_s": round(statistics.median(r["seconds"] for r in done), 3),
            "overhead_s": round(wall - own / workers, 2), "load_before": round(load0, 2),
            "load_after": round(os.getloadavg()[0], 2)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m rlp.bench.cohort_speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--volumes", type=int, default=8)
    p.add_argument("--depth", type=int, default=6, help="slices per synthetic volume")
    p.add_argument("--bundle", default=None, help="default: the embedded demo bundle")
    p.add_argument("--path", default="r")
    p.add_argument("--no-ray", action="store_true", help="leave the Ray row out")
    p.add_argument("--out", default="cohort-speed-out")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="rlp-cohort-speed-") as tmp:
        folder = Path(tmp) / "volumes"
        make_volumes(folder, args.volumes, args.depth)
        configs = [("local, 1 worker x 2 threads", ["--workers", "1", "--threads", "2"]),
                   ("local, 2 workers x 1 thread", ["--workers", "2", "--threads", "1"]),
                   ("local, 2 workers x 1 thread, --no-overlay", ["--workers", "2", "--threads", "1", "--no-overlay"])]
        if not args.no_ray:
            configs.append(("Ray (local, 2 CPUs), 2 actors x 1 thread", ["--ray", "--workers", "2", "--threads", "1"]))
        for i, (name, extra) in enumerate(configs):
            if "--ray" in extra:
                import ray

                t0 = time.perf_counter()
                ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
                ray_start = time.perf_counter() - t0
            rows.append(measure(name, folder, Path(tmp) / f"out{i}", extra, args.bundle, args.path))
            if "--ray" in extra:
                rows[-1]["ray_init_s"] = round(ray_start, 2)
                ray.shutdown()
            print(json.dumps(rows[-1]), flush=True)
    env = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
           "python": platform.python_version(),
           "volumes": args.volumes, "depth": args.depth, "path": args.path}
    (out / "cohort_speed.json").write_text(json.dumps({"environment": env, "rows": rows}, indent=2) + "\n")
    lines = ["| configuration | volumes | slices | wall s | volumes/min | slices/s | median s/volume | overhead s | "
             "load before/after |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['config']} | {r['volumes']} | {r['slices']} | {r['wall_s']} | {r['volumes_per_min']} | "
              f"{r['slices_per_s']} | {r['median_volume_s']} | {r['overhead_s']} | "
              f"{r['load_before']}/{r['load_after']} |"
              for r in rows]
    lines += ["", "share of the volumes' own time per stage:"]
    lines += [f"- {r['config']}: " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in r["time_split"].items()) for r in rows]
    (out / "cohort_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
