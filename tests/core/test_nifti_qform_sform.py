"""The heatmap's header keeps the input's qform and sform, each with its own code (issue 23, bug 2).

Every other grid check uses inputs whose qform and sform are one matrix, so a ``save_like``
that wrote the qform from the sform (or the other way round) passed them. Here the two
differ (a rotation and a shift apart) and every combination of the codes 0 (unknown),
1 (scanner), 2 (aligned) and 4 (MNI) is written, read back by nibabel and compared.
"""

from __future__ import annotations

import itertools

import nibabel as nib
import numpy as np
import pytest
from test_nifti import _heatmap

from helpers.runtime import ORIENTATIONS, make_bundle, phantom, write_nifti
from rlp.runtime.core.nifti import load_nifti, save_like

CODES = (0, 1, 2, 4)
PAIRS = list(itertools.product(CODES, CODES))

SFORM = ORIENTATIONS["LAS"]


def _qform() -> np.ndarray:
    """The sform turned by 10 degrees about the world z axis and moved by (6, -4, 9) mm: the same voxel sizes."""
    t = np.deg2rad(10.0)
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    q = SFORM.copy()
    q[:3, :3] = rot @ SFORM[:3, :3]
    q[:3, 3] += [6.0, -4.0, 9.0]
    return q


QFORM = _qform()


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("bundle") / "b")


def _input(tmp_path, q: int, s: int):
    return write_nifti(tmp_path / f"in_q{q}_s{s}.nii.gz", phantom((24, 24, 2)), SFORM, qform=QFORM,
                       qform_code=q, sform_code=s)


def _assert_same_qform_and_sform(inp, out, q: int, s: int):
    a, b = nib.load(str(inp)), nib.load(str(out))
    # the input really has two different matrices with the codes asked for
    assert (int(a.header["qform_code"]), int(a.header["sform_code"])) == (q, s)
    np.testing.assert_allclose(a.header.get_qform(), QFORM, atol=1e-4)
    np.testing.assert_allclose(a.header.get_sform(), SFORM, atol=1e-6)
    assert not np.allclose(QFORM, SFORM, atol=1.0)
    # the heatmap: the same codes and, where coded, the same matrices (nibabel's coded view)
    assert int(b.header["qform_code"]) == q
    assert int(b.header["sform_code"]) == s
    for get in ("get_qform", "get_sform"):
        (ma, ca), (mb, cb) = getattr(a.header, get)(coded=True), getattr(b.header, get)(coded=True)
        assert int(cb) == int(ca)
        if ca:
            np.testing.assert_allclose(mb, ma, rtol=0, atol=1e-6)
    # and the affine a reader uses: the sform when coded, else the qform
    np.testing.assert_allclose(b.affine, a.affine, rtol=0, atol=1e-6)
    if s:
        np.testing.assert_allclose(b.affine, SFORM, atol=1e-6)
    elif q:
        np.testing.assert_allclose(b.affine, QFORM, atol=1e-4)


@pytest.mark.parametrize("q, s", PAIRS, ids=[f"q{q}-s{s}" for q, s in PAIRS])
def test_save_like_keeps_differing_qform_and_sform_with_their_codes(tmp_path, q, s):
    f = _input(tmp_path, q, s)
    vol = load_nifti(f)
    out = save_like(tmp_path / "heat.nii.gz", np.ones(vol.file_shape, np.float32), vol)
    _assert_same_qform_and_sform(f, out, q, s)


@pytest.mark.parametrize("q, s", PAIRS, ids=[f"q{q}-s{s}" for q, s in PAIRS])
def test_the_cli_heatmap_keeps_differing_qform_and_sform_with_their_codes(capsys, tmp_path, bundle_dir, q, s):
    f = _input(tmp_path, q, s)
    out, summary = _heatmap(capsys, tmp_path, bundle_dir, f)
    _assert_same_qform_and_sform(f, out, q, s)
    assert any("disagree" in w for w in summary["warnings"]) == bool(q and s)
