"""The export's parity gate (``export/parity.py``) pinned where mutation testing found it loose (issue 23,
tests/MUTATION.md): the limits, the comparisons and their messages, the windows sampled and the rows
of a check, with numpy models in place of the trained and exported ones (no torch, no training)."""

from __future__ import annotations

import numpy as np
import pytest

from rlp.export.parity import (
    Candidate,
    Check,
    ParityGate,
    ParityResult,
    Tolerances,
    compare_maps,
    compare_values,
    default_batch,
    diff_stats,
)
from rlp.runtime.core.errors import BadInput
from rlp.runtime.core.geometry import WindowGeometry

TOL = Tolerances()


def test_limits_per_reference_and_precision():
    assert TOL.limits("fp32", "torch") == {"max_abs": 1e-5} and TOL.limits("fp16", "torch") == {"max_abs": 1e-5}
    assert TOL.limits("fp16", "g") == {"max_abs": 2e-2, "p99_abs": 5e-3, "median_abs": 1e-3}
    assert TOL.limits("fp32", "g") == {"max_abs": 1e-4}
    assert (TOL.map_spearman, TOL.fp16_median_abs) == (0.98, 1e-3)


def test_diff_stats():
    got = np.arange(101, dtype=np.float32)
    s = diff_stats(got, np.zeros(101))
    assert s == {"max_abs": 100.0, "median_abs": 50.0, "p99_abs": 99.0}
    assert diff_stats(-got, np.zeros(101))["max_abs"] == 100.0


def _check(limits, reference="torch"):
    return Check("g", reference, "recon pixels", 4, limits)


def test_compare_values_judges_each_limit():
    ref = np.zeros(100)
    got = ref.copy()
    got[0] = 0.5
    c = compare_values(_check({"max_abs": 0.5, "median_abs": 0.0}), got, ref)
    assert c.passed and c.problem == "" and c.max_abs == 0.5 and c.median_abs == 0.0 and c.p99_abs > 0
    c = compare_values(_check({"max_abs": 0.4, "p99_abs": 1e-3}), got, ref)
    assert not c.passed and c.problem == "max_abs 0.5 > 0.4; p99_abs 0.005 > 0.001"
    got[1] = np.nan
    got[2] = np.inf
    c = compare_values(_check({"max_abs": 1.0}), got, ref)
    assert not c.passed and c.problem == "2 non-finite output value(s)" and c.max_abs is None
    ref[5] = np.nan
    c = compare_values(_check({"max_abs": 1.0}, "g"), got, ref)
    assert not c.passed and c.max_abs is None
    assert c.problem == "the reference (g) gives 1 non-finite value(s): the trained model is broken"


def test_compare_maps_top_window_and_ranks():
    ref = np.linspace(0, 1, 50)
    good = compare_maps(_check(TOL.limits("fp16", "g"), "g"), ref + 1e-4, ref, TOL)
    assert good.passed and good.top_window_same and good.top_gap == 0.0 and good.spearman == pytest.approx(1.0)
    assert good.limits == {**TOL.limits("fp16", "g"), "spearman": 0.98} and good.note == ""
    # the candidate's top window is another, within its max abs difference of the best: a tie, passes
    tie = ref.copy()
    tie[48] = ref[49] + 5e-3
    c = compare_maps(_check({"max_abs": 1.0}, "g"), tie, ref, TOL)
    assert c.top_window_same is False and c.top_gap == pytest.approx(ref[49] - ref[48]) and c.passed
    # further than the max abs difference: fails, with the gap
    far = ref.copy()
    far[49] -= 0.015
    far[48] += 0.015
    c = compare_maps(_check({"max_abs": 10.0}, "g"), far, ref, TOL)
    gap = ref[49] - ref[48]
    assert not c.passed and c.top_gap == pytest.approx(gap) and c.spearman > 0.98
    assert c.problem == f"top window differs (fp32 score gap {gap:.3g} > max abs {0.015:.3g})"
    shuffled = np.random.default_rng(0).permutation(ref)
    c = compare_maps(_check({"max_abs": 10.0}, "g"), shuffled, ref, TOL)
    assert not c.passed and f"Spearman {c.spearman:.4f} < 0.98" in c.problem
    over = compare_maps(_check({"max_abs": 1e-6}, "g"), ref + 1e-4, ref, TOL)
    assert over.problem == "max_abs 0.0001 > 1e-06" and not over.passed
    flat = np.full(50, 0.3)
    flat[7] += 9e-4  # varies by less than the fp16 median tolerance: not ranked
    c = compare_maps(_check({"max_abs": 1.0}, "g"), flat[::-1].copy(), flat, TOL)
    assert c.spearman is None and c.note == "map flat within fp16 tolerance: ranks not judged"
    edge = np.full(50, 0.3)
    edge[7] += 1e-3  # exactly the tolerance: ranked
    assert compare_maps(_check({"max_abs": 1.0}, "g"), edge, edge, TOL).spearman is not None
    one = compare_maps(_check({"max_abs": 1.0}, "g"), np.array([0.5]), np.array([0.2]), TOL)
    assert one.spearman is None and one.note and one.passed
    nan = compare_maps(_check({"max_abs": 1.0}, "g"), np.r_[np.nan, ref[1:]], ref, TOL)
    assert not nan.passed and nan.top_window_same is None and nan.spearman is None


def test_default_batch():
    assert default_batch(48) == 64 and default_batch(256) == 8 and default_batch(2048) == 1
    assert default_batch(90) == (1 << 19) // 8100 and default_batch(1) == 64


def test_result_passes_only_with_checks_all_passed():
    ok, bad = Check("a", "t", "q", 1, {}, passed=True), Check("b", "t", "q", 1, {})
    assert not ParityResult().passed and ParityResult([ok]).passed and not ParityResult([ok, bad]).passed
    assert ParityResult([ok, bad]).failures() == [bad]
    assert ok.to_dict()["model"] == "a" and ok.to_dict()["passed"] is True


GEOM = WindowGeometry(16, 4, 4, context=8)


def _images(n=5):
    imgs = np.zeros((n, 16, 16), np.float32)
    brains = np.zeros((n, 16, 16), bool)
    for i in range(n):
        if i == 1:
            continue  # slice 1 has no brain: never sampled
        brains[i, 2:2 + 2 * i + 4, 3:12] = True
        imgs[i][brains[i]] = np.linspace(0.1, 0.9, int(brains[i].sum()))
    return imgs, brains


def test_the_gate_samples_evenly_over_usable_slices_and_windows():
    imgs, brains = _images()
    with pytest.raises(ValueError, match="parity slices, windows and map windows must be >= 1"):
        ParityGate(GEOM, imgs, brains, slices=0)
    for kw in ({"windows": 0}, {"map_windows": 0}):
        with pytest.raises(ValueError):
            ParityGate(GEOM, imgs, brains, **kw)
    with pytest.raises(BadInput, match="no held-out slice has a window with enough brain tissue to evaluate"):
        ParityGate(GEOM, imgs, np.zeros_like(brains))
    gate = ParityGate(GEOM, imgs, brains, slices=3, windows=5, map_windows=1000)
    assert gate.sample.slices == [0, 3, 4]  # usable 0, 2, 3, 4: evenly spaced, ends included
    for i, boxes in zip(gate.sample.slices, gate.sample.boxes):
        ev = GEOM.window_boxes()[GEOM.evaluated(brains[i]).ravel()]
        take = np.unique(np.linspace(0, len(ev) - 1, min(5, len(ev))).round().astype(int))
        np.testing.assert_array_equal(boxes, ev[take])
        assert len(boxes) == min(5, len(ev))
    assert gate.map_slice == 4 and gate.map_geometry.stride == 4  # the slice with the most brain
    d = gate.describe()
    assert d["slices"] == [0, 3, 4] and d["windows_per_slice"] == [len(b) for b in gate.sample.boxes]
    assert d["windows"] == sum(d["windows_per_slice"]) and d["map_slice"] == 4 and d["map_stride"] == 4
    assert d["map_windows"] == len(gate.map_boxes) and d["map_grid"] == [4, 4] and d["source"] == "heldout.npz"
    all_slices = ParityGate(GEOM, imgs, brains, slices=10, windows=1000)
    assert all_slices.sample.slices == [0, 2, 3, 4]
    one = ParityGate(GEOM, imgs, brains, slices=1, windows=1)
    assert one.sample.slices == [0] and [len(b) for b in one.sample.boxes] == [1]


def test_the_map_stride_grows_until_the_windows_fit():
    imgs, brains = _images()
    geom = WindowGeometry(16, 4, 2)
    full = ParityGate(geom, imgs, brains, map_windows=10_000)
    n_full = len(full.map_boxes)
    assert full.map_geometry.stride == 2 and n_full > 9
    fit = ParityGate(geom, imgs, brains, map_windows=n_full)
    assert fit.map_geometry.stride == 2
    grown = ParityGate(geom, imgs, brains, map_windows=n_full - 1)
    assert grown.map_geometry.stride == 4 and len(grown.map_boxes) <= n_full - 1
    tiny = ParityGate(geom, imgs, brains, map_windows=1)
    assert tiny.map_geometry.stride == 16  # stops once the stride reaches the slice size


def _g(x):  # a "G" with two channels would be the z score's; the L1 one reconstructs the inpainted input
    return x * 0.5


def test_check_rows_of_g_with_fp16_and_engine_candidates():
    imgs, brains = _images()
    gate = ParityGate(GEOM, imgs, brains, slices=2, windows=3, map_windows=100)
    calls = []

    def runner(scale, name):
        def run(x):
            calls.append((name, x.shape))
            return (x * scale).astype(np.float32)
        return run

    fp16 = Candidate("g_fp16", runner(0.5 + 1e-4, "fp16"), "fp16", max_batch=2)
    engine = Candidate("g.plan", runner(0.5, "engine"), "fp32")
    rows = gate.check("g", "crop", 8, runner(0.5, "torch"), runner(0.5, "onnx"), [fp16, engine])
    assert [(r.model, r.reference, r.quantity) for r in rows] == [
        ("g", "torch", "recon pixels"), ("g", "torch", "window loss"),
        ("g_fp16", "g", "recon pixels"), ("g_fp16", "g", "window loss"),
        ("g.plan", "g", "recon pixels"), ("g.plan", "g", "window loss"),
        ("g_fp16", "g", f"window map #{gate.map_slice}")]
    assert rows[0].n == 6 * 64 and rows[1].n == 6 and rows[-1].n == len(gate.map_boxes)
    assert rows[0].limits == {"max_abs": 1e-5} and rows[2].limits == TOL.limits("fp16", "g")
    assert rows[4].limits == {"max_abs": 1e-4}
    assert all(r.passed for r in rows) and rows[0].max_abs == 0.0
    assert max(s[0] for _, s in calls) == 2  # the smallest max_batch of the candidates
    assert all(s[1:] == (1, 8, 8) for _, s in calls)
    # G's window loss is the box L1 of its output against the original pixels
    pad = GEOM.pad(imgs[gate.sample.slices[0]])
    b = gate.sample.boxes[0]
    want = GEOM.box_score(0.5 * GEOM.crops(pad, b, inpaint=True), GEOM.crops(pad, b, inpaint=False), b, "l1")
    assert rows[1].max_abs == 0.0 and want.shape == (3,)
    bad = Candidate("g_fp16", runner(0.9, "bad"), "fp16")
    rows = gate.check("g", "crop", 8, runner(0.5, "torch"), runner(0.5, "onnx"), [bad])
    assert [r.passed for r in rows] == [True, True, False, False, False] or not all(r.passed for r in rows[2:])


def test_check_rows_of_r_on_whole_images_and_dense():
    imgs, brains = _images()
    gate = ParityGate(GEOM, imgs, brains, slices=2, windows=3)
    seen = []

    def r(x):
        seen.append(x.shape)
        return x.mean(axis=(2, 3)).astype(np.float32)

    rows = gate.check("r", "image", 16, r, r)
    assert [(x.model, x.quantity, x.n) for x in rows] == [("r", "prediction", 6)] and rows[0].passed
    assert all(s[1:] == (1, 16, 16) for s in seen)
    res = gate._evaluate("r", "image", {"r": r}, list(zip(gate.sample.slices, gate.sample.boxes)), 4, "x", False)
    s0 = res["r"]["scores"][:3]
    i, b = gate.sample.slices[0], gate.sample.boxes[0]
    want = [np.where(np.ones((16, 16), bool), imgs[i], 0).copy() for _ in b]
    for w, (r0, c0) in zip(want, b):
        w[r0:r0 + 4, c0:c0 + 4] = GEOM.fill
    np.testing.assert_allclose(s0, [w.mean() for w in want], rtol=1e-6)
    assert res["r"]["outputs"].size == 0

    wmap = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    dense = gate.check("r", "dense", 16, lambda x: wmap, lambda x: wmap + 1e-6,
                       [Candidate("r_fp16", lambda x: wmap, "fp16")])
    assert [(x.model, x.quantity) for x in dense] == [("r", "prediction"), ("r_fp16", "prediction"),
                                                      ("r_fp16", f"window map #{gate.map_slice}")]
    assert dense[0].n == 2 * 16 and dense[0].max_abs == pytest.approx(1e-6, rel=1e-2) and dense[0].passed
    assert dense[2].n == len(gate.map_boxes)


def test_defaults_messages_and_quiet(capsys):
    imgs, brains = _images(7)
    brains[3, 2:14, 0:16] = True  # slice 3 has the most brain (not the last one sampled)
    imgs[3][brains[3]] = 0.5
    g = WindowGeometry(32, 4, 2)  # 15 x 15 windows: more than 32 a slice
    big_i, big_b = np.zeros((7, 32, 32), np.float32), np.zeros((7, 32, 32), bool)
    big_i[:, :16, :16], big_b[:, :16, :16] = imgs, brains
    gate = ParityGate(g, big_i, big_b)
    assert gate.sample.slices == [0, 3, 4, 6] and gate.map_slice == 3  # 4 slices, the most brain for the map
    assert [len(b) for b in gate.sample.boxes] == [18, 32, 32, 32]  # slice 0 has 18 brain windows, the others more
    d = gate.describe()
    assert d["window_selection"] == "evenly spaced over the evaluated (brain) windows of each slice"
    gate.check("r", "image", 32, lambda x: x.mean(axis=(2, 3)), lambda x: x.mean(axis=(2, 3)))
    assert capsys.readouterr().err == ""  # no reporter given: quiet
    with pytest.raises(ValueError, match="^parity slices, windows and map windows must be >= 1$"):
        ParityGate(GEOM, imgs, brains, windows=0)
    with pytest.raises(BadInput, match="^no held-out slice has a window with enough brain tissue to evaluate$"):
        ParityGate(GEOM, imgs, np.zeros_like(brains))


def test_the_default_map_holds_at_most_4096_windows():
    brain = np.zeros((1, 65, 65), bool)
    brain.ravel()[:4097] = True  # 4097 one-pixel windows with tissue at stride 1
    gate = ParityGate(WindowGeometry(65, 1, 1), brain.astype(np.float32), brain)
    assert gate.map_geometry.stride == 2 and len(gate.map_boxes) <= 4096


def test_g_window_losses_are_box_l1_against_the_original_pixels():
    imgs, brains = _images()
    gate = ParityGate(GEOM, imgs, brains, slices=2, windows=3)
    rows = gate.check("g", "crop", 8, lambda x: (x * 0.5).astype(np.float32), lambda x: (x * 0.6).astype(np.float32))
    want = []
    for i, b in zip(gate.sample.slices, gate.sample.boxes):
        pad = GEOM.pad(imgs[i])
        x, orig = GEOM.crops(pad, b, inpaint=True), GEOM.crops(pad, b, inpaint=False)
        want.append(GEOM.box_score(0.6 * x, orig, b, "l1") - GEOM.box_score(0.5 * x, orig, b, "l1"))
    assert rows[1].quantity == "window loss" and rows[1].max_abs == pytest.approx(np.abs(np.concatenate(want)).max(),
                                                                                    rel=1e-5)
    z = ParityGate(GEOM, imgs, brains, slices=2, windows=3, score="z")  # the bundle's score: G's (mu, b)
    two = lambda s: lambda x: np.concatenate([x * s, np.full_like(x, 0.5)], 1).astype(np.float32)  # noqa: E731
    rows = z.check("g", "crop", 8, two(0.5), two(0.6))
    want = []
    for i, b in zip(z.sample.slices, z.sample.boxes):
        pad = GEOM.pad(imgs[i])
        x, orig = GEOM.crops(pad, b, inpaint=True), GEOM.crops(pad, b, inpaint=False)
        want.append(GEOM.box_score(two(0.6)(x), orig, b, "z") - GEOM.box_score(two(0.5)(x), orig, b, "z"))
    assert rows[1].max_abs == pytest.approx(np.abs(np.concatenate(want)).max(), rel=1e-5)


def test_a_dense_predictor_reads_the_slice():
    imgs, brains = _images()
    gate = ParityGate(GEOM, imgs, brains, slices=2, windows=3)
    wmap = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    rows = gate.check("r", "dense", 16, lambda x: wmap * x.mean(), lambda x: wmap * x.mean() * 1.5)
    i, b = gate.sample.slices[0], gate.sample.boxes[0]
    r, c = GEOM.dense_index(b)
    want = (wmap[0, 0][r, c] * imgs[i].mean() * 0.5)
    assert rows[0].max_abs >= np.abs(want).max() * (1 - 1e-5)


def test_compare_maps_boundaries():
    ref = np.linspace(0, 1, 50)
    same = compare_maps(_check({"max_abs": 1.0}, "g"), ref.copy(), ref, TOL)
    assert same.passed and same.top_gap == 0.0 and same.max_abs == 0.0  # identical maps: no gap, no difference
    two = np.array([0.0, 1e-2])
    from scipy.stats import spearmanr

    limit = float(spearmanr(two, two).statistic)  # (1 up to rounding)
    exact = compare_maps(_check({"max_abs": 1.0}, "g"), two.copy(), two, Tolerances(map_spearman=limit))
    assert exact.spearman == limit and exact.passed  # two windows are ranked; a Spearman of exactly the limit passes
    edge = np.zeros(50)
    edge[7] = 1e-3  # a range of exactly the fp16 median tolerance is ranked
    assert compare_maps(_check({"max_abs": 1.0}, "g"), edge.copy(), edge, TOL).spearman is not None
    c = compare_maps(_check({"max_abs": 0.1}, "g"), ref[::-1].copy(), ref, TOL)  # too far, and ranked backwards
    assert c.problem.count("; ") == 1 and c.problem.startswith("max_abs 1 > 0.1; ") and "Spearman" in c.problem


def test_g_losses_and_map_compare_against_the_original_pixels_window_by_window():
    imgs, brains = _images()
    gate = ParityGate(GEOM, imgs, brains, slices=2, windows=3)
    zero, ident = (lambda x: np.zeros_like(x)), (lambda x: x.astype(np.float32))
    rows = gate.check("g", "crop", 8, zero, zero, [Candidate("g_fp16", ident, "fp16")])
    want = []
    for i, b in zip(gate.sample.slices, gate.sample.boxes):
        pad = GEOM.pad(imgs[i])
        x, orig = GEOM.crops(pad, b, inpaint=True), GEOM.crops(pad, b, inpaint=False)
        want.append(GEOM.box_score(x, orig, b, "l1") - GEOM.box_score(0 * x, orig, b, "l1"))
    loss = next(r for r in rows if r.model == "g_fp16" and r.quantity == "window loss")
    assert loss.median_abs == pytest.approx(np.median(np.abs(np.concatenate(want))), rel=1e-5)
    pad, b = GEOM.pad(imgs[gate.map_slice]), gate.map_boxes
    x, orig = GEOM.crops(pad, b, inpaint=True), GEOM.crops(pad, b, inpaint=False)
    d = np.abs(GEOM.box_score(x, orig, b, "l1") - GEOM.box_score(0 * x, orig, b, "l1"))
    assert rows[-1].quantity.startswith("window map") and rows[-1].median_abs == pytest.approx(np.median(d), rel=1e-5)
