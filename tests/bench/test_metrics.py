import numpy as np
import pytest

from rlp.bench.lesions import insert_lesion
from rlp.bench.metrics import auprc, auroc, best_dice, fidelity, top_window_hit
from rlp.runtime.core.geometry import WindowGeometry


@pytest.mark.parametrize("seed", range(5))
def test_auroc_and_ap_match_scikit_learn(seed):
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    y = rng.random(500) < 0.1
    s = np.round(rng.random(500) + y * 0.5, 1)  # many ties
    assert auroc(s, y) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert auprc(s, y) == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)


def test_best_dice_of_a_perfect_and_a_useless_map():
    y = np.zeros((20, 20), bool)
    y[5:9, 5:9] = True
    assert best_dice(y.astype(float), y) == 1.0
    assert best_dice(np.ones((20, 20)), y) == pytest.approx(2 * 16 / (400 + 16))


def test_fidelity_sees_through_a_constant_predictor():
    rng = np.random.default_rng(0)
    g = rng.gamma(2, 0.01, (61, 61))
    const = np.full_like(g, np.median(g))
    f = fidelity(const, g)
    assert f["spearman"] == 0.0 and f["top5_iou"] < 0.2
    good = fidelity(g * 1.1, g)
    assert good["spearman"] == pytest.approx(1.0) and good["top5_iou"] == 1.0 and good["argmax_distance_windows"] == 0


def test_lesion_is_inside_the_brain_and_changes_the_image():
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:128, :128]
    brain = (yy - 64) ** 2 / 50**2 + (xx - 64) ** 2 / 40**2 < 1
    img = np.where(brain, 0.5 + 0.1 * np.sin(xx / 5), 0).astype(np.float32)
    for kind in ("hyper", "hypo"):
        les = insert_lesion(img, brain, rng, radius=6, kind=kind)
        assert les.mask.any() and not (les.mask & ~brain).any()
        delta = (les.image - img)[les.mask].mean()
        assert delta > 0.1 if kind == "hyper" else delta < -0.1
        assert np.array_equal(les.image[~brain], img[~brain])


def test_top_window_hit():
    g = WindowGeometry(size=32, window=4, stride=4)
    les = np.zeros((32, 32), bool)
    les[10:12, 10:12] = True
    wm = np.zeros(g.grid_shape)
    wm[2, 2] = 1  # window at (8, 8) covers (10, 10)
    assert top_window_hit(wm, g.window_boxes(), g.window, les)
    wm[2, 2], wm[0, 0] = 0, 1
    assert not top_window_hit(wm, g.window_boxes(), g.window, les)
