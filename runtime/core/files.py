"""Reading files written by others, safely, and recognising one file under several names.

:func:`read_json_object` and :func:`read_npz` turn every way a file can be unreadable into one
:class:`~rlp.runtime.core.errors.RlpError` naming it (npz arrays are read without pickle: a crafted
file cannot run code). :func:`identities` is what an output is compared with so that it never
lands on an input: the absolute and resolved names and the device and inode (a hard link).
"""

from __future__ import annotations

import contextlib
import json
import os
import zipfile
from pathlib import Path
from typing import Iterable

import numpy as np

from .errors import BadInput, InputMissing


def identities(path: str | os.PathLike) -> set:
    """Ways to recognise a file: its absolute name, its resolved name, its device and inode."""
    keys = {("name", os.path.abspath(path))}
    with contextlib.suppress(OSError, ValueError):
        keys.add(("name", os.path.realpath(path)))
        st = os.stat(path)
        keys.add(("inode", st.st_dev, st.st_ino))
    return keys


def identity_index(paths: Iterable[str]) -> dict:
    """Every identity of every path -> that path (look an output's :func:`identities` up in it)."""
    return {key: p for p in paths for key in identities(p)}


def read_json_object(path: str | os.PathLike, what: str = "the file") -> dict:
    """A JSON file holding an object; :class:`BadInput` naming ``path`` when it is unreadable or anything else."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInput(f"not valid JSON ({exc})", path) from None
    except OSError as exc:
        raise BadInput(f"cannot read ({exc.strerror or exc})", path) from None
    if not isinstance(obj, dict):
        raise BadInput(f"{what} is not a JSON object", path)
    return obj


def read_npz(path: str | os.PathLike, keys: Iterable[str], optional: Iterable[str] = (),
             missing: str = "not found") -> dict[str, np.ndarray]:
    """The arrays ``keys`` (required) and those of ``optional`` that are there, from an .npz of plain arrays.

    No file: :class:`InputMissing` with ``missing``; no pickled objects, a damaged archive or an absent
    required array: :class:`BadInput` naming the file.
    """
    if not Path(path).is_file():
        raise InputMissing(missing, path)
    keys, optional = list(keys), list(optional)
    try:
        with np.load(path, allow_pickle=False) as npz:
            absent = sorted(set(keys) - set(npz.files))
            if absent:
                raise BadInput(f"missing array(s) {', '.join(absent)}", path)
            return {k: npz[k] for k in keys + [k for k in optional if k in npz.files]}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise BadInput(f"not a readable .npz of plain arrays ({exc})", path) from None
