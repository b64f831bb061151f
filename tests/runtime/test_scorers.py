"""One window-scorer interface (rlp.runtime.scorers): plain, incremental and coarse-to-fine scorers implement it,
are built by the Bundle from explicit parts (never from the Bundle itself). (No import cycle:
tests/project/test_layering.py.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from test_incremental import GEOM, _image, strided

from helpers.runtime import make_bundle, phantom, r_model
from rlp.runtime.backends import ort_sessions
from rlp.runtime.coarse import CoarseScorer, CoarseToFine
from rlp.runtime.core.geometry import WindowGeometry
from rlp.runtime.heatmap import Bundle
from rlp.runtime.incremental import IncrementalScorer
from rlp.runtime.results import box_hits
from rlp.runtime.scorers import PlainScorer, WindowScorer, score_windows

RUNTIME = Path(__file__).resolve().parents[2] / "runtime"


def test_the_bundle_builds_every_scorer_and_they_agree(tmp_path):
    root = make_bundle(tmp_path / "b", size=GEOM.size, window=GEOM.window, stride=GEOM.stride, fill=GEOM.fill,
                       g=None, r=None, models={"r": strided().model()}, r_input_kind="image")
    image = _image(GEOM.size, 2)
    ev = np.ones(GEOM.grid_shape, bool)
    ev[0, :3] = False
    boxes = GEOM.window_boxes()[ev.ravel()]
    with Bundle.load(root, backend="ort-cpu", threads=1) as bundle:
        plain, inc = bundle.scorer("r"), bundle.scorer("r", "incremental")
        coarse = bundle.scorer("r", "coarse-to-fine", CoarseToFine(factor=2, refine=1.0))
        assert isinstance(plain, PlainScorer) and isinstance(inc, IncrementalScorer) and inc.plan
        assert isinstance(coarse, CoarseScorer) and coarse.approximate and not plain.approximate
        assert all(isinstance(s, WindowScorer) for s in (plain, inc, coarse))
        assert bundle.scorer("r") is plain and bundle.scorer("r", "incremental") is inc  # built once
        want = plain.score(image, boxes)
        np.testing.assert_allclose(inc.score(image, boxes), want, rtol=0, atol=1e-6)
        wm, scored = coarse.score_grid(image, ev)
        np.testing.assert_array_equal(scored, ev)  # refine 1.0: every window scored exactly
        np.testing.assert_array_equal(wm[ev], want)
        np.testing.assert_array_equal(coarse.score(image, boxes), want)
        n = len(plain.latencies)
        plain.score(image, boxes[:5])
        assert len(plain.latencies) == n + 1 and plain.latencies is bundle.backend("r").latencies
        with pytest.raises(ValueError, match="window positions only"):
            coarse.score(image, boxes[:2] + 1)


def test_the_incremental_scorer_takes_its_sessions_from_the_factory_it_is_given():
    made = []
    cpu = ort_sessions("ort-cpu", "fp32", 1)

    def sessions(data: bytes):
        made.append(len(data))
        return cpu(data)

    model = strided().model()
    scorer = IncrementalScorer.from_model(model, GEOM, sessions=sessions, split=2)
    assert scorer.plan and len(made) >= 4  # the probe, the kept activations, the stages, the rest
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    image, boxes = _image(GEOM.size, 5), GEOM.window_boxes()
    want = score_windows(image, GEOM.for_input("image"), boxes, lambda x: sess.run(None, {"image": x})[0])
    np.testing.assert_allclose(scorer.score(image, boxes), want, rtol=0, atol=1e-6)


def test_a_plain_scorer_is_the_pure_function_on_its_model_geometry(tmp_path):
    geom = WindowGeometry(size=32, window=8, stride=4, context=16)
    sess = ort.InferenceSession(r_model(16).SerializeToString(), providers=["CPUExecutionProvider"])
    predict = lambda x: sess.run(None, {"image": x})[0]  # noqa: E731
    image = phantom((32, 32), seed=1).astype(np.float32)
    boxes = geom.window_boxes()
    scorer = PlainScorer(predict, geom, "crop", batch=5)
    np.testing.assert_array_equal(scorer.score(image, boxes), score_windows(image, geom, boxes, predict, batch=5))
    assert scorer.describe() == {"method": "plain"}


def test_one_name_for_a_window_box_holding_a_lesion():
    from rlp.bench import quality as report

    lesion = np.zeros((10, 10), bool)
    lesion[5, 5] = True
    assert report.box_hits is box_hits
    assert box_hits((4.5, 4.5, 5.5, 5.5), lesion) and not box_hits((0.0, 0.0, 4.4, 4.4), lesion)
