"""A corpus of malformed NIfTI files made here (RELIABILITY.md, "How to test it" 1).

Truncated at several points, bytes flipped in the gzip stream, header fields patched
with ``struct``, bomb and overflowing dimensions, wrong names, 4D, bad zooms, NaN/Inf:
every file goes through ``rlp-heatmap`` in one call beside a good one, and through
``rlp-train prepare``. Each bad file gets exit code 65 and exactly one line naming
it, no traceback, and leaves nothing in the output folder; the good one still runs.
The per-case messages are checked in tests/runtime/test_bad_inputs.py, whose cases
(``BAD``) join this corpus for the ``prepare`` path.
"""

from __future__ import annotations

import gzip
import json
import random
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from helpers.bad_inputs import BAD
from helpers.runtime import make_bundle, outputs_of, phantom, run_heatmap, write_nifti
from rlp.runtime.core.errors import EX_DATAERR
from rlp.runtime.core.nifti import nifti_suffix

VOL = phantom((20, 22, 3))
AFF = np.diag([1.0, 1.0, 2.0, 1.0])


def _nii(tmp: Path) -> bytes:
    return write_nifti(tmp / "base.nii", VOL, AFF).read_bytes()


def _patch(fmt: str, offset: int, *values):
    """Raw header edit of an uncompressed NIfTI-1 (offsets from the NIfTI-1 standard)."""
    def make(raw: bytes) -> bytes:
        raw = bytearray(raw)
        struct.pack_into("<" + fmt, raw, offset, *values)
        return bytes(raw)
    return make


def _flip(at: int):
    def make(raw: bytes) -> bytes:
        raw = bytearray(raw)
        raw[at] ^= 0xFF
        return bytes(raw)
    return make


def corpus(tmp: Path) -> dict[str, bytes]:
    """File name -> bytes of every malformed file (all must be refused with exit 65)."""
    nii = _nii(tmp)
    gz = gzip.compress(nii, mtime=0)
    files: dict[str, bytes] = {}
    for pct in (1, 12, 40, 75, 99.9):  # header cut, data cut early / late, last bytes (gzip trailer)
        tag = str(pct).replace(".", "_")
        files[f"cut{tag}.nii"] = nii[: int(len(nii) * pct / 100)]
        files[f"cut{tag}.nii.gz"] = gz[: int(len(gz) * pct / 100)]
    rng = random.Random(0)
    for i, at in enumerate(sorted(rng.sample(range(10, len(gz) - 8), 4))):  # inside the deflate stream
        files[f"flip{i}.nii.gz"] = _flip(at)(gz)
    files["flip_crc.nii.gz"] = _flip(len(gz) - 8)(gz)  # the CRC32 nibabel never reads
    files["flip_isize.nii.gz"] = _flip(len(gz) - 1)(gz)
    patches = {
        "sizeof_hdr": _patch("i", 0, 347),
        "magic": _patch("4s", 344, b"xyz\0"),
        "dim0_neg": _patch("h", 40, -3),
        "dim_neg": _patch("4h", 40, 3, 20, -22, 3),
        "dims_bomb": _patch("4h", 40, 3, 32767, 32767, 32767),  # 4 TiB of float32, over the cap
        "dims_over_file": _patch("4h", 40, 3, 200, 200, 3),  # under the cap, more than the file holds
        "dims_4d_two_volumes": _patch("5h", 40, 4, 20, 22, 3, 2),  # declares a volume the file lacks
        "datatype_vs_bitpix": _patch("h", 70, 2),  # uint8 declared, 32-bit voxels stored
        "datatype_complex": _patch("2h", 70, 32, 64),
        "zoom_inf": _patch("f", 80, float("inf")),
        "zoom_neg": _patch("f", 84, -2.0),
        "zoom_absurd": _patch("3f", 80, 1e-6, 3e29, 2.0),  # the anti-aliasing kernel would need terabytes
        "vox_offset_zero": _patch("f", 108, 0.0),  # would read the header as voxels
        "vox_offset_nan": _patch("f", 108, float("nan")),
        "vox_offset_huge": _patch("f", 108, 3e38),
        "qform_quaternion": _patch("3f", 256, 5.0, 5.0, 5.0),  # b, c, d: not a rotation
    }
    for name, make in patches.items():
        files[f"{name}.nii"] = make(nii)
        files[f"{name}_gz.nii.gz"] = gzip.compress(make(nii), mtime=0)
    files["wrong_ext.nii.gz.tmp"] = gz
    files["analyze.hdr"] = nii[:348]
    return files


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("bundle") / "b")


def test_the_corpus_fails_cleanly_in_one_heatmap_call(capsys, tmp_path, bundle_dir):
    folder = tmp_path / "in"
    folder.mkdir()
    files = corpus(tmp_path)
    paths = []
    for name, raw in files.items():
        (folder / name).write_bytes(raw)
        paths.append(folder / name)
    good = write_nifti(folder / "good.nii.gz", VOL, AFF)
    out = tmp_path / "out"
    code, stdout, err = run_heatmap(capsys, *paths, good, "--bundle", bundle_dir, "--out", out, "--quiet", "--json")
    assert code == EX_DATAERR and "Traceback" not in err
    reports = {Path(r["input"]).name: r for r in json.loads(stdout)}
    lines = err.splitlines()
    for name in files:
        assert reports[name]["ok"] is False and reports[name]["exit_code"] == EX_DATAERR, (name, reports[name])
        mine = [ln for ln in lines if f"/{name}:" in ln]
        assert len(mine) == 1 and mine[0].startswith("rlp-heatmap: "), (name, mine)
    assert len(lines) == len(files)  # one line per bad file, nothing else
    assert reports["good.nii.gz"]["ok"] is True
    assert sorted(p.name for p in out.iterdir()) == [p.name for p in outputs_of(out, "good")]


def test_the_corpus_fails_cleanly_in_prepare_listing_every_file(capsys, tmp_path):
    """``rlp-train prepare``: one line naming the bad files, exit 65, nothing written; --skip-bad counts them."""
    pytest.importorskip("h5py")
    from rlp.train.cli import main
    from rlp.train.data import SliceData

    src = tmp_path / "src"
    src.mkdir()
    bad = {n: raw for n, raw in corpus(tmp_path).items() if nifti_suffix(n)}  # prepare reads NIfTI names only
    for name, raw in bad.items():
        (src / name).write_bytes(raw)
    scratch = tmp_path / "scratch"
    for case, (name, make, want, _) in BAD.items():  # the per-case corpus of tests/runtime/test_bad_inputs.py
        (scratch / case).mkdir(parents=True)
        p = scratch / case / name
        make(p)
        if p.is_file() and want == EX_DATAERR and nifti_suffix(p):
            bad[f"{case}_{name}"] = p.read_bytes()
            p.rename(src / f"{case}_{name}")
    write_nifti(src / "good.nii.gz", VOL, AFF)
    out = tmp_path / "d" / "slices.h5"
    with pytest.raises(SystemExit) as exc:
        main(["prepare", str(src), "--out", str(out), "--size", "16", "--quiet"])
    err = capsys.readouterr().err
    assert exc.value.code == EX_DATAERR and "Traceback" not in err and err.count("\n") == 1
    # header problems are found by a preflight of every volume, before any file is created
    m = re.match(rf"rlp-train: {re.escape(str(src))}: (\d+) bad volume\(s\), nothing written .*; and (\d+) more$", err)
    assert m, err
    named = set(re.findall(rf"{re.escape(str(src))}/([^:/]+): ", err))
    assert len(named) == 10 and named <= set(bad) and int(m[1]) == 10 + int(m[2]) < len(bad)
    assert not out.parent.exists()
    with pytest.raises(SystemExit) as exc:
        main(["prepare", str(src), "--out", str(out), "--size", "16", "--quiet", "--skip-bad"])
    assert exc.value.code in (0, None)
    summary = json.loads(capsys.readouterr().out)
    assert summary["bad_volumes_skipped"] == len(bad) and summary["subjects"] == 1
    assert set(SliceData(out).subjects) == {"good"}


def test_prepare_lists_every_volume_with_bad_voxels(tmp_path):
    """Problems only the voxels show (NaN/Inf, a cut gzip stream): every such file named, nothing written."""
    pytest.importorskip("h5py")
    from rlp.runtime.core.errors import RlpError
    from rlp.train.data import prepare

    (tmp_path / "src").mkdir()
    nan = VOL.copy()
    nan[5, 5, 1] = np.nan
    write_nifti(tmp_path / "src" / "a_nan.nii.gz", nan, AFF)
    write_nifti(tmp_path / "src" / "b_good.nii.gz", VOL, AFF)
    write_nifti(tmp_path / "src" / "c_inf.nii", np.where(VOL > 150, np.inf, VOL), AFF)
    cut = write_nifti(tmp_path / "src" / "d_cut.nii.gz", VOL, AFF)
    cut.write_bytes(cut.read_bytes()[:-20])
    out = tmp_path / "out" / "d.h5"
    with pytest.raises(RlpError) as exc:
        prepare(str(tmp_path / "src"), out, size=16, quiet=True)
    msg = str(exc.value)
    assert exc.value.code == EX_DATAERR and msg.startswith(f"{tmp_path / 'src'}: 3 bad volume(s)")
    for name, words in (("a_nan.nii.gz", "non-finite"), ("c_inf.nii", "non-finite"), ("d_cut.nii.gz", "gzip")):
        assert re.search(rf"{name}: [^;]*{words}", msg), (name, msg)
    assert "b_good" not in msg and list(out.parent.iterdir()) == []


def test_prepare_takes_mixed_shapes_and_dtypes_and_counts_empty_and_constant_slices(tmp_path):
    """Volumes of different shapes, dtypes and voxel sizes share one model grid; slices without
    contrast (all zero, or one value everywhere) are skipped and counted, never written as NaN."""
    pytest.importorskip("h5py")
    from rlp.train.data import SliceData, prepare

    (tmp_path / "src").mkdir()
    a = np.round(phantom((30, 26, 6)) * 10)
    a[:, :, 0] = 0  # all-zero slice
    a[:, :, 1] = 500  # constant slice
    write_nifti(tmp_path / "src" / "a.nii.gz", a, np.diag([1.0, 1.2, 2.0, 1.0]), dtype=np.int16)
    write_nifti(tmp_path / "src" / "b.nii", phantom((18, 40, 4)), np.diag([2.0, 0.8, 3.0, 1.0]), dtype=np.float64)
    write_nifti(tmp_path / "src" / "c.nii.gz", np.round(phantom((22, 22, 5))), AFF, dtype=np.uint8)
    res = prepare(str(tmp_path / "src"), tmp_path / "d.h5", size=16, quiet=True)
    d = SliceData(tmp_path / "d.h5")
    assert res["subjects"] == 3 and res["empty_slices_skipped"] >= 2 and res["bad_volumes_skipped"] == 0
    assert d.images.shape[1:] == (16, 16) and np.isfinite(d.images).all()
    first = d.slice_index[d.subject == d.subjects.index("a")]
    assert 0 not in first and 1 not in first  # the zero and the constant slice were skipped
