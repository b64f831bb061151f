"""The bench report's quality blocks from a row's maps: fidelity to the exact G maps, and lesion localisation.

Definitions are in :mod:`rlp.bench.report` (the report schema); the per-slice metrics in :mod:`rlp.bench.metrics`.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from rlp.runtime.results import box_hits  # the demo table's question too: one name, imported

from .metrics import auprc, auroc, best_dice, fidelity

FIDELITY_KEYS = ("mae", "mae_rel", "pearson", "spearman", "top5_iou", "argmax_distance_windows")
LOCAL_KEYS = ("auroc", "auprc", "best_dice")
HIT_DILATION = 4  # voxels: a top window overlapping the lesion grown by this much counts as a dilated hit


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(vals)) if vals else None


def fidelity_block(pred_maps: list[dict], ref_maps: list[dict], cases: list[dict]) -> dict:
    """Fidelity of one row's window maps to the reference, per case set and over all slices."""
    per = {}
    for case, p, r in zip(cases, pred_maps, ref_maps):
        ev = r["evaluated"] & p["evaluated"]
        if not ev.any():
            continue
        f = fidelity(p["window"], r["window"], ev)
        f["mean_g"] = float(r["window"][ev].mean())
        f["evaluated_differs"] = bool((r["evaluated"] != p["evaluated"]).any())
        per.setdefault(case["set"], []).append({"id": case["id"], **f})
    out = {name: _aggregate(items) for name, items in per.items()}
    if len(out) > 1:
        out["all"] = _aggregate([f for items in per.values() for f in items], per_slice=False)
    elif out:
        out["all"] = {k: v for k, v in next(iter(out.values())).items() if k != "per_slice"}
    return out


def _aggregate(items: list[dict], per_slice: bool = True) -> dict:
    n = np.asarray([f["n_windows"] for f in items], np.float64)
    mae = float(np.sum(n * [f["mae"] for f in items]) / n.sum())
    mean_g = float(np.sum(n * [f["mean_g"] for f in items]) / n.sum())
    out = {"slices": len(items), "windows": int(n.sum()), "mae": mae, "mae_rel": mae / mean_g if mean_g else None,
           **{k: _mean(f[k] for f in items) for k in FIDELITY_KEYS[2:]}}
    if per_slice:
        out["per_slice"] = items
    return out


def top_score(m: dict) -> float:
    """A slice's anomaly score: its highest evaluated window score (0 when nothing was evaluated)."""
    ev = np.asarray(m["evaluated"], bool)
    return float(np.asarray(m["window"])[ev].max()) if ev.any() else 0.0


#: the lesion suite's groups the report breaks localisation down by (case["suite"] keys)
GROUPS = ("kind", "polarity", "registration", "size", "site")


def _group_of(case: dict, key: str) -> str | None:
    s = case.get("suite")
    if not s:
        return None
    if key == "registration":
        return "aligned" if s.get("registered", True) else "unregistered"
    return s.get(key)


def _local_summary(per: list[dict], negatives: list[float]) -> dict:
    hits = sum(p["top_window_hit"] for p in per)
    hits_d = sum(p["top_window_hit_dilated"] for p in per)
    out = {"slices": len(per), **{k: _mean(p[k] for p in per) for k in LOCAL_KEYS},
           "top_window_hit_rate": hits / len(per), "hits": hits,
           "top_window_hit_rate_dilated": hits_d / len(per), "hits_dilated": hits_d, "detection_auroc": None}
    if negatives:  # slice level: lesion slices' top scores against healthy slices'
        pos = [p["top_score"] for p in per]
        labels = np.r_[np.ones(len(pos), bool), np.zeros(len(negatives), bool)]
        out["detection_auroc"] = auroc(np.r_[pos, negatives], labels)
    return out


def localisation_block(maps: list[dict], cases: list[dict], truth: dict, dilation: int = HIT_DILATION) -> dict | None:
    """Localisation metrics of one row on the cases that have a lesion mask, and slice-level detection
    against the healthy cases (set ``healthy``), overall and per suite group (:data:`GROUPS`).

    A top-window hit is the top window's box overlapping the lesion; the dilated hit, overlapping the
    lesion dilated by ``dilation`` voxels (the window is a coarse pointer: a box beside the lesion's edge
    points at it)."""
    per, negatives = [], []
    for case, m in zip(cases, maps):
        if case.get("set") == "healthy":
            negatives.append(top_score(m))
            continue
        t = truth.get(case["id"])
        if t is None:
            continue
        brain, lesion = t["brain"], t["lesion"]
        scores, labels = m["pixel"][brain], lesion[brain]
        grown = ndimage.binary_dilation(lesion, iterations=dilation) if dilation else lesion
        rec = {"id": case["id"], "auroc": auroc(scores, labels), "auprc": auprc(scores, labels),
               "best_dice": best_dice(scores, labels), "top_window_hit": box_hits(m["top"], lesion),
               "top_window_hit_dilated": box_hits(m["top"], grown), "top_score": top_score(m)}
        rec.update({g: v for g in GROUPS if (v := _group_of(case, g)) is not None})
        per.append(rec)
    if not per:
        return None
    out = {**_local_summary(per, negatives), "healthy_slices": len(negatives), "hit_dilation": dilation}
    groups = {}
    for g in GROUPS:
        names = sorted({p[g] for p in per if g in p})
        if names:
            groups[g] = {n: _local_summary([p for p in per if p.get(g) == n], negatives) for n in names}
    if groups:
        out["groups"] = groups
    out["per_slice"] = per
    out["healthy_top_scores"] = negatives
    return out
