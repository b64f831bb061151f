"""One main wrapper for the four commands (rlp.runtime.core.cliutil.run_main): a bug is one line, exit 70, and the
traceback only with --traceback or RLP_TRACEBACK=1; usage errors stay exit 2 and one line."""

from __future__ import annotations

import sys

import pytest

from rlp.runtime.core import cliutil
from rlp.runtime.core.errors import EX_SOFTWARE, EX_USAGE

HINT = "rerun with RLP_TRACEBACK=1 (or --traceback) for the traceback"


def _boom(*a, **k):
    raise ZeroDivisionError("a bug\nover two lines")


def _train(monkeypatch, tmp_path, *extra):
    import rlp.train.cli
    import rlp.train.data

    monkeypatch.setattr(rlp.train.data, "prepare", _boom)
    with pytest.raises(SystemExit) as ex:
        rlp.train.cli.main(["prepare", "mni152", "--out", str(tmp_path / "s.h5"), *extra])
    return ex.value.code


def _export(monkeypatch, tmp_path, *extra):
    import rlp.export.bundle
    import rlp.export.cli

    monkeypatch.setattr(rlp.export.bundle, "export_bundle", _boom)
    return rlp.export.cli.main([str(tmp_path / "run"), "--out", str(tmp_path / "b"), "--quiet", *extra])


def _bench(monkeypatch, tmp_path, *extra):
    import rlp.bench.cli

    monkeypatch.setattr(rlp.bench.cli.Bench, "run", _boom)
    return rlp.bench.cli.main(["--quick", "--out", str(tmp_path / "bench"), *extra])


def _heatmap(monkeypatch, tmp_path, *extra):
    import rlp.runtime.cli

    monkeypatch.setattr(rlp.runtime.cli, "_run", _boom)
    return rlp.runtime.cli.main(["--quiet", "--out", str(tmp_path / "o"), *extra])


COMMANDS = {"rlp-train": _train, "rlp-export": _export, "rlp-bench": _bench, "rlp-heatmap": _heatmap}


@pytest.mark.parametrize("prog", sorted(COMMANDS))
def test_a_bug_is_one_line_with_the_way_to_its_traceback(prog, monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("RLP_TRACEBACK", raising=False)
    monkeypatch.delenv("RLP_DEBUG", raising=False)
    assert COMMANDS[prog](monkeypatch, tmp_path) == EX_SOFTWARE
    err = capsys.readouterr().err
    assert err == f"{prog}: internal error: ZeroDivisionError: a bug over two lines; {HINT}\n"


@pytest.mark.parametrize("prog", sorted(COMMANDS))
@pytest.mark.parametrize("how", ["flag", "env"])
def test_the_traceback_is_shown_when_asked_for(prog, how, monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("RLP_DEBUG", raising=False)
    if how == "env":
        monkeypatch.setenv("RLP_TRACEBACK", "1")
    else:
        monkeypatch.delenv("RLP_TRACEBACK", raising=False)
    extra = ("--traceback",) if how == "flag" else ()
    assert COMMANDS[prog](monkeypatch, tmp_path, *extra) == EX_SOFTWARE
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "in _boom" in err
    assert err.splitlines()[-1].startswith(f"{prog}: internal error: ZeroDivisionError")
    assert not cliutil.wants_traceback() or how == "env"  # the flag does not outlive the command


@pytest.mark.parametrize("prog,argv", [("rlp-train", ["nope"]), ("rlp-export", []), ("rlp-bench", ["--runs", "0"]),
                                       ("rlp-heatmap", ["--batch", "0"])])
def test_a_usage_error_is_one_line_and_exit_2(prog, argv, capsys):
    import rlp.bench.cli
    import rlp.export.cli
    import rlp.runtime.cli
    import rlp.train.cli

    mains = {"rlp-train": rlp.train.cli.main, "rlp-export": rlp.export.cli.main, "rlp-bench": rlp.bench.cli.main,
             "rlp-heatmap": rlp.runtime.cli.main}
    try:
        rc = mains[prog](argv)
    except SystemExit as exc:  # rlp-train's main exits
        rc = exc.code
    assert rc == EX_USAGE
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"{prog}: ") and err[0].endswith(f"(see {prog} --help)")


def test_run_main_names_a_missing_optional_package_and_calls_any_other_missing_module_a_bug(capsys, monkeypatch):
    monkeypatch.delenv("RLP_TRACEBACK", raising=False)
    monkeypatch.delenv("RLP_DEBUG", raising=False)

    def missing(name):
        def body():
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return body

    assert cliutil.run_main("p", missing("onnxscript")) == EX_SOFTWARE
    assert "needs the Python package 'onnxscript', which is not installed: pip install" in capsys.readouterr().err
    assert cliutil.run_main("p", missing("rlp.nothing")) == EX_SOFTWARE
    assert capsys.readouterr().err == f"p: internal error: ModuleNotFoundError: No module named 'rlp.nothing'; {HINT}\n"


@pytest.mark.parametrize("prog, words", [("rlp-train", "--gan-batch"), ("rlp-bench", "--batch"),
                                         ("rlp-export", "--reference-slices"), ("rlp-cohort", "--workers")])
def test_out_of_memory_says_what_to_hold_less_of(prog, words, capsys):
    def body():
        raise MemoryError

    assert cliutil.run_main(prog, body) == EX_SOFTWARE
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"{prog}: out of memory; free memory, or ") and words in err[0]


def test_help_returns_0_from_run_main(capsys):
    import rlp.runtime.cli

    assert rlp.runtime.cli.main(["--help"]) == 0
    assert "--traceback" in capsys.readouterr().out
    assert sys.stdout is not None
