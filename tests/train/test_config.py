"""rlp-train's settings (#19, #20): every bad value is one line and the usage exit code, never a traceback;
no preset is an error asking for one; the CLI's choices are the constants the config checks against."""

import json

import pytest

pytest.importorskip("torch")

from rlp.runtime.core.errors import EX_USAGE  # noqa: E402
from rlp.runtime.core.kinds import PredictorKind  # noqa: E402
from rlp.train.cli import _parser, main  # noqa: E402
from rlp.train.config import DEFAULTS, TrainConfig, resolve, resolve_config  # noqa: E402


def _train(tmp_path, capsys, *flags):
    """rlp-train gan in-process: (exit code, stderr). An uncaught exception (a traceback) fails the test."""
    with pytest.raises(SystemExit) as exc:
        main(["gan", "--data", str(tmp_path / "none.h5"), "--run", str(tmp_path / "run"), *flags])
    err = capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    return exc.value.code, err


@pytest.mark.parametrize("flags, words", [
    (["--window", "0"], "--window"),
    (["--window", "-3"], "--window"),
    (["--stride", "0"], "--stride"),
    (["--context", "abc"], "--context"),
    (["--context", "5"], "context"),  # tiny's window is 4: a context of 5 cannot centre it
    (["--gan-batch", "0"], "--gan-batch"),
    (["--r-lr", "-1"], "--r-lr"),
    (["--target-corrupt", "-0.5"], "--target-corrupt"),
    (["--variant", "Bad!"], "--variant"),
])
def test_a_bad_flag_value_is_one_line_and_the_usage_code(tmp_path, capsys, flags, words):
    code, err = _train(tmp_path, capsys, "--preset", "tiny", *flags)
    assert code == EX_USAGE and err.startswith("rlp-train: ") and words in err
    assert err.strip().count("\n") == 0 and "Traceback" not in err


@pytest.mark.parametrize("toml, words", [
    ('[geometry]\nwindow = "big"\n', "geometry.window (--window) must be an integer"),
    ("[gan]\nwidht = 8\n", "unknown setting gan.widht"),
    ("[gann]\nwidth = 8\n", "unknown section 'gann'"),
    ("[gan]\nsteps = 2.5\n", "gan.steps (--gan-steps) must be an integer"),
    ("[run]\ndeterministic = 1\n", "run.deterministic (--deterministic) must be true or false"),
    ("[augment]\nrotate_deg = -5\n", "augment.rotate_deg must be at least 0"),
    ("[augment]\nrotate = 5\n", "unknown setting augment.rotate"),
    ('[predictor]\nkind = "big"\n', "predictor.kind (--predictor) must be one of dense, crop, paper"),
])
def test_a_bad_config_file_value_names_the_file(tmp_path, capsys, toml, words):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(toml)
    code, err = _train(tmp_path, capsys, "--preset", "tiny", "--config", str(cfg))
    assert code == EX_USAGE and err.startswith(f"rlp-train: {cfg}: ") and words in err, err
    assert err.strip().count("\n") == 0


def test_no_preset_is_an_error_asking_for_one(tmp_path, capsys):
    code, err = _train(tmp_path, capsys, "--gan-steps", "1")
    assert code == EX_USAGE and "--preset demo|paper|tiny" in err and "--config" in err


def test_the_cli_choices_are_the_checked_constants():
    sub = _parser()._subparsers._group_actions[0].choices["gan"]
    choices = {a.dest: a.choices for a in sub._actions if a.choices}
    assert tuple(choices["predictor"]) == PredictorKind.values() == ("dense", "crop", "paper")
    for value in PredictorKind.values():
        assert resolve_config("tiny", None, {"predictor": {"kind": value}}).predictor.kind is PredictorKind(value)


def test_the_typed_config_writes_the_same_json_as_before(tmp_path):
    """config.json and the checkpoints' config stay plain JSON (strings, not enums), so that older runs resume."""
    cfg = resolve("demo", None, {"predictor": {"kind": "crop"}})
    assert json.loads(json.dumps(cfg)) == cfg and cfg["predictor"]["kind"] == "crop"
    assert type(cfg["predictor"]["kind"]) is str
    assert TrainConfig.from_dict(cfg).to_dict() == cfg
    assert list(DEFAULTS) == ["run", "geometry", "augment", "gan", "predictor"]
