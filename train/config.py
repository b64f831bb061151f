"""Training configuration: presets (TOML), a config file, and flag overrides.

Precedence: preset < ``--config FILE`` < command-line flags. The resolved
config is saved as ``config.json`` in the run folder.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import tomllib
from importlib import resources
from pathlib import Path

from rlp.runtime.core.errors import BadInput, InputMissing

DEFAULTS: dict = {
    "run": {"seed": 0, "deterministic": False, "threads": 0, "max_minutes": 0.0, "device": "auto"},
    "geometry": {"reference_size": 256, "window": 16, "stride": 4, "context": 96, "min_tissue": 0.0, "fill": 1.0, "paint": "box"},
    "augment": {"enabled": True},
    "gan": {
        "steps": 2000, "batch": 16, "lr_g": 2e-4, "lr_d": 2e-4, "beta1": 0.5,
        "l1_box": 1.0, "l1_context": 0.1, "adv": 0.01,
        "width": 16, "depth": 4, "max_width": 128, "upsample": "bicubic",
        "d_width": 32, "d_layers": 3, "box_sampling": "brain",
        # sigmoid: the paper's G (one reconstruction); laplace: a mean and a scale per pixel, trained with
        # the Laplace negative log-likelihood (weight nll) beside the L1 terms
        "output": "sigmoid", "nll": 1.0,
        "val_every": 250, "val_windows": 512, "sample_every": 500, "log_every": 10,
    },
    "predictor": {
        "kind": "crop", "steps": 1000, "batch": 32, "lr": 1e-3, "width": 32, "n_down": 3,
        "target": "window", "box_sampling": "brain", "val_every": 250, "val_windows": 512, "log_every": 10,
        # dense predictor: G's maps on the training slices and this many augmented copies of each,
        # on this share of their windows; loss = L1 / mean + rank_weight * (1 - Pearson per slice)
        "variant": "", "n_context": 3, "target_copies": 3, "target_fraction": 0.25, "rank_weight": 0.5,
        # share of the augmented copies whose tissue is corrupted (augment.context_noise) before G scores them
        "target_corrupt": 0.0,
        # the window score to learn: auto (z for a Laplace G, l1 for a sigmoid one), z, l1
        "score": "auto",
    },
}

# Settings that must match for --resume to continue a run.
RESUME_KEYS = {"gan": ("geometry", "gan.width", "gan.depth", "gan.max_width", "gan.upsample", "gan.d_width", "gan.d_layers", "gan.batch",
                       "gan.output"),
               "predictor": ("geometry", "predictor.kind", "predictor.width", "predictor.n_down", "predictor.target", "predictor.batch",
                             "predictor.n_context", "predictor.variant", "predictor.score")}

PRESETS = ("demo", "paper", "tiny")
PREDICTORS = ("crop", "paper", "dense")
SCORE_CHOICES = ("auto", "z", "l1")
G_OUTPUTS = ("sigmoid", "laplace")


def deep_update(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_update(out[k], v)
        else:
            out[k] = v
    return out


def load_toml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise InputMissing("config file not found", p)
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BadInput(f"invalid TOML ({exc})", p) from None


def preset(name: str) -> dict:
    if name not in PRESETS:
        raise BadInput(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    text = resources.files("rlp.train").joinpath("presets", f"{name}.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)


def resolve(preset_name: str | None, config_file: str | None, overrides: dict) -> dict:
    cfg = copy.deepcopy(DEFAULTS)
    if preset_name:
        cfg = deep_update(cfg, preset(preset_name))
        cfg["preset"] = preset_name
    if config_file:
        cfg = deep_update(cfg, load_toml(config_file))
    cfg = deep_update(cfg, overrides)
    _validate(cfg)
    return cfg


def _validate(cfg: dict) -> None:
    g, p = cfg["gan"], cfg["predictor"]
    if g["box_sampling"] not in ("brain", "middle-third", "uniform"):
        raise BadInput(f"--box-sampling must be brain, middle-third or uniform, not {g['box_sampling']!r}")
    if p["target"] not in ("window", "image"):
        raise BadInput(f"--target must be window or image, not {p['target']!r}")
    if p["kind"] not in PREDICTORS:
        raise BadInput(f"--predictor must be one of {', '.join(PREDICTORS)}, not {p['kind']!r}")
    if g["output"] not in G_OUTPUTS:
        raise BadInput(f"--g-output must be one of {', '.join(G_OUTPUTS)}, not {g['output']!r}")
    if p["score"] not in SCORE_CHOICES:
        raise BadInput(f"--score must be one of {', '.join(SCORE_CHOICES)}, not {p['score']!r}")
    if p["variant"] and not re.fullmatch(r"[a-z0-9]+", str(p["variant"])):
        raise BadInput(f"--variant must be lower-case letters and digits, not {p['variant']!r}")
    for sec, key in (("gan", "steps"), ("gan", "batch"), ("predictor", "steps"), ("predictor", "batch")):
        if int(cfg[sec][key]) < 1 and not (key == "steps" and int(cfg[sec][key]) == 0):
            raise BadInput(f"{sec}.{key} must be a positive integer")


def get(cfg: dict, dotted: str):
    cur = cfg
    for part in dotted.split("."):
        cur = cur[part]
    return cur


def resume_hash(cfg: dict, stage: str) -> str:
    vals = {k: get(cfg, k) for k in RESUME_KEYS[stage]}
    return hashlib.sha256(json.dumps(vals, sort_keys=True).encode()).hexdigest()
