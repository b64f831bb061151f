"""The normalisation contract pinned to numbers computed by hand (issue 23, bug 1).

The heatmap tests build their references from ``preprocess_slice`` itself, so an
error there cancels out. Here every expected number is written in the test, derived
in a comment from the slice's values with numpy's default (linear) percentile rule:
for n sorted brain values v[0..n-1], the p-th percentile sits at position
k = p / 100 * (n - 1) and is v[floor k] + frac(k) * (v[floor k + 1] - v[floor k]).

The model size equals the slice size and the spacing is 1, so step 4 (resampling)
is the identity and the model image holds the normalised input pixels themselves.
"""

from __future__ import annotations

import numpy as np
import pytest

from rlp.runtime.core.errors import BadInput
from rlp.runtime.core.preprocess import Preprocessing, Resampler, preprocess_slice


def _slice(side: int, values: list[float], *, margin: int = 1) -> np.ndarray:
    """A side x side slice, background 0, ``values`` laid out row by row inside a ``margin``-pixel zero border."""
    img = np.zeros((side, side))
    inner = side - 2 * margin
    assert len(values) <= inner * inner
    idx = np.arange(len(values))
    img[margin + idx // inner, margin + idx % inner] = values
    return img


# Version 2 (the default): the 90th percentile, clip to [0, 4].
# 26 brain voxels on a 10x10 slice (74 background zeros), sorted:
#   v[0..17] = 50 (18 voxels), v[18..22] = 80 (5), v[23] = 120, v[24] = 250, v[25] = 600.
# k = 0.90 * 25 = 22.5 -> v[22] + 0.5 * (v[23] - v[22]) = 80 + 0.5 * 40 = 100.
# Normalised: 50 -> 0.5, 80 -> 0.8, 120 -> 1.2, 250 -> 2.5 (kept above 1), 600 -> 6 -> 4.0 (clipped).
# (Other rules give other numbers: max 600; nearest/lower 80; higher 120; over all 100 voxels, zeros
# included, k = 89.1 -> brain index 15.1 -> 50; the 99.5th percentile 556.25.)
V2_VALUES = [50.0] * 18 + [80.0] * 5 + [120.0, 250.0, 600.0]
V2_SCALE = 100.0
V2_EXPECTED = [0.5] * 18 + [0.8] * 5 + [1.2, 2.5, 4.0]

# Version 1 (bundles made before versions): the 99.5th percentile, clip to [0, 1].
# 441 brain voxels on a 25x25 slice (a 2-pixel zero border, 184 background zeros), sorted:
#   v[0..219] = 40 (220 voxels), v[220..436] = 100 (217), v[437] = 160, v[438] = 210, v[439] = 300, v[440] = 500.
# k = 0.995 * 440 = 437.8 -> v[437] + 0.8 * (v[438] - v[437]) = 160 + 0.8 * 50 = 200.
# Normalised: 40 -> 0.2, 100 -> 0.5, 160 -> 0.8; the three outliers above the percentile
# (210 -> 1.05, 300 -> 1.5, 500 -> 2.5) are clipped to 1.0.
# (Other rules: max 500; nearest 210; lower 160; over all 625 voxels, zeros included, k = 620.88 ->
# brain index 436.88 -> 100 + 0.88 * 60 = 152.8; the 90th percentile 100.)
V1_VALUES = [40.0] * 220 + [100.0] * 217 + [160.0, 210.0, 300.0, 500.0]
V1_SCALE = 200.0
V1_EXPECTED = [0.2] * 220 + [0.5] * 217 + [0.8, 1.0, 1.0, 1.0]


def _expected_image(side: int, expected: list[float], margin: int) -> np.ndarray:
    return _slice(side, expected, margin=margin)


@pytest.mark.parametrize("side", [10, 25])
def test_model_size_equal_to_the_slice_size_is_the_identity_resampling(side):
    rs = Resampler((side, side), side, (1.0, 1.0))
    assert rs.scale == (1.0, 1.0) and rs.offset == (0.0, 0.0)
    x = np.random.default_rng(side).random((side, side))
    np.testing.assert_allclose(rs.to_model(x), x, rtol=0, atol=1e-12)  # no blur either (scale 1: sigma 0)


def test_version_2_divides_by_the_90th_percentile_and_keeps_values_up_to_4():
    cfg = Preprocessing(size=10)
    assert (cfg.version, cfg.percentile, cfg.ceiling) == (2, 90.0, 4.0)
    img = _slice(10, V2_VALUES)
    prep = preprocess_slice(img, cfg)
    assert prep.scale_value == pytest.approx(V2_SCALE, rel=1e-12)
    assert not prep.empty
    assert prep.image.dtype == np.float32
    np.testing.assert_allclose(prep.image, _expected_image(10, V2_EXPECTED, 1), rtol=1e-6, atol=0)
    assert float(prep.image.max()) == 4.0  # the outlier at 6x is clipped at the ceiling
    np.testing.assert_array_equal(prep.brain, img > 0)
    assert (prep.image[img == 0] == 0).all()  # background exactly 0


def test_version_1_divides_by_the_99_5th_percentile_and_clips_at_1():
    cfg = Preprocessing(size=25, percentile=99.5, version=1)
    assert cfg.ceiling == 1.0
    img = _slice(25, V1_VALUES, margin=2)
    prep = preprocess_slice(img, cfg)
    assert prep.scale_value == pytest.approx(V1_SCALE, rel=1e-12)
    np.testing.assert_allclose(prep.image, _expected_image(25, V1_EXPECTED, 2), rtol=1e-6, atol=0)
    assert float(prep.image.max()) == 1.0
    np.testing.assert_array_equal(prep.brain, img > 0)
    assert (prep.image[img == 0] == 0).all()


def test_a_given_mask_chooses_the_voxels_of_the_percentile_and_zeroes_the_rest():
    # The version-2 slice plus, outside the mask, a bright voxel (10000) and, inside it, a background
    # voxel (0). The percentile is over the masked voxels above 0: the same 26 values, so again 100.
    # The 10000 voxel, were it counted, would make the sorted list 27 long: k = 23.4 -> 120 + 0.4 * 130 = 172.
    img = _slice(10, V2_VALUES)
    mask = img > 0
    img[9, 9] = 10000.0
    mask[8, 8] = True  # a brain voxel of value 0: not in the percentile, 0 in the image
    assert img[8, 8] == 0
    prep = preprocess_slice(img, Preprocessing(size=10), mask=mask)
    assert prep.scale_value == pytest.approx(V2_SCALE, rel=1e-12)
    want = _expected_image(10, V2_EXPECTED, 1)
    np.testing.assert_allclose(prep.image, want, rtol=1e-6, atol=0)
    assert prep.image[9, 9] == 0  # outside the mask: exactly 0 however bright
    np.testing.assert_array_equal(prep.brain, mask)


def test_the_same_slice_under_both_versions():
    # The version-2 slice read by a version-1 bundle: k = 0.995 * 25 = 24.875 ->
    # 250 + 0.875 * (600 - 250) = 556.25; 250 -> 0.449438..., 600 -> 1.0786... -> 1.0.
    img = _slice(10, V2_VALUES)
    prep = preprocess_slice(img, Preprocessing(size=10, percentile=99.5, version=1))
    assert prep.scale_value == pytest.approx(556.25, rel=1e-12)
    flat = prep.image[1:9, 1:9].ravel()[: len(V2_VALUES)]
    np.testing.assert_allclose(flat[[0, 18, 23, 24, 25]], [50 / 556.25, 80 / 556.25, 120 / 556.25, 250 / 556.25, 1.0],
                               rtol=1e-6)


def test_manifests_without_a_version_load_as_version_1():
    old = Preprocessing.from_dict({"size": 64, "percentile": 99.5, "nonfinite": "zero"})
    assert (old.version, old.ceiling, old.percentile, old.size, old.nonfinite) == (1, 1.0, 99.5, 64, "zero")
    # the percentile is the one stored, not a default
    assert Preprocessing.from_dict({"size": 64, "percentile": 98.0}).percentile == 98.0
    # a version-1 manifest that did not record its percentile: 99.5, not version 2's 90
    assert Preprocessing.from_dict({"size": 64}).percentile == 99.5
    kept = Preprocessing.from_dict({"size": 64, "interpolation_order": 3, "antialias": False, "min_brain_pixels": 4})
    assert (kept.interpolation_order, kept.antialias, kept.min_brain_pixels) == (3, False, 4)
    new = Preprocessing.from_dict(Preprocessing(size=64).to_dict())
    assert new == Preprocessing(size=64)
    assert (new.version, new.ceiling, new.percentile) == (2, 4.0, 90.0)
    d = Preprocessing(size=64).to_dict()
    assert d["version"] == 2 and d["ceiling"] == 4.0
    assert Preprocessing(size=64, percentile=99.5, version=1).to_dict()["ceiling"] == 1.0


@pytest.mark.parametrize("version", [0, 3, None])
def test_an_unknown_version_is_refused(version):
    with pytest.raises(BadInput, match="version"):
        Preprocessing.from_dict({"size": 64, "percentile": 90.0, "version": version})
    with pytest.raises(BadInput, match=r"\(it knows 1, 2\); upgrade rlp"):
        Preprocessing(size=64, version=version)


def test_a_non_square_slice_is_centred_in_the_square_field_of_view():
    # 6 x 10 slice, model size 10, 1 mm voxels: the field of view is a 10 x 10 square with the slice's 6 rows
    # in its middle, so model row i reads input row i - 2 (scale 1, offset -2) and rows 0, 1, 8, 9 are
    # background: exactly 0, not brain.
    img = _slice(10, V2_VALUES)[:6]  # the version-2 slice's values all lie in rows 1..4
    rs = Resampler((6, 10), 10)
    assert rs.scale == (1.0, 1.0) and rs.offset == (-2.0, 0.0)
    prep = preprocess_slice(img, Preprocessing(size=10))
    assert prep.scale_value == pytest.approx(V2_SCALE, rel=1e-12)
    want = np.zeros((10, 10))
    want[2:8] = _expected_image(10, V2_EXPECTED, 1)[:6]
    np.testing.assert_allclose(prep.image, want, rtol=1e-6, atol=0)
    assert not prep.brain[[0, 1, 8, 9]].any() and (prep.brain[2:8] == (img > 0)).all()


def test_errors_name_the_file_and_refuse_what_is_not_an_image():
    cfg = Preprocessing(size=10)
    for bad, words in [(np.ones((2, 3, 4)), "2D slice"), (np.ones((4, 4), bool), "unsupported data type"),
                       (np.full((4, 4), "a"), "unsupported data type"),
                       (np.ones((4, 4), complex), "unsupported data type")]:
        with pytest.raises(BadInput, match=words) as exc:
            preprocess_slice(bad, cfg, path="in.nii.gz")
        assert exc.value.path == "in.nii.gz"
    with pytest.raises(BadInput, match="every voxel is non-finite") as exc:
        preprocess_slice(np.full((4, 4), np.nan), Preprocessing(size=10, nonfinite="zero"), path="in.nii.gz")
    assert exc.value.path == "in.nii.gz"


def test_zeroing_non_finite_voxels_leaves_the_callers_array_alone():
    img = _slice(10, V2_VALUES)
    img[9, 9] = np.nan  # background voxel, float64 like the slice
    prep = preprocess_slice(img, Preprocessing(size=10, nonfinite="zero"))
    assert prep.n_nonfinite == 1 and np.isnan(img[9, 9])
    np.testing.assert_allclose(prep.image, _expected_image(10, V2_EXPECTED, 1), rtol=1e-6, atol=0)


def test_the_manifest_records_the_rules_in_words():
    v2, v1 = Preprocessing(size=64).to_dict(), Preprocessing(size=64, percentile=99.5, version=1).to_dict()
    assert v1["normalisation"] == "clip(x / percentile(brain voxels), 0, 1) * brain"
    assert v2["normalisation"] == "clip(x / percentile(brain voxels), 0, ceiling) * brain"
    for d in (v1, v2):
        assert d["brain_mask"] == "given mask, else x > 0"
        assert d["resample"] == "centre field of view in a square of side max(extent), scipy.ndimage.affine_transform"


# --------------------------------------------------------------------------- the resampler's own contract
def test_resampling_defaults_are_linear_anti_aliased_and_background_0():
    rs = Resampler((64, 40), 16, (1.0, 1.5))
    x = np.random.default_rng(1).random((64, 40))
    np.testing.assert_array_equal(rs.to_model(x), rs.to_model(x, order=1, antialias=True, cval=0.0))
    m = Resampler((6, 10), 10).to_model(np.ones((6, 10)), antialias=False, cval=-1.0)
    np.testing.assert_array_equal(m[:, 0], [-1, -1, 1, 1, 1, 1, 1, 1, -1, -1])  # outside the field of view: cval


def test_anti_aliasing_is_a_gaussian_of_sigma_scale_minus_1_over_2():
    # 64 -> 16 (scale 4): sigma = (4 - 1) / 2 = 1.5. A cosine of period 8 input pixels along the rows keeps
    # exp(-2 pi^2 sigma^2 / 8^2) = exp(-0.6940) = 0.49960 of its amplitude; model row i then reads input row
    # 4 i + 1.5, halfway between rows 4i+1 and 4i+2: cos(pi/4 (4i+1)) and cos(pi/4 (4i+2)) average to
    # +-0.35355 (i even / odd), so the interior of the model image alternates +-0.17663.
    x = np.cos(2 * np.pi * np.arange(64) / 8)[:, None] * np.ones((1, 64))
    m = Resampler((64, 64), 16).to_model(x)
    np.testing.assert_allclose(m[3:13, 8], [0.17663 * (-1) ** i for i in range(3, 13)], atol=2e-5)
    # 48 -> 16 (scale 3, sigma 1, filtered too): period 6 keeps exp(-2 pi^2 / 36) = 0.57792; row 3 i + 1 reads
    # cos(pi/3 (3i+1)) = +-0.5, so +-0.28896.
    x = np.cos(2 * np.pi * np.arange(48) / 6)[:, None] * np.ones((1, 48))
    m = Resampler((48, 48), 16).to_model(x)
    np.testing.assert_allclose(m[3:13, 8], [0.28896 * (-1) ** i for i in range(3, 13)], atol=2e-5)


def test_the_anti_aliasing_filter_sees_background_outside_the_field_of_view():
    rs = Resampler((64, 64), 16)
    np.testing.assert_allclose(rs.to_model(np.full((64, 64), 5.0), cval=5.0), 5.0, rtol=1e-12)
    edge = rs.to_model(np.ones((64, 64)))  # background 0 beyond the slice: the border pixels are darker
    assert edge[0, 8] < 0.95 and edge[8, 8] == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("order", [1, 2, 3, 5])
def test_higher_order_resampling_interpolates_the_samples(order):
    # at scale 1 and offset 0 every model pixel is an input pixel: an interpolating spline returns the sample
    rs = Resampler((12, 12), 12)
    x = np.random.default_rng(order).random((12, 12))
    np.testing.assert_allclose(rs.to_model(x, order=order), x, atol=1e-12)
    np.testing.assert_allclose(rs.to_input(x, order=order), x, atol=1e-12)


def test_to_input_of_an_integer_map_interpolates_in_floating_point():
    rs = Resampler((8, 8), 4)  # model pixel i sits at input 2 i + 0.5: input pixel 1 lies at model 0.25
    m = np.arange(16).reshape(4, 4)  # an integer map: value 4 r + c
    back = rs.to_input(m)
    assert back.dtype == np.float64
    assert back[1, 1] == pytest.approx(4 * 0.25 + 0.25)


def test_maps_of_the_wrong_shape_are_refused():
    rs = Resampler((8, 6), 4)
    with pytest.raises(ValueError, match=r"image shape \(6, 8\) != resampler shape \(8, 6\)"):
        rs.to_model(np.zeros((6, 8)))
    with pytest.raises(ValueError, match=r"map shape \(5, 5\) != model grid \(4, 4\)"):
        rs.to_input(np.zeros((5, 5)))


# --------------------------------------------------------------------------- shrinking, by hand
def test_shrinking_by_2_without_anti_aliasing_averages_2x2_blocks_of_the_clipped_slice():
    # 8 x 8 -> 4 x 4 (scale 2, offset 0.5): model pixel (i, j) reads input (2i + .5, 2j + .5), the mean of a
    # 2 x 2 block. Every voxel is brain (mask) and 100, but (0, 0) = -100 and (0, 2) = 600. The percentile is
    # over the 62 voxels above 0 (61 x 100, one 600): k = 0.9 * 61 = 54.9 -> 100. Normalised and clipped
    # before resampling: (0, 0) -> 0, (0, 2) -> 6 -> 4, the rest 1; so model (0, 0) = (0 + 1 + 1 + 1) / 4 =
    # 0.75, model (0, 1) = (4 + 1 + 1 + 1) / 4 = 1.75, the rest 1.
    x = np.full((8, 8), 100.0)
    x[0, 0], x[0, 2] = -100.0, 600.0
    prep = preprocess_slice(x, Preprocessing(size=4, antialias=False), mask=np.ones((8, 8), bool))
    assert prep.scale_value == pytest.approx(100.0, rel=1e-12)
    want = np.ones((4, 4))
    want[0, 0], want[0, 1] = 0.75, 1.75
    np.testing.assert_allclose(prep.image, want, rtol=1e-6, atol=0)
    assert prep.brain.all() and not prep.empty  # 16 brain pixels: exactly min_brain_pixels


def test_the_configured_order_and_anti_aliasing_are_used_and_the_result_clipped():
    # a bright square with a brighter corner (6x the percentile, clipped to 4) on 0-valued voxels, all of
    # them brain (mask): cubic interpolation overshoots below 0 and above 4 at the edges, inside the brain;
    # the model image is clipped back to [0, 4]
    x = np.zeros((16, 16))
    x[4:12, 4:12] = 100.0
    x[4:6, 4:6] = 600.0  # 4 of 64 voxels: the 90th percentile is 100
    cfg = Preprocessing(size=8, interpolation_order=3, antialias=True)
    prep = preprocess_slice(x, cfg, mask=np.ones((16, 16), bool))
    assert prep.brain.all()
    raw = Resampler((16, 16), 8).to_model(np.clip(x / 100.0, 0, 4), order=3, antialias=True)
    assert raw.min() < -0.05 and raw.max() > 4.2  # the overshoot that must not reach the model image
    np.testing.assert_allclose(prep.image, np.clip(raw, 0, 4), rtol=1e-6, atol=1e-7)
    assert prep.image.min() == 0.0 and prep.image.max() == 4.0


def test_the_brain_mask_is_resampled_linearly_without_blur_and_needs_more_than_half():
    # 16 -> 4 (scale 4): model (i, j) reads input (4i + 1.5, 4j + 1.5). Brain: columns 0-7, column 9 alone
    # and a 2 x 2 spot at rows 5-6, columns 13-14. Model column 1 reads columns 5-6: brain. Column 2 reads
    # halfway between column 9 (brain) and 10: exactly 0.5, not more than half: not brain. (1, 3) reads the
    # spot's centre: brain (a blurred mask would thin the spot below half and widen column 9 above it).
    x = np.zeros((16, 16))
    x[:, :8] = 100.0
    x[:, 9] = 100.0
    x[5:7, 13:15] = 100.0
    prep = preprocess_slice(x, Preprocessing(size=4))
    np.testing.assert_array_equal(prep.brain, [[1, 1, 0, 0], [1, 1, 0, 1], [1, 1, 0, 0], [1, 1, 0, 0]])


def test_a_slice_with_no_intensity_left_in_the_model_brain_is_empty():
    # 16 -> 8 without anti-aliasing: model pixels average 2 x 2 blocks. The mask covers columns 0-7 (model
    # columns 0-3: 32 brain pixels) and (0, 8), (1, 8): half of a block, so not brain. The only voxel above
    # 0 is (0, 8) = 50: it scales the slice (scale_value 50) but lands outside the model brain: empty.
    x = np.zeros((16, 16))
    x[0, 8] = 50.0
    mask = np.zeros((16, 16), bool)
    mask[:, :8] = True
    mask[0:2, 8] = True
    prep = preprocess_slice(x, Preprocessing(size=8, antialias=False), mask=mask)
    assert prep.scale_value == 50.0 and prep.brain.sum() == 32
    assert prep.empty and prep.image.max() == 0.0


@pytest.mark.parametrize("n_brain, empty", [(1, True), (15, True), (16, False)])
def test_a_slice_with_fewer_brain_pixels_than_the_minimum_is_empty(n_brain, empty):
    x = np.zeros((10, 10))
    x.flat[:n_brain] = 7.0 + np.arange(n_brain)  # 7, 8, ...: not a constant slice
    prep = preprocess_slice(x, Preprocessing(size=10))  # min_brain_pixels 16
    assert prep.empty is empty
    assert int(prep.brain.sum()) == n_brain
    # one voxel: the 90th percentile of [7] is 7; fifteen, 7..21: k = 12.6 -> 19 + 0.6 = 19.6; sixteen: k = 13.5 -> 20.5
    assert prep.scale_value == pytest.approx({1: 7.0, 15: 19.6, 16: 20.5}[n_brain], rel=1e-12)


def test_an_empty_slice_is_float32_zeros_with_a_bool_brain_and_its_count_of_zeroed_voxels():
    x = np.zeros((10, 10))
    x[3, 3] = np.inf
    prep = preprocess_slice(x, Preprocessing(size=12, nonfinite="zero"))
    assert prep.empty and prep.n_nonfinite == 1 and prep.scale_value == 0.0
    assert prep.image.dtype == np.float32 and prep.image.shape == (12, 12) and not prep.image.any()
    assert prep.brain.dtype == bool and prep.brain.shape == (12, 12) and not prep.brain.any()


def test_intensities_below_1_scale_the_same_way():
    # the version-2 slice divided by 1000: the percentile is 0.1, the normalised image the same
    prep = preprocess_slice(_slice(10, V2_VALUES) / 1000.0, Preprocessing(size=10))
    assert prep.scale_value == pytest.approx(0.1, rel=1e-12)
    np.testing.assert_allclose(prep.image, _expected_image(10, V2_EXPECTED, 1), rtol=1e-6, atol=0)


def test_mask_and_geometry_errors_name_the_file():
    cfg = Preprocessing(size=10)
    with pytest.raises(BadInput) as exc:
        preprocess_slice(np.ones((4, 4)), cfg, mask=np.ones((3, 3)), path="in.nii.gz")
    assert exc.value.path == "in.nii.gz" and exc.value.message == "mask shape (3, 3) != image shape (4, 4)"
    with pytest.raises(BadInput) as exc:
        preprocess_slice(np.ones((4, 4)), cfg, spacing=(0.0, 1.0), path="in.nii.gz")
    assert exc.value.path == "in.nii.gz" and exc.value.message == "voxel spacing (0.0, 1.0) must be finite and positive"
    with pytest.raises(BadInput) as exc:
        preprocess_slice(np.full((4, 4), np.nan), Preprocessing(size=10, nonfinite="zero"), path="in.nii.gz")
    assert exc.value.message == "every voxel is non-finite (NaN/Inf)"


def test_resampler_limits_and_messages():
    assert Resampler((1, 10), 10).scale == (1.0, 1.0)  # a one-row slice is an image
    with pytest.raises(BadInput, match=r"^slice shape \(0, 5\) is not a 2D image$"):
        Resampler((0, 5), 10)
    rs = Resampler((4, 4), 4, [1, np.float32(2)])
    assert rs.spacing == (1.0, 2.0) and type(rs.spacing) is tuple and all(type(s) is float for s in rs.spacing)
    assert max(Resampler((10000, 1), 1).scale) == 1e4  # the limit itself is allowed
    with pytest.raises(BadInput, match=r"voxel spacing \(1000000.0, 1.0\) on a 2x3 slice is too anisotropic .*"
                                       r"would span 1.25e\+05 input pixels"):
        Resampler((2, 3), 16, (1e6, 1.0))


def test_an_integer_image_resamples_like_its_float_version():
    x = np.random.default_rng(3).integers(0, 50, (64, 40))
    rs = Resampler((64, 40), 16, (1.0, 1.5))
    np.testing.assert_array_equal(rs.to_model(x), rs.to_model(x.astype(np.float64)))
