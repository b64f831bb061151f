"""The bench's lesion suite: built from held-out slices only, reproducible from its seed, every kind and
unregistered slices present; and the report's detection AUROC, dilated hits and per-group figures."""

from __future__ import annotations

import numpy as np
import pytest

from rlp.bench.lesions import SUITE_KINDS, make_lesion
from rlp.bench.quality import localisation_block
from rlp.bench.suite import HEALTHY, LESION, RADIUS, suite_cases


def _heldout(folder, n=6, size=64):
    yy, xx = np.mgrid[:size, :size]
    brains, images = [], []
    rng = np.random.default_rng(0)
    for _ in range(n):
        b = ((yy - size / 2) ** 2 / (0.42 * size) ** 2 + (xx - size / 2) ** 2 / (0.36 * size) ** 2) < 1
        brains.append(b)
        images.append(np.where(b, 0.6 + 0.4 * rng.random((size, size)), 0).astype(np.float32))
    split = np.array([2, 2, 2, 1, 1, 1], np.int8)[:n]
    np.savez(folder / "heldout.npz", images=np.stack(images), brains=np.stack(brains), split=split)
    return folder


def test_the_suite_is_reproducible_from_its_seed(tmp_path):
    run = _heldout(tmp_path)
    a = suite_cases(run, tmp_path / "a.npz", seed=5, lesions=12, healthy=4)
    b = suite_cases(run, tmp_path / "b.npz", seed=5, lesions=12, healthy=4)
    c = suite_cases(run, tmp_path / "c.npz", seed=6, lesions=12, healthy=4)
    strip = lambda cases: [{k: v for k, v in x.items() if k != "npz"} for x in cases]  # noqa: E731
    assert strip(a) == strip(b) and strip(a) != strip(c)
    with np.load(tmp_path / "a.npz") as za, np.load(tmp_path / "b.npz") as zb:
        np.testing.assert_array_equal(za["images"], zb["images"])
        np.testing.assert_array_equal(za["lesions"], zb["lesions"])


def test_the_suite_holds_every_kind_unregistered_slices_and_healthy_ones(tmp_path):
    run = _heldout(tmp_path)
    cases = suite_cases(run, tmp_path / "s.npz", seed=0, lesions=15, healthy=6)
    les = [c for c in cases if c["set"] == LESION]
    healthy = [c for c in cases if c["set"] == HEALTHY]
    assert len(les) == 15 and len(healthy) == 6
    assert {c["suite"]["kind"] for c in les} == set(SUITE_KINDS)
    assert sum(not c["suite"]["registered"] for c in les) == 5
    assert sum(not c["suite"]["registered"] for c in healthy) == 2
    assert all(c["suite"]["split"] in ("val", "test") for c in cases)
    with np.load(tmp_path / "s.npz") as z:
        images, masks = z["images"], z["lesions"]
    for c in les:
        s = c["suite"]
        assert RADIUS[0] <= s["radius"] <= RADIUS[1]
        m = masks[c["index"]]
        assert m.any() and (images[c["index"]][m] > 0).all()  # inside the tissue
        assert s["lesion_voxels"] == int(m.sum())
    for c in healthy:
        assert not masks[c["index"]].any() and c["lesion_key"] is None
    unreg = next(c for c in healthy if not c["suite"]["registered"])
    assert 8 <= abs(unreg["suite"]["rotation_deg"]) <= 25


@pytest.mark.parametrize("kind", SUITE_KINDS)
def test_lesion_kinds_are_brighter_or_darker_than_white_matter(kind):
    size = 64
    yy, xx = np.mgrid[:size, :size]
    brain = ((yy - 32) ** 2 + (xx - 32) ** 2) < 28**2
    image = np.where(brain, 0.7, 0.0)
    image[brain & (xx > 32)] = 1.0  # "white matter" at 1.0 on one half
    les, rec = make_lesion(image, brain, np.random.default_rng(1), kind, 6.0)
    inside = les.image[les.mask]
    wm = np.percentile(image[brain], 90)
    if kind.startswith("bright"):
        assert np.median(inside) > 1.2 * wm  # above the healthy range
    elif kind.startswith("dark"):
        assert np.median(inside) < 0.5 * wm
    else:  # a ring: a bright rim round a dark core
        assert inside.max() > 1.2 * wm and inside.min() < 0.5 * wm
    assert rec["kind"] == kind and not les.mask[~brain].any()


def _maps(top_boxes, top_scores, size=32):
    out = []
    for box, s in zip(top_boxes, top_scores):
        window = np.full((4, 4), 0.1)
        window[0, 0] = s
        pixel = np.zeros((size, size))
        out.append({"window": window, "evaluated": np.ones((4, 4), bool), "pixel": pixel,
                    "top": np.asarray(box, np.float64)})
    return out


def test_localisation_block_detection_dilated_hits_and_groups():
    size = 32
    lesion = np.zeros((size, size), bool)
    lesion[10:14, 10:14] = True
    brain = np.ones((size, size), bool)
    cases = [{"id": "a", "set": LESION, "suite": {"kind": "ring", "polarity": "bright", "registered": True}},
             {"id": "b", "set": LESION, "suite": {"kind": "dark-uniform", "polarity": "dark", "registered": False}},
             {"id": "h1", "set": HEALTHY}, {"id": "h2", "set": HEALTHY}]
    # a: the top box on the lesion; b: its top box 3 voxels beside it (a miss, a hit within 4 voxels)
    boxes = [(10.5, 10.5, 12.5, 12.5), (1.5, 16.5, 5.5, 20.5), (0, 0, 2, 2), (0, 0, 2, 2)]
    maps = _maps(boxes, [0.9, 0.5, 0.6, 0.2])
    maps[0]["pixel"][lesion] = 1.0  # a scores its lesion high: pixel AUROC 1
    maps[1]["pixel"][~lesion] = 1.0  # b scores everything but its lesion: AUROC 0
    truth = {c["id"]: {"brain": brain, "lesion": lesion} for c in cases[:2]}
    b_lesion = np.zeros((size, size), bool)
    b_lesion[9:12, 17:20] = True  # 3 voxels below b's box
    truth["b"] = {"brain": brain, "lesion": b_lesion}
    maps[1]["pixel"] = np.where(b_lesion, 0.0, 1.0)
    loc = localisation_block(maps, cases, truth, dilation=4)
    assert loc["slices"] == 2 and loc["healthy_slices"] == 2
    assert loc["hits"] == 1 and loc["hits_dilated"] == 2
    assert loc["auroc"] == pytest.approx(0.5)  # 1 and 0
    # slice level: lesion top scores 0.9, 0.5 against healthy 0.6, 0.2 -> 3 of 4 pairs ordered
    assert loc["detection_auroc"] == pytest.approx(0.75)
    g = loc["groups"]
    assert g["kind"]["ring"]["hits"] == 1 and g["kind"]["dark-uniform"]["hits"] == 0
    assert g["registration"]["unregistered"]["hits_dilated"] == 1
    assert g["polarity"]["bright"]["detection_auroc"] == pytest.approx(1.0)
    assert g["polarity"]["dark"]["detection_auroc"] == pytest.approx(0.5)
    assert localisation_block(maps, cases, truth, dilation=0)["hits_dilated"] == 1
