"""Layers import downward only (ARCHITECTURE.md): core <- runtime <- train <- export <- bench, and nothing in a cycle.

The static checks read every module's imports with ast (also those inside functions, which run later but run);
the last test runs the whole heatmap command where torch cannot be imported.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers.runtime import make_bundle, phantom, write_nifti

REPO = Path(__file__).resolve().parents[2]
PACKAGES = {"runtime": "rlp.runtime", "train": "rlp.train", "export": "rlp.export", "bench": "rlp.bench",
            "cohort": "rlp.cohort"}
CORE = "rlp.runtime.core"

#: layer (a module prefix; the longest that matches a module is its layer) -> module prefixes it must never import
FORBIDDEN = {
    CORE: ("rlp", "torch", "torchvision", "onnxruntime", "onnx", "h5py"),  # rlp: except core itself, see _forbidden
    "rlp.runtime": ("torch", "torchvision", "rlp.train", "rlp.export", "rlp.bench"),
    "rlp.train": ("rlp.export", "rlp.bench"),
    "rlp.export": ("rlp.bench",),
    "rlp.bench": (),
    "rlp.cohort": ("torch", "torchvision", "rlp.train", "rlp.export", "rlp.bench"),
}


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


def modules(root: Path = REPO, packages: dict[str, str] = PACKAGES) -> dict[str, Path]:
    """Every module of the packages: dotted name -> file (a package is its __init__.py)."""
    out = {}
    for folder, pkg in packages.items():
        for f in sorted((root / folder).rglob("*.py")):
            parts = list(f.relative_to(root / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join([pkg, *parts])] = f
    return out


def imports(name: str, path: Path) -> set[str]:
    """The absolute names of what module ``name`` imports anywhere in it (relative imports resolved; ``from X import
    y`` is ``X.y``, which :func:`edges` reduces to ``X`` where ``y`` is not a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            fn = node.func
            called = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.add(node.args[0].value)
    return found


def edges(mods: dict[str, Path]) -> dict[str, set[str]]:
    """The import graph among ``mods``: each module -> the modules of ``mods`` it imports."""
    return {m: {i for i in imports(m, f) if i in mods and i != m} for m, f in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on.add(start)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = set()
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.add(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(comp)
    return out


def layer(module: str) -> str:
    return max((p for p in FORBIDDEN if module == p or module.startswith(p + ".")), key=len)


def _forbidden(module: str, imported: str) -> bool:
    own = layer(module)
    if own == CORE and (imported == CORE or imported.startswith(CORE + ".")):
        return False
    return any(imported == m or imported.startswith(m + ".") for m in FORBIDDEN[own])


def test_every_layer_imports_only_downward():
    mods = modules()
    assert len(mods) >= 40 and sum(m.startswith(CORE + ".") for m in mods) >= 8
    bad = sorted(f"{m} imports {i}" for m, f in mods.items() for i in imports(m, f) if _forbidden(m, i))
    assert bad == []


def test_the_layer_rules_catch_an_upward_import():
    assert _forbidden("rlp.runtime.core.errors", "rlp.runtime.heatmap")
    assert _forbidden("rlp.runtime.core.errors", "rlp")
    assert not _forbidden("rlp.runtime.core.nifti", "rlp.runtime.core.atomic")
    assert _forbidden("rlp.runtime.heatmap", "torch.nn") and _forbidden("rlp.runtime.cli", "rlp.bench.cli")
    assert not _forbidden("rlp.runtime.cli", "rlp.runtime.core.errors")
    assert _forbidden("rlp.export.bundle", "rlp.bench.rows") and not _forbidden("rlp.export.run", "rlp.train.models")
    assert _forbidden("rlp.train.loop", "rlp.export.run") and not _forbidden("rlp.bench.rows", "rlp.export.run")


def test_nothing_imports_in_a_cycle():
    assert cycles(edges(modules())) == []


def test_the_cycle_check_finds_a_constructed_cycle(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..c import x\n")  # a lazy import closes it
    (pkg / "c.py").write_text("from rlp.x.a import y\nfrom . import d\n")
    (pkg / "d.py").write_text("import os\n")
    graph = edges(modules(tmp_path, {"pkg": "rlp.x"}))
    assert graph["rlp.x.a"] == {"rlp.x.sub", "rlp.x.sub.b"} and graph["rlp.x.c"] == {"rlp.x", "rlp.x.a", "rlp.x.d"}
    assert cycles(graph) == [{"rlp.x.a", "rlp.x.sub.b", "rlp.x.c"}]
    (pkg / "c.py").write_text("from . import d\n")
    assert cycles(edges(modules(tmp_path, {"pkg": "rlp.x"}))) == []


@pytest.mark.parametrize("module", ["rlp.runtime.core.errors", "rlp.runtime.core.manifest", "rlp.runtime.cli"])
def test_a_module_importing_itself_is_no_cycle_and_every_module_resolves(module):
    mods = modules()
    assert module in mods and module not in edges(mods)[module]


def _loaded_by(statement: str, which: str) -> list[str]:
    """The modules a fresh interpreter has loaded after ``statement``, of those where ``which`` (about ``m``) holds."""
    code = f"import sys, json; {statement}; print(json.dumps(sorted(m for m in sys.modules if {which})))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_importing_the_cohort_package_loads_neither_torch_nor_ray():
    """A cohort install needs no PyTorch; Ray is imported only by --ray."""
    loaded = _loaded_by("import rlp.cohort.cli, rlp.cohort.engines, rlp.cohort.report",
                        "m.split('.')[0] in ('torch', 'ray') or m.startswith(('rlp.train', 'rlp.export', 'rlp.bench'))")
    assert loaded == []  # ray too: only --ray imports it


def test_importing_core_loads_no_inference_library_and_the_package_names_stay_importable():
    """rlp.runtime's __init__ is lazy (PEP 562): a core contract (errors, manifest, the version) loads neither
    onnxruntime nor onnx nor the runtime's inference modules; the names it lists still import on first use."""
    loaded = _loaded_by("import rlp.runtime.core.errors, rlp.runtime.core.manifest; "
                        "from rlp.runtime import __version__",
                        "m.split('.')[0] in ('onnxruntime', 'onnx', 'torch') "
                        "or (m.startswith('rlp.runtime.') and not m.startswith('rlp.runtime.core'))")
    assert loaded == []
    import rlp.runtime

    assert all(getattr(rlp.runtime, name) is not None for name in rlp.runtime.__all__)
    with pytest.raises(AttributeError):
        rlp.runtime.no_such_name  # noqa: B018 (the attribute access is the test)


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
