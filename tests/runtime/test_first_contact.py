"""First contact (#20): the help and the hints say what is true and work as printed."""

from __future__ import annotations

import shlex

import numpy as np
import pytest

from helpers.process import run_python
from helpers.runtime import write_nifti


def test_heatmap_help_says_the_demo_bundle_is_the_default():
    r = run_python(["-m", "rlp.runtime.cli", "--help"])
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    assert "default: the embedded demo bundle" in text and "no embedded demo bundle" not in text


def test_the_export_hint_for_a_g_only_bundle_works_as_printed(tiny_run, tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "g only"
    r = run_python(["-m", "rlp.export.cli", str(tiny_run), "--out", str(out), "--models", "g"])
    assert r.returncode == 0, r.stderr
    hint = next(line for line in r.stderr.splitlines() if line.startswith("next: "))
    argv = shlex.split(hint[len("next: "):])
    assert argv[0] == "rlp-heatmap" and "--path" in argv and argv[argv.index("--path") + 1] == "g"
    with np.load(tiny_run / "heldout.npz") as z:
        image = z["images"][0]
    f = write_nifti(tmp_path / "s.nii.gz", (image * 1000).astype(np.int16)[:, :, None])
    argv = [str(f) if a == "SLICE.nii.gz" else a for a in argv[1:]]
    done = run_python(["-m", "rlp.runtime.cli", *argv, "--out", str(tmp_path / "o"), "--quiet"])
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "o" / "s_heatmap.nii.gz").is_file()


def test_no_empty_output_folder_is_left_when_every_input_fails(tmp_path):
    from helpers.runtime import make_bundle

    b = make_bundle(tmp_path / "b")
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a nifti")
    out = tmp_path / "new" / "out"
    r = run_python(["-m", "rlp.runtime.cli", str(bad), "--bundle", str(b), "--out", str(out)])
    assert r.returncode != 0 and not (tmp_path / "new").exists()
    existing = tmp_path / "mine"
    existing.mkdir()
    r = run_python(["-m", "rlp.runtime.cli", str(bad), "--bundle", str(b), "--out", str(existing)])
    assert r.returncode != 0 and existing.is_dir()  # a folder the user made stays


@pytest.mark.parametrize("module, blocked, argv", [
    ("rlp.train.cli", "h5py", ["prepare", "mni152", "--out", "x.h5"]),
    ("rlp.train.cli", "torch", ["gan", "--preset", "tiny", "--data", "x.h5", "--run", "r"]),
    ("rlp.export.cli", "torch", ["run", "--out", "b"]),
])
def test_a_lighter_install_gets_one_line_naming_the_extra(tmp_path, module, blocked, argv):
    code = (f"import sys; sys.modules[{blocked!r}] = None\n"  # as on the heatmap-only install ('.[cpu]')
            f"from {module} import main\nsys.exit(main({argv!r}))")
    r = run_python(["-c", code], cwd=tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 70 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"needs the Python package {blocked!r}" in lines[0] and "pip install" in lines[0]
    assert not any(tmp_path.iterdir())


def test_rerunning_the_demo_shows_no_table_of_an_earlier_run(tmp_path):
    first = run_python(["-m", "rlp.runtime.cli", "--quiet"], cwd=tmp_path)
    assert first.returncode == 0 and "top window in the lesion" in first.stdout
    again = run_python(["-m", "rlp.runtime.cli", "--quiet"], cwd=tmp_path)  # every output exists: nothing computed
    assert again.returncode == 73 and "exists; pass --force" in again.stderr
    assert "top window in the lesion" not in again.stdout and "rlp demo" not in again.stdout


def test_training_piped_to_a_log_prints_progress_lines(tmp_path, mni_tiny):
    pytest.importorskip("torch")
    r = run_python(["-m", "rlp.train.cli", "gan", "--preset", "tiny", "--data", str(mni_tiny), "--run",
                    str(tmp_path / "r"),
                 "--gan-steps", "12", "--threads", "1"], env={"RLP_PROGRESS_INTERVAL": "0"})
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("training gan: ")]
    assert len(lines) >= 10 and "12/12 (100%)" in lines[-1] and "l1_box=" in lines[-1]
    quiet = run_python(["-m", "rlp.train.cli", "gan", "--preset", "tiny", "--data", str(mni_tiny), "--run",
                     str(tmp_path / "q"), "--gan-steps", "12", "--threads", "1", "--quiet"],
                    env={"RLP_PROGRESS_INTERVAL": "0"})
    assert quiet.returncode == 0 and "training gan" not in quiet.stderr
