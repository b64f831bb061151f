"""Inputs as folders, quoted globs and CSV/TSV tables (rlp.runtime.inputs), and rlp-heatmap's --out-layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers.runtime import make_bundle, phantom, run_heatmap, write_nifti
from rlp.runtime.core.errors import BadInput, InputMissing
from rlp.runtime.inputs import list_inputs, output_folders


@pytest.fixture
def scans(tmp_path):
    """scans/a/t1.nii.gz, scans/b/t1.nii.gz (one name, two folders), scans/c.nii, and masks/outputs beside them."""
    for rel, seed in (("a/t1.nii.gz", 1), ("b/t1.nii.gz", 2), ("c.nii", 3)):
        (tmp_path / "scans" / rel).parent.mkdir(parents=True, exist_ok=True)
        write_nifti(tmp_path / "scans" / rel, phantom((30, 28), seed=seed))
    for rel in ("a/t1_lesion.nii.gz", "a/t1_brainmask.nii.gz", "c_heatmap.nii.gz"):
        write_nifti(tmp_path / "scans" / rel, np.zeros((30, 28), np.float32))
    (tmp_path / "scans" / "notes.txt").write_text("not an image")
    return tmp_path / "scans"


def test_folders_and_globs_list_the_images_only(scans):
    want = [str(scans / "a" / "t1.nii.gz"), str(scans / "b" / "t1.nii.gz"), str(scans / "c.nii")]
    assert [i.path for i in list_inputs([scans])] == want
    assert [i.path for i in list_inputs([f"{scans}/**/*.nii*"])] == want
    assert [i.path for i in list_inputs([f"{scans}/*/t1.nii.gz", scans / "a"])] == want[:2]  # each file once
    assert [i.path for i in list_inputs([scans], recursive=False)] == want[2:]
    with pytest.raises(InputMissing, match="no NIfTI files"):
        list_inputs([f"{scans}/*.mgz"])
    (scans / "empty").mkdir()
    with pytest.raises(BadInput, match="it is a directory.* no NIfTI files"):
        list_inputs([scans / "empty"])
    assert [i.path for i in list_inputs(["missing.nii.gz"])] == ["missing.nii.gz"]  # the command's error, per input


def test_a_table_gives_paths_from_its_folder_and_keeps_the_other_columns(scans, tmp_path):
    (scans / "list.tsv").write_text("subject\tImage\tage\ns1\ta/t1.nii.gz\t70\ns2\t/abs/x.nii.gz\t\n\n")
    got = list_inputs([scans / "list.tsv"])
    assert [(i.path, i.meta) for i in got] == [(str(scans / "a" / "t1.nii.gz"), {"subject": "s1", "age": "70"}),
                                               ("/abs/x.nii.gz", {"subject": "s2", "age": ""})]
    (tmp_path / "bad.csv").write_text("path,age\na.nii,1\nb.nii,2,3\n")
    with pytest.raises(BadInput, match="line 3 has 3 fields, the header has 2"):
        list_inputs([tmp_path / "bad.csv"])
    (tmp_path / "empty.csv").write_text("path,age\n,1\n")
    with pytest.raises(BadInput, match="line 2 has an empty 'path'"):
        list_inputs([tmp_path / "empty.csv"])
    (tmp_path / "latin.csv").write_bytes(b"path\n\xe9.nii\n")
    with pytest.raises(BadInput, match="not a UTF-8"):
        list_inputs([tmp_path / "latin.csv"])


def test_mirror_keeps_each_inputs_folder_and_auto_uses_it_only_for_clashing_names(scans):
    a, b, c = str(scans / "a" / "t1.nii.gz"), str(scans / "b" / "t1.nii.gz"), str(scans / "c.nii")
    assert output_folders([a, b, c], "mirror") == {a: Path("a"), b: Path("b"), c: Path()}
    assert output_folders([a, b, c], "auto") == output_folders([a, b, c], "mirror")
    assert output_folders([a, c], "auto") == {a: Path(), c: Path()}


def test_rlp_heatmap_takes_a_folder_and_gives_one_name_in_two_folders_two_outputs(scans, tmp_path, capsys):
    bundle = make_bundle(tmp_path / "bundle")
    out = tmp_path / "out"
    code, _, err = run_heatmap(capsys, scans, "--bundle", bundle, "--out", out, "--path", "g", "--quiet")
    assert code == 0, err
    made = sorted(str(p.relative_to(out)) for p in out.rglob("*_summary.json"))
    assert made == ["a/t1_summary.json", "b/t1_summary.json", "c_summary.json"]
    code, _, err = run_heatmap(capsys, f"{scans}/*/t1.nii.gz", "--bundle", bundle, "--out", tmp_path / "flat",
                           "--out-layout", "flat", "--quiet")
    assert code == 73 and "same name 't1'" in err and len(list((tmp_path / "flat").rglob("*_summary.json"))) == 1
