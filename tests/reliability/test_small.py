"""The small ones of #21 (item 10). An error is one line that cannot drive the terminal: a newline or an escape in a
file name is written as an escape; a library's colour codes (torch's advice on a refused checkpoint) are dropped. A
dangling link at an output name is an existing output."""

from __future__ import annotations

from rlp.runtime.core.errors import BadInput, RlpError


def test_a_newline_in_a_file_name_stays_on_one_line():
    e = BadInput("not a NIfTI file", "scans/a\nb.nii.gz")
    assert str(e) == "scans/a\\nb.nii.gz: not a NIfTI file"


def test_terminal_codes_in_messages_and_names_are_not_passed_on():
    e = RlpError("Weights only load failed. \x1b[1mWeightsUnpickler error:\x1b[0m\n  Unsupported global\x07",
                 "ck\x1b.pt")
    text = str(e)
    assert "\x1b" not in text and "\n" not in text and "\x07" not in text
    assert text == "ck\\x1b.pt: Weights only load failed. WeightsUnpickler error: Unsupported global\\x07"


def test_ordinary_text_is_unchanged():
    assert str(BadInput("voxel size (1.0, 1.0) é ok",
                        "données/t1.nii.gz")) == "données/t1.nii.gz: voxel size (1.0, 1.0) é ok"


def test_a_dangling_link_at_an_output_name_is_not_replaced_without_force(tmp_path):
    import os

    from helpers.process import run_python
    from helpers.runtime import make_bundle, phantom, write_nifti
    from rlp.runtime.core.errors import EX_CANTCREAT

    b = make_bundle(tmp_path / "b")
    f = write_nifti(tmp_path / "s.nii.gz", phantom((40, 40)))
    out = tmp_path / "out"
    out.mkdir()
    (out / "s_heatmap.nii.gz").symlink_to(tmp_path / "nowhere")
    r = run_python(["-m", "rlp.runtime.cli", str(f), "--bundle", str(b), "--out", str(out), "--quiet"])
    assert r.returncode == EX_CANTCREAT and "exists; pass --force" in r.stderr
    assert os.readlink(out / "s_heatmap.nii.gz") == str(tmp_path / "nowhere")
    assert sorted(p.name for p in out.iterdir()) == ["s_heatmap.nii.gz"]
