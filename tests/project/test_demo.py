"""The embedded default: the bundled demo model and slices, as a new user meets them."""

import json

import nibabel as nib
import numpy as np
import pytest

from helpers.process import run_python
from rlp.runtime.core.manifest import load_bundle_manifest
from rlp.runtime.heatmap import default_bundle, demo_slices

pytestmark = pytest.mark.skipif(default_bundle() is None, reason="this checkout ships no demo bundle")


def test_demo_bundle_is_small_verified_and_documented():
    b = default_bundle()
    man = load_bundle_manifest(b)  # hashes checked
    assert {"r", "g"} <= set(man.models)
    size = sum(p.stat().st_size for p in b.rglob("*") if p.is_file())
    assert size <= 30 * 2**20
    card = (b / "MODEL_CARD.md").read_text()
    for must in ("rlp-train prepare mni152", "rlp-export", "seed", "not for clinical use"):
        assert must in card


def test_demo_slices_are_real_held_out_slices_with_lesion_masks():
    slices = demo_slices()
    assert len(slices) >= 6
    meta = json.loads((slices[0].parent / "slices.json").read_text())
    assert meta["split"] == "test"
    for s in slices:
        img = nib.load(s)
        mask = nib.load(s.with_name(s.name.replace(".nii.gz", "_lesion.nii.gz")))
        assert img.shape == mask.shape and np.allclose(img.affine, mask.affine)
        assert np.asarray(mask.dataobj).any()


def test_zero_argument_demo_writes_overlays_and_the_hit_table(tmp_path):
    r = run_python(["-m", "rlp.runtime.cli", "--out", str(tmp_path / "out"), "--quiet"], timeout=600)
    assert r.returncode == 0, r.stderr
    for s in demo_slices():
        stem = s.name[: -len(".nii.gz")]
        for suffix in ("_heatmap.nii.gz", "_overlay.png", "_summary.json"):
            assert (tmp_path / "out" / f"{stem}{suffix}").is_file()
    assert "top window in the lesion:" in r.stdout
