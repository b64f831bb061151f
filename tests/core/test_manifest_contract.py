"""The manifest's model keys and tensor shapes: one function each, used by the exporter and the runtime alike."""

from __future__ import annotations

import pytest

from rlp.runtime.core.manifest import PRECISION_SUFFIX, model_head, model_key, model_shapes


@pytest.mark.parametrize("path", ["g", "r", "r-big"])
@pytest.mark.parametrize("precision", sorted(PRECISION_SUFFIX))
def test_a_model_key_names_its_path_back(path, precision):
    key = model_key(path, precision)
    assert model_head(key) == path
    assert key == (path if precision == "fp32" else f"{path}_fp16")


@pytest.mark.parametrize("role,kind,channels,out", [("g", "image", 1, (1, 48, 48)), ("g", "image", 2, (2, 48, 48)),
                                                   ("r", "crop", 1, (1,)), ("r", "image", 2, (1,)),
                                                   ("r", "dense", 1, (1, 5, 7))])
def test_model_shapes_by_role_and_input_kind(role, kind, channels, out):
    assert model_shapes(role, kind, 48, (5, 7), channels) == ((1, 48, 48), out)


def test_the_runtime_checks_a_bundle_against_model_shapes(tmp_path, monkeypatch):
    """The reader's expectation is model_shapes (not a second computation): change it and a good bundle is refused."""
    import rlp.runtime.heatmap
    from helpers.runtime import make_bundle
    from rlp.runtime.core.errors import BadInput
    from rlp.runtime.heatmap import Bundle

    root = make_bundle(tmp_path / "b")
    Bundle.load(root).checked_model("r")
    monkeypatch.setattr(rlp.runtime.heatmap, "model_shapes", lambda role, kind, side, grid,
                        ch=1: ((1, side, side), (3,)))
    with pytest.raises(BadInput, match=r"model 'r' output .* does not fit the geometry \(expected \[batch,3\]\)"):
        Bundle.load(root).checked_model("r")
