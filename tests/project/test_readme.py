"""Every code block in README.md is run or checked here, so that none can go stale (#20).

The README's fenced blocks, whatever section they are in:

* ``python``: run, each in a fresh namespace, in a folder holding the README's example files (below);
* ``bash``: every ``rlp-*`` command is parsed by that command's real argparse parser (nothing trains);
  then the block is run, command by command, in that folder, unless the line before it is
  ``<!-- not run: REASON -->`` (a block that installs, trains or needs a GPU). A block that is run may
  hold only ``rlp-heatmap`` commands (cheap: the demo bundle on the demo slices);
* ``text``: command synopses (lines starting ``rlp-``: every ``--flag`` must exist for that command, and
  a choice list ``--flag a|b|c`` must be the parser's choices) or plain text (e.g. the layout).

A block with another language, or none, fails: say what it is. The example files: ``slice.nii.gz`` (a
demo slice), ``scan4d.nii.gz`` (a 4D file of three volumes of it), ``bundles/demo`` (the demo bundle).
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from helpers import REPO
from rlp.runtime.heatmap import default_bundle, demo_slices

README = REPO / "README.md"
NOT_RUN = re.compile(r"<!--\s*not run:(.*?)-->", re.S)
FENCE = re.compile(r"^```(\S*)[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)
SEPARATORS = {"&&", "||", ";", "|", "&"}


@dataclass
class Block:
    lang: str
    code: str
    line: int  # where the block starts in README.md
    not_run: str | None  # the reason given in a <!-- not run: ... --> right before it

    def __str__(self) -> str:
        return f"README.md:{self.line} ({self.lang or 'no language'})"


def readme_blocks(text: str) -> list[Block]:
    blocks = []
    for m in FENCE.finditer(text):
        before = text[: m.start()].rstrip()
        mark = NOT_RUN.search(before[before.rfind("\n\n") + 1:]) if before.endswith("-->") else None
        blocks.append(Block(m.group(1), m.group(2), text.count("\n", 0, m.start()) + 1,
                            None if mark is None else mark.group(1).strip()))
    return blocks


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))


def commands(code: str) -> list[list[str]]:
    """The simple commands of a shell block (continuations joined, comments dropped, split at && ; |)."""
    out = []
    for line in code.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        cur: list[str] = []
        for tok in list(lexer) + [";"]:
            if tok in SEPARATORS:
                if cur:
                    out.append(cur)
                cur = []
            else:
                cur.append(tok)
    return out


def _parsers() -> dict[str, argparse.ArgumentParser]:
    from rlp.bench.cli import build_parser as bench
    from rlp.cohort.cli import build_parser as cohort
    from rlp.runtime.cli import build_parser as heatmap

    found = {"rlp-heatmap": heatmap(), "rlp-bench": bench(), "rlp-cohort": cohort()}
    try:  # the training and export commands need their extras (the test suite's install has them)
        from rlp.export.cli import build_parser as export
        from rlp.train.cli import _parser as train
    except ImportError as exc:
        pytest.skip(f"rlp-train/rlp-export need {exc.name}")
    found.update({"rlp-export": export(), "rlp-train": train()})
    return found


def _subparsers(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next((a.choices for a in p._actions if isinstance(a, argparse._SubParsersAction)), {})


def _rlp_commands(block: Block) -> list[tuple[str, list[str]]]:
    """(command name, its arguments) of every rlp-* command of a shell block (a venv path in front allowed)."""
    return [(Path(c[0]).name, c[1:]) for c in commands(block.code) if Path(c[0]).name.startswith("rlp-")]


# --------------------------------------------------------------------------- the README's structure
def test_every_block_says_what_it_is_and_every_skip_says_why():
    assert BLOCKS, "no code blocks found in README.md"
    for b in BLOCKS:
        assert b.lang in ("python", "bash", "text"), f"{b}: give the block a language: python, bash or text"
        if b.not_run is not None:
            assert len(b.not_run.split()) >= 3, f"{b}: <!-- not run: ... --> needs a reason"
        assert b.not_run is None or b.lang == "bash", f"{b}: only a shell block may be left unrun"
    assert any(b.lang == "python" for b in BLOCKS) and any(b.lang == "bash" and b.not_run is None for b in BLOCKS)


def test_the_block_reader_sees_marks_commands_and_continuations():
    text = ("x\n\n<!-- not run: needs a GPU here -->\n```bash\nrlp-heatmap a.nii.gz \\\n  --neurological  # c\n"
            "pip install x && rlp-bench --quick\n```\n\n```python\nprint(1)\n```\n")
    gpu, py = readme_blocks(text)
    assert (gpu.lang, gpu.not_run, py.lang, py.not_run) == ("bash", "needs a GPU here", "python", None)
    assert commands(gpu.code) == [["rlp-heatmap", "a.nii.gz", "--neurological"], ["pip", "install", "x"],
                                  ["rlp-bench", "--quick"]]


# --------------------------------------------------------------------------- shell blocks
@pytest.mark.parametrize("block", [b for b in BLOCKS if b.lang == "bash"], ids=str)
def test_every_rlp_command_in_a_shell_block_parses_with_its_real_parser(block):
    parsers = _parsers()
    for name, argv in _rlp_commands(block):
        assert name in parsers, f"{block}: unknown command {name}"
        try:
            parsers[name].parse_args(argv)
        except (SystemExit, Exception) as exc:  # OneLineParser raises UsageError; plain argparse exits
            pytest.fail(f"{block}: {shlex.join([name, *argv])}: {exc}")


@pytest.fixture(scope="module")
def examples(tmp_path_factory) -> Path:
    """A folder with the files the README's examples name."""
    if default_bundle() is None:
        pytest.skip("this checkout ships no demo bundle")
    root = tmp_path_factory.mktemp("readme")
    shutil.copytree(default_bundle(), root / "bundles" / "demo")
    src = nib.load(demo_slices()[0])
    nib.save(src, root / "slice.nii.gz")
    data = np.asarray(src.dataobj)
    nib.save(nib.Nifti1Image(np.stack([data, data[::-1], data], axis=-1), src.affine, src.header),
             root / "scan4d.nii.gz")
    return root


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.lang == "bash" and b.not_run is None], ids=str)
def test_shell_blocks_run(block, examples, tmp_path, monkeypatch, capsys):
    from rlp.runtime.cli import main

    for f in examples.iterdir():  # a fresh folder for the outputs, the example files linked in
        (tmp_path / f.name).symlink_to(f)
    monkeypatch.chdir(tmp_path)
    for argv in commands(block.code):
        name = Path(argv[0]).name
        assert name == "rlp-heatmap", (f"{block}: {argv[0]} cannot run in a test; mark the block "
                                       "<!-- not run: REASON --> or keep it to rlp-heatmap commands")
        rc = main(argv[1:])
        assert rc == 0, f"{block}: {shlex.join(argv)} exited {rc}: {capsys.readouterr().err}"
        out = Path(argv[argv.index("--out") + 1] if "--out" in argv else "rlp-out")
        assert any(out.glob("*_heatmap.nii.gz")), f"{block}: {shlex.join(argv)} wrote no heatmap"


# --------------------------------------------------------------------------- python blocks
@pytest.mark.parametrize("block", [b for b in BLOCKS if b.lang == "python"], ids=str)
def test_python_blocks_run(block, examples, monkeypatch):
    monkeypatch.chdir(examples)
    exec(compile(block.code, str(block), "exec"), {"__name__": "__readme__"})


# --------------------------------------------------------------------------- synopses
def _synopses(block: Block) -> list[str]:
    """The command synopses of a text block: a line starting rlp- and its indented continuations."""
    out: list[str] = []
    for line in block.code.splitlines():
        if line.startswith("rlp-"):
            out.append(line)
        elif out and line[:1].isspace() and line.strip():
            out[-1] += " " + line.strip()
    return out


def _options(parser: argparse.ArgumentParser, words: list[str]) -> dict[str, argparse.Action]:
    """The options of a command, of the subcommands its synopsis names (``gan|predictor|all``) when it has any."""
    subs = _subparsers(parser)
    chosen = [subs[w] for w in (words[1].split("|") if subs and len(words) > 1 else []) if w in subs]
    assert not subs or chosen, f"{' '.join(words[:2])}: no subcommand named"
    return {o: a for p in (chosen or [parser]) for o, a in p._option_string_actions.items()}


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.lang == "text" and _synopses(b)], ids=str)
def test_synopses_name_only_real_flags_and_choices(block):
    parsers = _parsers()
    for synopsis in _synopses(block):
        words = synopsis.split()
        assert words[0] in parsers, f"{block}: unknown command {words[0]}"
        options = _options(parsers[words[0]], words)
        for flag, choices in re.findall(r"(--[a-z0-9-]+)(?:[ =]([^\s\]]+))?", synopsis):
            assert flag in options, f"{block}: {words[0]} has no option {flag}"
            real = options[flag].choices
            listed = choices.split("|") if choices and "|" in choices else None
            if real is not None and listed and all(re.fullmatch(r"[a-z0-9.-]+", c) for c in listed):
                assert set(listed) == {str(c) for c in real}, f"{block}: {flag} {choices} != {sorted(real)}"


# --------------------------------------------------------------------------- claims the README makes in prose
def test_the_readme_says_how_the_heatmap_nifti_stores_its_scaling(tmp_path):
    """nibabel writes scl_slope and scl_inter as NaN ("unset") for float data; the README says so."""
    from rlp.runtime.core.nifti import save_like, volume_from_array

    ref = volume_from_array(np.ones((6, 5, 2), np.float32))
    save_like(tmp_path / "h.nii.gz", np.full((6, 5, 2), 0.5, np.float32), ref)
    hdr = nib.load(tmp_path / "h.nii.gz").header
    assert np.isnan(hdr["scl_slope"]) and np.isnan(hdr["scl_inter"])
    text = " ".join(README.read_text(encoding="utf-8").split())
    assert "stores `scl_slope` and `scl_inter` as NaN" in text
