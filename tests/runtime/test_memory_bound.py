"""The stated bound on peak memory (README "Limits"; issue 21, item 2).

``rlp-heatmap`` runs in a child whose data segment is capped (``RLIMIT_DATA``, 2 GiB at most), so that an
escape fails the test instead of taking the machine; the child's own peak RSS is its ``VmHWM``.
The budget is set small (``RLP_MAX_MEMORY``) so that an input just under the limit it implies is cheap.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from rlp.runtime.core.errors import EX_DATAERR
from rlp.runtime.core.limits import PEAK_BASE, PEAK_MULTIPLE, PEAK_PER_SLICE, need

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_DATA and /proc/self/status")

BUDGET = 1 << 30  # RLP_MAX_MEMORY of these runs: a slice's voxel data limited to about 51 MiB
LIMIT = (BUDGET - PEAK_BASE - PEAK_PER_SLICE) // PEAK_MULTIPLE
CHILD_DATA_CAP = 2 << 30
CAP_OOM = 400 << 20  # room for the interpreter, onnxruntime and the model, not for a 3000x3000 slice's run


def _run(inputs: list[Path], out: Path, *, data_cap: int = CHILD_DATA_CAP, env: dict | None = None):
    """Run rlp-heatmap in a child under ``data_cap``; return (exit status, stderr, peak RSS in bytes).

    The peak is the child's own ``VmHWM`` at its end: its memory since it started, not counting what a
    fork of this (large) test process shared with it before (``wait4``'s ``ru_maxrss`` counts that)."""
    hwm = out.parent / f"{out.name}.hwm"
    argv = ["--quiet", "--threads", "1", "--out", str(out), *map(str, inputs)]
    code = (f"import resource, sys\n"
            f"resource.setrlimit(resource.RLIMIT_DATA, ({data_cap}, {data_cap}))\n"
            f"from rlp.runtime.cli import main\n"
            f"try:\n    rc = main({argv!r})\n"
            f"finally:\n"
            f"    line = [x for x in open('/proc/self/status') if x.startswith('VmHWM:')][0]\n"
            f"    open({str(hwm)!r}, 'w').write(line.split()[1])\n"
            f"sys.exit(rc)\n")
    env = {**{k: v for k, v in os.environ.items() if k != "RLP_MAX_VOXEL_BYTES"},
           "RLP_MAX_MEMORY": str(BUDGET), "OMP_NUM_THREADS": "1", **(env or {})}
    r = subprocess.run([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                       env=env, timeout=600)
    return r.returncode, r.stderr, int(hwm.read_text()) * 1024


def _slice(path: Path, n: int) -> Path:
    """An n x n float32 slice: a bright square with some texture in a dark field (compresses well)."""
    a = np.zeros((n, n), np.float32)
    q = n // 4
    a[q : 3 * q, q : 3 * q] = 100 + (np.arange(2 * q, dtype=np.float32) % 7)[None, :]
    nib.save(nib.Nifti1Image(a, np.eye(4)), path)
    return path


def _bomb(path: Path, shape: tuple[int, ...]) -> Path:
    """The issue's bomb: a .nii.gz declaring ``shape`` of float32, all of it zeros (~1 KB per MiB declared)."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(np.float32)
    hdr.set_data_offset(352)
    zeros, left = bytes(1 << 24), 4 * int(np.prod(shape))
    with gzip.open(path, "wb", compresslevel=1) as fh:
        fh.write(hdr.binaryblock + b"\0" * 4)
        while left > 0:
            fh.write(zeros[: min(left, len(zeros))])
            left -= len(zeros)
    return path


def test_an_input_over_the_limit_is_refused_from_its_header(tmp_path):
    """The issue's 16000x16000 slice (976 MiB declared): refused in one line before anything is allocated."""
    bomb = _bomb(tmp_path / "bomb.nii.gz", (16000, 16000))
    out = tmp_path / "out"
    rc, err, peak = _run([bomb], out)
    line = err.strip()
    assert rc == EX_DATAERR and "\n" not in line and "Traceback" not in err, err
    assert str(bomb) in line and "16000x16000" in line and "976.6 MiB" in line, line
    assert f"{LIMIT / 2**20:.1f} MiB" in line and "RLP_MAX_MEMORY" in line, line
    assert not out.exists() or not any(out.iterdir())
    assert peak < PEAK_BASE  # nothing of the declared size was ever allocated


def test_a_volume_of_many_small_slices_is_refused_for_its_slices(tmp_path):
    """Each slice has maps on the model grid: 1500 slices of 64x64 (23 MiB of voxels, under the 51 MiB) need
    1.83 GiB, over the 1 GiB budget."""
    bomb = _bomb(tmp_path / "thin.nii.gz", (64, 64, 1500))
    rc, err, _ = _run([bomb], tmp_path / "out")
    assert need((64, 64, 1500)) > BUDGET and 4 * 64 * 64 * 1500 < LIMIT
    assert rc == EX_DATAERR and "64x64x1500" in err and "1.83 GiB" in err and "RLP_MAX_MEMORY=1.00 GiB" in err, err


def test_peak_memory_of_an_input_just_under_the_limit_stays_within_the_bound(tmp_path):
    n = int((LIMIT / 4) ** 0.5) - 8  # float32 voxel data just under the limit
    src = _slice(tmp_path / "big.nii.gz", n)
    out = tmp_path / "out"
    rc, err, peak = _run([src], out)
    assert rc == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["big_heatmap.nii.gz", "big_overlay.png", "big_summary.json"]
    bound = need((n, n))
    assert peak <= bound, f"peak RSS {peak / 2**20:.0f} MiB over the stated bound {bound / 2**20:.0f} MiB"


def test_running_out_of_memory_names_the_input_size_and_what_to_do(tmp_path):
    """A machine with less free memory than the bound needs: one line naming the cause, no output."""
    src = _slice(tmp_path / "big.nii.gz", 3000)
    out = tmp_path / "out"
    # the limit lifted so that the input is read; the child's data segment then too small for it
    rc, err, _ = _run([src], out, data_cap=CAP_OOM, env={"RLP_MAX_VOXEL_BYTES": str(1 << 30)})
    line = err.strip()
    assert rc != 0 and "\n" not in line and "Traceback" not in err, err
    assert "out of memory" in line and "3000x3000" in line and "--batch" not in line, line
    assert not out.exists() or not any(out.iterdir())


def test_the_overlay_is_drawn_at_display_resolution():
    """matplotlib gets at most DISPLAY_MAX pixels a side; a single hot pixel and the box survive the reduction."""
    from rlp.runtime.overlay import DISPLAY_MAX, Panel, display_panel

    image = np.ones((4000, 3001), np.float32)
    image[0, 0] = np.nan
    heat = np.zeros_like(image)
    heat[2345, 2999] = 5.0
    p = display_panel(Panel(image, heat, (1.0, 2.0), (-0.5, -0.5, 3999.5, 3000.5)))
    assert p.image.shape == p.heat.shape == (1000, 751) and max(p.image.shape) <= DISPLAY_MAX
    assert p.heat.max() == 5.0 and p.heat[2345 // 4, 2999 // 4] == 5.0
    assert np.isfinite(p.image).all() and p.spacing == (4.0, 8.0)
    assert p.box == (-0.5, -0.5, 999.5, 749.75)  # pixel 3000 (edge 3000.5) lies in the first quarter of block 750
    small = Panel(image[:100, :100], heat[:100, :100])
    assert display_panel(small) is small
