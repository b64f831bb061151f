"""The linter (ruff, configured in pyproject.toml's [tool.ruff]) finds nothing in the repository.

CI runs the README's test command only, so the lint runs here: a finding fails the suite with ruff's own
report (file, line, rule). ``ruff check --fix`` fixes most; the rest by hand."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO


def _ruff() -> list[str]:
    """How to run ruff here: the one installed beside this Python (``pip install -e .[dev]``), else one on PATH."""
    beside = Path(sys.executable).parent / "ruff"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("ruff")
    if found is None:
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    return [found]


def lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*_ruff(), "check", "--no-cache", "--output-format", "concise", "."], cwd=root,
                          capture_output=True, text=True, timeout=120)


def test_ruff_finds_nothing():
    r = lint(REPO)
    assert r.returncode == 0, f"ruff check found problems (fix: ruff check --fix, then by hand):\n{r.stdout}{r.stderr}"


def test_the_lint_reads_the_projects_config_and_reports_a_finding(tmp_path):
    """The check can fail: with the project's config, an unused import and a 121-character line are found."""
    (tmp_path / "pyproject.toml").write_text((REPO / "pyproject.toml").read_text())
    (tmp_path / "bad.py").write_text("import os\n\nX = '" + "x" * 115 + "'\n")
    (tmp_path / "ok.py").write_text("X = '" + "x" * 114 + "'\n")  # 120 characters: allowed
    r = lint(tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "bad.py:1:8: F401" in r.stdout and "bad.py:3:121: E501" in r.stdout and "ok.py" not in r.stdout
