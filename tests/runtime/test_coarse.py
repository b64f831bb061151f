"""Approximate coarse-to-fine heatmaps (``rlp.runtime.coarse``): which windows it scores, that its scores are the
exact ones where it scores, that it is labelled approximate everywhere a user sees it, and the bench's
measure of how close it comes to the plain map."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers.runtime import make_bundle, run_heatmap, write_nifti
from rlp.bench import report as rep
from rlp.bench.report_md import headline_lines
from rlp.runtime.coarse import CoarseToFine, coarse_to_fine, estimate, lattice
from rlp.runtime.core.errors import EX_USAGE, RlpError
from rlp.runtime.heatmap import Bundle

POS = np.arange(0, 61 * 2, 2)  # the demo's window positions: 61 per axis, stride 2


def _scorer(truth: np.ndarray, evaluated: np.ndarray, calls: list):
    def score(mask: np.ndarray) -> np.ndarray:
        assert mask.shape == truth.shape and not (mask & ~evaluated).any()  # never a window outside the brain
        calls.append(mask.copy())
        return truth[mask]
    return score


def test_lattice_spans_the_grid():
    assert lattice(61, 2).tolist() == list(range(0, 61, 2))
    assert lattice(10, 4).tolist() == [0, 4, 8, 9]  # the last window too
    assert lattice(1, 3).tolist() == [0]


def test_a_planar_map_is_estimated_exactly():
    """Linear interpolation reproduces a plane, so with nothing refined the whole map is right."""
    r, c = np.meshgrid(POS, POS, indexing="ij")
    truth = 0.1 + 0.002 * r - 0.001 * c
    ev = np.ones(truth.shape, bool)
    calls = []
    wm, scored = coarse_to_fine(ev, POS, _scorer(truth, ev, calls), CoarseToFine(factor=3, refine=0.0))
    np.testing.assert_allclose(wm, truth, rtol=0, atol=1e-12)
    assert len(calls) == 1 and scored.sum() == len(lattice(61, 3)) ** 2


def test_scores_are_exact_where_scored_and_the_peak_is_found():
    rng = np.random.default_rng(0)
    r, c = np.meshgrid(POS, POS, indexing="ij")
    truth = 0.05 + 0.01 * rng.random((61, 61)) + 0.3 * np.exp(-((r - 70) ** 2 + (c - 50) ** 2) / 60.0)
    ev = np.hypot(r - 60, c - 60) < 55  # a round brain; background windows are not evaluated
    calls = []
    wm, scored = coarse_to_fine(ev, POS, _scorer(truth, ev, calls), CoarseToFine())
    assert not (scored & ~ev).any() and (wm[~ev] == 0).all()
    np.testing.assert_array_equal(wm[scored], truth[scored])
    assert np.unravel_index(np.argmax(wm), wm.shape) == np.unravel_index(np.argmax(np.where(ev, truth, 0)), wm.shape)
    coarse = ev.copy()
    coarse[np.ix_(lattice(61, 2), lattice(61, 2))] = False
    rest = coarse.sum()  # evaluated windows off the lattice
    assert scored.sum() == (ev.sum() - rest) + int(np.ceil(0.25 * rest))  # lattice + the refined quarter
    assert len(calls) == 2


def test_refining_everything_is_the_plain_map():
    rng = np.random.default_rng(1)
    truth = rng.random((61, 61))
    ev = rng.random((61, 61)) > 0.3
    wm, scored = coarse_to_fine(ev, POS, _scorer(truth, ev, []), CoarseToFine(factor=4, refine=1.0))
    np.testing.assert_array_equal(scored, ev)
    np.testing.assert_array_equal(wm, np.where(ev, truth, 0.0))


def test_windows_with_no_evaluated_lattice_neighbour_are_scored_not_guessed():
    ev = np.zeros((61, 61), bool)
    ev[31, 31] = ev[31, 32] = True  # a speck of tissue between lattice rows and columns: no estimate possible
    truth = np.full((61, 61), 0.7)
    wm, scored = coarse_to_fine(ev, POS, _scorer(truth, ev, []), CoarseToFine(refine=0.0))
    np.testing.assert_array_equal(scored, ev)
    assert (wm[ev] == 0.7).all()


def test_background_on_the_lattice_does_not_pull_estimates_down():
    known = np.zeros((5, 5), bool)
    known[0, 0] = True
    values = np.zeros((5, 5))
    values[0, 0] = 0.4
    est = estimate(values, known, np.arange(5), np.array([0, 4]), np.array([0, 4]))
    assert np.allclose(est[np.isfinite(est)], 0.4)  # normalised by the known windows' weights, not diluted by 0s


@pytest.mark.parametrize("settings", [dict(factor=1), dict(factor=2.5), dict(refine=-0.1), dict(refine=1.5)])
def test_bad_settings_are_usage_errors(settings):
    with pytest.raises(RlpError) as err:
        CoarseToFine(**settings)
    assert err.value.code == EX_USAGE


# --------------------------------------------------------------------------- through the bundle and the CLI
def _slice(size: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.uniform(0.2, 1.0, (size, size)).astype(np.float32)
    img[:4] = 0.0
    img[12:18, 20:26] = 3.0  # something G's mean filter reconstructs badly
    return img


def test_bundle_coarse_to_fine_is_labelled_and_top_windows_are_scored(tmp_path):
    b = make_bundle(tmp_path / "b", size=32, window=8, stride=2, context=8, g="mean", r=None)
    img = _slice()
    with Bundle.load(b, backend="ort-cpu") as bundle:
        plain = bundle.heatmap_slice(img, head="g")
        approx = bundle.heatmap_slice(img, head="g", method="coarse-to-fine")
        full = bundle.heatmap_slice(img, head="g", method="coarse-to-fine", coarse=CoarseToFine(refine=1.0))
    assert plain.approximate is None
    a = approx.approximate
    assert a["method"] == "coarse-to-fine" and a["evaluated"] == plain.n_evaluated and 0 < a["scored"] < a["evaluated"]
    np.testing.assert_array_equal(approx.evaluated, plain.evaluated)
    for w in approx.top:  # every reported window carries its exact score
        assert w.score == pytest.approx(float(plain.window_map[w.grid]), abs=1e-6)
    assert approx.top[0].grid == plain.top[0].grid
    np.testing.assert_allclose(full.window_map, plain.window_map, rtol=0, atol=1e-6)


def test_cli_coarse_to_fine_warns_and_records_it(tmp_path, capsys):
    b = make_bundle(tmp_path / "b", size=32, window=8, stride=2, context=8, g="mean", r=None)
    nii = write_nifti(tmp_path / "s.nii.gz", _slice()[:, :, None])
    code, _, err = run_heatmap(capsys, nii, "--bundle", b, "--out", tmp_path / "o", "--path", "g", "--method",
                           "coarse-to-fine", "--coarse-factor", "3", "--refine", "0.5")
    assert code == 0, err
    assert "approximate heatmap (coarse-to-fine, factor 3, refine 0.5)" in err
    summary = json.loads((tmp_path / "o" / "s_summary.json").read_text())
    assert summary["method"] == "coarse-to-fine"
    assert 0 < summary["windows"]["scored_exactly"] < summary["windows"]["evaluated"]
    assert any("approximate heatmap" in w for w in summary["warnings"])


def test_cli_coarse_options_need_the_method_and_dense_predictors_refuse_it(tmp_path, capsys):
    b = make_bundle(tmp_path / "b", size=32, window=8, stride=2, context=8)
    nii = write_nifti(tmp_path / "s.nii.gz", _slice()[:, :, None])
    for args, words in ((["--refine", "0.5"], "apply to --method coarse-to-fine only"),
                        (["--method", "coarse-to-fine", "--refine", "2"], "not a fraction"),
                        (["--method", "coarse-to-fine", "--coarse-factor", "1"], "--coarse-factor")):
        code, _, err = run_heatmap(capsys, nii, "--bundle", b, "--out", tmp_path / "o", *args)
        assert code == EX_USAGE and len(err.strip().splitlines()) == 1 and words in err, err
        assert not (tmp_path / "o" / "s_heatmap.nii.gz").exists()
    with Bundle.load() as demo:  # the embedded demo's R is dense: one pass per slice already
        assert demo.manifest.models["r"].input_kind == "dense"
        with pytest.raises(RlpError) as err:
            demo.heatmap_slice(np.ones((32, 32), np.float32), method="coarse-to-fine")
        assert err.value.code == EX_USAGE and "dense" in str(err.value)


def test_bench_measures_an_approximate_row_against_the_plain_one():
    ev = np.ones((4, 4), bool)
    exact = np.arange(16, dtype=float).reshape(4, 4) / 16
    near = exact.copy()
    near[0, :2] = near[0, 1::-1]  # two low windows swapped
    maps = {"p": [{"window": exact, "evaluated": ev}], "c": [{"window": near, "evaluated": ev}]}
    row = {"status": "ok", "path": "g", "backend": "ort-cpu"}
    rows = [{**row, "name": "G · ort-cpu", "method": "plain", "latency": {"median_s": 3.0}, "id": "p"},
            {**row, "name": "G coarse-to-fine · ort-cpu", "method": "coarse-to-fine", "latency": {"median_s": 1.0},
             "approximate": {"scored": 8, "windows": 16}, "id": "c"}]
    rep.add_equality(rows, lambda r: maps[r["id"]])
    a = rows[1]["approximation"]
    assert "equality" not in rows[1]
    assert a["reference_row"] == "G · ort-cpu" and a["speedup_vs_reference"] == 3.0 and a["scored_fraction"] == 0.5
    assert a["same_argmax"] == 1 and a["top5_iou"] == 1.0 and 0.9 < a["spearman"] < 1.0
    assert a["max_abs_diff"] == pytest.approx(1 / 16)
    lines = headline_lines({"rows": rows, "summary": None})
    assert any("APPROXIMATE, 50% of windows scored exactly" in x and "3.00x faster than G · ort-cpu" in x
               for x in lines)
