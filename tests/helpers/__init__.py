"""Helpers shared by the tests of every layer, imported as ``helpers.<module>`` (tests/ is on the path through
tests/conftest.py): ``runtime`` (tiny torch-free bundles, NIfTI files, rlp-heatmap in-process), ``process``
(a command in a subprocess), ``runs`` (tiny run folders, needs torch), ``bad_inputs`` (the bad-input corpus),
``reliability`` (crash injection in children) and ``child_hooks`` (stop a child at a chosen point)."""

from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
