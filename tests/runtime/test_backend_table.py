"""The backend table (rlp.runtime.backends.table): one home for the backends' facts, a registry that adds backends
without subclassing the Bundle, one builder of onnxruntime session options, one home for the ``_fp16`` rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers.runtime import make_bundle, phantom, run_heatmap
from rlp.runtime import backends
from rlp.runtime.backends import (
    AUTO_ORDER,
    BACKENDS,
    GPU_BACKENDS,
    TABLE,
    Backend,
    BackendInfo,
    backend_info,
    create_backend,
    markdown_table,
    ort_session_options,
    register_backend,
)
from rlp.runtime.core.errors import EX_USAGE, RlpError
from rlp.runtime.core.manifest import model_head, model_key
from rlp.runtime.heatmap import Bundle

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_lists_the_backends_of_the_table():
    assert markdown_table() in README.read_text(encoding="utf-8")


def test_the_table_is_where_the_facts_come_from():
    assert BACKENDS == ("ort-cpu", "ort-cuda", "ort-trt", "trt")
    assert AUTO_ORDER == ("trt", "ort-cuda", "ort-cpu")  # ort-trt builds engines for minutes: never automatic
    assert GPU_BACKENDS == {"ort-cuda", "ort-trt", "trt"}
    assert [b.name for b in TABLE if b.incremental] == ["ort-cpu", "ort-cuda"]
    assert all(b.install.startswith("pip install") for b in TABLE)


def test_list_backends_prints_the_table_and_exits(capsys):
    code, out, err = run_heatmap(capsys, "--list-backends")
    assert code == 0 and not err
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["name", "GPU", "auto", "incremental"]
    rows = {line.split()[0]: line.split() for line in lines[1:1 + len(TABLE)]}
    assert set(rows) == set(BACKENDS)
    assert rows["ort-cpu"][1:5] == ["no", "3", "yes", "yes"]  # onnxruntime (CPU) is installed in the test env
    assert rows["ort-trt"][2] == "-" and "pip install 'rlp[gpu]'" in " ".join(rows["trt"])


class _Doubling(Backend):
    """A backend that is no ONNX runtime at all: it runs the model as twice onnxruntime's answer."""

    name = "double"

    def __init__(self, model, inner):
        super().__init__(model)
        self.inner = inner

    def _run_impl(self, x):
        return 2 * self.inner.run(x)


def test_a_registered_backend_runs_a_bundle_without_subclassing_it(tmp_path):
    root = make_bundle(tmp_path / "b", r_input_kind="image")
    info = BackendInfo("double", "onnxruntime, doubled", gpu=False, auto=None, incremental=False, fp16_models=False,
                       ci=True, install="nothing")
    made = []

    def factory(model, *, threads, engines, max_batch):
        made.append(model.key)
        return _Doubling(model, create_backend("ort-cpu", model, threads=threads))

    register_backend(info, factory)
    image = phantom((32, 32), seed=3)
    with Bundle.load(root, backend="ort-cpu") as plain, Bundle.load(root, backend="double") as doubled:
        want, got = plain.heatmap_slice(image), doubled.heatmap_slice(image)
        assert doubled.backend("r").name == "double" and made == ["r"]
        assert backend_info("double") is info
        np.testing.assert_allclose(got.window_map, 2 * want.window_map, rtol=1e-6)
        with pytest.raises(RlpError, match="runs on onnxruntime, not on double: pass --backend ort-cpu or ort-cuda"):
            doubled.scorer("r", "incremental")
    with pytest.raises(ValueError, match="built-in"):
        register_backend(BackendInfo("ort-cpu", "x", False, None, False, False, False, "x"), factory)
    with pytest.raises(RlpError) as err:
        backend_info("no-such-backend")
    assert err.value.code == EX_USAGE and "unknown backend 'no-such-backend'" in str(err.value)


def _spinning(so) -> str | None:
    try:
        return so.get_session_config_entry("session.intra_op.allow_spinning")
    except RuntimeError:  # not set: onnxruntime's default, pools spin
        return None


def test_one_builder_of_onnxruntime_session_options():
    so = ort_session_options(3)
    assert so.intra_op_num_threads == 3 and so.inter_op_num_threads == 1 and so.log_severity_level == 3
    assert so.enable_cpu_mem_arena and so.enable_mem_pattern and _spinning(so) is None
    lean = ort_session_options(spinning=False, arenas=False)
    assert lean.intra_op_num_threads == 0  # one thread per physical core
    assert not lean.enable_cpu_mem_arena and not lean.enable_mem_pattern and _spinning(lean) == "0"
    assert backends.ort_session_options is ort_session_options


def test_the_fp16_naming_rule_has_one_home():
    assert model_key("r") == "r" and model_key("r-wide", "fp16") == "r-wide_fp16" and model_key("g", "fp32") == "g"
    assert all(model_head(model_key(p, q)) == p for p in ("g", "r", "r-wide") for q in ("fp32", "fp16"))
