"""Inputs the model was not made for (#20): the training domain and the healthy reference (runtime/core/domain.py)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from helpers.runtime import write_nifti
from rlp.runtime.cli import main
from rlp.runtime.core.domain import QUANTILES, Domain, healthy_percentile, healthy_reference, training_domain
from rlp.runtime.core.errors import EX_DATAERR, BadInput
from rlp.runtime.core.manifest import MANIFEST, load_bundle_manifest
from rlp.runtime.core.nifti import load_nifti
from rlp.runtime.heatmap import Bundle, default_bundle, demo_slices

CLEAN = "mni152_axial048_dark-uniform"


def _clean_slice() -> tuple[np.ndarray, np.ndarray]:
    """The demo's axial slice 48 (197x233 voxels of 1 mm) and its affine."""
    v = load_nifti(next(p for p in demo_slices() if CLEAN in p.name))
    return np.asarray(v.data[:, :, 0], np.float32), np.asarray(v.affine)


def _bad_inputs(tmp_path) -> dict:
    sl, aff = _clean_slice()
    rng = np.random.default_rng(0)
    c0, c1 = sl.shape[0] // 2, sl.shape[1] // 2
    return {  # each ran silently before, exit 0, with a map that means nothing
        "toy": write_nifti(tmp_path / "toy.nii.gz", rng.uniform(1, 100, (4, 5, 7)).astype(np.float32)),
        "cropped": write_nifti(tmp_path / "cropped.nii.gz", sl[c0 - 16:c0 + 17, c1 - 20:c1 + 21, None], aff),
        "noisy": write_nifti(tmp_path / "noisy.nii.gz",
                             (sl + rng.normal(0, 0.03 * sl.max(), sl.shape)).astype(np.float32)[:, :, None], aff),
        "sagittal": write_nifti(tmp_path / "sagittal.nii.gz", sl[None, :, :], np.eye(4)),  # one x: a sagittal slice
        "contrast": write_nifti(tmp_path / "contrast.nii.gz",  # T2-like: the same brain, its contrast inverted
                                np.where(sl > 0, sl.max() * 1.05 - sl, 0).astype(np.float32)[:, :, None], aff),
    }


def _run(args, tmp_path, name="out") -> tuple[int, list[dict]]:
    out = tmp_path / name
    return main([*map(str, args), "--out", str(out), "--json"]), out


def test_the_demo_bundle_records_its_domain():
    dom = load_bundle_manifest(default_bundle()).domain
    assert dom is not None and dom["axis"] == "axial" and dom["fov_mm"] and dom["voxel_mm_max"]
    assert set(dom["healthy"]) == {"g", "r"} and all(h["slices"] >= 24 for h in dom["healthy"].values())


@pytest.mark.parametrize("kind, check", [("toy", "field of view"), ("cropped", "field of view"),
                                         ("noisy", "fills"), ("sagittal", "sagittal slices"),
                                         ("contrast", "intensity profile")])
def test_an_input_outside_the_training_domain_warns_and_strict_refuses(tmp_path, capsys, kind, check):
    f = _bad_inputs(tmp_path)[kind]
    rc, out = _run([f], tmp_path)
    assert rc == 0
    summary = json.loads((out / f"{kind}_summary.json").read_text())
    assert summary["domain"]["checked"] and any(check in w for w in summary["domain"]["warnings"])
    assert any(w.startswith("outside the training domain:") and check in w for w in summary["warnings"])
    err = capsys.readouterr().err
    assert f"{f}: warning: outside the training domain:" in err and check in err
    rc, strict = _run([f, "--strict"], tmp_path, "strict")
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == EX_DATAERR and not strict.exists()  # no output left, not even the folder
    assert [line for line in err if str(f) in line] == [err[-1]]  # one line: the input, what is wrong
    assert "outside the bundle's training domain (--strict)" in err[-1] and check in err[-1]


def test_another_axis_through_a_volume_warns(tmp_path):
    sl, aff = _clean_slice()
    vol = write_nifti(tmp_path / "vol.nii.gz", np.repeat(sl[:, :, None], 3, axis=2), aff)
    rc, out = _run([vol, "--axis", "coronal", "--slice", "1"], tmp_path)
    assert rc == 0
    warnings = json.loads((out / "vol_summary.json").read_text())["domain"]["warnings"]
    assert any("coronal slices, but the bundle was trained on axial slices" in w for w in warnings)


def test_the_demo_slices_are_inside_the_domain_with_a_healthy_percentile(tmp_path, capsys):
    rc, out = _run([*demo_slices()[:3], "--strict"], tmp_path)
    assert rc == 0
    for p in demo_slices()[:3]:
        s = json.loads((out / (p.name[:-7] + "_summary.json")).read_text())
        assert s["domain"] == {"checked": True, "warnings": []} and s["warnings"] == []
        assert 0 <= s["healthy_percentile"] <= 100
        assert s["per_slice"][0]["healthy_percentile"] == s["healthy_percentile"]
    assert "warning" not in capsys.readouterr().err


def _copy_bundle(tmp_path, edit) -> Bundle:
    b = tmp_path / "bundle"
    shutil.copytree(default_bundle(), b, ignore=shutil.ignore_patterns("slices"))
    d = json.loads((b / MANIFEST).read_text())
    edit(d)
    (b / MANIFEST).write_text(json.dumps(d))
    return b


def test_the_percentile_is_that_of_the_reference(tmp_path):
    assert healthy_percentile(0.5, healthy_reference([0.6, 0.1, 0.5, 0.3], "z")) == 75.0
    assert healthy_percentile(0.05, healthy_reference([0.6, 0.1, 0.5, 0.3], "z")) == 0.0
    assert healthy_percentile(9.0, healthy_reference([0.6, 0.1], "z")) == 100.0
    assert healthy_percentile(1.0, None) is None
    reference = [0.01 * i for i in range(1, 401)]  # 0.01 .. 4.00
    b = _copy_bundle(tmp_path, lambda d: d["domain"]["healthy"].update(r=healthy_reference(reference, "z")))
    sl, _ = _clean_slice()
    with Bundle.load(b) as bundle:
        res = bundle.heatmap_slice(sl, head="r")
    want = 100.0 * sum(v <= res.max_score for v in reference) / len(reference)
    assert 0 < want < 100 and res.healthy_percentile == pytest.approx(want)
    with Bundle.load(b, score="l1") as bundle:  # a score the reference is not in: no percentile, not a wrong one
        assert bundle.heatmap_slice(sl, head="g", all_windows=False).healthy_percentile is None


def test_a_manifest_without_the_section_loads_and_skips_the_checks(tmp_path, capsys):
    b = _copy_bundle(tmp_path, lambda d: d.pop("domain"))
    assert load_bundle_manifest(b).domain is None
    noisy = _bad_inputs(tmp_path)["noisy"]
    rc, out = _run([noisy, "--bundle", b, "--strict"], tmp_path)
    assert rc == 0  # nothing to check against: no warning spam, no refusal
    s = json.loads((out / "noisy_summary.json").read_text())
    assert s["domain"] == {"checked": False, "warnings": []} and s["healthy_percentile"] is None
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize("edit", [lambda d: d.update(version=2), lambda d: d.update(axis="oblique"),
                                  lambda d: d["intensity"].update(profile=[0.5]),
                                  lambda d: d.update(fov_mm=[300.0, 100.0]),
                                  lambda d: d["healthy"].update(r={"score": "z", "top_scores": []}),
                                  lambda d: d.update(brain_fraction_max=float("nan"))])
def test_a_malformed_domain_section_is_refused(tmp_path, edit):
    b = _copy_bundle(tmp_path, lambda d: edit(d["domain"]))
    with pytest.raises(BadInput, match="malformed manifest .*domain"):
        load_bundle_manifest(b)


def test_training_domain_limits_follow_the_training_spread():
    rng = np.random.default_rng(0)
    brains = np.zeros((20, 32, 32), bool)
    brains[:, 8:24, 8:24] = True
    images = (rng.uniform(0.5, 1.0, brains.shape) * brains).astype(np.float32)
    dom = Domain.from_dict(training_domain(images, brains, "axial", [200.0, 240.0], [1.0, 1.2], "x").to_dict())
    assert dom.brain_fraction_max == pytest.approx(1.25 * 0.25)
    assert dom.fov_mm == pytest.approx((200 / 1.5, 240 * 1.5)) and dom.voxel_mm_max == pytest.approx(2 * 240 / 32)
    assert len(dom.intensity_quantiles) == len(QUANTILES) and 0.5 < dom.intensity_quantiles[0] < 0.6
    one = training_domain(images[:1], brains[:1], None)  # one slice: no spread, yet a usable limit
    assert one.intensity_distance_max == one.intensity_distance_max_small == 0.05 and one.fov_mm is None


def test_export_records_the_domain_and_healthy_reference(tiny_run, tmp_path):
    pytest.importorskip("torch")
    from rlp.export.cli import main as export

    out = tmp_path / "b"
    assert export([str(tiny_run), "--out", str(out), "--parity-slices", "1", "--reference-slices", "3", "--quiet"]) == 0
    dom = load_bundle_manifest(out).domain
    assert dom["axis"] == "axial" and dom["training"]["slices"] > 0
    assert {p: h["slices"] for p, h in dom["healthy"].items()} == {"g": 3, "r": 3}
    assert all(h["score"] == "z" and h["top_scores"] == sorted(h["top_scores"]) for h in dom["healthy"].values())


def test_the_overlay_says_so():
    from rlp.runtime.overlay import Panel, domain_note, percentile_text, render

    assert domain_note(None) == domain_note([]) == "" and percentile_text(None) == ""
    note = domain_note(["axial slices, but X", "the field of view is 5 mm"])
    assert note.startswith("WARNING: not what the model was trained on: axial slices, but X") and "+1 more" in note
    assert percentile_text(97.4) == "  (healthy p97)"
    img = np.arange(64, dtype=np.float32).reshape(8, 8)
    panel = [Panel(img, img / 64, title="max 1" + percentile_text(50.0))]
    assert render(panel, note=note) != render(panel)
