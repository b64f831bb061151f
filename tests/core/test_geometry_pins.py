"""Pins of runtime/core/geometry.py written for the mutants that survived its mutation run (tests/MUTATION.md).

Each test names in its docstring what it pins: boundaries of the validity checks, the messages, the
dense grid, ``scaled``, the batch helpers. Values are written out by hand, not recomputed from the code.
"""

from __future__ import annotations

import numpy as np
import pytest

from rlp.runtime.core.errors import BadInput
from rlp.runtime.core.geometry import PAINT, SCORES, WindowGeometry, iter_batches, window_positions


def test_window_positions_boundaries_and_message():
    """A window as large as the slice and a stride of 1 are valid; 0 and negatives are not."""
    assert window_positions(8, 8, 1).tolist() == [0]
    assert window_positions(8, 1, 1).tolist() == list(range(8))
    assert window_positions(10, 4, 3).tolist() == [0, 3, 6]
    assert window_positions(10, 4, 4).tolist() == [0, 4, 6]
    assert window_positions(10, 4, 4).dtype == np.int64
    for size, window, stride in [(8, 0, 1), (8, 9, 1), (8, 4, 0), (8, 4, -1), (8, -1, 1)]:
        with pytest.raises(ValueError, match=rf"^bad geometry: size={size} window={window} stride={stride}$"):
            window_positions(size, window, stride)


def test_geometry_validity_boundaries_and_messages():
    """The edges of every rule: window == size, stride 1, context == window or window + 2, min_tissue 0 and 1."""
    WindowGeometry(8, 8, 1)
    assert WindowGeometry(1, 1, 1).n_windows == 1  # a 1-pixel slice is a valid (if useless) geometry
    WindowGeometry(8, 1, 1)
    assert WindowGeometry(8, 4, 2, context=4).margin == 0
    assert WindowGeometry(8, 4, 2, context=6).margin == 1
    WindowGeometry(8, 4, 2, min_tissue=0.0)
    WindowGeometry(8, 4, 2, min_tissue=1.0)
    for kw in [dict(size=0, window=0), dict(size=-4, window=1), dict(window=0), dict(window=9), dict(stride=0),
               dict(stride=-2)]:
        with pytest.raises(ValueError, match=r"^bad geometry WindowGeometry\("):
            WindowGeometry(**{"size": 8, "window": 4, "stride": 2, **kw})
    for ctx in (3, 5, 7):
        with pytest.raises(ValueError, match=r"^context must be >= window and differ from it by an even number$"):
            WindowGeometry(8, 4, 2, context=ctx)
    for mt in (-0.01, 1.01):
        with pytest.raises(ValueError, match=r"^min_tissue must lie in \[0, 1\]$"):
            WindowGeometry(8, 4, 2, min_tissue=mt)
    with pytest.raises(ValueError, match=r"^paint must be one of box, tissue, got 'brain'$"):
        WindowGeometry(8, 4, 2, paint="brain")
    assert PAINT == ("box", "tissue") and set(SCORES) == {"l1", "z"}


def test_layout_properties():
    """grid_shape, n_windows, margin (an int), input_size, dense_ok."""
    g = WindowGeometry(10, 4, 4)
    assert g.positions.tolist() == [0, 4, 6] and g.grid_shape == (3, 3) and g.n_windows == 9
    assert g.margin == 0 and g.input_size == 10 and not g.dense_ok()
    c = WindowGeometry(12, 4, 2, context=10)
    assert c.margin == 3 and type(c.margin) is int and c.input_size == 10 and c.dense_ok()
    assert WindowGeometry(12, 4, 3).dense_ok() is False and WindowGeometry(13, 4, 3).dense_ok() is True
    r = WindowGeometry(12, 3, 2)
    assert r.grid_shape == (6, 6) and r.n_windows == 36


def test_for_input():
    g = WindowGeometry(12, 4, 2, context=8)
    assert g.for_input("crop") is g
    for kind in ("image", "dense"):
        assert g.for_input(kind) == WindowGeometry(12, 4, 2, context=None)
    with pytest.raises(ValueError, match=r"^unknown model input kind 'crops' \(expected 'crop', 'image' or 'dense'\)$"):
        g.for_input("crops")


def test_dense_index():
    g = WindowGeometry(12, 4, 2)
    rows, cols = g.dense_index(np.array([[0, 0], [2, 6], [8, 4]]))
    assert rows.tolist() == [0, 1, 4] and cols.tolist() == [0, 3, 2]
    assert rows.dtype == np.int64 and cols.dtype == np.int64  # indices, not floats
    rows, cols = g.dense_index(np.array([[2.0, 6.0]]))  # float boxes give integer indices too
    assert rows.dtype == cols.dtype == np.int64 and rows.tolist() == [1] and cols.tolist() == [3]
    rows, cols = g.dense_index([4, 8])  # a single box, reshaped
    assert rows.tolist() == [2] and cols.tolist() == [4]
    with pytest.raises(ValueError, match=r"^windows off the regular stride grid have no cell in a dense map$"):
        g.dense_index(np.array([[0, 0], [1, 2]]))
    with pytest.raises(ValueError, match="off the regular stride grid"):
        WindowGeometry(12, 4, 3).dense_index(np.array([[0, 0]]))  # not dense_ok


def test_box_in_input_returns_python_ints():
    g = WindowGeometry(12, 4, 2)
    assert g.box_in_input() == (0, 0)
    br, bc = g.box_in_input(np.int64(4), np.int64(6))
    assert (br, bc) == (4, 6) and type(br) is int and type(bc) is int
    assert WindowGeometry(12, 4, 2, context=8).box_in_input(4, 6) == (2, 2)


def test_tissue_fraction_by_hand_and_its_message():
    g = WindowGeometry(4, 2, 2)
    brain = np.zeros((4, 4), bool)
    brain[0, 0] = brain[3, 3] = brain[2, 3] = True
    np.testing.assert_array_equal(g.tissue_fraction(brain), [[0.25, 0.0], [0.0, 0.5]])
    with pytest.raises(BadInput, match=r"^brain mask has shape \(4, 5\), expected \(4, 4\)$"):
        g.tissue_fraction(np.zeros((4, 5), bool))
    # min_tissue: exactly the threshold is evaluated, below it is not
    np.testing.assert_array_equal(WindowGeometry(4, 2, 2, min_tissue=0.5).evaluated(brain),
                                  [[False, False], [False, True]])
    np.testing.assert_array_equal(WindowGeometry(4, 2, 2, min_tissue=0.25).evaluated(brain),
                                  [[True, False], [False, True]])


def test_pad_with_a_margin_of_one_and_leading_dimensions():
    g = WindowGeometry(4, 2, 2, context=4)  # margin 1
    img = np.arange(16, dtype=np.float32).reshape(4, 4)
    p = g.pad(img)
    assert p.shape == (6, 6) and p[0].sum() == 0 and p[:, 0].sum() == 0 and np.array_equal(p[1:5, 1:5], img)
    stack = np.stack([img, img + 1])
    ps = g.pad(stack)
    assert ps.shape == (2, 6, 6) and np.array_equal(ps[1, 1:5, 1:5], img + 1) and ps[:, 0].sum() == 0
    assert WindowGeometry(4, 2, 2).pad(img) is img


def test_crops_of_a_whole_slice_geometry():
    """Without context every crop is the whole slice; inpaint is the default; fill is written into the box."""
    g = WindowGeometry(6, 2, 2, fill=7.0)
    img = np.arange(36, dtype=np.float64).reshape(6, 6)
    x = g.crops(g.pad(img), np.array([[2, 4]]))
    assert x.dtype == np.float32 and x.shape == (1, 1, 6, 6)
    want = img.copy()
    want[2:4, 4:6] = 7.0
    np.testing.assert_array_equal(x[0, 0], want)
    np.testing.assert_array_equal(g.crops(g.pad(img), [2, 4], inpaint=False)[0, 0], img)


def test_crops_accept_float_boxes():
    g = WindowGeometry(6, 2, 2, fill=-1.0, context=4)
    img = np.arange(36, dtype=np.float32).reshape(6, 6)
    x = g.crops(g.pad(img), np.array([[2.0, 4.0]]), inpaint=False)
    np.testing.assert_array_equal(x[0, 0, 1:3, 1:3], img[2:4, 4:6])
    np.testing.assert_array_equal(x[0, 0], g.crops(g.pad(img), np.array([[2, 4]]), inpaint=False)[0, 0])


def test_paint_mask():
    box = np.array([[0.0, 0.5], [-1.0, 2.0]])
    np.testing.assert_array_equal(WindowGeometry(4, 2, 2, paint="tissue").paint_mask(box),
                                  [[False, True], [False, True]])
    assert WindowGeometry(4, 2, 2, paint="box").paint_mask(box).all()


def test_box_score_by_hand_messages_and_shapes():
    g = WindowGeometry(4, 2, 2)
    target = np.zeros((1, 1, 4, 4))
    target[0, 0, 2:4, 0:2] = [[1.0, 2.0], [3.0, 4.0]]
    recon = np.zeros((1, 2, 4, 4))
    recon[0, 1] = 2.0  # scale b
    recon[0, 0, 0, 0] = 100.0  # outside the box: not read
    boxes = np.array([[2, 0]])
    assert g.box_score(recon[:, :1], target, boxes).tolist() == [2.5]
    assert g.box_score(recon, target, boxes, "l1").tolist() == [2.5]
    assert g.box_score(recon, target, boxes, "z").tolist() == [1.25]
    assert g.box_l1(recon[:, :1], target, boxes).tolist() == [2.5]
    # (N, S, S) reconstructions (no channel axis) and a single box given flat
    assert g.box_score(recon[:, 0], target[:, 0], [2, 0]).tolist() == [2.5]
    assert g.box_score(recon[:, :1], target, np.array([[2.0, 0.0]])).tolist() == [2.5]  # float boxes
    out = g.box_score(recon[:, :1].astype(np.float32), target, boxes)
    assert out.dtype == np.float64
    with pytest.raises(ValueError, match=r"^unknown window score 'L1'; known: l1, z$"):
        g.box_score(recon, target, boxes, "L1")
    with pytest.raises(ValueError, match=r"^the z score needs G's mean and scale \(N, 2, S, S\), got \(1, 1, 4, 4\)$"):
        g.box_score(recon[:, :1], target, boxes, "z")
    with pytest.raises(ValueError, match=r"needs G's mean and scale"):
        g.box_score(recon[:, 0], target[:, 0], boxes, "z")
    with pytest.raises(ValueError, match=r"needs G's mean and scale"):
        g.box_score(np.zeros((1, 3, 4, 4)), target, boxes, "z")


def test_pixel_map_by_hand_and_its_message():
    g = WindowGeometry(4, 2, 1)  # positions 0, 1, 2
    wm = np.arange(9, dtype=np.float64).reshape(3, 3)
    ev = np.zeros((3, 3), bool)
    ev[0, 0] = ev[1, 1] = True
    pm = g.pixel_map(wm, ev)
    assert pm.dtype == np.float32
    want = np.zeros((4, 4))
    want[0:2, 0:2] = 0.0
    want[1:3, 1:3] = 4.0
    want[1, 1] = 2.0
    np.testing.assert_array_equal(pm, want)
    full = g.pixel_map(wm)
    assert full[0, 0] == 0.0 and full[3, 3] == 8.0 and full[1, 1] == pytest.approx((0 + 1 + 3 + 4) / 4)
    with pytest.raises(ValueError, match=r"^window map has shape \(2, 3\), expected \(3, 3\)$"):
        g.pixel_map(np.zeros((2, 3)))


def test_to_dict_content():
    d = WindowGeometry(10, 4, 4, fill=0.5, context=6, min_tissue=0.25, paint="tissue").to_dict()
    assert d == {"size": 10, "window": 4, "stride": 4, "fill": 0.5, "context": 6, "min_tissue": 0.25,
                 "paint": "tissue", "positions_rule": "0, stride, 2*stride, ... and always size - window",
                 "grid_shape": [3, 3]}


def test_from_dict_reads_every_field_and_ignores_the_rest():
    d = {"size": 10, "window": 4, "stride": 3, "fill": -2.0, "context": 8, "min_tissue": 0.5, "paint": "tissue",
         "grid_shape": [3, 3], "positions_rule": "x"}
    assert WindowGeometry.from_dict(d) == WindowGeometry(10, 4, 3, -2.0, 8, 0.5, "tissue")
    assert WindowGeometry.from_dict({"size": 64}) == WindowGeometry(64, 16, 4, 1.0, None, 0.0, "box")


@pytest.mark.parametrize("g, size, want", [
    (WindowGeometry(256, 16, 4), 128, WindowGeometry(128, 8, 2)),
    (WindowGeometry(256, 16, 4, fill=0.5, context=48, min_tissue=0.1, paint="tissue"), 128,
     WindowGeometry(128, 8, 2, fill=0.5, context=24, min_tissue=0.1, paint="tissue")),
    (WindowGeometry(256, 16, 4), 32, WindowGeometry(32, 2, 1)),       # stride 0.5 rounds to 0, kept at 1
    (WindowGeometry(256, 16, 4), 8, WindowGeometry(8, 1, 1)),         # window 0.5 rounds to 0, kept at 1
    (WindowGeometry(100, 10, 5, context=20), 130, WindowGeometry(130, 13, 6, context=27)),  # 26 - 13 odd: + 1
    (WindowGeometry(100, 10, 5, context=20), 150, WindowGeometry(150, 15, 8, context=31)),  # 30 - 15 odd: + 1
    (WindowGeometry(100, 10, 5, context=30), 120, WindowGeometry(120, 12, 6, context=36)),  # even: kept
    # 12.5 -> 12, 25 - 12 odd: + 1
    (WindowGeometry(100, 10, 6, context=20), 125, WindowGeometry(125, 12, 8, context=26)),
])
def test_scaled(g, size, want):
    s = g.scaled(size)
    assert s == want
    assert all(type(v) is int for v in (s.size, s.window, s.stride)) and (s.context is None or type(s.context) is int)


def test_iter_batches():
    assert list(iter_batches(7, 3)) == [slice(0, 3), slice(3, 6), slice(6, 7)]
    assert list(iter_batches(6, 3)) == [slice(0, 3), slice(3, 6)]
    assert list(iter_batches(2, 5)) == [slice(0, 2)]
    assert list(iter_batches(0, 5)) == []


def test_every_window_evaluated_is_a_boolean_map():
    g = WindowGeometry(16, 4, 4)
    brain = np.zeros((16, 16), bool)
    for ev in (g.evaluated(None), g.evaluated(brain, all_windows=True)):
        assert ev.dtype == bool and ev.shape == g.grid_shape and ev.all()  # a mask: it indexes the window map


def test_window_boxes_run_row_major():
    g = WindowGeometry(16, 4, 4)
    boxes = g.window_boxes()
    n = g.grid_shape[1]
    assert boxes[:n, 0].tolist() == [0] * n and boxes[:n, 1].tolist() == [0, 4, 8, 12]  # the first row first
    assert boxes[n].tolist() == [4, 0] and boxes[-1].tolist() == [12, 12]
