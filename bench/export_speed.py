"""G per batch: onnxruntime (exported with the bicubic rewrite) against PyTorch eager, on this machine.

    python -m rlp.bench.export_speed                       # demo-sized G (width 16, depth 4), 64 crops of 48
    python -m rlp.bench.export_speed --run runs/demo       # the run's trained G on its held-out crops
    python -m rlp.bench.export_speed --side 256 --batch 8  # a whole-slice G

Rows: torch eager (NCHW and channels_last), onnxruntime with the exported graph
(bicubic rewritten as a convolution), and onnxruntime with PyTorch's own export
of bicubic (a cubic ``Resize``), the slow baseline the rewrite replaces
(``--no-resize`` skips it). Times are the median of ``--repeats`` runs after one
warm-up, per batch, the backends interleaved (the machine may be shared). This is a
measurement script, not a test; it imports torch.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort
import torch
from rich.console import Console
from rich.table import Table

from rlp.export.onnx_export import DEFAULT_OPSET, export_onnx, fold_conv_bn, prepare_for_export
from rlp.export.run import load_run
from rlp.runtime.backends import ort_session_options
from rlp.train.models import UNetG


def time_round_robin(fns: dict, repeats: int) -> dict[str, list[float]]:
    """Seconds per call of every function, interleaved so that load from other processes hits all alike."""
    for fn in fns.values():
        fn()  # warm-up (allocations, onnxruntime's first-run planning)
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return times


def load_inputs(args) -> tuple[torch.nn.Module, np.ndarray, str]:
    if args.run:
        run = load_run(args.run, ("g",))
        geo = run.geometry
        g = run.models["g"].module
        boxes = geo.window_boxes()
        picks = boxes[np.linspace(0, len(boxes) - 1, args.batch).round().astype(int)]
        x = geo.crops(geo.pad(run.images[len(run.images) // 2]), picks, inpaint=True)
        return g, x, f"G of {args.run} ({g.arch}), {geo.input_size}x{geo.input_size} held-out crops"
    torch.manual_seed(0)
    g = UNetG(width=args.width, depth=args.depth, max_width=args.max_width).eval()
    x = np.random.default_rng(0).random((args.batch, 1, args.side, args.side), dtype=np.float32)
    return g, x, f"random-weight G {g.arch}, {args.side}x{args.side} inputs"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", help="run folder: its G and held-out crops (default: a random-weight G)")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--max-width", type=int, default=128)
    p.add_argument("--side", type=int, default=48, help="input side (the geometry's input_size)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--no-resize", action="store_true", help="skip the slow cubic-Resize baseline")
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    g, x, what = load_inputs(args)
    g = g.eval()
    xt = torch.from_numpy(x)
    example = xt[:2]
    rewritten, _ = prepare_for_export(g)
    graphs = {"onnxruntime, bicubic rewrite": export_onnx(rewritten, example, "image", "recon", DEFAULT_OPSET)}
    if not args.no_resize:
        baseline = copy.deepcopy(g).eval()
        fold_conv_bn(baseline)  # the same BatchNorm folding; bicubic stays F.interpolate -> cubic Resize
        graphs["onnxruntime, cubic Resize"] = export_onnx(baseline, example, "image", "recon", DEFAULT_OPSET)

    # onnxruntime's idle threads spin after a run; with interleaved timing that would slow the next torch call
    so = ort_session_options(args.threads, spinning=False)
    gcl = copy.deepcopy(g).to(memory_format=torch.channels_last)
    xcl = xt.contiguous(memory_format=torch.channels_last)

    def eager(model, inp):
        def run():
            with torch.inference_mode():
                return model(inp)

        return run

    fns = {"torch eager, NCHW": eager(g, xt), "torch eager, channels_last": eager(gcl, xcl)}
    ref = fns["torch eager, NCHW"]().numpy()
    diffs = {}
    for name, proto in graphs.items():
        sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
        diffs[name] = float(np.abs(sess.run(None, {"image": x})[0] - ref).max())
        fns[name] = lambda sess=sess: sess.run(None, {"image": x})
    times = time_round_robin(fns, args.repeats)
    rows = {k: statistics.median(v) for k, v in times.items()}
    best_torch = min(v for k, v in rows.items() if k.startswith("torch"))
    result = {
        "what": what, "batch": args.batch, "threads": args.threads, "repeats": args.repeats,
        "torch": torch.__version__, "onnxruntime": ort.__version__,
        "seconds_per_batch": rows, "min_seconds_per_batch": {k: min(v) for k, v in times.items()},
        "max_abs_vs_torch": diffs, "speedup_vs_best_torch": {k: best_torch / v for k, v in rows.items()},
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    t = Table(title=f"G per batch of {args.batch}: {what}; {args.threads} threads, median of {args.repeats}",
              title_justify="left")
    for col in ("backend", "median ms", "min ms", "x best torch", "max abs vs torch"):
        t.add_column(col, justify="left" if col == "backend" else "right")
    for name, sec in rows.items():
        d = f"{diffs[name]:.1e}" if name in diffs else ""
        t.add_row(name, f"{sec * 1e3:.1f}", f"{min(times[name]) * 1e3:.1f}", f"{best_torch / sec:.2f}", d)
    Console().print(t)
    return 0


if __name__ == "__main__":
    sys.exit(main())
