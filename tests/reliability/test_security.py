"""Security regressions (RELIABILITY.md, "How to test it" 5, and "Library versions with known holes").

Extends the bundle tests (tests/runtime/test_bundle.py: hashes, ``..``, absolute,
symlinked and hard-linked model and external-data files, custom domains) and the
checkpoint tests (tests/train/test_train.py, tests/export/test_export.py: pickled code) with the
paths those leave out: ``--resume`` from a pickled-code checkpoint, a pickled
held-out ``.npz``, an external-data folder behind a symlink, a custom operator
hidden in a subgraph, and source-level guards on every loader call.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import numpy as np
import pytest
from onnx import helper

from helpers.runtime import custom_domain_model, make_bundle, phantom, r_model, replace_model, run_heatmap, write_nifti
from rlp.runtime.core.errors import EX_DATAERR, EX_NOPERM

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("runtime", "train", "export", "bench")


class _CreatesFile:
    """Unpickling this creates ``path`` (the side effect that must never happen)."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_resume_from_a_pickled_code_checkpoint_is_refused_without_side_effect(tmp_path, capsys, mni_tiny):
    torch = pytest.importorskip("torch")
    from rlp.train.cli import main

    marker = tmp_path / "pwned"
    last = tmp_path / "run" / "checkpoints" / "gan_last.pt"
    last.parent.mkdir(parents=True)
    torch.save({"format": "rlp.ckpt", "version": 1, "x": _CreatesFile(marker)}, last)
    with pytest.raises(SystemExit) as exc:
        main(["gan", "--preset", "tiny", "--data", str(mni_tiny), "--run", str(tmp_path / "run"), "--resume",
              "--quiet"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == EX_NOPERM and err.count("\n") == 0 and "Traceback" not in err
    assert err.startswith(f"rlp-train: {last}: refused") and not marker.exists()


def test_a_pickled_heldout_npz_is_refused_without_side_effect(tmp_path, capsys):
    pytest.importorskip("torch")
    from helpers.runs import make_run, tiny_r
    from rlp.export.cli import main

    marker = tmp_path / "pwned"
    run = make_run(tmp_path / "run", r=tiny_r(), n_slices=1)
    images = np.empty(1, dtype=object)
    images[0] = _CreatesFile(marker)
    np.savez(run / "heldout.npz", images=images, brains=np.ones((1, 32, 32), bool))
    assert main([str(run), "--out", str(tmp_path / "b"), "--quiet"]) == EX_DATAERR
    err = capsys.readouterr().err
    assert f"{run / 'heldout.npz'}: not a readable .npz of plain arrays" in err and err.count("\n") == 1
    assert not marker.exists() and not (tmp_path / "b").exists()


def test_external_data_in_a_symlinked_folder_is_refused(capsys, tmp_path):
    from helpers.runtime import assert_refused, external_bundle

    bundle = make_bundle(tmp_path / "bundle")
    (tmp_path / "elsewhere").mkdir()
    (bundle / "weights").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    external_bundle(bundle, "weights/g.bin")  # listed in the manifest, with the right hash
    assert_refused(capsys, write_nifti(tmp_path / "in.nii.gz", phantom((30, 30))), bundle, EX_NOPERM, "symbolic link",
             "--path", "g")


def test_a_custom_operator_hidden_in_a_subgraph_is_refused(capsys, tmp_path):
    bundle = make_bundle(tmp_path / "bundle")
    evil = custom_domain_model(32)
    proto = r_model(32)
    cond = helper.make_tensor("cond", 9, [], [True])  # BOOL
    branch = helper.make_graph(list(evil.graph.node), "then", [], list(evil.graph.output))
    plain = helper.make_graph(list(proto.graph.node), "else", [], list(proto.graph.output))
    proto.graph.ClearField("node")
    proto.graph.node.extend([helper.make_node("Constant", [], ["c"], value=cond),
                             helper.make_node("If", ["c"], ["loss"], then_branch=branch, else_branch=plain)])
    proto.opset_import.extend(evil.opset_import[1:])
    replace_model(bundle, "r", proto)
    code, _, err = run_heatmap(capsys, write_nifti(tmp_path / "in.nii.gz", phantom((30, 30))), "--bundle", bundle,
                           "--out", tmp_path / "out", "--quiet")
    assert code == EX_NOPERM and "com.example.evil::Evil" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# --------------------------------------------------------------------------- source-level guards
def _calls(name: str):
    """(file, line, call) of every call to ``*.name(...)`` or ``name(...)`` in the product packages."""
    for pkg in PACKAGES:
        for f in sorted((REPO / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(f.read_text(), str(f))):
                if isinstance(node, ast.Call):
                    fn = node.func
                    called = fn.attr if isinstance(fn, ast.Attribute) else fn.id if isinstance(fn, ast.Name) else None
                    if called == name:
                        yield f"{f.relative_to(REPO)}:{node.lineno}", node


def _keyword(node: ast.Call, key: str):
    kw = {k.arg: k.value for k in node.keywords}
    return kw[key].value if isinstance(kw.get(key), ast.Constant) else None


def test_every_torch_load_is_weights_only_and_every_np_load_refuses_pickles():
    torch_loads = [(where, _keyword(n, "weights_only")) for where, n in _calls("load")
                   if isinstance(n.func, ast.Attribute) and getattr(n.func.value, "id", None) == "torch"]
    np_loads = [(where, _keyword(n, "allow_pickle")) for where, n in _calls("load")
                if isinstance(n.func, ast.Attribute) and getattr(n.func.value, "id", None) == "np"]
    assert torch_loads and all(v is True for _, v in torch_loads), torch_loads
    assert np_loads and all(v is False for _, v in np_loads), np_loads
    for risky in ("loads", "Unpickler"):  # pickle.loads, pickle.Unpickler: never
        assert not [w for w, n in _calls(risky) if getattr(getattr(n.func, "value", None), "id", "") == "pickle"]


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("+")[0].split(".")[:2])


def test_installed_libraries_have_the_known_holes_fixed():
    """torch >= 2.6 (CVE-2025-32434: weights_only could still run code), onnx >= 1.21 (external-data paths)."""
    import onnx

    assert _version(onnx.__version__) >= (1, 21), onnx.__version__
    if os.environ.get("RLP_NO_TORCH") is None:
        torch = pytest.importorskip("torch")
        assert _version(torch.__version__) >= (2, 6), torch.__version__
