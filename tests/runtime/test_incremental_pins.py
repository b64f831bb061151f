"""Exact incremental scoring (``runtime/incremental.py``) pinned where mutation testing found it loose (issue 23,
tests/MUTATION.md): layers whose rows and columns differ (kernel, stride, dilation, padding), so that a row
parameter used for a column (or the reverse) changes a score; the scorer's batches, boxes and errors."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from test_incremental import TOL, Net, _image, _plain

from rlp.runtime.core.errors import BadInput
from rlp.runtime.core.geometry import WindowGeometry
from rlp.runtime.incremental import HOWS, IncrementalScorer, read_chain

GEOM = WindowGeometry(size=30, window=6, stride=4, fill=0.9)


def _conv(n: Net, cout: int, kh: int, kw: int, **attrs) -> Net:
    w = n.rng.normal(0, np.sqrt(2.0 / (n.c * kh * kw)), (cout, n.c, kh, kw))
    n.c = cout
    return n.op("Conv", n.const(w), n.const(n.rng.normal(0, 0.1, cout)), kernel_shape=[kh, kw], **attrs)


def oblong(size: int = GEOM.size) -> Net:
    """Every layer treats rows and columns differently."""
    n = Net(size, seed=7)
    _conv(n, 3, 3, 1, strides=[2, 1], pads=[1, 0, 1, 0]).op("Relu")
    _conv(n, 4, 1, 3, dilations=[1, 2], pads=[0, 2, 0, 1]).op("Tanh")
    n.op("MaxPool", kernel_shape=[1, 3], strides=[1, 2], pads=[0, 1, 0, 1])
    _conv(n, 2, 3, 2, strides=[1, 2], pads=[2, 0, 0, 1])
    _conv(n, 2, 3, 3, dilations=[2, 1], pads=[2, 1, 2, 1])
    _conv(n, 3, 2, 3, strides=[2, 1], auto_pad="SAME_LOWER")
    _conv(n, 2, 3, 1, auto_pad="VALID")
    return n


@pytest.mark.parametrize("paint, size", [("box", 30), ("tissue", 30), ("box", 31)])
def test_layers_with_different_rows_and_columns_equal_plain_scoring(paint, size):
    """Size 31: the last window (25) is off the stride, so its changed region is aligned differently."""
    geom = WindowGeometry(size=size, window=GEOM.window, stride=GEOM.stride, fill=GEOM.fill, paint=paint)
    model = oblong(size).model()
    onnx.checker.check_model(model, full_check=True)
    stages, _ = read_chain(model)
    assert len(stages) == 7
    image, boxes = _image(geom.size), geom.window_boxes()
    image[:, -7:] = 0.0  # background in columns too: what the tissue paint paints depends on the column
    plain = _plain(model, image, geom, boxes)
    assert np.ptp(plain) > 1e-3
    for split in range(1, 8):
        for conv in HOWS:
            scorer = IncrementalScorer.from_model(model, geom, split=split, threads=1, conv=conv)
            assert len(scorer.plan) == split  # every layer planned (a layer it cannot plan would end the prefix)
            for batch in (7, 1):  # one window a batch: its region is the plan's, whatever the window changes
                got = scorer.score(image, boxes, batch=batch)
                np.testing.assert_allclose(got, plain, rtol=0, atol=TOL, err_msg=f"split {split}, conv {conv}")


def test_the_scorer_batches_boxes_and_refusals():
    model = oblong().model()
    scorer = IncrementalScorer.from_model(model, GEOM, split=2, threads=1)
    image, boxes = _image(GEOM.size), GEOM.window_boxes()[:5]
    counted = []
    got = scorer.score(image, boxes, batch=1, on_batch=counted.append)
    assert counted == [1] * 5 and got.dtype == np.float64
    np.testing.assert_allclose(scorer.score(image, boxes.astype(float).tolist()), got, rtol=0, atol=TOL)
    with pytest.raises(ValueError, match="^incremental scoring is planned for the geometry's window positions only$"):
        scorer.score(image, [[1, 0]])


def test_a_non_finite_output_is_refused():
    n = Net(seed=8)
    n.op("Sub", n.const(2.0)).op("Sqrt")  # the square root of negative pixels: NaN
    _conv(n, 2, 3, 3, pads=[1, 1, 1, 1])
    scorer = IncrementalScorer.from_model(n.model(), GEOM, split=1, threads=1)
    with pytest.raises(BadInput) as exc:
        scorer.score(_image(GEOM.size), GEOM.window_boxes()[:2])
    assert str(exc.value) == "model produced non-finite value(s) (NaN/Inf); the bundle is broken"
