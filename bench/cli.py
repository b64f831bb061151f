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
import sys
from typing import Sequence

from rlp.runtime import __version__
from rlp.runtime.core.cliutil import OneLineParser, comma_subset, int_at_least, run_main
from rlp.runtime.core.manifest import HEAD_PATTERN
from rlp.runtime.heatmap import DEFAULT_BATCH, HEADS

from .report import SCHEMA_VERSION
from .rows import ALL_BACKENDS
from .runner import MODES, PROG, REFERENCE_BACKEND, Bench
from .suite import SUITE_HEALTHY, SUITE_LESIONS

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
  report.json   every number, schema "rlp.bench.report" version {SCHEMA_VERSION} (documented in rlp.bench.report)
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
    p.add_argument("--heldout", type=_count, metavar="N",
                   help="held-out slices of --run for fidelity (default 4; --quick 0)")
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


if __name__ == "__main__":
    sys.exit(main())
