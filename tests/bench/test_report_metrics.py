"""The bench report's localisation numbers, recomputed from the saved maps and masks (issue 23, bug 3).

The bench tests only check that each metric lies in [0, 1], so a report that scored
negated maps (AUROC 1 - x) passed. Here the maps are saved and read back the way a
row process does (``rlp.bench.rows.load_maps``), ``localisation_block`` scores them,
and every per-slice AUROC, AUPRC and best Dice (and their means) must equal the
values recomputed here by brute force over the brain pixels, and by scikit-learn
where it is installed. A known-good slice (its lesion scored high) must give an
AUROC well above 0.5 and a top-window hit.
"""

from __future__ import annotations

import numpy as np
import pytest

from rlp.bench.quality import localisation_block
from rlp.bench.rows import load_maps
from rlp.runtime.core.geometry import WindowGeometry

GEOM = WindowGeometry(size=32, window=8, stride=4)  # 7 x 7 windows
YY, XX = np.mgrid[:32, :32]
BRAIN = (YY - 16) ** 2 / 13**2 + (XX - 15.5) ** 2 / 12**2 < 1
LESION = ((YY - 11) ** 2 + (XX - 19) ** 2 < 3.2**2) & BRAIN


def _maps_of(window_map: np.ndarray) -> dict:
    """A slice's maps as the bench records them (``rows.map_record``): the window map, the windows
    evaluated (brain only), the pixel map they give, and the top window's box on the slice."""
    ev = GEOM.evaluated(BRAIN)
    pixel = GEOM.pixel_map(window_map, ev)
    k = int(np.argmax(np.where(ev, window_map, -np.inf)))
    r, c = GEOM.window_boxes()[k]
    w = GEOM.window
    top = np.asarray([r - 0.5, c - 0.5, r + w - 0.5, c + w - 0.5], np.float64)  # pixel edges, identity grid
    return {"window": window_map, "evaluated": ev, "pixel": pixel, "top": top}


def _lesion_overlap() -> np.ndarray:
    """Fraction of each window's pixels that are lesion."""
    w = GEOM.window
    return np.asarray([[LESION[r:r + w, c:c + w].mean() for c in GEOM.positions] for r in GEOM.positions])


def _cases():
    rng = np.random.default_rng(7)
    shape = GEOM.grid_shape
    overlap = _lesion_overlap()
    maps = [
        # good: the lesion scored high (its windows well above the background noise)
        _maps_of(1.0 + 4.0 * overlap + 0.05 * rng.random(shape)),
        # noisy, with ties (scores rounded): what a weak model gives
        _maps_of(np.round(1.0 + 0.6 * overlap + rng.random(shape), 1)),
        # inverted: the lesion scored low
        _maps_of(2.0 - 1.5 * overlap + 0.05 * rng.random(shape)),
        # a healthy slice (slice-level negatives only) and a slice without a mask (skipped)
        _maps_of(1.0 + 0.05 * rng.random(shape)),
        _maps_of(1.0 + rng.random(shape)),
    ]
    cases = [{"id": "good", "set": "lesion"}, {"id": "noisy", "set": "lesion"}, {"id": "inverted", "set": "lesion"},
             {"id": "healthy", "set": "healthy"}, {"id": "unmasked", "set": "lesion"}]
    truth = {c: {"brain": BRAIN, "lesion": LESION} for c in ("good", "noisy", "inverted")}
    return maps, cases, truth


def _saved_and_loaded(maps: list[dict], tmp_path) -> list[dict]:
    """Through the file format a row process writes (``{key}_{slice}`` arrays in one npz)."""
    f = tmp_path / "maps.npz"
    np.savez(f, **{f"{k}_{j}": v for j, m in enumerate(maps) for k, v in m.items()})
    return load_maps(f, len(maps))


# --------------------------------------------------------------------------- brute-force references
def _auroc_pairs(s: np.ndarray, y: np.ndarray) -> float:
    """P(a lesion pixel scores above a healthy one), ties counted half: every pair compared."""
    pos, neg = s[y], s[~y]
    gt = (pos[:, None] > neg[None, :]).sum()
    eq = (pos[:, None] == neg[None, :]).sum()
    return float((gt + 0.5 * eq) / (len(pos) * len(neg)))


def _auprc_steps(s: np.ndarray, y: np.ndarray) -> float:
    """Average precision: for each distinct threshold t (highest first), (recall gained) x precision of s >= t."""
    out, prev_recall = 0.0, 0.0
    for t in np.unique(s)[::-1]:
        sel = s >= t
        tp = float((sel & y).sum())
        recall = tp / y.sum()
        out += (recall - prev_recall) * tp / sel.sum()
        prev_recall = recall
    return out


def _best_dice_thresholds(s: np.ndarray, y: np.ndarray) -> float:
    """max over thresholds t of 2 |{s >= t} & lesion| / (|{s >= t}| + |lesion|)."""
    return max(2.0 * (((s >= t) & y).sum()) / ((s >= t).sum() + y.sum()) for t in np.unique(s))


def test_the_cases_are_what_they_claim():
    assert BRAIN.sum() > 300 and 20 < LESION.sum() < 50
    maps, _, _ = _cases()
    s, y = maps[0]["pixel"][BRAIN], LESION[BRAIN]
    assert s[y].mean() > s[~y].mean()  # the good map scores the lesion higher
    s, y = maps[2]["pixel"][BRAIN], LESION[BRAIN]
    assert s[y].mean() < s[~y].mean()  # the inverted map scores it lower
    assert len(np.unique(maps[1]["pixel"][BRAIN])) < BRAIN.sum()  # ties in the noisy map


def test_localisation_block_equals_metrics_recomputed_from_the_saved_maps(tmp_path):
    maps, cases, truth = _cases()
    loc = localisation_block(_saved_and_loaded(maps, tmp_path), cases, truth)
    per = {p["id"]: p for p in loc["per_slice"]}
    assert sorted(per) == ["good", "inverted", "noisy"] and loc["slices"] == 3
    want = {}
    for j, case in enumerate(cases[:3]):
        s, y = maps[j]["pixel"][BRAIN].astype(np.float64), LESION[BRAIN]
        want[case["id"]] = {"auroc": _auroc_pairs(s, y), "auprc": _auprc_steps(s, y),
                            "best_dice": _best_dice_thresholds(s, y)}
        for key, value in want[case["id"]].items():
            assert per[case["id"]][key] == pytest.approx(value, abs=1e-12), (case["id"], key)
    for key in ("auroc", "auprc", "best_dice"):
        assert loc[key] == pytest.approx(np.mean([w[key] for w in want.values()]), abs=1e-12), key
    # the inverted map is scored as inverted, not flattered
    assert per["inverted"]["auroc"] < 0.2 < 0.9 < per["good"]["auroc"]


def test_localisation_block_agrees_with_scikit_learn(tmp_path):
    skm = pytest.importorskip("sklearn.metrics")
    maps, cases, truth = _cases()
    loc = localisation_block(_saved_and_loaded(maps, tmp_path), cases, truth)
    per = {p["id"]: p for p in loc["per_slice"]}
    for j, case in enumerate(cases[:3]):
        s, y = maps[j]["pixel"][BRAIN].astype(np.float64), LESION[BRAIN]
        assert per[case["id"]]["auroc"] == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
        assert per[case["id"]]["auprc"] == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)


def test_a_lesion_scored_high_gives_a_high_auroc_and_a_top_window_hit(tmp_path):
    maps, cases, truth = _cases()
    loc = localisation_block(_saved_and_loaded(maps[:1], tmp_path), cases[:1], truth)
    (good,) = loc["per_slice"]
    assert good["auroc"] > 0.9 and good["auprc"] > 0.5 and good["best_dice"] > 0.5
    assert good["top_window_hit"] is True
    assert loc["hits"] == 1 and loc["top_window_hit_rate"] == 1.0
    # the inverted map's top window is away from the lesion: no hit
    loc = localisation_block(_saved_and_loaded(maps[2:3], tmp_path), cases[2:3], truth)
    assert loc["per_slice"][0]["top_window_hit"] is False and loc["hits"] == 0
    # a top window just beside the lesion (rows 0-7; the lesion starts at row 8) is no hit either
    beside = np.ones(GEOM.grid_shape)
    beside[0, 4] = 5.0  # the window at row 0, column 16
    assert not LESION[:8].any() and LESION[8, 16:24].any()
    loc = localisation_block(_saved_and_loaded([_maps_of(beside)], tmp_path), cases[:1], truth)
    assert loc["per_slice"][0]["top_window_hit"] is False and loc["hits"] == 0
