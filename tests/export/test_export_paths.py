"""ONNX exports do not depend on where the source tree lives (no absolute paths in the files' bytes)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import onnx
import torch

import rlp.export
from rlp.export.onnx_export import PATH_BEARING_KEYS, export_onnx, prepare_for_export, strip_source_paths
from rlp.train.models import UNetG

REPO = Path(rlp.export.__file__).resolve().parents[1]

MODULE = '''
import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x)).mean(dim=1, keepdim=True)
'''


def _export(model: torch.nn.Module, size: int = 16) -> bytes:
    prepared, _ = prepare_for_export(model)
    proto = export_onnx(prepared, torch.zeros(1, 1, size, size), "x", "y", 18)
    return proto.SerializeToString()


def _tiny_from(folder: Path) -> torch.nn.Module:
    """The same model class, its source file living in ``folder`` (a checkout at another path)."""
    folder.mkdir(parents=True)
    (folder / "tinymodel.py").write_text(MODULE)
    spec = importlib.util.spec_from_file_location("tinymodel", folder / "tinymodel.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["tinymodel"] = module
    try:
        spec.loader.exec_module(module)
        torch.manual_seed(0)
        return module.Tiny().eval()
    finally:
        del sys.modules["tinymodel"]


def test_same_source_at_two_paths_gives_identical_bytes(tmp_path):
    a = _export(_tiny_from(tmp_path / "checkout_a" / "src"))
    b = _export(_tiny_from(tmp_path / "elsewhere" / "checkout_b"))
    assert a == b
    assert b"checkout_a" not in a and str(tmp_path).encode() not in a


def test_rlp_model_export_names_no_path_and_is_repeatable():
    torch.manual_seed(1)
    g = UNetG(width=4, depth=2).eval()
    first, second = _export(g, 32), _export(g, 32)
    assert first == second
    for where in {str(REPO), str(REPO.parent), sys.prefix}:
        assert where.encode() not in first, where
    proto = onnx.load_from_string(first)
    node_keys = {p.key for n in proto.graph.node for p in n.metadata_props}
    assert not node_keys & PATH_BEARING_KEYS
    assert proto.producer_name == "pytorch"  # what carries meaning stays


def test_strip_keeps_other_metadata_and_reaches_subgraphs():
    inner = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["a"], ["b"])], "inner", [], [])
    inner.node[0].metadata_props.add(key="pkg.torch.onnx.stack_trace", value='File "/home/x/models.py"')
    node = onnx.helper.make_node("If", ["c"], ["d"], then_branch=inner, else_branch=inner)
    for key, value in (("pkg.torch.onnx.stack_trace", "File /abs/path.py"), ("namespace", "m.Tiny")):
        node.metadata_props.add(key=key, value=value)
    model = onnx.helper.make_model(onnx.helper.make_graph([node], "g", [], []))
    model.metadata_props.add(key="rlp.model", value="g")
    assert strip_source_paths(model) == 3
    assert [(p.key, p.value) for p in model.graph.node[0].metadata_props] == [("namespace", "m.Tiny")]
    assert b"/abs/path.py" not in model.SerializeToString() and b"/home/x" not in model.SerializeToString()
    assert [(p.key, p.value) for p in model.metadata_props] == [("rlp.model", "g")]

