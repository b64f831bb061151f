"""The runtime's scoring (``runtime/heatmap.py``: score_windows, top_windows, the summary) pinned where
mutation testing found it loose (issue 23, tests/MUTATION.md). Plain numpy predictors and a tiny
bundle; public functions only."""

from __future__ import annotations

import numpy as np
import pytest

from helpers.runtime import make_bundle, phantom
from rlp.runtime.core.errors import BadInput
from rlp.runtime.core.geometry import WindowGeometry
from rlp.runtime.core.manifest import ModelEntry
from rlp.runtime.core.preprocess import Resampler
from rlp.runtime.heatmap import Bundle
from rlp.runtime.results import Window, top_windows
from rlp.runtime.scorers import model_geometry, score_windows

G = WindowGeometry(16, 4, 4)
IMG = (np.arange(256, dtype=np.float32).reshape(16, 16) % 7) / 7


def test_score_windows_of_a_predictor_reads_the_first_output_per_box():
    boxes = G.window_boxes()
    seen, counted = [], []

    def predict(x):
        seen.append((x.shape, x.dtype))
        return np.stack([x.mean(axis=(1, 2, 3)), np.full(len(x), 99.0)], 1)  # (B, 2): the first column counts

    r = score_windows(IMG.astype(np.float64), G, boxes, predict, head="r-abc", batch=5, on_batch=counted.append)
    assert [s for s, _ in seen] == [(5, 1, 16, 16)] * 3 + [(1, 1, 16, 16)]
    assert all(d == np.float32 for _, d in seen) and counted == [5, 5, 5, 1]
    assert r.dtype == np.float64 and r.shape == (16,)
    for (r0, c0), v in zip(boxes, r):
        x = IMG.astype(np.float64).copy()
        x[r0:r0 + 4, c0:c0 + 4] = G.fill
        assert v == pytest.approx(x.mean(), rel=1e-6)
    # batch below 1 runs one window at a time; boxes given as a flat float list are read as (row, col) pairs
    one = score_windows(IMG, G, boxes.ravel().astype(float).tolist(), predict, batch=0)
    np.testing.assert_allclose(one, r, rtol=1e-6)
    assert score_windows(IMG, G, boxes, predict, batch=100, on_batch=None).shape == (16,)


def test_score_windows_of_g_scores_each_box_against_the_original():
    boxes = G.window_boxes()[[0, 5]]
    recon = np.float32(0.25)
    l1 = score_windows(IMG, G, boxes, lambda x: np.full_like(x, recon), head="g")
    want = [np.abs(IMG[r:r + 4, c:c + 4] - recon).mean() for r, c in boxes]
    np.testing.assert_allclose(l1, want, rtol=1e-6)
    laplace = lambda x: np.concatenate([np.full_like(x, recon), np.full_like(x, 0.5)], 1)  # noqa: E731 (mu, b)
    z = score_windows(IMG, G, boxes, laplace, head="g", score="z")
    np.testing.assert_allclose(z, [np.abs(IMG[r:r + 4, c:c + 4] - recon).mean() / 0.5 for r, c in boxes], rtol=1e-6)


def test_score_windows_refusals():
    with pytest.raises(ValueError, match=r"^path must be g, r or r-NAME: 'x' is not a heatmap path"):
        score_windows(IMG, G, G.window_boxes(), lambda x: x, head="x")
    with pytest.raises(ValueError, match="^only a predictor can be dense$"):
        score_windows(IMG, G, G.window_boxes(), lambda x: x, head="g", dense=True)
    with pytest.raises(ValueError, match=r"^dense predictor returned shape \(1, 1, 3, 4\), expected \(1, 1, 4, 4\)$"):
        score_windows(IMG, G, G.window_boxes(), lambda x: np.zeros((1, 1, 3, 4)), dense=True)


def test_a_dense_predictor_is_read_once_at_the_boxes():
    wmap = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4) / 3
    calls, counted = [], []

    def predict(x):
        calls.append(x)
        return wmap

    boxes = G.window_boxes()[[3, 9, 14]]
    got = score_windows(IMG.astype(np.float64), G, boxes, predict, dense=True, on_batch=counted.append)
    assert len(calls) == 1 and calls[0].shape == (1, 1, 16, 16) and calls[0].dtype == np.float32
    np.testing.assert_array_equal(calls[0][0, 0], IMG)
    assert got.dtype == np.float64 and counted == [3]
    np.testing.assert_allclose(got, wmap.ravel()[[3, 9, 14]].astype(np.float64))
    assert score_windows(IMG, G, boxes, predict, head="r-d", dense=True).shape == (3,)


def test_model_geometry_names_an_unknown_input_kind():
    entry = ModelEntry(role="r", file="r.onnx", sha256="", size=0, inputs=[], outputs=[], opset=17,
                       input_kind="volume")
    with pytest.raises(BadInput) as exc:
        model_geometry(G, entry, "b/manifest.json")
    assert str(exc.value) == ("b/manifest.json: model r.onnx has unknown input_kind 'volume'; rebuild the bundle "
                              "with rlp-export")
    entry.input_kind = "image"
    assert model_geometry(G, entry) == G.for_input("image")


def test_top_windows_ranks_evaluated_windows_and_locates_them():
    wm = np.array([[1, 5, 5, 0], [2, 9, 0, 0], [0, 0, 7, 0], [0, 0, 0, 3]], np.float32)
    ev = wm > 0
    ev[1, 1] = False  # the highest score was not evaluated: never reported
    res = Resampler((32, 16), 16, (1.0, 2.0))  # rows: 2 input pixels per model pixel; cols: 1 (spacing 2)
    top = top_windows(wm, ev, G, res, 3)
    assert [w.score for w in top] == [7.0, 5.0, 5.0] and [w.rank for w in top] == [1, 2, 3]
    assert [w.grid for w in top] == [(2, 2), (0, 1), (0, 2)]  # ties keep the map's order
    w = top[0]
    assert w.box_model == (8, 8, 12, 12) and all(type(v) is int for v in w.box_model + w.grid)
    rows, cols = res.model_to_input_coords(np.array([9.5, 7.5, 11.5]), np.array([9.5, 7.5, 11.5]))
    assert w.centre == (pytest.approx(rows[0]), pytest.approx(cols[0]))
    assert w.box == (pytest.approx(rows[1]), pytest.approx(cols[1]), pytest.approx(rows[2]), pytest.approx(cols[2]))
    assert type(w.score) is float and all(type(v) is float for v in w.centre + w.box)
    assert top_windows(wm, ev, G, res, 0) == [] and top_windows(wm, ev, G, res, -1) == []
    assert top_windows(wm, np.zeros_like(ev), G, res, 3) == []
    assert len(top_windows(wm, ev, G, res, 100)) == int(ev.sum())


def test_window_to_dict_rounds_and_adds_what_is_known():
    w = Window(np.float32(0.5), (1, 2), (4, 8, 8, 12), (1.23456, 2.0), (0.12349, 1.0, 2.0, 3.99951), rank=2)
    assert w.to_dict() == {"rank": 2, "score": 0.5, "grid": [1, 2], "box_model": [4, 8, 8, 12],
                           "centre_slice": [1.235, 2.0], "box_slice": [0.123, 1.0, 2.0, 4.0]}
    assert type(w.to_dict()["score"]) is float
    w.slice, w.voxel, w.world = np.int64(3), (1.00049, 2.0, 3.0), (-1.2345, 0.0, 9.87654)
    d = w.to_dict()
    assert d["slice"] == 3 and type(d["slice"]) is int
    assert d["voxel"] == [1.0, 2.0, 3.0] and d["world_mm"] == [-1.234, 0.0, 9.877]
    w.slice = 0
    assert w.to_dict()["slice"] == 0


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("b") / "b")


def test_a_volume_heatmap_locates_its_top_windows_in_the_file_and_the_world(bundle_dir):
    vol = np.stack([phantom((32, 32)), np.zeros((32, 32), np.float32), phantom((32, 32), seed=1)], -1)  # 1 empty
    aff = np.array([[0, 2.0, 0, 10], [0, 0, -1.0, 20], [1.0, 0, 0, 30], [0, 0, 0, 1]])  # file axes: S, R, P
    with Bundle.load(bundle_dir, backend="ort-cpu", threads=1) as b:
        res = b.heatmap_array(np.transpose(vol, (2, 0, 1)), aff, top_k=5, axis="axial")
    v = res.volume
    assert res.axis == 2 and res.slices == [0, 1, 2] and res.max_score == max(r.max_score for r in res.results)
    assert res.max_score > 0 and res.window_maps.shape == (3, 7, 7)
    assert [w.rank for w in res.top] == [1, 2, 3, 4, 5]
    assert [w.score for w in res.top] == sorted((w.score for w in res.top), reverse=True)
    for w in res.top:
        assert w.slice in (0, 2)  # never the empty slice
        c = v.file_to_canonical_index(res.axis, w.slice)
        ijk = [w.centre[0], w.centre[1]]
        ijk.insert(res.axis, float(c))
        np.testing.assert_allclose(w.voxel, v.canonical_to_file(ijk)[0][:3])
        np.testing.assert_allclose(w.world, v.voxel_to_world(ijk)[0])
        assert round(w.voxel[0]) == w.slice  # the file's first axis is the slice axis here
    s = res.summary()
    assert s["slices"] == {"processed": 3, "total": 3, "empty": 1} and s["file_axis"] == 0 and s["axis"] == "axial"
    assert s["windows"]["total"] == 3 * 49 and s["windows"]["evaluated"] == sum(r.n_evaluated for r in res.results)
    assert s["windows"]["scored_exactly"] == s["windows"]["evaluated"]
    assert s["shape"] == [3, 32, 32] and s["path"] == "r" and s["score"] == "l1" and s["max_score"] == res.max_score
    assert [p["slice"] for p in s["per_slice"]] == [0, 1, 2] and [p["empty"] for p in s["per_slice"]] == [
        False, True, False]
    assert s["per_slice"][1]["max_score"] == 0.0 and s["per_slice"][1]["windows_evaluated"] == 0
    assert s["top_windows"] == [w.to_dict() for w in res.top] and s["input"] == "array"
    assert any("1 of 3 slices hold no brain tissue" in x for x in s["warnings"])
    assert set(s["timings"]) == {"preprocess_s", "model_s", "windows_s", "postprocess_s", "total_s"}


def test_an_empty_volume_has_a_zero_max_score(bundle_dir):
    with Bundle.load(bundle_dir, backend="ort-cpu", threads=1) as b:
        res = b.heatmap_array(np.zeros((20, 20, 2), np.float32))
    assert res.max_score == 0.0 and res.top == [] and all(r.max_score == 0.0 for r in res.results)
    assert res.summary()["windows"]["evaluated"] == 0


def test_top_windows_of_one_and_many_ties():
    res = Resampler((16, 16), 16)
    wm = np.zeros((4, 4), np.float32)
    ev = np.zeros((4, 4), bool)
    ev[2, 3], wm[2, 3] = True, 0.5
    one = top_windows(wm, ev, G, res, 1)  # one window asked for, one evaluated
    assert [(w.grid, w.score, w.rank) for w in one] == [((2, 3), 0.5, 1)]
    g = WindowGeometry(64, 1, 1)  # 4096 windows of two scores: each score's windows ranked in the map's order
    two = (np.arange(4096) % 2 + 1.0).reshape(64, 64)
    ties = top_windows(two, np.ones((64, 64), bool), g, Resampler((64, 64), 64), 4096)
    assert [w.grid for w in ties] == [divmod(i, 64) for i in [*range(1, 4096, 2), *range(0, 4096, 2)]]


def test_one_window_per_call_at_batch_1():
    seen = []
    score_windows(IMG, G, G.window_boxes(), lambda x: seen.append(len(x)) or x.mean(axis=(2, 3)), batch=1)
    assert seen == [1] * 16


def test_window_voxels_are_rounded_to_3_decimals():
    w = Window(1.0, (0, 0), (0, 0, 4, 4), (0.0, 0.0), (0.0, 0.0, 1.0, 1.0), voxel=(1.23456, 2.5, 3.0))
    assert w.to_dict()["voxel"] == [1.235, 2.5, 3.0]


def test_the_summary_of_an_approximate_heatmap_and_its_timings(bundle_dir):
    from rlp.runtime.heatmap import COARSE

    img = phantom((32, 32))
    with Bundle.load(bundle_dir, backend="ort-cpu", threads=1) as b:
        res = b.heatmap_array(img, method=COARSE)
    s = res.summary()
    scored = sum(r.approximate["scored"] for r in res.results)
    assert s["windows"]["scored_exactly"] == scored < s["windows"]["evaluated"]
    assert s["timings"] == {k: round(t, 4) for k, t in res.timings.items()}
    assert any(t != round(t) for t in s["timings"].values())


def test_a_2d_image_locates_its_windows_with_2_voxel_indices(bundle_dir):
    with Bundle.load(bundle_dir, backend="ort-cpu", threads=1) as b:
        res = b.heatmap_array(phantom((32, 32)), top_k=2)
    assert res.volume.file_shape == (32, 32)
    assert all(len(w.voxel) == 2 and len(w.world) == 3 for w in res.top)
