"""Listing the NIfTI inputs of a command: files, folders, quoted globs and CSV/TSV tables.

One listing for every command that takes many volumes (``rlp-heatmap``, ``rlp-cohort``,
``rlp-bench --inputs``, ``rlp-train prepare``), so that ``scans/``, ``'scans/*/T1.nii.gz'`` and a
table mean the same everywhere:

- a folder: the NIfTI files in it (and below it, with ``recursive``), sorted;
- a glob (``*``, ``?`` or ``[`` in a name that is not an existing file): the NIfTI files it
  matches (``**`` spans folders), sorted;
- a ``.csv`` / ``.tsv`` table with a header row: one input per row, from its path column
  (``path``, ``file``, ``image``, ``input`` or ``filename``; relative paths are taken from the
  table's folder); the other columns are kept as the row's metadata;
- anything else is passed through as given (a missing or unreadable file is then the command's
  per-input error, so that the other inputs still run).

Folders and globs leave out masks and earlier outputs (names ending in ``_lesion``, ``_mask``,
``_brainmask``, ``_heatmap``), and a file listed twice is kept once. :func:`output_folders` gives
each input a folder for its outputs: none (``flat``), or its own folder relative to the folder
all inputs share (``mirror``), so that two inputs with one name in different folders cannot get
the same outputs.
"""

from __future__ import annotations

import csv
import glob
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from .core.errors import BadInput, InputMissing
from .core.nifti import nifti_stem, nifti_suffix

TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t"}
PATH_COLUMNS = ("path", "file", "image", "input", "filename")
SKIPPED_SUFFIXES = ("_lesion", "_mask", "_brainmask", "_heatmap")
LAYOUTS = ("auto", "flat", "mirror")


@dataclass(frozen=True)
class Input:
    """One input: its path as given (or resolved from a table), and the table row's other columns."""

    path: str
    meta: dict = field(default_factory=dict, compare=False, hash=False)


def is_glob(item: str) -> bool:
    return any(ch in item for ch in "*?[")


def is_skipped(path: str | os.PathLike) -> bool:
    """A mask or an earlier output, left out of folders and globs."""
    return nifti_stem(path).endswith(SKIPPED_SUFFIXES)


def nifti_files(item: str | os.PathLike, *, recursive: bool = True) -> list[Path] | None:
    """The NIfTI files of a folder or a glob, sorted (masks included); None when ``item`` is neither."""
    p = Path(item)
    if p.is_dir():
        found = p.rglob("*") if recursive else p.iterdir()
        return sorted(f for f in found if f.is_file() and nifti_suffix(f))
    if not p.exists() and is_glob(str(item)):
        return sorted(Path(f) for f in glob.glob(str(item), recursive=True) if os.path.isfile(f) and nifti_suffix(f))
    return None


def _path_column(header: Sequence[str], table: Path) -> int:
    names = [h.strip().lower() for h in header]
    for want in PATH_COLUMNS:
        if want in names:
            return names.index(want)
    raise BadInput(f"no path column: the header {', '.join(header) or '(empty)'} names none of "
                   f"{', '.join(PATH_COLUMNS)}", table)


def read_table(table: str | os.PathLike) -> list[Input]:
    """The rows of a CSV/TSV table of volumes; a row that cannot be read is an error naming its line."""
    table = Path(table)
    delim = TABLE_SUFFIXES[table.suffix.lower()]
    try:
        with open(table, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh, delimiter=delim))
    except UnicodeDecodeError:
        raise BadInput("is not a UTF-8 text table", table) from None
    except csv.Error as exc:
        raise BadInput(f"cannot be read as a table ({exc})", table) from None
    except OSError as exc:
        raise InputMissing(f"cannot be read ({exc.strerror or exc})", table) from None
    if not rows:
        raise BadInput("is empty (a header row with a path column is needed)", table)
    header, col = rows[0], _path_column(rows[0], table)
    out = []
    for line, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue  # blank line
        if len(row) != len(header):
            raise BadInput(f"line {line} has {len(row)} fields, the header has {len(header)}", table)
        value = row[col].strip()
        if not value:
            raise BadInput(f"line {line} has an empty {header[col]!r}", table)
        path = value if os.path.isabs(value) else str(table.parent / value)
        out.append(Input(path, {h: v for j, (h, v) in enumerate(zip(header, row)) if j != col}))
    return out


def list_inputs(items: Iterable[str | os.PathLike], *, recursive: bool = True) -> list[Input]:
    """Every input of ``items`` (files, folders, globs, tables), in order; a file that folders, globs or
    tables list more than once is kept once (files named directly are kept as given)."""
    out: list[Input] = []
    seen: set[str] = set()

    def add(found: Iterable[Input]) -> None:
        for inp in found:
            key = os.path.realpath(inp.path)
            if key not in seen:
                seen.add(key)
                out.append(inp)

    for item in map(str, items):
        p = Path(item)
        if p.suffix.lower() in TABLE_SUFFIXES and p.is_file():
            add(read_table(p))
            continue
        files = nifti_files(item, recursive=recursive)
        if files is None:
            seen.add(os.path.realpath(item))
            out.append(Input(item))
            continue
        files = [f for f in files if not is_skipped(f)]
        if not files and p.is_dir():  # a folder given as an input, with nothing to read in it: bad data (65)
            raise BadInput("not a regular file (it is a directory) and there are no NIfTI files (.nii, .nii.gz) "
                           "below it (masks and _heatmap outputs left out)", item)
        if not files:
            raise InputMissing("no NIfTI files (.nii, .nii.gz) match this glob", item)
        add(Input(str(f)) for f in files)
    return out


def output_folders(paths: Sequence[str], layout: str = "auto") -> dict[str, Path]:
    """Each input's output folder, relative to ``--out``.

    ``flat``: all in ``--out`` itself. ``mirror``: the input's folder relative to the deepest folder
    all inputs share, so distinct inputs never share an output name. ``auto``: flat unless two
    inputs have one name (stem), then mirror.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if layout == "auto":
        stems = [nifti_stem(p) for p in paths]
        layout = "mirror" if len(set(stems)) < len(stems) else "flat"
    if layout == "flat" or not paths:
        return {p: Path() for p in paths}
    folders = {p: os.path.dirname(os.path.abspath(p)) for p in paths}
    common = os.path.commonpath(list(folders.values()))
    return {p: Path(os.path.relpath(d, common)) for p, d in folders.items()}
