"""Manifests are untrusted: size and nesting are limited before parsing, and every malformed one is a
one-line refusal (#21, item 7)."""

from __future__ import annotations

import json

import pytest

from helpers.runtime import make_bundle
from rlp.runtime.core import manifest as manifest_mod
from rlp.runtime.core.errors import BadInput, SecurityRefusal
from rlp.runtime.core.manifest import json_depth, load_bundle_manifest


def test_json_depth_counts_brackets_outside_strings():
    assert json_depth('{"a": [1, {"b": 2}]}') == 3
    assert json_depth('{"a": "[[[{{{\\"]]"}') == 1
    assert json_depth("[]") == 1 and json_depth('"x"') == 0


def test_a_deeply_nested_manifest_is_refused_before_parsing(tmp_path):
    b = make_bundle(tmp_path / "b")
    m = json.loads((b / "manifest.json").read_text())
    deep = "[" * 100_000 + "]" * 100_000  # json.loads would raise RecursionError
    text = json.dumps(m)[:-1] + ', "padding": ' + deep + "}"
    (b / "manifest.json").write_text(text)
    with pytest.raises(BadInput, match=r"nests 100001 levels deep"):
        load_bundle_manifest(b)


def test_an_oversized_manifest_is_refused_before_it_is_read(tmp_path, monkeypatch):
    b = make_bundle(tmp_path / "b")
    size = (b / "manifest.json").stat().st_size
    monkeypatch.setattr(manifest_mod, "MAX_MANIFEST_BYTES", size - 1)
    read = []
    monkeypatch.setattr(type(b), "read_text", lambda self, *a, **k: read.append(self) or "")
    with pytest.raises(BadInput, match=f"manifest is {size} bytes"):
        load_bundle_manifest(b)
    assert read == []


def test_a_nul_byte_in_a_model_path_is_refused_in_one_line(tmp_path):
    b = make_bundle(tmp_path / "b")
    m = json.loads((b / "manifest.json").read_text())
    m["models"]["r"]["file"] = "r\x00.onnx"
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(SecurityRefusal, match="NUL byte") as exc:
        load_bundle_manifest(b)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("loss", [True, [], "z", {"kind": 3}])
def test_a_loss_that_is_not_an_object_with_a_string_kind_is_malformed(tmp_path, loss):
    b = make_bundle(tmp_path / "b")
    m = json.loads((b / "manifest.json").read_text())
    m["loss"] = loss
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BadInput, match="malformed manifest"):
        load_bundle_manifest(b)
