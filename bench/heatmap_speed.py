"""Speed of ``rlp-heatmap``'s R path against a plain onnxruntime run of R (a measurement, not a unit test).

One 256x256 slice, every window (``all_windows``: 3721 at 256/16/4), R path::

    python -m rlp.bench.heatmap_speed BUNDLE [--input T1.nii.gz] [--batches 32,64] [--threads N] [--repeat 1]
                                      [--method plain --method incremental]

The plain run is an onnxruntime session on R's ONNX file fed the same inpainted
inputs batch by batch (built with the geometry contract, as any caller must),
with nothing else around it; it is timed at every batch size and the best one is
the baseline. rlp's run is ``Bundle.heatmap_slice`` with the same backend and
threads: preprocessing, validation, model calls, pixel map, mapping back to the
input grid and the top windows (the sessions are built before the clock
starts). Both window maps must agree. ``--method incremental`` also times the
exact incremental method (:mod:`rlp.runtime.incremental`) against the same map.

Without a trained bundle, ``--write-paper-r DIR`` writes a bundle holding the
paper's R (its exact layer table, 1,558,273 parameters, random weights) so the
model cost is realistic; its scores mean nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from rlp.runtime import Bundle
from rlp.runtime.backends import ort_session_options
from rlp.runtime.core.geometry import WindowGeometry, iter_batches
from rlp.runtime.core.preprocess import preprocess_slice
from rlp.runtime.heatmap import METHODS
from rlp.runtime.scorers import model_geometry

from .paper_r import paper_r_bundle


def _slice(path: str | None) -> tuple[np.ndarray, tuple[float, float]]:
    if path is None:
        yy, xx = np.meshgrid(np.linspace(-1, 1, 256), np.linspace(-1, 1, 256), indexing="ij")
        img = np.where((yy / 0.8) ** 2 + (xx / 0.7) ** 2 < 1, 100 + 30 * np.cos(7 * yy) * np.sin(5 * xx), 0.0)
        return img.astype(np.float32), (1.0, 1.0)
    from rlp.runtime.core.nifti import load_nifti

    vol = load_nifti(path)
    k, n = vol.slices("axial")
    return vol.get_slice(k, n // 2)


def plain_ort(model_file: Path, image: np.ndarray, geom: WindowGeometry, batch: int,
              threads: int | None) -> tuple[float, np.ndarray]:
    """Seconds for every window of ``image`` (model grid) through a bare onnxruntime session, and the scores."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model_file), ort_session_options(threads), providers=["CPUExecutionProvider"])
    boxes = geom.window_boxes()
    padded = geom.pad(image)
    out = np.empty(len(boxes))
    t0 = time.perf_counter()
    for sl in iter_batches(len(boxes), batch):
        out[sl] = sess.run(["loss"], {"image": geom.crops(padded, boxes[sl])})[0][:, 0]
    return time.perf_counter() - t0, out.reshape(geom.grid_shape)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m rlp.bench.heatmap_speed", description=__doc__.split("\n\n")[0])
    p.add_argument("bundle", nargs="?", help="bundle folder with an R model")
    p.add_argument("--write-paper-r", metavar="DIR",
                   help="write a bundle with the paper's R (random weights) and use it")
    p.add_argument("--input", help="NIfTI file: its middle axial slice (default: a synthetic 256x256 slice)")
    p.add_argument("--batches", default="32,64", help="batch sizes to try (default 32,64)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeat", type=int, default=1, help="runs per setting; the fastest counts")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--method", choices=METHODS, action="append",
                   help="rlp method to time, repeatable (default plain; incremental: exact, rlp.runtime.incremental)")
    args = p.parse_args(argv)
    if args.write_paper_r:
        args.bundle = str(paper_r_bundle(args.write_paper_r))
    if not args.bundle:
        p.error("give a BUNDLE or --write-paper-r DIR")
    batches = [int(b) for b in args.batches.split(",")]
    image, spacing = _slice(args.input)
    rows = []
    with Bundle.load(args.bundle, backend="ort-cpu", threads=args.threads) as bundle:
        entry = bundle.manifest.models["r"]
        geom = model_geometry(bundle.manifest.geometry, entry)
        prep = preprocess_slice(image, bundle.manifest.preprocessing, spacing)
        print(f"bundle {args.bundle}: R {entry.architecture or entry.file}, geometry {geom.size}/{geom.window}/"
              f"{geom.stride} ({geom.n_windows} windows), slice {image.shape}, threads {args.threads or 'default'}",
              file=sys.stderr)
        plain_maps = {}
        for b in batches:
            runs = (plain_ort(bundle.root / entry.file, prep.image, geom, b, args.threads) for _ in range(args.repeat))
            best = min(runs, key=lambda r: r[0])
            plain_maps[b] = best[1]
            rows.append({"what": "plain onnxruntime", "batch": b, "seconds": round(best[0], 3)})
            print(f"plain onnxruntime  batch {b:4d}: {best[0]:8.2f} s", file=sys.stderr)
    methods = args.method or ["plain"]
    for b, method in [(b, m) for b in batches for m in methods]:
        what = "rlp heatmap_slice" + ("" if method == "plain" else f" {method}")
        with Bundle.load(args.bundle, backend="ort-cpu", threads=args.threads, batch=b) as bundle:
            bundle.backend("r")  # sessions are built before the clock starts
            bundle.scorer("r", method)
            runs = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                res = bundle.heatmap_slice(image, spacing, head="r", all_windows=True, method=method)
                runs.append((time.perf_counter() - t0, res))
            sec, res = min(runs, key=lambda r: r[0])
        diff = float(np.abs(res.window_map - plain_maps[b]).max())
        rows.append({"what": what, "method": method, "batch": b, "seconds": round(sec, 3),
                     "model_seconds": round(res.timings["model_s"], 3), "max_abs_diff_vs_plain": diff,
                     "windows": res.n_evaluated})
        print(f"{what}  batch {b:4d}: {sec:8.3f} s (model {res.timings['model_s']:.3f} s, "
              f"{res.n_evaluated} windows, max |diff| vs plain {diff:.2g})", file=sys.stderr)
    best_plain = min(r["seconds"] for r in rows if r["what"] == "plain onnxruntime")
    best = {m: min(r["seconds"] for r in rows if r.get("method") == m) for m in methods}
    ratios = ", ".join(f"rlp {m} {t:.3f} s (ratio to plain {t / best_plain:.3f})" for m, t in best.items())
    print(f"best: plain onnxruntime {best_plain:.3f} s, {ratios}", file=sys.stderr)
    if args.json:
        out = {"rows": rows, "best_plain_s": best_plain, "best_rlp_s": best.get("plain"), "best_s": best}
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
