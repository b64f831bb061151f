"""Checkpoints: atomic, weights-only, resumable.

A checkpoint is a dict of tensors and plain Python values, so it loads with
``torch.load(weights_only=True)`` and nothing else: a file whose pickle would
run code is refused, never retried without the guard.

Layout (``format`` = ``"rlp.ckpt"``, ``version`` = 1)::

    stage        "gan" | "predictor"
    step         optimisation steps done
    arch         {"g": {...}, "d": {...}} or {"r": {...}}  (rlp.train.models.build)
    models       {"g": state_dict, ...}
    optim        {"g": state_dict, ...}
    sched        {"g": state_dict, ...}
    rng          torch / numpy / python generator states
    config       the resolved run config (JSON-able)
    config_hash  sha256 of the settings that must not change on --resume
    data         {"path", "sha256", ...} provenance of the training data
    geometry     WindowGeometry.to_dict()
    preprocessing Preprocessing.to_dict()
    metrics      the latest validation metrics
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch

from rlp.runtime.core.atomic import atomic_path
from rlp.runtime.core.errors import BadInput, InputMissing, SecurityRefusal

FORMAT = "rlp.ckpt"
VERSION = 1


def save_checkpoint(path: str | os.PathLike, state: dict) -> Path:
    state = dict(state, format=FORMAT, version=VERSION)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load an rlp checkpoint with ``weights_only=True``; any problem is an RlpError."""
    path = Path(path)
    if not path.is_file():
        raise InputMissing("checkpoint not found", path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unpickling refused"
        raise SecurityRefusal(f"refused: not a weights-only checkpoint ({first})", path) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadInput(f"corrupt or truncated checkpoint ({msg})", path) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise BadInput("not an rlp checkpoint", path)
    if state.get("version") != VERSION:
        raise BadInput(f"checkpoint version {state.get('version')} is not supported (expected {VERSION})", path)
    return state
