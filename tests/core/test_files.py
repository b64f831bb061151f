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


def test_identities_recognise_a_file_under_another_name_a_symlink_and_a_hard_link(tmp_path):
    from rlp.runtime.core.files import identities, identity_index

    f = tmp_path / "in.nii"
    f.write_bytes(b"x")
    (tmp_path / "sym.nii").symlink_to(f)
    os.link(f, tmp_path / "hard.nii")
    (tmp_path / "other.nii").write_bytes(b"x")
    index = identity_index([str(f)])
    for name in ("sym.nii", "hard.nii", "sub/../in.nii"):
        (tmp_path / "sub").mkdir(exist_ok=True)
        assert identities(tmp_path / name) & index.keys(), name
    assert not identities(tmp_path / "other.nii") & index.keys()


def test_read_npz_returns_plain_arrays_and_refuses_pickles_damage_and_absent_arrays(tmp_path):
    from rlp.runtime.core.files import read_npz

    ok = tmp_path / "ok.npz"
    np.savez(ok, images=np.zeros((2, 3)), split=np.ones(2))
    got = read_npz(ok, ["images"], ["split", "brains"])
    assert sorted(got) == ["images", "split"] and got["images"].shape == (2, 3)
    with pytest.raises(BadInput, match=r"missing array\(s\) brains$"):
        read_npz(ok, ["images", "brains"])
    pickled = tmp_path / "p.npz"
    np.savez(pickled, images=np.array([{"a": 1}], dtype=object))
    with pytest.raises(BadInput, match="not a readable .npz of plain arrays"):
        read_npz(pickled, ["images"])
    bad = tmp_path / "bad.npz"
    bad.write_bytes(ok.read_bytes()[:40])
    with pytest.raises(BadInput) as exc:
        read_npz(bad, ["images"])
    assert str(exc.value).startswith(f"{bad}: not a readable .npz")
    with pytest.raises(InputMissing, match="held-out slices not found"):
        read_npz(tmp_path / "none.npz", ["images"], missing="held-out slices not found")


@pytest.mark.parametrize("text,problem", [("{", "not valid JSON"), ("[1]", "the config is not a JSON object"),
                                          (b"\xff", "not valid JSON")])
def test_read_json_object_names_the_file_and_the_problem(tmp_path, text, problem):
    from rlp.runtime.core.files import read_json_object

    p = tmp_path / "c.json"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(BadInput) as exc:
        read_json_object(p, "the config")
    assert str(exc.value).startswith(f"{p}: {problem}") and "\n" not in str(exc.value)
    p.write_text(json.dumps({"a": 1}))
    assert read_json_object(p) == {"a": 1}
