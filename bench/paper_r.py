"""A bundle holding the paper's R (its exact layer table, 1,558,273 parameters, random weights) at 256/16/4:
a realistic model cost for speed measurements without a trained bundle (``python -m rlp.bench.heatmap_speed
--write-paper-r DIR``) and for the tests of exact incremental scoring at the paper's size. Its scores mean nothing."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from rlp.runtime.core.geometry import WindowGeometry


def paper_r_bundle(folder: str | Path, seed: int = 0) -> Path:
    """A bundle with the paper's R (random weights) at 256/16/4, whole-slice input. Needs the onnx package."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from rlp.runtime.core.manifest import Manifest, ModelEntry, TensorSpec, file_entry_fields
    from rlp.runtime.core.preprocess import Preprocessing

    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def conv(x, cin, cout, k, stride, pad, name):
        w = rng.normal(0, np.sqrt(2.0 / (cin * k * k)), (cout, cin, k, k)).astype(np.float32)
        inits.extend([numpy_helper.from_array(w, f"{name}.w"),
                      numpy_helper.from_array(np.zeros(cout, np.float32), f"{name}.b")])
        nodes.append(helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [name], kernel_shape=[k, k],
                                      strides=[stride, stride], pads=[pad] * 4))
        return name

    def op(kind, x, name, **kw):
        nodes.append(helper.make_node(kind, [x], [name], **kw))
        return name

    x = op("LeakyRelu", conv("image", 1, 64, 3, 2, 1, "conv1"), "act1", alpha=0.2)
    x = op("MaxPool", conv(x, 64, 128, 3, 2, 1, "conv3"), "pool4", kernel_shape=[2, 2], strides=[2, 2])
    x = op("LeakyRelu", x, "act5", alpha=0.2)
    for t, v in (("s", np.ones(128)), ("bb", np.zeros(128)), ("m", np.zeros(128)), ("v", np.ones(128))):
        inits.append(numpy_helper.from_array(v.astype(np.float32), f"bn6.{t}"))
    nodes.append(helper.make_node("BatchNormalization", [x, "bn6.s", "bn6.bb", "bn6.m", "bn6.v"], ["bn6"]))
    x = op("MaxPool", conv("bn6", 128, 256, 3, 2, 1, "conv7"), "pool8", kernel_shape=[2, 2], strides=[2, 2])
    x = op("LeakyRelu", x, "act9", alpha=0.2)
    x = op("MaxPool", conv(x, 256, 512, 3, 2, 1, "conv10"), "pool11", kernel_shape=[2, 2], strides=[2, 2])
    x = op("LeakyRelu", x, "act12", alpha=0.2)
    x = op("Sigmoid", conv(x, 512, 1, 4, 1, 1, "conv13"), "sig14")
    op("Flatten", x, "loss", axis=1)
    graph = helper.make_graph(nodes, "paper_r",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 256, 256])],
                              [helper.make_tensor_value_info("loss", TensorProto.FLOAT, ["batch", 1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="rlp-bench")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    n_params = sum(int(np.prod(t.dims)) for t in inits if not t.name.startswith("bn6.") or t.name[4:] in ("s", "bb"))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(folder / "r.onnx"))
    entry = ModelEntry(role="r", file="r.onnx", **file_entry_fields(folder / "r.onnx"),
                       inputs=[TensorSpec("image", ["batch", 1, 256, 256])], outputs=[TensorSpec("loss", ["batch", 1])],
                       opset=17, input_kind="image",
                       architecture={"name": "paper R, random weights", "params": n_params})
    man = Manifest(preprocessing=Preprocessing(size=256), geometry=WindowGeometry(256, 16, 4), models={"r": entry},
                   rlp_version="bench", created=time.strftime("%Y-%m-%dT%H:%M:%S"))
    (folder / "manifest.json").write_text(json.dumps(man.to_dict(), indent=2))
    return folder
