"""The bench report's metric wiring (``bench/report.py``: fidelity_block, localisation_block, box_hits,
add_equality...) pinned where mutation testing found it loose (issue 23, tests/MUTATION.md): each
figure recomputed by hand or with ``bench.metrics`` from the maps. Public functions only, no bench run."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rlp.bench.metrics import auprc, auroc, best_dice, fidelity
from rlp.bench.quality import fidelity_block, localisation_block, top_score
from rlp.bench.report import EXACT_TOLERANCE, add_equality, clean
from rlp.runtime.results import box_hits

EV = np.ones((3, 3), bool)


def _wmap(seed, shift=0.0):
    return np.random.default_rng(seed).random((3, 3)) + shift


def test_fidelity_block_weights_mae_by_windows_and_averages_the_rest():
    ev_small = np.zeros((3, 3), bool)
    ev_small[0, :2] = True
    refs = [{"window": _wmap(0, 1), "evaluated": EV}, {"window": _wmap(1, 2), "evaluated": ev_small | EV},
            {"window": _wmap(2, 3), "evaluated": ev_small}, {"window": _wmap(3), "evaluated": EV}]
    preds = [{"window": _wmap(4, 1), "evaluated": EV}, {"window": _wmap(5, 2), "evaluated": ev_small},
             {"window": _wmap(6, 3), "evaluated": EV}, {"window": _wmap(7), "evaluated": np.zeros((3, 3), bool)}]
    cases = [{"id": "a", "set": "lesion"}, {"id": "b", "set": "lesion"}, {"id": "c", "set": "heldout"},
             {"id": "d", "set": "lesion"}]
    out = fidelity_block(preds, refs, cases)
    assert set(out) == {"lesion", "heldout", "all"}
    f = [fidelity(p["window"], r["window"], r["evaluated"] & p["evaluated"]) for p, r in zip(preds[:3], refs[:3])]
    ev = [EV, ev_small, ev_small]
    lesion = out["lesion"]
    assert lesion["slices"] == 2 and lesion["windows"] == 9 + 2  # case d: no common window, left out
    assert lesion["mae"] == pytest.approx((9 * f[0]["mae"] + 2 * f[1]["mae"]) / 11)
    mean_g = (9 * refs[0]["window"][EV].mean() + 2 * refs[1]["window"][ev_small].mean()) / 11
    assert lesion["mae_rel"] == pytest.approx(lesion["mae"] / mean_g)
    for k in ("pearson", "spearman", "top5_iou", "argmax_distance_windows"):
        assert lesion[k] == pytest.approx((f[0][k] + f[1][k]) / 2)
    per = lesion["per_slice"]
    assert [p["id"] for p in per] == ["a", "b"] and per[0]["mean_g"] == pytest.approx(refs[0]["window"].mean())
    assert per[0]["evaluated_differs"] is False and per[1]["evaluated_differs"] is True
    assert per[0]["mae"] == f[0]["mae"]
    allb = out["all"]
    assert "per_slice" not in allb and allb["slices"] == 3 and allb["windows"] == 13
    assert allb["mae"] == pytest.approx(sum(n * x["mae"] for n, x in zip((9, 2, 2), f)) / 13)
    assert allb["spearman"] == pytest.approx(np.mean([x["spearman"] for x in f]))
    one = fidelity_block(preds[:1], refs[:1], cases[:1])
    assert set(one) == {"lesion", "all"} and "per_slice" in one["lesion"] and "per_slice" not in one["all"]
    assert one["all"] == {k: v for k, v in one["lesion"].items() if k != "per_slice"}
    assert fidelity_block(preds[3:], refs[3:], cases[3:]) == {}
    assert ev  # (the evaluated masks above are the ones compared)


def test_mae_rel_is_none_when_g_is_zero_and_nan_figures_are_left_out_of_means():
    z = {"window": np.zeros((3, 3)), "evaluated": EV}
    out = fidelity_block([{"window": _wmap(0), "evaluated": EV}], [z], [{"id": "a", "set": "s"}])
    assert out["s"]["mae_rel"] is None and out["s"]["pearson"] == 0.0


def test_box_hits_edges():
    lesion = np.zeros((10, 10), bool)
    lesion[4, 6] = True
    assert box_hits((3.5, 5.5, 4.5, 6.5), lesion)  # the pixel inside
    assert box_hits((4.0, 6.0, 4.0, 6.0), lesion)  # edges exactly on the pixel centre count
    assert not box_hits((4.1, 6.0, 5.0, 7.0), lesion)  # ceil(4.1) = 5: row 4 is outside
    assert not box_hits((3.0, 6.0, 3.9, 7.0), lesion)  # floor(3.9) = 3
    assert not box_hits((4.0, 6.1, 5.0, 7.0), lesion) and not box_hits((4.0, 5.0, 5.0, 5.9), lesion)
    assert box_hits((-5.0, -5.0, 4.0, 6.0), lesion) and box_hits((4.0, 6.0, 50.0, 50.0), lesion)
    edge = np.zeros((10, 10), bool)
    edge[9, 9] = edge[0, 0] = True
    assert box_hits((8.5, 8.5, 20.0, 20.0), edge) and box_hits((-3.0, -3.0, 0.0, 0.0), edge)
    assert not box_hits((10.0, 0.0, 12.0, 9.0), edge)  # wholly below the slice
    assert not box_hits(None, lesion) and not box_hits((np.nan, 0, 9, 9), lesion)
    assert not box_hits((0, 0, np.inf, 9), lesion)
    assert box_hits([0, 0, 9, 9], lesion) is True


def test_top_score():
    m = {"window": np.array([[1.0, 5.0], [3.0, -2.0]]), "evaluated": np.array([[1, 0], [1, 1]])}
    assert top_score(m) == 3.0 and type(top_score(m)) is float
    assert top_score({"window": -np.ones((2, 2)), "evaluated": np.ones((2, 2))}) == -1.0
    assert top_score({"window": np.ones((2, 2)), "evaluated": np.zeros((2, 2))}) == 0.0


def _case(i, set_="lesion", suite=None):
    c = {"id": f"c{i}", "set": set_}
    if suite is not None:
        c["suite"] = suite
    return c


def _slice(seed, lesion_at, top):
    rng = np.random.default_rng(seed)
    brain = np.zeros((12, 12), bool)
    brain[1:11, 1:11] = True
    lesion = np.zeros((12, 12), bool)
    r, c = lesion_at
    lesion[r:r + 2, c:c + 2] = True
    pixel = rng.random((12, 12))
    pixel[lesion] += 0.5
    window = rng.random((2, 2))
    return {"pixel": pixel, "top": top, "window": window, "evaluated": np.ones((2, 2), bool)}, \
        {"brain": brain, "lesion": lesion}


def test_localisation_block_recomputes_every_figure():
    suites = [{"kind": "bright", "polarity": "hyper", "registered": False, "size": "small", "site": "cortex"},
              {"kind": "dark", "polarity": "hypo", "size": "large"},
              {"kind": "bright", "polarity": "hyper", "registered": True, "size": "small", "site": "deep"}]
    maps, cases, truth = [], [], {}
    tops = [(2.0, 2.0, 3.0, 3.0), (6.0, 6.0, 7.0, 7.0), (0.0, 0.0, 1.0, 1.0)]  # a hit, a near miss, a miss
    for i, (suite, top) in enumerate(zip(suites, tops)):
        m, t = _slice(i, (2, 2) if i == 0 else (4, 4), top)
        maps.append(m)
        cases.append(_case(i, suite=suite))
        truth[f"c{i}"] = t
    maps.append(_slice(9, (0, 0), None)[0])  # no truth: left out
    cases.append(_case(9))
    healthy = [{"window": np.array([[0.2, 0.9]]), "evaluated": np.array([[True, False]])},
               {"window": np.array([[0.7]]), "evaluated": np.array([[True]])}]
    maps += healthy
    cases += [_case(20, "healthy"), _case(21, "healthy")]
    out = localisation_block(maps, cases, truth, dilation=2)
    assert out["slices"] == 3 and out["healthy_slices"] == 2 and out["hit_dilation"] == 2
    assert out["healthy_top_scores"] == [0.2, 0.7]
    per = out["per_slice"]
    for p, m, i in zip(per, maps, range(3)):
        t = truth[f"c{i}"]
        s, lab = m["pixel"][t["brain"]], t["lesion"][t["brain"]]
        assert p["id"] == f"c{i}" and p["auroc"] == auroc(s, lab) and p["auprc"] == auprc(s, lab)
        assert p["best_dice"] == best_dice(s, lab) and p["top_score"] == top_score(m)
    assert [p["top_window_hit"] for p in per] == [True, False, False]
    assert [p["top_window_hit_dilated"] for p in per] == [True, True, False]  # (6, 6) is 2 from the lesion at 4..5
    assert out["hits"] == 1 and out["hits_dilated"] == 2
    assert out["top_window_hit_rate"] == pytest.approx(1 / 3) and out["top_window_hit_rate_dilated"] == 2 / 3
    assert out["auroc"] == pytest.approx(np.mean([p["auroc"] for p in per]))
    assert out["auprc"] == pytest.approx(np.mean([p["auprc"] for p in per]))
    assert out["best_dice"] == pytest.approx(np.mean([p["best_dice"] for p in per]))
    pos = [p["top_score"] for p in per]
    want = auroc(np.r_[pos, 0.2, 0.7], np.r_[True, True, True, False, False])
    assert out["detection_auroc"] == pytest.approx(want)
    assert [p.get("registration") for p in per] == ["unregistered", "aligned", "aligned"]
    assert "site" not in per[1] and per[0]["site"] == "cortex"
    g = out["groups"]
    assert set(g) == {"kind", "polarity", "registration", "size", "site"}
    assert set(g["kind"]) == {"bright", "dark"} and g["kind"]["bright"]["slices"] == 2
    assert g["kind"]["bright"]["hits"] == 1 and g["kind"]["dark"]["hits_dilated"] == 1
    assert g["site"] == {"cortex": g["site"]["cortex"], "deep": g["site"]["deep"]} and g["site"]["deep"]["slices"] == 1
    assert g["registration"]["unregistered"]["detection_auroc"] == auroc(np.r_[pos[0], 0.2, 0.7],
                                                                         np.r_[True, False, False])
    # without healthy slices there is no detection AUROC; without suites no groups; dilation 0 is the lesion
    plain = localisation_block(maps[:3], [_case(i) for i in range(3)], truth, dilation=0)
    assert plain["detection_auroc"] is None and plain["healthy_slices"] == 0 and "groups" not in plain
    assert plain["hits_dilated"] == plain["hits"] == 1
    assert localisation_block(maps[:3], [_case(i) for i in range(3)], truth)["hit_dilation"] == 4
    assert localisation_block(healthy, cases[-2:], truth) is None


def test_clean_makes_json_safe_values():
    got = clean({1: [np.float32(0.5), (np.int64(3), float("nan"))], "x": {"y": float("-inf"), "z": None, "s": "t"}})
    assert got == {"1": [0.5, [3, None]], "x": {"y": None, "z": None, "s": "t"}}
    assert type(got["1"][1][0]) is int and clean(np.float64(np.inf)) is None and clean(2.5) == 2.5


def _row(name, method, maps, path="r", backend="ort-cpu", median=1.0, **kw):
    return {"name": name, "status": "ok", "method": method, "path": path, "backend": backend, "_maps": maps,
            "latency": {"median_s": median}, **kw}


def test_add_equality_of_exact_and_approximate_rows():
    a = [{"window": _wmap(0), "evaluated": EV}, {"window": _wmap(1), "evaluated": EV}]
    near = [{"window": m["window"] + 5e-7, "evaluated": EV} for m in a]
    far = [{"window": m["window"] + 1e-5, "evaluated": EV} for m in a]
    other_ev = [{"window": a[0]["window"], "evaluated": ~EV | EV}, {"window": a[1]["window"], "evaluated": EV}]
    other_ev[0]["evaluated"] = EV.copy()
    other_ev[0]["evaluated"][0, 0] = False
    coarse = [{"window": m["window"][::-1], "evaluated": EV} for m in a]
    rows = [_row("plain", "plain", a, median=2.0), _row("inc", "incremental", near, median=0.5),
            _row("far", "incremental", far), _row("ev", "incremental", other_ev),
            _row("c2f", "coarse-to-fine", coarse, approximate={"scored": 3, "windows": 12}),
            _row("short", "incremental", near[:1]), _row("g-inc", "incremental", near, path="g"),
            {"name": "bad", "status": "failed", "method": "incremental"}]
    add_equality(rows, lambda r: r["_maps"])
    inc = rows[1]["equality"]
    assert inc["reference_row"] == "plain" and inc["slices"] == 2 and inc["same_windows"] is True
    assert inc["max_abs_diff"] == pytest.approx(5e-7) and inc["equal"] is True and inc["tolerance"] == EXACT_TOLERANCE
    assert inc["speedup_vs_reference"] == pytest.approx(4.0)
    assert rows[2]["equality"]["equal"] is False and rows[2]["equality"]["max_abs_diff"] == pytest.approx(1e-5)
    assert rows[3]["equality"]["same_windows"] is False and rows[3]["equality"]["equal"] is False
    assert rows[3]["equality"]["max_abs_diff"] == 0.0
    ap = rows[4]["approximation"]
    assert "equality" not in rows[4] and ap["reference_row"] == "plain" and ap["scored_fraction"] == 0.25
    per = [fidelity(c["window"], p["window"], p["evaluated"]) for c, p in zip(coarse, a)]
    for k in ("spearman", "top5_iou", "mae_rel"):
        assert ap[k] == pytest.approx(np.mean([f[k] for f in per]))
    assert ap["same_argmax"] == sum(int(np.argmax(c["window"]) == np.argmax(p["window"])) for c, p in zip(coarse, a))
    assert ap["max_abs_diff"] == pytest.approx(max(np.abs(c["window"] - p["window"]).max() for c, p in zip(coarse, a)))
    assert rows[5]["equality"] is None  # a different number of slices: not comparable
    assert rows[6]["equality"] is None  # no plain row of path g
    assert "equality" not in rows[0] and "equality" not in rows[7]
    exactly = [_row("plain", "plain", a), _row("inc", "incremental", [dict(m) for m in a])]
    exactly[1]["_maps"][0]["window"] = a[0]["window"] + EXACT_TOLERANCE / 2
    add_equality(exactly, lambda r: r["_maps"])
    assert exactly[1]["equality"]["equal"] is True
    at = [_row("plain", "plain", [{"window": np.zeros((1, 1)), "evaluated": np.ones((1, 1), bool)}]),
          _row("inc", "incremental", [{"window": np.full((1, 1), EXACT_TOLERANCE), "evaluated": np.ones((1, 1),
                                                                                                        bool)}])]
    add_equality(at, lambda r: r["_maps"])
    assert at[1]["equality"]["equal"] is True  # a difference of exactly the tolerance is equal
    assert math.isclose(at[1]["equality"]["max_abs_diff"], EXACT_TOLERANCE)


def test_a_case_without_common_windows_is_skipped_not_the_end():
    none = np.zeros((3, 3), bool)
    refs = [{"window": _wmap(0, 1), "evaluated": EV}, {"window": _wmap(1, 1), "evaluated": none},
            {"window": _wmap(2, 1), "evaluated": EV}]
    preds = [{"window": _wmap(3, 1), "evaluated": EV}] * 3
    out = fidelity_block(preds, refs, [{"id": k, "set": "s"} for k in "abc"])
    assert [p["id"] for p in out["s"]["per_slice"]] == ["a", "c"]


def test_an_approximation_is_judged_over_the_evaluated_windows_and_its_argmax():
    ev = EV.copy()
    ev[0, :] = False  # the first row was not evaluated: its (large) values must not count
    plain = [{"window": _wmap(0) + np.where(ev, 0, 10.0), "evaluated": ev}, {"window": _wmap(1), "evaluated": EV}]
    near = [{"window": m["window"] + 0.01, "evaluated": m["evaluated"]} for m in plain]  # the same argmax
    rows = [_row("plain", "plain", plain), _row("c2f", "coarse-to-fine", near, approximate={"scored": 1, "windows": 2})]
    add_equality(rows, lambda r: r["_maps"])
    ap = rows[1]["approximation"]
    want = np.mean([fidelity(a["window"], b["window"], b["evaluated"])["mae_rel"] for a, b in zip(near, plain)])
    assert ap["mae_rel"] == pytest.approx(want) and ap["same_argmax"] == 2
    everywhere = np.mean([fidelity(a["window"], b["window"])["mae_rel"] for a, b in zip(near, plain)])
    assert abs(want - everywhere) > 1e-3  # (the windows not evaluated would change it)


def test_means_leave_out_undefined_figures_and_are_none_without_any():
    m0, t0 = _slice(0, (2, 2), (2.0, 2.0, 3.0, 3.0))
    m1, t1 = _slice(1, (4, 4), (0.0, 0.0, 1.0, 1.0))
    t1 = {"brain": t1["brain"], "lesion": t1["brain"].copy()}  # all brain is lesion: AUROC undefined (nan)
    out = localisation_block([m0, m1], [_case(0), _case(1)], {"c0": t0, "c1": t1})
    assert math.isnan(out["per_slice"][1]["auroc"]) and out["auroc"] == out["per_slice"][0]["auroc"]
    only = localisation_block([m1], [_case(1)], {"c1": t1})
    assert only["auroc"] is None
