"""Core's shared writing and reading helpers: several outputs all or nothing (atomic.write_set), file identity and
safe JSON/npz reading (files)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from rlp.runtime.core.atomic import write_set
from rlp.runtime.core.errors import EX_CANTCREAT, BadInput, CannotCreate, InputMissing


def _outputs(d):
    return {"a": d / "x_a.json", "b": d / "x_b.npy", "c": d / "x_c.txt"}


def test_write_set_writes_every_output_in_place(tmp_path):
    outs = _outputs(tmp_path)
    write_set(outs, {"a": lambda p: p.write_text("{}"), "b": lambda p: p.write_bytes(b"b"),
                     "c": lambda p: p.write_text("c")}, lock=tmp_path / ".x.lock")
    assert {p.name: p.read_bytes() for p in outs.values()} == {"x_a.json": b"{}", "x_b.npy": b"b", "x_c.txt": b"c"}
    assert sorted(os.listdir(tmp_path)) == ["x_a.json", "x_b.npy", "x_c.txt"]  # no temporary file, no lock left


def test_write_set_leaves_nothing_when_one_writer_fails(tmp_path):
    def fail(p):
        p.write_text("half")
        raise RuntimeError("writer failed")

    with pytest.raises(RuntimeError):
        write_set(_outputs(tmp_path), {"a": lambda p: p.write_text("{}"), "b": fail, "c": lambda p: p.write_text("c")})
    assert os.listdir(tmp_path) == []


def test_write_set_without_force_names_an_existing_output_and_touches_nothing(tmp_path):
    outs = _outputs(tmp_path)
    outs["b"].write_bytes(b"old")
    with pytest.raises(CannotCreate) as exc:
        write_set(outs, {k: (lambda p: p.write_text("new")) for k in outs}, owner="in.nii.gz")
    assert exc.value.code == EX_CANTCREAT
    assert str(exc.value) == f"in.nii.gz: output {outs['b']} exists; pass --force to overwrite"
    assert os.listdir(tmp_path) == ["x_b.npy"] and outs["b"].read_bytes() == b"old"
    write_set(outs, {k: (lambda p: p.write_text("new")) for k in outs}, force=True)
    assert {p.read_text() for p in outs.values()} == {"new"}
