"""Localisation and fidelity measures (numpy/scipy only).

Localisation: pixel AUROC, AUPRC (average precision), the best Dice over all
thresholds, and whether the top window hits the lesion. Fidelity of a predicted
window map to G's: MAE (absolute, and relative to G's mean), Pearson, Spearman,
IoU of the top 5% windows and the distance between the argmax windows.
"""

from __future__ import annotations

import numpy as np
from scipy import stats


def _sorted_scores(scores: np.ndarray, labels: np.ndarray):
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels, bool).ravel()
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    distinct = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each run of equal scores
    tp = np.cumsum(y)[distinct]
    fp = (distinct + 1) - tp
    return tp.astype(np.float64), fp.astype(np.float64), int(y.sum()), int((~y).sum())


def auroc(scores, labels) -> float:
    """Area under the ROC curve (ties handled as in scikit-learn)."""
    tp, fp, p, n = _sorted_scores(scores, labels)
    if p == 0 or n == 0:
        return float("nan")
    tpr = np.r_[0, tp / p]
    fpr = np.r_[0, fp / n]
    return float(np.trapezoid(tpr, fpr))


def auprc(scores, labels) -> float:
    """Average precision: sum over thresholds of (recall step) x precision (scikit-learn's definition)."""
    tp, fp, p, _ = _sorted_scores(scores, labels)
    if p == 0:
        return float("nan")
    precision = tp / (tp + fp)
    recall = tp / p
    return float(np.sum(np.diff(np.r_[0, recall]) * precision))


def best_dice(scores, labels) -> float:
    """The best Dice of ``scores >= t`` with the lesion over every threshold t."""
    tp, fp, p, _ = _sorted_scores(scores, labels)
    if p == 0:
        return float("nan")
    dice = 2 * tp / (tp + fp + p)
    return float(dice.max())


def top_window_hit(window_map: np.ndarray, boxes: np.ndarray, window: int, lesion: np.ndarray) -> bool:
    """Does the highest-scoring window overlap the lesion?"""
    k = int(np.argmax(np.asarray(window_map).ravel()))
    r, c = boxes[k]
    return bool(np.asarray(lesion)[r : r + window, c : c + window].any())


def fidelity(pred: np.ndarray, ref: np.ndarray, evaluated: np.ndarray | None = None, top: float = 0.05) -> dict:
    """How faithful a predicted window map is to G's (over the evaluated windows)."""
    p = np.asarray(pred, np.float64)
    g = np.asarray(ref, np.float64)
    ev = np.ones(g.shape, bool) if evaluated is None else np.asarray(evaluated, bool)
    pv, gv = p[ev], g[ev]
    mae = float(np.abs(pv - gv).mean())
    k = max(1, int(round(top * pv.size)))
    top_p = set(np.argsort(-pv)[:k].tolist())
    top_g = set(np.argsort(-gv)[:k].tolist())
    iou = len(top_p & top_g) / len(top_p | top_g)
    ap = np.unravel_index(np.argmax(np.where(ev, p, -np.inf)), g.shape)
    ag = np.unravel_index(np.argmax(np.where(ev, g, -np.inf)), g.shape)
    const = np.std(pv) == 0 or np.std(gv) == 0
    return {
        "mae": mae,
        "mae_rel": mae / float(gv.mean()) if gv.mean() else float("nan"),
        "pearson": 0.0 if const else float(stats.pearsonr(pv, gv).statistic),
        "spearman": 0.0 if const else float(stats.spearmanr(pv, gv).statistic),
        "top5_iou": float(iou),
        "argmax_distance_windows": float(np.hypot(ap[0] - ag[0], ap[1] - ag[1])),
        "n_windows": int(pv.size),
    }
