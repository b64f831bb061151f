"""rlp.runtime never imports torch, not even indirectly (DESIGN.md: layers import downward only)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runtime_helpers import make_bundle, phantom, write_nifti

RUNTIME = Path(__file__).resolve().parents[1] / "runtime"
COHORT = Path(__file__).resolve().parents[1] / "cohort"
FORBIDDEN = ("torch", "torchvision", "rlp.train", "rlp.export", "rlp.bench")

# Installed as sitecustomize: any attempt to import torch fails (and is recorded), like an install without it.
BLOCKER = '''
import atexit, json, os, sys
from importlib.abc import MetaPathFinder

ATTEMPTS = []

class NoTorch(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            ATTEMPTS.append(name)
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the layering test)")
        return None

sys.meta_path.insert(0, NoTorch())

@atexit.register
def _report():
    with open(os.environ["RLP_LAYERING_REPORT"], "w") as fh:
        json.dump({"attempts": ATTEMPTS, "modules": sorted(m for m in sys.modules if m.split(".")[0] == "torch"),
                   "rlp": sorted(m for m in sys.modules if m.startswith("rlp."))}, fh)
'''


def _imports(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                yield node.args[0].value


@pytest.mark.parametrize("package, at_least", [(RUNTIME, 10), (COHORT, 4)], ids=["runtime", "cohort"])
def test_no_module_imports_torch_or_an_upper_layer(package, at_least):
    """rlp.runtime, and rlp.cohort above it, import neither torch nor train, export or bench."""
    files = sorted(package.rglob("*.py"))
    assert len(files) >= at_least
    for f in files:
        for name in _imports(ast.parse(f.read_text(), str(f))):
            assert not any(name == m or name.startswith(m + ".") for m in FORBIDDEN), f"{f.name} imports {name}"


def test_importing_the_cohort_package_loads_neither_torch_nor_ray():
    """A cohort install needs no PyTorch; Ray is imported only by --ray."""
    code = ("import sys, rlp.cohort.cli, rlp.cohort.engines, rlp.cohort.report; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'ray') or m.startswith(('rlp.train', "
            "'rlp.export', 'rlp.bench'))))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr  # ray too: only --ray imports it


def test_the_whole_command_runs_where_torch_cannot_be_imported(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    bundle = make_bundle(tmp_path / "bundle")
    vol = write_nifti(tmp_path / "vol.nii.gz", phantom((30, 28, 4)), np.diag([1.0, 1.0, 2.5, 1.0]))
    report = tmp_path / "report.json"
    env = {**os.environ, "PYTHONPATH": str(site), "RLP_LAYERING_REPORT": str(report)}
    script = Path(sys.executable).with_name("rlp-heatmap")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "rlp.runtime.cli"]
    proc = subprocess.run([*cmd, str(vol), "--bundle", str(bundle), "--out", str(tmp_path / "out"),
                           "--path", "g", "--save-window-map", "--json"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["ok"] is True
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "vol_heatmap.nii.gz", "vol_overlay.png", "vol_summary.json", "vol_windows.npy"]
    seen = json.loads(report.read_text())
    assert seen["attempts"] == [] and seen["modules"] == []
    assert "rlp.runtime.cli" in seen["rlp"] and not any(m.startswith(("rlp.train", "rlp.export")) for m in seen["rlp"])
