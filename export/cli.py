"""``rlp-export RUN --out BUNDLE``: a trained run folder -> a deployable bundle, behind a parity gate.

Exit codes (sysexits): 0 ok; 2 usage; 65 bad input or a failed parity gate;
66 input missing; 70 exporter or TensorRT failure, or --trt without TensorRT/GPU;
73 cannot create the output (exists without --force, disk full); 77 refused for
security (e.g. a checkpoint that would run code); 130 interrupted; 143 terminated (SIGTERM).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from rlp.runtime.core.cliutil import OneLineParser, comma_subset, int_at_least, run_main
from rlp.runtime.core.manifest import HEAD_PATTERN

PROG = "rlp-export"


_positive = int_at_least(1)


def build_parser() -> argparse.ArgumentParser:
    # torch and onnx, imported here (inside run_main) so that an install without them gets one line naming the extra
    from .onnx_export import DEFAULT_OPSET
    from .run import ROLES

    _models = comma_subset(ROLES, HEAD_PATTERN, " (and predictor variants r-NAME)")
    p = OneLineParser(
        prog=PROG,
        description="Export a trained rlp run (G and/or R) to an ONNX bundle for the torch-free runtime, "
                    "after checking the exported models against PyTorch on the run's held-out slices.",
        epilog="example: rlp-export runs/demo --out bundles/demo --fp16",
    )
    p.add_argument("run", type=Path, metavar="RUN", help="run folder written by rlp-train")
    p.add_argument("--out", type=Path, required=True, metavar="BUNDLE", help="bundle folder to create")
    p.add_argument("--fp16", action="store_true",
                   help="also write fp16 models (for GPUs; inputs and outputs stay float32)")
    p.add_argument("--trt", action="store_true",
                   help="also build TensorRT engines for this machine's GPU (fp16 with --fp16)")
    p.add_argument("--models", type=_models, default=None, metavar="g,r,r-NAME",
                   help="models to export (default: every model the run has)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, metavar="N",
                   help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument("--force", action="store_true", help="replace an existing bundle (only once the new one passed)")
    p.add_argument("--quiet", action="store_true", help="no progress display or tables, only errors")
    p.add_argument("--parity-slices", type=_positive, default=4, metavar="N",
                   help="held-out slices the parity gate uses (default 4)")
    p.add_argument("--parity-windows", type=_positive, default=32, metavar="N",
                   help="window positions per slice for the parity gate (default 32)")
    p.add_argument("--map-windows", type=_positive, default=4096, metavar="N",
                   help="most windows in the fp16 whole-slice window map; a coarser stride is used above it "
                        "(default 4096)")
    p.add_argument("--reference-slices", type=int_at_least(0), default=32, metavar="N",
                   help="held-out healthy slices scored on every path for the healthy reference that puts each "
                        "heatmap's top score in context (default 32; 0: none)")
    return p


def main(argv: list[str] | None = None) -> int:
    return run_main(PROG, lambda: _export(build_parser().parse_args(argv)))


def _export(args: argparse.Namespace) -> int:
    from rlp.runtime.core.progress import Reporter

    from .bundle import ExportOptions, ParityFailure, export_bundle
    from .parity import table

    reporter = Reporter(quiet=args.quiet)
    opts = ExportOptions(out=args.out, fp16=args.fp16, trt=args.trt, models=args.models, opset=args.opset,
                         force=args.force, parity_slices=args.parity_slices, parity_windows=args.parity_windows,
                         map_windows=args.map_windows, reference_slices=args.reference_slices)
    try:
        with reporter:
            manifest, result = export_bundle(args.run, opts, reporter)
    except ParityFailure as exc:
        reporter.print(table(exc.result, "parity gate: FAILED"))
        raise
    reporter.print(table(result, "parity gate: passed"))
    files = [m.file for m in manifest.models.values()] + [e.file for e in manifest.engines]
    reporter.line(f"wrote {args.out} ({', '.join(['manifest.json'] + files)})")
    paths = manifest.heads()  # a bundle without R runs on G's path: the hint must work as printed
    path = "" if "r" in paths or not paths else f" --path {paths[0]}"
    reporter.line(f"next: rlp-heatmap SLICE.nii.gz --bundle {shlex.quote(str(args.out))}{path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
