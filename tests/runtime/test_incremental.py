"""Exact incremental scoring (``rlp.runtime.incremental``): the same scores as plain scoring, general over the
local layers it knows (strides, padding variants, pools, dilation, groups), plain scoring with a note where it
cannot reason about a graph, usage errors for models it cannot serve, and no torch anywhere near it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from helpers.runtime import make_bundle, run_heatmap, write_nifti
from rlp.bench import report as rep
from rlp.bench.paper_r import paper_r_bundle
from rlp.bench.report_md import headline_lines
from rlp.runtime.core.errors import EX_USAGE, RlpError
from rlp.runtime.core.geometry import WindowGeometry
from rlp.runtime.heatmap import Bundle
from rlp.runtime.incremental import HOWS, IncrementalScorer, read_chain
from rlp.runtime.scorers import PlainScorer, score_windows

TOL = 1e-6  # the milestone's bar for fp32 outputs
GEOM = WindowGeometry(size=30, window=6, stride=4, fill=0.9)  # 7x7 windows, the last ones touch the border


# --------------------------------------------------------------------------- tiny graphs
class Net:
    """A random-weight graph (N, 1, S, S) -> (N, 1), built layer by layer with onnx.helper."""

    def __init__(self, size: int = GEOM.size, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.size, self.nodes, self.inits, self.x, self.c = size, [], [], "image", 1

    def const(self, value, dtype=np.float32) -> str:
        name = f"k{len(self.inits)}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def op(self, kind: str, *extra: str, **attrs) -> "Net":
        out = f"t{len(self.nodes)}"
        self.nodes.append(helper.make_node(kind, [self.x, *extra], [out], name=f"{kind.lower()}{len(self.nodes)}",
                                           **attrs))
        self.x = out
        return self

    def conv(self, cout: int, k: int, group: int = 1, **attrs) -> "Net":
        w = self.rng.normal(0, np.sqrt(2.0 / (self.c // group * k * k)), (cout, self.c // group, k, k))
        self.c = cout
        return self.op("Conv", self.const(w), self.const(self.rng.normal(0, 0.1, cout)), kernel_shape=[k, k],
                       group=group, **attrs)

    def channel(self, kind: str) -> "Net":
        return self.op(kind, self.const(self.rng.normal(1.0, 0.3, (self.c, 1, 1))))

    def model(self) -> onnx.ModelProto:
        """The layers so far, then a head that weighs every position differently (so it sees every change)."""
        body = self._model(self.nodes, self.x, None)
        shape = onnx.shape_inference.infer_shapes(body).graph.output[0].type.tensor_type.shape
        chw = [d.dim_value for d in shape.dim[1:]]
        w = self.rng.normal(0, 1.0 / np.sqrt(np.prod(chw)), [1, *chw])
        self.op("Mul", self.const(w)).op("ReduceSum", self.const([1, 2, 3], np.int64)).op("Flatten", axis=1)
        self.nodes[-1].output[0] = "loss"
        return self._model(self.nodes, "loss", ["batch", 1])

    def _model(self, nodes, out: str, out_shape) -> onnx.ModelProto:
        graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                               ["batch", 1, self.size, self.size])],
                                  [helper.make_tensor_value_info(out, TensorProto.FLOAT, out_shape)], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        return model


def strided() -> Net:
    """Input normalisation (elementwise only), stride-2 conv, dilated conv, padded max-pool, per-channel ops."""
    n = Net(seed=1)
    n.op("Sub", n.const(0.25)).op("Div", n.const(0.5))
    n.conv(4, 3, strides=[2, 2], pads=[1, 1, 1, 1]).op("Relu")
    n.conv(6, 3, dilations=[2, 2], pads=[2, 2, 2, 2]).op("LeakyRelu", alpha=0.2)
    n.op("MaxPool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]).channel("Add")
    return n.conv(4, 1).channel("PRelu")


def same_ceil(size: int = GEOM.size) -> Net:
    """SAME_UPPER/SAME_LOWER, a ceil-mode max-pool on an odd map, BatchNorm, grouped conv with uneven pads,
    an average-pool that counts its padding, Clip."""
    n = Net(size, seed=2)
    n.conv(4, 4, strides=[2, 2], auto_pad="SAME_UPPER").op("Sigmoid")
    n.op("MaxPool", kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)
    bn = [n.const(n.rng.normal(1, 0.2, 4)), n.const(n.rng.normal(0, 0.2, 4)), n.const(n.rng.normal(0, 0.2, 4)),
          n.const(n.rng.uniform(0.5, 1.5, 4))]
    n.op("BatchNormalization", *bn)
    n.conv(4, 3, group=2, pads=[0, 1, 2, 1]).op("Tanh")
    n.op("AveragePool", kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1)
    n.conv(5, 3, strides=[2, 2], auto_pad="SAME_LOWER")
    return n.op("Clip", n.const(-0.5), n.const(0.5))


def padded() -> Net:
    """Explicit constant Pad layers (one with a non-zero value, one alone), a valid conv, a dilated max-pool."""
    n = Net(seed=3)
    n.op("Pad", n.const([0, 0, 1, 2, 0, 0, 2, 1], np.int64), n.const(0.5))
    n.conv(3, 3, strides=[2, 2]).op("Elu")
    n.op("Pad", n.const([0, 0, 1, 1, 0, 0, 1, 1], np.int64))
    n.op("MaxPool", kernel_shape=[2, 2], dilations=[2, 2]).channel("Mul")
    return n.conv(4, 3, strides=[2, 2], pads=[1, 1, 1, 1])


NETS = {"strided": (strided, 5, GEOM), "same_ceil": (same_ceil, 5, GEOM), "padded": (padded, 5, GEOM),
        # an odd size, and a last window position off the stride (0, 4, ..., 24, 25)
        "same_ceil_odd": (lambda: same_ceil(31), 5, WindowGeometry(size=31, window=6, stride=4, fill=-0.3))}


def _image(size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.uniform(0, 1, (size, size)).astype(np.float32)
    img[: size // 5] = 0.0  # some background, as in a slice
    return img


def _plain(model: onnx.ModelProto, image: np.ndarray, geom: WindowGeometry, boxes) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return score_windows(image, geom, boxes, lambda x: sess.run(None, {name: x})[0], batch=16)


@pytest.mark.parametrize("kind", sorted(NETS))
def test_tiny_graphs_equal_plain_scoring_at_every_split(kind):
    build, n_stages, geom = NETS[kind]
    model = build().model()
    onnx.checker.check_model(model, full_check=True)
    stages, why = read_chain(model)
    assert len(stages) == n_stages, why
    assert "varies over the image" in why  # the head's position weights end the chain
    image, boxes = _image(geom.size), geom.window_boxes()
    plain = _plain(model, image, geom, boxes)
    assert np.ptp(plain) > 1e-3  # the boxes do change the output
    for split in [None, *range(1, n_stages + 1)]:
        for conv in (None, *HOWS):  # the estimate's choice, then each way for every convolution
            scorer = IncrementalScorer.from_model(model, geom, split=split, threads=1, conv=conv)
            if split is None and not scorer.plan:  # the estimate may find a graph this small not worth it
                assert "would not save work" in scorer.note
                continue
            assert scorer.plan and not scorer.note
            assert split is None or len(scorer.plan) == split
            if conv is not None:  # grouped convolutions always run on crops
                convs = [p for p in scorer.plan if p.stage.op == "Conv"]
                groups = [{a.name: a.i for a in p.stage.nodes[0].attribute}.get("group", 1) for p in convs]
                assert [p.how for p in convs] == [conv if g == 1 else "crops" for g in groups]
            got = scorer.score(image, boxes, batch=13)  # a batch that divides no window count
            np.testing.assert_allclose(got, plain, rtol=0, atol=TOL, err_msg=f"{kind}, split {split}, conv {conv}")
    first = IncrementalScorer.from_model(model, geom, split=n_stages).plan
    conv = next(p for p in first if p.stage.op == "Conv")
    assert conv.region[0] < conv.out_shape[1]  # really incremental: a part of the map is recomputed


def test_tissue_paint_equals_plain_scoring_at_every_split():
    """Painting only the box's tissue pixels (background inside the box stays 0) is still exact."""
    build, n_stages, _ = NETS["strided"]
    geom = WindowGeometry(size=GEOM.size, window=GEOM.window, stride=GEOM.stride, fill=-1.0, paint="tissue")
    model = build().model()
    image, boxes = _image(geom.size), geom.window_boxes()
    plain = _plain(model, image, geom, boxes)
    box_painted = _plain(model, image, GEOM, boxes)
    assert not np.allclose(plain, box_painted)  # the painting matters to these windows
    for split in [None, *range(1, n_stages + 1)]:
        for conv in (None, *HOWS):
            scorer = IncrementalScorer.from_model(model, geom, split=split, threads=1, conv=conv)
            if split is None and not scorer.plan:
                continue
            got = scorer.score(image, boxes, batch=13)
            np.testing.assert_allclose(got, plain, rtol=0, atol=TOL, err_msg=f"split {split}, conv {conv}")


def test_a_batch_where_no_output_of_a_region_changes_keeps_the_kept_outputs():
    """Both matrix-product ways, when a batch changes none of a region's outputs, return the kept map there."""
    geom = GEOM
    image = _image(geom.size)
    for how in ("gemm", "delta"):
        scorer = IncrementalScorer.from_model(strided().model(), geom, split=2, threads=1, conv=how)
        p, sess = scorer.plan[1], scorer._stages[1]
        assert p.how == how
        kept, pre = scorer.kept(image)
        (ih, iw), (rh, rw) = p.in_region, p.region
        patch = np.ones((ih, 1, iw, p.in_shape[0]), np.float32)
        zero, none = np.array([0]), [(np.array([1]), np.array([0]))] * 2  # empty ranges: nothing changed
        args = (p, sess, kept[1]) + ((pre[1],) if how == "delta" else ()) + (patch, zero, zero, zero, zero)
        args += (none, none) if how == "delta" else (none,)
        got = (scorer._delta if how == "delta" else scorer._recompute)(*args, kept[2], (0, 0))
        np.testing.assert_array_equal(got, kept[2].map[:rh, None, :rw])


def test_unsupported_first_layer_is_scored_plainly_with_a_note():
    n = Net(seed=4)
    n.inits.append(numpy_helper.from_array(n.rng.normal(0, 0.3, (1, 2, 3, 3)).astype(np.float32), "wt"))
    n.op("ConvTranspose", "wt", strides=[1, 1], pads=[1, 1, 1, 1]).op("Relu")
    n.c = 2
    n.conv(3, 3, strides=[2, 2], pads=[1, 1, 1, 1])
    model = n.model()
    image, boxes = _image(GEOM.size, 1), GEOM.window_boxes()
    with pytest.raises(ValueError, match="no plain scorer to fall back on"):
        IncrementalScorer.from_model(model, GEOM).score(image, boxes)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    plain = PlainScorer(lambda x: sess.run(None, {"image": x})[0], GEOM, "image", batch=16)
    scorer = IncrementalScorer.from_model(model, GEOM, fallback=plain)
    assert not scorer.plan and "ConvTranspose" in scorer.note and "plainly" in scorer.note
    got = scorer.score(image, boxes)
    np.testing.assert_array_equal(got, _plain(model, image, GEOM, boxes))
    assert scorer.describe() == {"incremental": False, "note": scorer.note}


def test_forcing_no_split_scores_plainly():
    scorer = IncrementalScorer.from_model(strided().model(), GEOM, split=0)
    assert not scorer.plan and "would not save work" in scorer.note


# --------------------------------------------------------------------------- the paper's R, through a bundle
@pytest.fixture(scope="module")
def paper_r(tmp_path_factory):
    return paper_r_bundle(tmp_path_factory.mktemp("paper_r") / "b")


def _small_tissue_slice(size: int = 256) -> np.ndarray:
    """Tissue in one small corner patch only: few windows are evaluated, one of them at the border."""
    img = np.zeros((size, size), np.float32)
    rng = np.random.default_rng(5)
    img[236:, 3:14] = rng.uniform(50, 150, (20, 11))
    return img


def test_paper_r_equals_plain_scoring(paper_r):
    with Bundle.load(paper_r, backend="ort-cpu", threads=2) as bundle:
        scorer = bundle.scorer("r", "incremental")
        stages = scorer.describe()["stages"]
        regions = [(s["region"], s["of"]) for s in stages[:3]]
        assert regions == [([9, 9], [128, 128]), ([5, 5], [64, 64]), ([3, 3], [32, 32])]  # as in MEASURED.md
        # after the first pool a box changes 2 or 3 rows (columns) of the 3 recomputed, on average 2.44: the
        # estimate has the wide convolutions recompute only those, and only their taps over changed inputs
        conv7 = next(s for s in stages if s["layer"] == "conv7")
        assert conv7["region"] == [3, 3] and conv7["changed"] == [2.44, 2.44] and conv7["as"] == "delta"
        assert scorer.costs[len(scorer.plan)] < 0.05 * scorer.costs[0]
        geom = bundle.manifest.geometry
        image = _image(256, 2)
        last = geom.size - geom.window
        boxes = np.array([[0, 0], [0, last], [last, 0], [last, last], [120, 64], [4, 252 - 16], [last, 128]])
        backend = bundle.backend("r")
        plain = score_windows(image, geom, boxes, backend.run, batch=4)
        np.testing.assert_allclose(scorer.score(image, boxes, batch=3), plain, rtol=0, atol=TOL)

        plain_map = bundle.heatmap_slice(_small_tissue_slice())
        inc_map = bundle.heatmap_slice(_small_tissue_slice(), method="incremental")
        assert 0 < inc_map.n_evaluated == plain_map.n_evaluated < 60
        np.testing.assert_array_equal(inc_map.evaluated, plain_map.evaluated)
        np.testing.assert_allclose(inc_map.window_map, plain_map.window_map, rtol=0, atol=TOL)
        assert inc_map.timings["model_s"] > 0


# --------------------------------------------------------------------------- bundles, CLI, usage errors
def _image_kind_bundle(root: Path, model: onnx.ModelProto) -> Path:
    return make_bundle(root, size=GEOM.size, window=GEOM.window, stride=GEOM.stride, fill=GEOM.fill, g=None, r=None,
                       models={"r": model}, r_input_kind="image")


def test_unsupported_graph_in_a_bundle_runs_plainly_and_says_so(tmp_path):
    n = Net(seed=6)
    n.op("Resize", "", n.const([1, 1, 1, 1]), mode="nearest")
    b = _image_kind_bundle(tmp_path / "b", n.conv(2, 3, pads=[1, 1, 1, 1]).model())
    img = _image(GEOM.size, 3)
    with Bundle.load(b, backend="ort-cpu") as bundle:
        inc = bundle.heatmap_slice(img, method="incremental", all_windows=True)
        assert any("Resize" in note for note in bundle.backend("r").notes)
        np.testing.assert_array_equal(inc.window_map, bundle.heatmap_slice(img, all_windows=True).window_map)


def test_usage_errors(tmp_path):
    crop = make_bundle(tmp_path / "crop", size=32, window=8, stride=4, context=16)
    with Bundle.load(crop, backend="ort-cpu") as bundle:
        for path, method, words in (("r", "incremental", "reads 'crop'"), ("g", "incremental", "is G"),
                                    ("r", "fast", "method must be one of plain, incremental")):
            with pytest.raises(RlpError) as err:
                bundle.heatmap_slice(np.ones((32, 32), np.float32), head=path, method=method)
            assert err.value.code == EX_USAGE and words in str(err.value)


def test_cli_incremental_matches_plain_and_refuses_other_models(tmp_path, capsys):
    b = _image_kind_bundle(tmp_path / "b", strided().model())
    nii = write_nifti(tmp_path / "s.nii.gz", _image(GEOM.size, 4)[:, :, None])
    maps = {}
    for method in ("plain", "incremental"):
        out = tmp_path / method
        code, _, err = run_heatmap(capsys, nii, "--bundle", b, "--out", out, "--method", method, "--backend", "ort-cpu",
                               "--save-window-map", "--quiet")
        assert code == 0, err
        maps[method] = np.load(out / "s_windows.npy")
        assert json.loads((out / "s_summary.json").read_text())["method"] == method
    assert maps["plain"].any()
    np.testing.assert_allclose(maps["incremental"], maps["plain"], rtol=0, atol=TOL)
    crop = make_bundle(tmp_path / "crop", size=32, window=8, stride=4, context=16)
    code, _, err = run_heatmap(capsys, nii, "--bundle", crop, "--out", tmp_path / "o3", "--method", "incremental")
    assert code == EX_USAGE and len(err.strip().splitlines()) == 1 and "input_kind image" in err


# --------------------------------------------------------------------------- bench report, layering
def test_bench_equality_check_against_the_plain_row():
    maps = {"p": [{"window": np.full((3, 3), 0.5), "evaluated": np.ones((3, 3), bool)}],
            "i": [{"window": np.full((3, 3), 0.5 + 2e-7), "evaluated": np.ones((3, 3), bool)}],
            "bad": [{"window": np.full((3, 3), 0.6), "evaluated": np.ones((3, 3), bool)}]}
    row = {"status": "ok", "path": "r", "backend": "ort-cpu"}
    rows = [{**row, "name": "R · ort-cpu", "method": "plain", "latency": {"median_s": 2.0}, "id": "p"},
            {**row, "name": "R incremental · ort-cpu", "method": "incremental", "latency": {"median_s": 0.5},
             "id": "i"},
            {**row, "name": "R incremental · ort-cpu", "method": "incremental", "latency": {"median_s": 0.5},
             "id": "bad"}]
    rep.add_equality(rows, lambda r: maps[r["id"]])
    good, bad = rows[1]["equality"], rows[2]["equality"]
    assert good["equal"] and good["reference_row"] == "R · ort-cpu" and good["speedup_vs_reference"] == 4.0
    assert abs(good["max_abs_diff"] - 2e-7) < 1e-12
    assert not bad["equal"] and abs(bad["max_abs_diff"] - 0.1) < 1e-12
    lines = headline_lines({"rows": rows, "summary": None})
    assert any("maps equal to R · ort-cpu's within 1e-06 (max |diff| 2e-07, 1 slice); speed-up over it 4.00x" in x
               for x in lines)
    assert any("NOT equal" in x for x in lines)


def test_bench_runs_an_incremental_row_beside_the_plain_one(tmp_path):
    from rlp.bench import cli as bench_cli

    b = _image_kind_bundle(tmp_path / "b", strided().model())
    nii = write_nifti(tmp_path / "s.nii.gz", _image(GEOM.size, 8)[:, :, None])
    out = tmp_path / "bench"
    assert bench_cli.main(["--bundle", str(b), "--inputs", str(nii), "--paths", "r", "--backends", "ort-cpu",
                           "--quick", "--runs", "1", "--out", str(out), "--quiet"]) == 0
    rows = {r["name"]: r for r in json.loads((out / "report.json").read_text())["rows"]}
    assert set(rows) == {"R · ort-cpu", "R incremental · ort-cpu"}
    inc = rows["R incremental · ort-cpu"]
    assert inc["method"] == "incremental" and inc["incremental"]["incremental"] and rows["R · ort-cpu"].get(
        "equality") is None
    eq = inc["equality"]
    assert eq["equal"] and eq["same_windows"] and eq["max_abs_diff"] <= TOL and eq["reference_row"] == "R · ort-cpu"
    assert "| R incremental · ort-cpu | R · ort-cpu | 1 |" in (out / "report.md").read_text()


BLOCK_TORCH = """
import json, sys
from importlib.abc import MetaPathFinder
class NoTorch(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, NoTorch())
import numpy as np, onnx
from rlp.runtime.core.geometry import WindowGeometry
from rlp.runtime.incremental import IncrementalScorer
geom = WindowGeometry(**__GEOM__)
scorer = IncrementalScorer.from_model(onnx.load(sys.argv[1]), geom)
image = np.load(sys.argv[2])
print(json.dumps(scorer.score(image, geom.window_boxes()).tolist()))
assert not [m for m in sys.modules if m.split(".")[0] == "torch"]
"""


def test_incremental_runs_without_torch(tmp_path):
    model = strided().model()
    onnx.save_model(model, str(tmp_path / "m.onnx"))
    image = _image(GEOM.size, 7)
    np.save(tmp_path / "x.npy", image)
    code = BLOCK_TORCH.replace("__GEOM__", repr({k: getattr(GEOM, k) for k in ("size", "window", "stride", "fill")}))
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.onnx"), str(tmp_path / "x.npy")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = np.asarray(json.loads(out.stdout))
    np.testing.assert_allclose(got, _plain(model, image, GEOM, GEOM.window_boxes()), rtol=0, atol=TOL)
