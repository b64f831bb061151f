"""Make the demo inputs: real held-out slices with inserted synthetic lesions.

    python -m rlp.bench.demo_inputs --data x.h5 --out runtime/demo/slices [--n 10] [--seed 0]

Reads the test split of a dataset prepared from a single volume (the demo's
``mni152``), takes those axial slices from the source volume on its own 1 mm
grid, inserts one lesion per slice (the lesion suite's kinds in turn: bright and
dark, uniform and textured, rings; radius 5-16 voxels; intensities relative to the
slice's white matter, bright ones above it) and writes ``<name>.nii.gz`` (int16, the slice's own affine) with
``<name>_lesion.nii.gz`` (uint8 ground truth) for each.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np

from rlp.runtime.core.atomic import atomic_path, write_json
from rlp.runtime.core.cliutil import exit_with
from rlp.runtime.core.errors import BadInput
from rlp.runtime.core.nifti import LESION_SUFFIX, load_nifti

from .lesions import SUITE_KINDS, make_lesion


def slice_affine(vol, k: int, i: int) -> np.ndarray:
    """World affine of canonical slice ``i`` along canonical axis ``k``, as a 3D X x Y x 1 image."""
    order = [a for a in range(3) if a != k] + [k]
    cols = []
    for a in order:
        e = np.zeros(3)
        e[a] = 1
        cols.append(vol.voxel_to_world(e)[0] - vol.voxel_to_world(np.zeros(3))[0])
    origin = np.zeros(3)
    origin[k] = i
    aff = np.eye(4)
    aff[:3, :3] = np.stack(cols, axis=1)
    aff[:3, 3] = vol.voxel_to_world(origin)[0]
    return aff


def _save(path: Path, data: np.ndarray, affine: np.ndarray, dtype) -> None:
    img = nib.Nifti1Image(data.astype(dtype), affine)
    img.set_qform(affine, 1)
    img.set_sform(affine, 1)
    with atomic_path(path, suffix=".nii.gz") as tmp:
        nib.save(img, tmp)


def make_inputs(data_path: str, out: Path, n: int = 10, seed: int = 0) -> list[dict]:
    import h5py

    with h5py.File(data_path, "r") as f:
        sources = json.loads(f.attrs["sources"])
        axis = str(f.attrs["axis"])
        split = f["split"][:]
        slice_index = f["slice_index"][:]
        subject = f["subject"][:]
        brains = f["brains"][:]
    if len(sources) != 1:
        raise BadInput("demo inputs are made from a single-volume dataset (such as mni152)", data_path)
    vol = load_nifti(sources[0]["image"])
    k, _ = vol.slices(axis)
    test = np.flatnonzero((split == 2) & (subject == 0))
    # the held-out slices with the most brain, in slice order
    test = np.sort(test[np.argsort(-brains[test].sum((1, 2)))[:n]])
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for j, t in enumerate(test):
        i = int(slice_index[t])
        sl, _ = vol.get_slice(k, i)
        brain = sl > 0
        hi = float(np.percentile(sl[brain], 99.5))  # int16 steps of 1/1000 of this, the template's are float
        kind = SUITE_KINDS[j % len(SUITE_KINDS)]
        les, rec = make_lesion(sl / hi, brain, rng, kind, float(rng.uniform(5.0, 16.0)))
        name = f"mni152_{axis}{i:03d}_{kind}"
        aff = slice_affine(vol, k, i)
        _save(out / f"{name}.nii.gz", np.round(les.image * 1000)[:, :, None], aff, np.int16)
        _save(out / f"{name}{LESION_SUFFIX}.nii.gz", les.mask[:, :, None], aff, np.uint8)
        records.append({"file": f"{name}.nii.gz", "lesion": f"{name}{LESION_SUFFIX}.nii.gz", "slice": i, "axis": axis,
                        "kind": kind, "radius_voxels": round(les.radius, 2), "center_voxel": list(les.center),
                        "lesion_voxels": int(les.mask.sum()), "recipe": rec})
    write_json(out / "slices.json", {"source": sources[0], "seed": seed, "split": "test", "slices": records})
    return records


def _main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rlp.bench.demo_inputs", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="dataset prepared from one volume (rlp-train prepare mni152)")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    for r in make_inputs(a.data, a.out, a.n, a.seed):
        print(f"{r['file']}: {r['kind']} lesion, radius {r['radius_voxels']} voxels, {r['lesion_voxels']} voxels")
    return 0


def main(argv=None) -> None:
    exit_with("demo_inputs", lambda: _main(argv))


if __name__ == "__main__":
    main()
