"""rlp-train as a new user meets it (#20): a run folder of other settings is not trained over, Ctrl-C and
SIGTERM leave a checkpoint to resume, the bar fits 80 columns, data of another size than the geometry is
refused, prepare says what it took and skipped; and export reads what each model reads from the
checkpoint (#19)."""

import io
import json
import os
import signal

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rlp.runtime.core import cliutil  # noqa: E402
from rlp.runtime.core import progress as progress_mod  # noqa: E402
from rlp.runtime.core.errors import EX_CANTCREAT, EX_DATAERR  # noqa: E402
from rlp.train.checkpoint import load_checkpoint  # noqa: E402
from rlp.train.cli import main  # noqa: E402
from rlp.train.config import resolve  # noqa: E402
from rlp.train.loop import train_gan  # noqa: E402

FAST = ["--gan-steps", "2", "--r-steps", "2", "--threads", "1", "--quiet"]


def _exit(argv) -> int:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code


def test_a_run_of_other_settings_is_refused_unless_forced(tmp_path, mni_tiny, capsys):
    run = tmp_path / "run"
    run.mkdir()
    other = json.dumps(resolve("demo", None, {}))
    (run / "config.json").write_text(other)  # a demo run whose first checkpoint was never written
    argv = ["all", "--preset", "tiny", "--data", str(mni_tiny), "--run", str(run), *FAST]
    assert _exit(argv) == EX_CANTCREAT
    err = capsys.readouterr().err
    assert "preset demo" in err and "--force" in err and "--resume" in err and err.strip().count("\n") == 0
    assert (run / "config.json").read_text() == other and not (run / "checkpoints").exists()
    assert _exit(argv + ["--force"]) == 0
    assert json.loads((run / "config.json").read_text())["preset"] == "tiny"
    assert load_checkpoint(run / "checkpoints" / "predictor_best.pt")["step"] == 2


def test_data_of_another_size_than_the_geometry_is_refused_before_training(tmp_path, mni_tiny, capsys):
    run = tmp_path / "run"
    assert _exit(["gan", "--preset", "demo", "--data", str(mni_tiny), "--run", str(run), *FAST]) == EX_DATAERR
    err = capsys.readouterr().err
    assert "32x32" in err and "128x128" in err and "--size 128" in err and not run.exists()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_saves_a_checkpoint_to_resume(tmp_path, mni_tiny, monkeypatch, sig):
    """Before the first validation (step 10 in tiny), Ctrl-C or SIGTERM at step 3 leaves gan_last.pt at a
    whole step, and --resume finishes the run from it."""
    previous = signal.signal(signal.SIGTERM, cliutil._terminate)  # what run_main installs
    calls = {"n": 0}
    real_step = torch.optim.Adam.step

    def step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 5:  # G's and D's steps: the 5th is D's step of the 3rd training step
            os.kill(os.getpid(), sig)
        return real_step(self, *a, **k)

    cfg = resolve("tiny", None, {"gan": {"steps": 6}, "run": {"threads": 1}})
    run = tmp_path / "run"
    try:
        with monkeypatch.context() as m:
            m.setattr(torch.optim.Adam, "step", step)
            with pytest.raises(KeyboardInterrupt):
                train_gan(cfg, str(mni_tiny), run, quiet=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
    st = load_checkpoint(run / "checkpoints" / "gan_last.pt")
    assert st["step"] == 3 and not (run / "checkpoints" / "gan_best.pt").exists()
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]  # atomic: no temp left
    res = train_gan(cfg, str(mni_tiny), run, resume=True, quiet=True)
    assert res["steps"] == 6 and load_checkpoint(run / "checkpoints" / "gan_best.pt")["step"] == 6


def test_the_training_bar_fits_80_columns(monkeypatch):
    from rich.console import Console

    buf = io.StringIO()
    monkeypatch.setattr(progress_mod, "Console", lambda stderr=True: Console(file=buf, width=80, force_terminal=True,
                                                                              color_system=None))
    with progress_mod.progress(False, extra="{task.fields[info]}") as bar:  # what a training stage shows
        task = bar.add_task("training predictor", total=20000, info="")
        bar.update(task, completed=1, info="loss_d=0.6931 nll_box=1.2345 loss_adv=0.6931 l1_box=0.1234")
        bar.refresh()
    frame = buf.getvalue().split("\r")[-1].replace("\x1b[2K", "").split("\n")[0]
    assert "training predictor" in frame and "1/20000" in frame and "0:00:00" in frame and "loss_d=0.6931" in frame
    assert len(frame) <= 80


def test_prepare_says_what_it_took_and_skipped_and_the_real_split(tmp_path, capsys):
    nib = pytest.importorskip("nibabel")
    from rlp.train.data import SliceData, mni152_path, prepare

    img = nib.load(str(mni152_path()))
    vol = np.asarray(img.dataobj, np.float32)
    src = tmp_path / "mixed"
    src.mkdir()
    nib.save(nib.Nifti1Image(vol, img.affine), src / "vol.nii.gz")
    for k, z in enumerate((80, 100)):
        nib.save(nib.Nifti1Image(vol[:, :, z], np.eye(4)), src / f"slice{k}.nii.gz")  # 2D
    nib.save(nib.Nifti1Image(vol[:, :, 95:96], img.affine), src / "one.nii.gz")  # XxYx1
    nib.save(nib.Nifti1Image((vol[:, :, 95:96] > 50).astype(np.uint8), img.affine), src / "one_truth.nii.gz")
    res = prepare(str(src), tmp_path / "x.h5", size=32)
    err = capsys.readouterr().err
    assert [s["file"] for s in res["skipped"]] == [str(src / "one_truth.nii.gz")]
    assert sorted(t["image"] for t in res["taken"] if t["slices_in_volume"] == 1) == [
        str(src / n) for n in ("one.nii.gz", "slice0.nii.gz", "slice1.nii.gz")]
    assert res["subjects"] == 4
    assert sum(res["split"].values()) == res["slices"] == len(SliceData(tmp_path / "x.h5").split)
    counts = "/".join(str(res["split"][s]) for s in ("train", "val", "test"))
    assert f"slices {counts}" in res["split_rule"] and "80/10/10;" not in res["split_rule"]
    assert "skipped 1 file(s)" in err and "one_truth" in err and "single slice" in err and counts in err


def test_export_reads_the_recorded_input_kind_and_infers_it_for_older_checkpoints(tiny_run):
    from rlp.export.run import BadInput, input_kind, load_run

    run = load_run(tiny_run)
    for key, want in (("g", "crop"), ("r", "crop")):
        m = run.models[key]
        assert m.state["input_kind"] == {m.role: want} and input_kind(m, run.geometry) == want
        m.state.pop("input_kind")  # a checkpoint from before it was recorded (runs/demo2): the legacy inference
        assert input_kind(m, run.geometry) == want
    r = run.models["r"]
    r.state["input_kind"] = {"r": "image"}  # a record that does not fit R's layers is refused
    with pytest.raises(BadInput, match="R reads 16x16 inputs"):
        input_kind(r, run.geometry)
