"""Pins of bench/metrics.py written for the mutants that survived its mutation run (tests/MUTATION.md).

The expected values are worked out by hand in the comments, not recomputed with the code under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from rlp.bench.metrics import auprc, auroc, best_dice, fidelity, top_window_hit

# sorted: 0.9 (+), 0.8 (-), 0.8 (+), 0.3 (-), 0.1 (-); the two 0.8 are one threshold
S = np.array([0.3, 0.8, 0.9, 0.1, 0.8])
Y = np.array([0, 0, 1, 0, 1], bool)


def test_auroc_by_hand_with_a_tie():
    # pairs: 0.9 beats the 3 negatives, 0.8 beats 2 and ties 1: (3 + 2.5) / 6
    assert auroc(S, Y) == pytest.approx(11 / 12, abs=1e-12)
    assert auroc(-S, Y) == pytest.approx(1 / 12, abs=1e-12)
    assert auroc(S.reshape(5, 1), Y.astype(int).reshape(5, 1)) == pytest.approx(11 / 12, abs=1e-12)


def test_auprc_and_best_dice_by_hand_with_a_tie():
    # thresholds 0.9, 0.8, 0.3, 0.1: tp 1, 2, 2, 2; fp 0, 1, 2, 3; 2 positives
    # AP = 0.5 * 1 + 0.5 * 2/3; Dice = 2 tp / (tp + fp + 2) = 2/3, 4/5, 4/6, 4/7
    assert auprc(S, Y) == pytest.approx(0.5 + 1 / 3, abs=1e-12)
    assert best_dice(S, Y) == pytest.approx(0.8, abs=1e-12)
    # without the tie: 0.9 +, 0.8 -, 0.7 +: AP = 0.5 + 0.5 * 2/3, Dice max(2/3, 2/4, 4/5, 4/6) = 4/5
    assert auprc([0.9, 0.8, 0.7], [1, 0, 1]) == pytest.approx(0.5 + 1 / 3, abs=1e-12)
    assert best_dice([0.9, 0.8, 0.7, 0.1], [1, 0, 1, 0]) == pytest.approx(0.8, abs=1e-12)
    # a perfect ranking
    assert auprc([0.9, 0.8, 0.2], [1, 1, 0]) == 1.0 and best_dice([0.9, 0.8, 0.2], [1, 1, 0]) == 1.0


def test_degenerate_labels():
    """AUROC needs both classes; AP and Dice need a positive (all positive: both 1)."""
    assert math.isnan(auroc([0.1, 0.5], [1, 1]))
    assert math.isnan(auroc([0.1, 0.5], [0, 0]))
    assert math.isnan(auprc([0.1, 0.5], [0, 0]))
    assert math.isnan(best_dice([0.1, 0.5], [0, 0]))
    assert auprc([0.1, 0.5], [1, 1]) == 1.0
    assert best_dice([0.1, 0.5], [1, 1]) == 1.0
    for f in (auroc, auprc, best_dice):
        assert type(f(S, Y)) is float


def test_top_window_hit_edges():
    """The window's last row and column count; one past them does not."""
    lesion = np.zeros((8, 8), bool)
    boxes = np.array([[0, 0], [4, 4]])
    wm = np.array([0.0, 1.0])
    lesion[7, 7] = True
    assert top_window_hit(wm, boxes, 4, lesion) is True
    lesion[:] = False
    lesion[4, 4] = True
    assert top_window_hit(wm, boxes, 4, lesion) is True
    lesion[:] = False
    lesion[3, 3] = True
    assert top_window_hit(wm, boxes, 4, lesion) is False
    assert top_window_hit(wm[::-1].copy(), boxes, 4, lesion) is True
    lesion[:] = False
    lesion[0, 3] = True  # row inside window 0, column 3 inside too
    assert top_window_hit(np.array([[1.0, 0.0]]), boxes, 4, lesion) is True
    assert top_window_hit(np.array([[1.0, 0.0]]), boxes, 3, lesion) is False


def test_fidelity_by_hand():
    g = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 100.0]])
    p = np.array([[2.0, 2.0, 5.0], [4.0, 3.0, 50.0]])
    ev = np.array([[True, True, True], [True, True, False]])
    # evaluated: pv = 2 2 5 4 3, gv = 1 2 3 4 5
    f = fidelity(p, g, ev)
    assert set(f) == {"mae", "mae_rel", "pearson", "spearman", "top5_iou", "argmax_distance_windows", "n_windows"}
    assert f["mae"] == pytest.approx(1.0)                     # (1 + 0 + 2 + 0 + 2) / 5
    assert f["mae_rel"] == pytest.approx(1 / 3)                # mean of gv is 3
    assert f["pearson"] == pytest.approx(4 / math.sqrt(68))    # cov 4.0, sums of squares 6.8 and 10
    assert f["spearman"] == pytest.approx(5.5 / math.sqrt(95))  # ranks 1.5 1.5 5 4 3 against 1..5
    assert f["top5_iou"] == 0.0                                # k = max(1, round(0.25)) = 1: {2} vs {4}
    assert f["argmax_distance_windows"] == pytest.approx(math.sqrt(2))  # (0, 2) vs (1, 1); (1, 2) not evaluated
    assert f["n_windows"] == 5 and type(f["n_windows"]) is int
    assert fidelity(p, g, ev, top=0.4)["top5_iou"] == pytest.approx(1 / 3)  # k = 2: {2, 3} vs {4, 3}
    assert fidelity(p, g, ev, top=0.3)["top5_iou"] == pytest.approx(1 / 3)  # k = round(1.5) = 2
    whole = fidelity(p, g)
    assert whole["n_windows"] == 6 and whole["argmax_distance_windows"] == 0.0
    assert whole["mae"] == pytest.approx((1 + 0 + 2 + 0 + 2 + 50) / 6)


def test_fidelity_of_a_zero_mean_reference_and_of_constant_maps():
    f = fidelity(np.array([[1.0, 1.0]]), np.array([[1.0, -1.0]]))
    assert math.isnan(f["mae_rel"]) and f["mae"] == 1.0
    assert f["pearson"] == 0.0 and f["spearman"] == 0.0  # the prediction is constant
    h = fidelity(np.array([[1.0, 3.0]]), np.array([[2.0, 2.0]]))  # the reference is constant
    assert h["pearson"] == 0.0 and h["spearman"] == 0.0 and h["mae_rel"] == 0.5
    for v in fidelity(np.array([[1.0, 3.0, 2.0]]), np.array([[2.0, 5.0, 1.0]])).values():
        assert type(v) in (float, int)


def test_a_single_positive_and_a_single_negative():
    """p == 1 and n == 1 are ordinary cases, not the degenerate ones."""
    assert auroc([0.1, 0.5], [0, 1]) == 1.0
    assert auroc([0.5, 0.1], [0, 1]) == 0.0
    assert auprc([0.1, 0.5], [0, 1]) == 1.0
    assert auprc([0.5, 0.1], [0, 1]) == 0.5  # recall 1 reached at precision 1/2
    assert best_dice([0.1, 0.5], [0, 1]) == 1.0
    assert best_dice([0.5, 0.1], [0, 1]) == pytest.approx(2 / 3)  # both selected: 2 * 1 / (2 + 1)


def test_binary_and_integer_maps_and_masks():
    """Scores and labels of any dtype: a bool or uint8 map (no wrap-around when negated), 0/1 or 0/255 masks."""
    y = np.array([[0, 0, 1], [1, 0, 0]], np.uint8)
    assert best_dice(y.astype(bool), y.astype(bool)) == 1.0
    assert auroc(y.astype(bool), y) == 1.0 and auprc(y.astype(bool), y * 255) == 1.0
    s = np.array([0, 1, 2, 250], np.uint8)
    assert auroc(s, [0, 0, 1, 1]) == 1.0 and auroc(s, [1, 1, 0, 0]) == 0.0
    assert auprc(s, [0, 1, 0, 1]) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert auroc([0.1, 0.4, 0.3], np.array([0.0, 1.0, 0.0])) == 1.0


def test_fidelity_of_binary_and_integer_inputs():
    pred = np.array([[True, False], [False, False]])
    ref = np.array([[1.0, 0.0], [0.5, 0.0]])
    f = fidelity(pred, ref)
    assert f["mae"] == pytest.approx(0.5 / 4) and f["argmax_distance_windows"] == 0.0 and f["top5_iou"] == 1.0
    h = fidelity(ref, pred)  # a bool reference
    assert h["mae"] == pytest.approx(0.5 / 4) and h["argmax_distance_windows"] == 0.0 and h["top5_iou"] == 1.0
    ev = np.array([[0, 1], [1, 1]], np.uint8)  # an integer mask of the evaluated windows
    e = fidelity(np.array([[9.0, 1.0], [2.0, 3.0]]), np.array([[0.0, 1.0], [2.0, 4.0]]), ev)
    assert e["n_windows"] == 3 and e["mae"] == pytest.approx(1 / 3) and e["argmax_distance_windows"] == 0.0


def test_fidelity_correlation_of_a_reference_with_unit_spread():
    """A reference whose standard deviation is exactly 1 is not constant."""
    f = fidelity(np.array([[1.0, 3.0]]), np.array([[0.0, 2.0]]))
    assert f["pearson"] == pytest.approx(1.0) and f["spearman"] == pytest.approx(1.0)


def test_degenerate_labels_give_nan_without_dividing_by_zero():
    """The nan of a one-class AUROC is returned, not computed from 0 / 0 (no numpy RuntimeWarning)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(auroc([0.1, 0.5], [1, 1]))
        assert math.isnan(auroc([0.1, 0.5], [0, 0]))
        assert math.isnan(auprc([0.1, 0.5], [0, 0])) and math.isnan(best_dice([0.1, 0.5], [0, 0]))
