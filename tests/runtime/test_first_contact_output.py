"""First contact (#20), the output a person reads: what the figure's numbers are, the demo's stated weakness,
messages in the CLI's own words, and a 4D file's volume picked with --volume-index."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from helpers import REPO
from helpers.runtime import synthetic_volume, write_nifti
from rlp.runtime import cli, outputs
from rlp.runtime.demo_table import demo_table
from rlp.runtime.heatmap import default_bundle, demo_slices

AFF = np.diag([-1.2, 1.0, 2.0, 1.0])  # LAS, anisotropic


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    from helpers.runtime import make_bundle

    return make_bundle(tmp_path_factory.mktemp("bundle") / "b")


def _run(argv, capsys) -> tuple[int, str, str]:
    rc = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


# --------------------------------------------------------------------------- what the numbers are
def test_the_figure_says_which_number_is_the_top_window_and_which_the_voxel_mean(tmp_path, bundle, monkeypatch,
                                                                                   capsys):
    vol, _ = synthetic_volume((30, 34, 6))
    f = write_nifti(tmp_path / "v.nii.gz", vol, AFF)
    drawn = {}
    render = outputs.render

    def spy(panels, **kw):
        drawn.update(kw, panels=panels)
        return render(panels, **kw)

    monkeypatch.setattr(outputs, "render", spy)
    rc, _, err = _run([f, "--bundle", bundle, "--out", tmp_path / "o", "--quiet"], capsys)
    assert rc == 0, err
    summary = json.loads((tmp_path / "o" / "v_summary.json").read_text())
    heat = np.asarray(nib.load(tmp_path / "o" / "v_heatmap.nii.gz").dataobj)
    # the summary names both numbers: the top window's score, and the largest voxel of the heatmap NIfTI
    assert summary["max_score"] == summary["top_windows"][0]["score"]
    assert summary["heatmap_max"] == pytest.approx(float(heat.max()), rel=1e-6)
    assert 0 < summary["heatmap_max"] <= summary["max_score"]
    # the figure says which is which: titles give each slice's top window score, the colour bar the voxel mean
    per_slice = {s["slice"]: s["max_score"] for s in summary["per_slice"]}
    for p in drawn["panels"]:
        m = re.fullmatch(r"slice (\d+)  top window (\S+)", p.title)
        assert m and float(m.group(2)) == pytest.approx(per_slice[int(m.group(1))], rel=1e-2)
    assert "per voxel: the mean over the windows covering it" in drawn["label"]
    # a volume montage shows every slice's plain input beside its heatmap; radiological unless asked
    assert drawn["with_input"] is True and drawn["radiological"] is True
    assert all(p.axcodes == ("R", "A") for p in drawn["panels"])
    from rlp.runtime.overlay import panels_figure

    titles = [ax.get_title() for ax in panels_figure(drawn["panels"], with_input=True).axes if ax.get_title()]
    assert titles.count("input") == len(drawn["panels"]) == len(titles) // 2
    rc, _, err = _run([f, "--bundle", bundle, "--out", tmp_path / "n", "--quiet", "--neurological"], capsys)
    assert rc == 0 and drawn["radiological"] is False


# --------------------------------------------------------------------------- the demo's weakness, with its figures
def _card_rows() -> dict[str, list[str]]:
    card = (REPO / "runtime" / "demo" / "MODEL_CARD.md").read_text(encoding="utf-8")
    rows = {}
    for line in card.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells:
            rows.setdefault(cells[0], cells)
    return rows


def _weakness_figures() -> list[str]:
    """The phrases the demo's weakness must state, with the model card's measured figures."""
    rows = _card_rows()
    hits = lambda row: row[next(i for i, c in enumerate(row) if re.fullmatch(r"\d+/72.*", c))].split()[0]  # noqa: E731
    g_all, r_all = hits(rows["G"]), hits(rows["R (dense, default)"])
    bu, du = rows["bright uniform"], rows["dark uniform"]  # group, slices, G hits, G AUROC, G det, R hits, ...
    return [f"{r_all} against {g_all}", f"bright uniform {bu[5]} against {bu[2]}", f"R {du[5]}, G {du[2]}"]


@pytest.mark.skipif(default_bundle() is None, reason="this checkout ships no demo bundle")
def test_the_demo_states_its_measured_weakness_under_its_table_and_in_the_readme(tmp_path, capsys):
    must = _weakness_figures()
    assert must[0] == "55/72 against 59/72"  # the card's figures were read (not an empty match)
    inp = str(demo_slices()[0])
    rc, _, err = _run([inp, "--out", tmp_path, "--quiet"], capsys)
    assert rc == 0, err
    args = argparse.Namespace(path="r", out=str(tmp_path), inputs=[inp], done=[inp], bundle=None)
    demo_table(args)
    out = capsys.readouterr().out
    table_end = out.index("top window in the lesion")
    line = next(ln for ln in out[table_end:].splitlines()[1:] if ln.strip())
    assert all(m in line for m in must), line
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    demo = " ".join(readme[readme.index("**Demo**"): readme.index("**Tests**")].split())
    assert all(m in demo for m in must)
    args.bundle = str(default_bundle())  # another bundle's demo run: not this model's figures
    demo_table(args)
    assert must[0] not in capsys.readouterr().out


# --------------------------------------------------------------------------- messages in the CLI's words
def test_a_nonfinite_refusal_names_the_cli_flag(tmp_path, bundle, capsys):
    vol, _ = synthetic_volume((24, 24, 3), dtype=np.float32)
    vol[5, 5, 1] = np.nan
    f = write_nifti(tmp_path / "nan.nii.gz", vol)
    rc, _, err = _run([f, "--bundle", bundle, "--out", tmp_path / "o", "--quiet"], capsys)
    assert rc == 65 and "pass --nonfinite zero" in err and "nonfinite='zero'" not in err


def test_a_cifti_file_is_refused_as_cifti(tmp_path, bundle, capsys):
    from nibabel import cifti2

    brain = cifti2.BrainModelAxis.from_mask(np.ones((2, 3, 4), bool), affine=np.eye(4))
    img = cifti2.Cifti2Image(np.zeros((100, 24), np.float32),
                             cifti2.Cifti2Header.from_axes((cifti2.SeriesAxis(0, 0.72, 100), brain)))
    img.nifti_header.set_intent("ConnDenseSeries")
    f = tmp_path / "rest.dtseries.nii"
    nib.save(img, f)
    rc, _, err = _run([f, "--bundle", bundle, "--out", tmp_path / "o", "--quiet"], capsys)
    line, = err.strip().splitlines()
    assert rc == 65 and str(f) in line and "CIFTI" in line and "not supported" in line
    assert "volumes" not in line


# --------------------------------------------------------------------------- --volume-index
def test_volume_index_picks_one_volume_of_a_4d_file(tmp_path, bundle, capsys):
    vols = [synthetic_volume((28, 30, 4), seed=s)[0] for s in range(3)]
    vols[1][10:16, 12:18, :] = 3000  # only volume 1 has a bright block
    four = write_nifti(tmp_path / "f4.nii.gz", np.stack(vols, axis=-1), AFF)
    one = write_nifti(tmp_path / "v1.nii.gz", vols[1], AFF)
    rc, _, err = _run([four, "--bundle", bundle, "--out", tmp_path / "refused", "--quiet"], capsys)
    assert rc == 65 and "3 volumes" in err and "--volume-index" in err
    rc, _, err = _run([four, "--bundle", bundle, "--out", tmp_path / "o", "--quiet", "--volume-index", "1"], capsys)
    assert rc == 0, err
    rc, _, err = _run([one, "--bundle", bundle, "--out", tmp_path / "o", "--quiet"], capsys)
    assert rc == 0, err
    got, want = nib.load(tmp_path / "o" / "f4_heatmap.nii.gz"), nib.load(tmp_path / "o" / "v1_heatmap.nii.gz")
    assert got.shape == (28, 30, 4) and np.allclose(got.affine, nib.load(one).affine)
    np.testing.assert_array_equal(np.asarray(got.dataobj), np.asarray(want.dataobj))  # the same as volume 1 alone
    summary = json.loads((tmp_path / "o" / "f4_summary.json").read_text())
    assert summary["volume_index"] == 1 and summary["shape"] == [28, 30, 4]


def test_volume_index_out_of_range_is_one_line_naming_the_file_and_the_count(tmp_path, bundle, capsys):
    four = write_nifti(tmp_path / "f4.nii.gz", np.stack([synthetic_volume((20, 20, 3))[0]] * 3, axis=-1), AFF)
    rc, out, err = _run([four, "--bundle", bundle, "--out", tmp_path / "o", "--volume-index", "3"], capsys)
    line, = [ln for ln in err.splitlines() if "f4.nii.gz" in ln]
    assert rc == 65 and str(four) in line and "3 volume(s)" in line and "out of range" in line
    assert not (tmp_path / "o").exists()
