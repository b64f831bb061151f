"""Bundles made before preprocessing version 2 keep loading and giving the same maps.

``tests/data/v1`` is a bundle exported by rlp before version 2 (see tests/data/README.md),
and ``tests/data/v1_inputs/expected_maps.npz`` the maps that rlp made with it. The slice
holds a bright lesion, which version 1 clips at 1.0 and version 2 keeps: reading the
bundle with version 2's normalisation, or scoring its G with anything but the L1,
changes the maps.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers.process import run_python
from rlp.runtime.core.errors import EX_DATAERR, BadInput
from rlp.runtime.core.manifest import load_bundle_manifest
from rlp.runtime.heatmap import Bundle

DATA = Path(__file__).resolve().parents[1] / "data"
V1 = DATA / "v1"
SLICE = DATA / "v1_inputs" / "mni152_axial046_bright.nii.gz"


def test_a_v1_manifest_reads_as_version_1_with_the_l1_score():
    m = load_bundle_manifest(V1)
    assert "version" not in json.loads((V1 / "manifest.json").read_text())["preprocessing"]
    assert m.preprocessing.version == 1 and m.preprocessing.ceiling == 1.0 and m.preprocessing.percentile == 99.5
    assert m.loss["kind"] == "l1"


@pytest.mark.parametrize("path", ["g", "r"])
def test_a_v1_bundle_gives_the_maps_it_gave(path):
    with np.load(DATA / "v1_inputs" / "expected_maps.npz") as z:
        want_heat, want_windows = z[f"{path}_heatmap"], z[f"{path}_windows"]
    with Bundle.load(V1, backend="ort-cpu", threads=1) as b:
        assert b.score == "l1"
        got = b.heatmap_nifti(SLICE, head=path)
    np.testing.assert_allclose(got.window_maps, want_windows, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got.heatmap, want_heat, rtol=0, atol=1e-6)


def _edited(tmp_path: Path, edit) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(V1, dst)
    m = json.loads((dst / "manifest.json").read_text())
    edit(m)
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


@pytest.mark.parametrize("edit, named", [
    (lambda m: m["preprocessing"].update(version=7), "preprocessing version 7"),
    (lambda m: m["loss"].update(kind="ssim"), "window score 'ssim'"),
])
def test_an_unknown_normalisation_or_score_is_refused_by_name(tmp_path, edit, named):
    bundle = _edited(tmp_path, edit)
    with pytest.raises(BadInput, match=named):
        load_bundle_manifest(bundle)
    r = run_python(["-m", "rlp.runtime.cli", str(SLICE), "--bundle", str(bundle), "--out", str(tmp_path / "out")])
    assert r.returncode == EX_DATAERR
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and named in err and "upgrade rlp" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
