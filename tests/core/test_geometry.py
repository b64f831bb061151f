"""Properties of the window geometry and preprocessing contracts (runtime/core/geometry.py,
runtime/core/preprocess.py)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from rlp.runtime.core.errors import BadInput
from rlp.runtime.core.geometry import WindowGeometry, window_positions
from rlp.runtime.core.preprocess import Preprocessing, Resampler, preprocess_slice

FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def geometries(draw, max_size: int = 48, context: bool = True):
    size = draw(st.integers(4, max_size))
    window = draw(st.integers(1, size))
    stride = draw(st.integers(1, window))  # covering geometries: stride <= window
    ctx = None
    if context and draw(st.booleans()):
        ctx = window + 2 * draw(st.integers(0, 6))
    return WindowGeometry(size=size, window=window, stride=stride, context=ctx)


# --------------------------------------------------------------------------- positions
@FAST
@given(st.integers(1, 300), st.data())
def test_positions_cover_the_image_and_include_size_minus_window(size, data):
    window = data.draw(st.integers(1, size))
    stride = data.draw(st.integers(1, size + 3))
    p = window_positions(size, window, stride)
    assert p[0] == 0 and p[-1] == size - window
    assert np.all(np.diff(p) > 0) and np.all(np.diff(p) <= stride)
    assert all(q % stride == 0 for q in p[:-1])  # 0, s, 2s, ... then size - window
    covered = np.zeros(size, bool)
    for q in p:
        covered[q:q + window] = True
    if stride <= window:  # a stride larger than the window leaves gaps by construction
        assert covered.all()
    assert covered[-window:].all()  # the last window always reaches the edge


def test_paper_geometry_is_61_by_61():
    g = WindowGeometry(256, 16, 4)
    assert g.grid_shape == (61, 61) and g.n_windows == 3721
    assert g.positions[59] == 236 and g.positions[60] == 240  # the paper stops at 60 (236): 4 rows never covered
    assert g.window_boxes().shape == (3721, 2)
    assert tuple(g.window_boxes()[-1]) == (240, 240)


@pytest.mark.parametrize("kw", [dict(window=0), dict(window=300), dict(stride=0), dict(context=9),
                                dict(context=8), dict(min_tissue=1.5)])
def test_bad_geometry_is_rejected(kw):
    base = dict(size=256, window=16, stride=4)
    with pytest.raises(ValueError):
        WindowGeometry(**{**base, **kw})


def test_geometry_round_trips_through_its_dict():
    g = WindowGeometry(128, 8, 2, fill=0.5, context=48, min_tissue=0.1)
    assert WindowGeometry.from_dict(g.to_dict()) == g
    t = WindowGeometry(128, 8, 2, fill=-1.0, context=48, paint="tissue")
    assert WindowGeometry.from_dict(t.to_dict()) == t and t.scaled(256).paint == "tissue"
    old = {k: v for k, v in g.to_dict().items() if k != "paint"}  # a manifest from before the paint setting
    assert WindowGeometry.from_dict(old).paint == "box"
    with pytest.raises(ValueError, match="paint"):
        WindowGeometry(128, 8, 2, paint="brain")


@pytest.mark.parametrize("context", [None, 12])
def test_tissue_paint_fills_only_the_box_pixels_above_zero(context):
    g = WindowGeometry(32, 8, 4, fill=-1.0, context=context, paint="tissue")
    img = np.random.default_rng(0).uniform(0.1, 1, (32, 32)).astype(np.float32)
    img[:, :13] = 0.0  # background left of column 13
    boxes = np.array([[8, 8], [8, 20], [0, 0]])  # across the outline, inside the brain, all background
    x, orig = g.crops(g.pad(img), boxes), g.crops(g.pad(img), boxes, inpaint=False)
    for k, (r, c) in enumerate(boxes):
        br, bc = g.box_in_input(r, c)
        box, under = x[k, 0, br:br + 8, bc:bc + 8], orig[k, 0, br:br + 8, bc:bc + 8]
        assert np.array_equal(box, np.where(under > 0, np.float32(-1.0), under))
        rest = np.ones(x.shape[2:], bool)
        rest[br:br + 8, bc:bc + 8] = False
        assert np.array_equal(x[k, 0][rest], orig[k, 0][rest])
    assert (x[0] == -1).sum() == 8 * 3 and (x[1] == -1).sum() == 64 and (x[2] == -1).sum() == 0


# --------------------------------------------------------------------------- maps
@FAST
@given(geometries(context=False), st.floats(-5, 5, allow_nan=False))
def test_pixel_map_of_a_constant_window_map_is_that_constant(g, c):
    pm = g.pixel_map(np.full(g.grid_shape, c))
    assert pm.shape == (g.size, g.size) and pm.dtype == np.float32
    np.testing.assert_allclose(pm, np.float32(c), rtol=1e-6, atol=1e-6)


@FAST
@given(geometries(max_size=24, context=False), st.integers(0, 2**31 - 1))
def test_pixel_map_is_the_mean_of_the_evaluated_windows_covering_each_pixel(g, seed):
    rng = np.random.default_rng(seed)
    wm = rng.random(g.grid_shape)
    ev = rng.random(g.grid_shape) < 0.6
    pm = g.pixel_map(wm, ev)
    want = np.zeros((g.size, g.size))
    for y in range(g.size):
        for x in range(g.size):
            vals = [wm[i, j] for i, r in enumerate(g.positions) for j, c in enumerate(g.positions)
                    if ev[i, j] and r <= y < r + g.window and c <= x < c + g.window]
            want[y, x] = np.mean(vals) if vals else 0.0
    np.testing.assert_allclose(pm, want, rtol=1e-5, atol=1e-6)


@FAST
@given(geometries(max_size=32, context=False), st.integers(0, 2**31 - 1))
def test_tissue_fraction_and_skip_background(g, seed):
    brain = np.random.default_rng(seed).random((g.size, g.size)) < 0.1
    frac = g.tissue_fraction(brain)
    for i, r in enumerate(g.positions):
        for j, c in enumerate(g.positions):
            assert frac[i, j] == pytest.approx(brain[r:r + g.window, c:c + g.window].mean())
    assert np.array_equal(g.evaluated(brain), frac > 0)
    assert g.evaluated(brain, all_windows=True).all() and g.evaluated(None).all()
    strict = WindowGeometry(g.size, g.window, g.stride, min_tissue=0.5)
    assert np.array_equal(strict.evaluated(brain), frac >= 0.5)


def test_evaluated_rejects_a_mask_of_the_wrong_shape():
    with pytest.raises(BadInput):
        WindowGeometry(32, 8, 4).evaluated(np.ones((31, 32), bool))


@FAST
@given(geometries(max_size=32), st.integers(0, 2**31 - 1))
def test_crops_paint_the_box_and_box_l1_reads_only_the_box(g, seed):
    rng = np.random.default_rng(seed)
    img = rng.random((g.size, g.size)).astype(np.float32)
    boxes = g.window_boxes()[rng.choice(g.n_windows, size=min(5, g.n_windows), replace=False)]
    padded = g.pad(img)
    x = g.crops(padded, boxes, inpaint=True)
    orig = g.crops(padded, boxes, inpaint=False)
    s, w, m = g.input_size, g.window, g.margin
    assert x.shape == orig.shape == (len(boxes), 1, s, s) and x.dtype == np.float32
    for k, (r, c) in enumerate(boxes):
        br, bc = g.box_in_input(r, c)
        assert np.all(x[k, 0, br:br + w, bc:bc + w] == g.fill)
        outside = np.ones((s, s), bool)
        outside[br:br + w, bc:bc + w] = False
        assert np.array_equal(x[k, 0][outside], orig[k, 0][outside])
        # the original crop is the slice around the window (zero outside the slice)
        np.testing.assert_array_equal(orig[k, 0, br:br + w, bc:bc + w], img[r:r + w, c:c + w])
        assert (br, bc) == ((m, m) if g.context else (r, c))
    assert np.allclose(g.box_l1(orig, orig, boxes), 0.0)
    noisy = orig.copy()
    for k, (r, c) in enumerate(boxes):
        br, bc = g.box_in_input(r, c)
        noisy[k, 0] += 5.0  # everywhere, outside the box too
        noisy[k, 0, br:br + w, bc:bc + w] += 0.25 - 5.0
    np.testing.assert_allclose(g.box_l1(noisy, orig, boxes), 0.25, rtol=1e-6)


# --------------------------------------------------------------------------- resampling
@st.composite
def resamplers(draw):
    shape = (draw(st.integers(3, 90)), draw(st.integers(3, 90)))
    spacing = (draw(st.floats(0.3, 4.0)), draw(st.floats(0.3, 4.0)))
    size = draw(st.sampled_from([16, 32, 64, 96]))
    return Resampler(shape, size, spacing)


@FAST
@given(resamplers(), st.floats(-2, 2), st.floats(-2, 2), st.floats(-50, 50))
def test_resampler_round_trip_of_a_linear_field(rs, a, b, c):
    """A field linear in physical space survives to_model -> to_input (away from the field-of-view edge)."""
    (h, w), (sh, sw) = rs.shape, rs.spacing
    yy, xx = np.meshgrid(np.arange(h) * sh, np.arange(w) * sw, indexing="ij")
    field = a * yy + b * xx + c
    model = rs.to_model(field, order=1, antialias=False, cval=np.nan)
    back = rs.to_input(np.nan_to_num(model), order=1)
    assert model.shape == (rs.size, rs.size) and back.shape == rs.shape
    # interior of the input: at least one model pixel (in input units) away from the edge
    mr, mc = int(np.ceil(rs.scale[0])) + 1, int(np.ceil(rs.scale[1])) + 1
    inner = np.s_[mr:h - mr, mc:w - mc]
    tol = 1e-6 * (1 + abs(c)) + 1e-6
    if field[inner].size:
        np.testing.assert_allclose(back[inner], field[inner], atol=tol)
    # Any shape, the small ones with no such interior included: a model pixel whose centre lies inside the
    # input grid holds the field's value there, and an input pixel whose four model neighbours all are such
    # pixels comes back exactly. Where a model pixel's centre lies, from the contract: the field of view
    # centred in a square of side e = max(extent), cut in size x size pixels.
    e = max(h * sh, w * sw)
    ii, jj = np.meshgrid(np.arange(rs.size), np.arange(rs.size), indexing="ij")
    ri = ((ii + 0.5) * e / rs.size - (e - h * sh) / 2) / sh - 0.5  # input index (continuous)
    ci = ((jj + 0.5) * e / rs.size - (e - w * sw) / 2) / sw - 0.5
    exact = (ri >= 1e-9) & (ri <= h - 1 - 1e-9) & (ci >= 1e-9) & (ci <= w - 1 - 1e-9)
    np.testing.assert_allclose(model[exact], (a * ri * sh + b * ci * sw + c)[exact], atol=tol)
    u0 = np.floor((np.arange(h) - rs.offset[0]) / rs.scale[0]).astype(int)[:, None] + np.zeros((1, w), int)
    v0 = np.floor((np.arange(w) - rs.offset[1]) / rs.scale[1]).astype(int)[None, :] + np.zeros((h, 1), int)
    ok = (u0 >= 0) & (u0 + 1 < rs.size) & (v0 >= 0) & (v0 + 1 < rs.size)
    uc, vc = np.clip(u0, 0, rs.size - 2), np.clip(v0, 0, rs.size - 2)
    ok &= exact[uc, vc] & exact[uc + 1, vc] & exact[uc, vc + 1] & exact[uc + 1, vc + 1]
    np.testing.assert_allclose(back[ok], field[ok], atol=tol)
    assume(exact.any())  # a grid that no model pixel centre falls in (extreme anisotropy) tests nothing: redrawn


@FAST
@given(resamplers())
def test_resampler_to_input_is_the_inverse_coordinate_map(rs):
    """to_input of the model-row-index map gives, at each input pixel, the model row it maps to."""
    ii, jj = np.meshgrid(np.arange(rs.size, dtype=float), np.arange(rs.size, dtype=float), indexing="ij")
    rows_back = rs.to_input(ii)
    cols_back = rs.to_input(jj)
    a, b = np.meshgrid(np.arange(rs.shape[0]), np.arange(rs.shape[1]), indexing="ij")
    want_r = np.clip((a - rs.offset[0]) / rs.scale[0], 0, rs.size - 1)
    want_c = np.clip((b - rs.offset[1]) / rs.scale[1], 0, rs.size - 1)
    np.testing.assert_allclose(rows_back, want_r, atol=1e-6)
    np.testing.assert_allclose(cols_back, want_c, atol=1e-6)
    # the centres coincide and model_to_input_coords is the forward map
    cr, cc = rs.model_to_input_coords((rs.size - 1) / 2, (rs.size - 1) / 2)
    assert cr == pytest.approx((rs.shape[0] - 1) / 2) and cc == pytest.approx((rs.shape[1] - 1) / 2)


@FAST
@given(resamplers())
def test_resampler_keeps_physical_proportions(rs):
    """One model pixel covers the same physical length along both axes (the longer extent fills the grid)."""
    (h, w), (sh, sw) = rs.shape, rs.spacing
    phys_r, phys_c = rs.scale[0] * sh, rs.scale[1] * sw
    assert phys_r == pytest.approx(phys_c)
    assert phys_r * rs.size == pytest.approx(max(h * sh, w * sw))


def test_resampler_rejects_bad_spacing_and_shapes():
    for sp in [(0, 1), (-1, 1), (np.nan, 1), (np.inf, 1)]:
        with pytest.raises(BadInput):
            Resampler((10, 10), 16, sp)
    with pytest.raises(BadInput):
        Resampler((0, 10), 16)


# --------------------------------------------------------------------------- preprocessing
@FAST
@given(st.integers(8, 60), st.integers(8, 60), st.floats(0.5, 3), st.integers(0, 2**31 - 1))
def test_preprocess_slice_output_range_and_background(h, w, sp, seed):
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w))
    img[h // 4: 3 * h // 4 + 1, w // 4: 3 * w // 4 + 1] = rng.uniform(10, 500, size=(3 * h // 4 + 1 - h // 4,
                                                                                   3 * w // 4 + 1 - w // 4))
    cfg = Preprocessing(size=32, min_brain_pixels=1)
    prep = preprocess_slice(img.astype(np.int16), cfg, (sp, 1.0))
    assert prep.image.shape == (32, 32) and prep.image.dtype == np.float32
    assert prep.image.min() >= 0 and prep.image.max() <= cfg.ceiling
    assert np.all(prep.image[~prep.brain] == 0)
    assert not prep.empty and prep.scale_value > 0


@pytest.mark.parametrize("img", [np.zeros((20, 30)), np.full((20, 30), 7.0), -np.ones((20, 30))])
def test_empty_and_constant_slices_are_empty(img):
    prep = preprocess_slice(img, Preprocessing(size=16))
    assert prep.empty and not prep.image.any() and not prep.brain.any()


def test_nonfinite_policies():
    img = np.ones((16, 16)) * 5
    img[4:8, 4:8] = 50
    img[0, 0], img[1, 1] = np.nan, np.inf
    with pytest.raises(BadInput, match="2 non-finite"):
        preprocess_slice(img, Preprocessing(size=16, nonfinite="error"))
    prep = preprocess_slice(img, Preprocessing(size=16, nonfinite="zero"))
    assert prep.n_nonfinite == 2 and np.isfinite(prep.image).all()
    with pytest.raises(BadInput, match="every voxel"):
        preprocess_slice(np.full((8, 8), np.nan), Preprocessing(size=16, nonfinite="zero"))


def test_preprocess_rejects_bad_arrays():
    cfg = Preprocessing(size=16)
    with pytest.raises(BadInput, match="mask shape"):
        preprocess_slice(np.ones((10, 10)), cfg, mask=np.ones((9, 10)))
    with pytest.raises(BadInput, match="2D"):
        preprocess_slice(np.ones((4, 4, 4)), cfg)
    with pytest.raises(BadInput, match="data type"):
        preprocess_slice(np.ones((4, 4), np.complex64), cfg)


def test_preprocessing_round_trips_through_its_dict():
    p = Preprocessing(size=128, percentile=99.0, nonfinite="zero", min_brain_pixels=4)
    assert Preprocessing.from_dict(p.to_dict()) == p
