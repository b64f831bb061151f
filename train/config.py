"""Training configuration: typed settings that presets (TOML), a config file and flags merge into.

Precedence: preset < ``--config FILE`` < command-line flags. :func:`resolve_config` checks every value
at this boundary (type, range, choice, and that the window geometry can be built), so a bad value is a
one-line error naming the setting, its flag, and the file it came from, never a traceback inside
training. The resolved config is saved as ``config.json`` in the run folder (:meth:`TrainConfig.to_dict`,
the same JSON as before the settings were typed, so older runs resume).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import re
import tomllib
import typing
from dataclasses import dataclass, field
from enum import Enum
from importlib import resources
from pathlib import Path

from rlp.runtime.core.errors import EX_USAGE, BadInput, InputMissing, RlpError
from rlp.runtime.core.geometry import PAINT, WindowGeometry
from rlp.runtime.core.kinds import PredictorKind

PRESETS = ("demo", "paper", "tiny")
PREDICTORS = PredictorKind.values()
SCORE_CHOICES = ("auto", "z", "l1")
G_OUTPUTS = ("sigmoid", "laplace")
BOX_SAMPLING = ("brain", "middle-third", "uniform")
TARGETS = ("window", "image")
UPSAMPLE = ("bicubic", "nearest", "bilinear")


@dataclass(frozen=True)
class RunSettings:
    seed: int = 0
    deterministic: bool = False
    threads: int = 0
    max_minutes: float = 0.0
    device: str = "auto"


@dataclass(frozen=True)
class GeometrySettings:
    reference_size: int = 256  # the data's side: window, stride and context are given at this size
    window: int = 16
    stride: int = 4
    context: int | str = 96  # the context crop's side, or "full" (the whole slice, the paper's)
    min_tissue: float = 0.0
    fill: float = 1.0
    paint: str = "box"

    def window_geometry(self) -> WindowGeometry:
        ctx = None if self.context in ("full", 0) else int(self.context)
        return WindowGeometry(size=self.reference_size, window=self.window, stride=self.stride, fill=self.fill,
                              context=ctx, min_tissue=self.min_tissue, paint=self.paint)


@dataclass(frozen=True)
class GanSettings:
    steps: int = 2000
    batch: int = 16
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    beta1: float = 0.5
    l1_box: float = 1.0
    l1_context: float = 0.1
    adv: float = 0.01
    width: int = 16
    depth: int = 4
    max_width: int = 128
    upsample: str = "bicubic"
    d_width: int = 32
    d_layers: int = 3
    box_sampling: str = "brain"
    # sigmoid: the paper's G (one reconstruction); laplace: a mean and a scale per pixel, trained with
    # the Laplace negative log-likelihood (weight nll) beside the L1 terms
    output: str = "sigmoid"
    nll: float = 1.0
    val_every: int = 250
    val_windows: int = 512
    sample_every: int = 500
    log_every: int = 10


@dataclass(frozen=True)
class PredictorSettings:
    kind: PredictorKind = PredictorKind.CROP
    steps: int = 1000
    batch: int = 32
    lr: float = 1e-3
    width: int = 32
    n_down: int = 3
    target: str = "window"
    box_sampling: str = "brain"
    val_every: int = 250
    val_windows: int = 512
    log_every: int = 10
    # dense predictor: G's maps on the training slices and this many augmented copies of each,
    # on this share of their windows; loss = L1 / mean + rank_weight * (1 - Pearson per slice)
    variant: str = ""
    n_context: int = 3
    target_copies: int = 3
    target_fraction: float = 0.25
    rank_weight: float = 0.5
    # share of the augmented copies whose tissue is corrupted (augment.context_noise) before G scores them
    target_corrupt: float = 0.0
    # the window score to learn: auto (z for a Laplace G, l1 for a sigmoid one), z, l1
    score: str = "auto"


SECTIONS = {"run": RunSettings, "geometry": GeometrySettings, "gan": GanSettings, "predictor": PredictorSettings}

#: the flag that sets each setting (error messages name it; rlp-train's parser maps its flags with it)
FLAGS = {"run.seed": "--seed", "run.deterministic": "--deterministic", "run.device": "--device",
         "run.threads": "--threads", "run.max_minutes": "--max-minutes",
         "geometry.window": "--window", "geometry.stride": "--stride", "geometry.context": "--context",
         "geometry.fill": "--fill", "geometry.paint": "--paint",
         "gan.steps": "--gan-steps", "gan.batch": "--gan-batch", "gan.width": "--width", "gan.depth": "--depth",
         "gan.adv": "--adv", "gan.output": "--g-output", "gan.box_sampling": "--box-sampling",
         "predictor.kind": "--predictor", "predictor.target": "--target", "predictor.steps": "--r-steps",
         "predictor.batch": "--r-batch", "predictor.variant": "--variant", "predictor.width": "--r-width",
         "predictor.lr": "--r-lr", "predictor.target_corrupt": "--target-corrupt", "predictor.score": "--score"}

#: value checks beyond the type: (allowed choices) or (lowest value, inclusive)
CHOICES = {"geometry.paint": tuple(PAINT), "gan.upsample": UPSAMPLE, "gan.box_sampling": BOX_SAMPLING,
           "gan.output": G_OUTPUTS, "predictor.kind": PREDICTORS, "predictor.target": TARGETS,
           "predictor.box_sampling": BOX_SAMPLING, "predictor.score": SCORE_CHOICES}
AT_LEAST = {"run.seed": 0, "run.threads": 0, "run.max_minutes": 0, "geometry.reference_size": 8, "geometry.window": 1,
            "geometry.stride": 1, "geometry.min_tissue": 0, "gan.steps": 0, "gan.batch": 1, "gan.adv": 0,
            "gan.width": 1, "gan.depth": 1, "gan.max_width": 1, "gan.d_width": 1, "gan.d_layers": 1,
            "gan.val_every": 1, "gan.val_windows": 1, "gan.sample_every": 0, "gan.log_every": 1, "gan.lr_g": 0,
            "gan.lr_d": 0, "predictor.steps": 0, "predictor.batch": 1, "predictor.lr": 0, "predictor.width": 1,
            "predictor.n_down": 1, "predictor.val_every": 1, "predictor.val_windows": 1, "predictor.log_every": 1,
            "predictor.n_context": 1, "predictor.target_copies": 1, "predictor.target_fraction": 0,
            "predictor.rank_weight": 0, "predictor.target_corrupt": 0}


class ConfigError(RlpError):
    """A bad setting: one line, the usage exit code; names the config file when the value came from one."""

    def __init__(self, message: str, path=None):
        super().__init__(message, path, EX_USAGE)


@dataclass(frozen=True)
class TrainConfig:
    run: RunSettings = field(default_factory=RunSettings)
    geometry: GeometrySettings = field(default_factory=GeometrySettings)
    augment: dict = field(default_factory=lambda: {"enabled": True})  # AugmentConfig's fields, as given
    gan: GanSettings = field(default_factory=GanSettings)
    predictor: PredictorSettings = field(default_factory=PredictorSettings)
    preset: str | None = None

    @classmethod
    def from_dict(cls, d: dict, path=None) -> "TrainConfig":
        """Check and type a config dict (a preset, TOML file or config.json merged with the defaults)."""
        return check_config(cls, d, path)

    @classmethod
    def coerce(cls, cfg: "TrainConfig | dict") -> "TrainConfig":
        return cfg if isinstance(cfg, TrainConfig) else cls.from_dict(deep_update(DEFAULTS, cfg))

    def to_dict(self) -> dict:
        """Plain JSON (strings, not enums): ``config.json``, the checkpoints' ``config``, the resume hash."""
        out = {name: _plain(dataclasses.asdict(getattr(self, name))) for name in ("run", "geometry")}
        out["augment"] = copy.deepcopy(self.augment)
        out.update({name: _plain(dataclasses.asdict(getattr(self, name))) for name in ("gan", "predictor")})
        if self.preset is not None:
            out["preset"] = self.preset
        return out

    def augment_config(self):
        """The :class:`~rlp.train.augment.AugmentConfig` (imported here: this module needs no torch)."""
        from .augment import AugmentConfig

        return AugmentConfig(**self.augment)

    def section(self, stage: str):
        return getattr(self, stage)


def _plain(d: dict) -> dict:
    return {k: (v.value if isinstance(v, Enum) else v) for k, v in d.items()}


DEFAULTS: dict = TrainConfig().to_dict()

# Settings that must match for --resume to continue a run.
RESUME_KEYS = {"gan": ("geometry", "gan.width", "gan.depth", "gan.max_width", "gan.upsample", "gan.d_width",
                       "gan.d_layers", "gan.batch", "gan.output"),
               "predictor": ("geometry", "predictor.kind", "predictor.width", "predictor.n_down", "predictor.target",
                             "predictor.batch", "predictor.n_context", "predictor.variant", "predictor.score")}


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
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    text = resources.files("rlp.train").joinpath("presets", f"{name}.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)


def resolve_config(preset_name: str | None, config_file: str | None, overrides: dict) -> TrainConfig:
    """preset < config file < flags, each layer checked: an error names the file its bad value came from."""
    cfg = copy.deepcopy(DEFAULTS)
    if preset_name:
        cfg = deep_update(cfg, preset(preset_name))
        cfg["preset"] = preset_name
    if config_file:
        cfg = deep_update(cfg, load_toml(config_file))
        TrainConfig.from_dict(cfg, config_file)
    return TrainConfig.from_dict(deep_update(cfg, overrides))


def resolve(preset_name: str | None, config_file: str | None, overrides: dict) -> dict:
    """:func:`resolve_config` as the plain dict that ``config.json`` holds."""
    return resolve_config(preset_name, config_file, overrides).to_dict()


def get(cfg: dict, dotted: str):
    cur = cfg
    for part in dotted.split("."):
        cur = cur[part]
    return cur


def resume_hash(cfg: "TrainConfig | dict", stage: str) -> str:
    d = cfg.to_dict() if isinstance(cfg, TrainConfig) else cfg
    vals = {k: get(d, k) for k in RESUME_KEYS[stage]}
    return hashlib.sha256(json.dumps(vals, sort_keys=True).encode()).hexdigest()


def variant_ok(name: str) -> bool:
    return bool(re.fullmatch(r"[a-z0-9]+", name))


# -- checking a config dict into a TrainConfig: each setting against its field's type, then its range or
# choices, then the window geometry as training builds it; unknown sections and settings are refused (a misspelt
# setting would otherwise be silently ignored)
def _name(dotted: str) -> str:
    flag = FLAGS.get(dotted)
    return f"{dotted} ({flag})" if flag else dotted


def _typed(dotted: str, value, kind, path):
    """``value`` as the field's type, or a ConfigError."""
    want = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    if dotted == "geometry.context":
        if value == "full" or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        raise ConfigError(f"{_name(dotted)} must be an integer or 'full', not {value!r}", path)
    if kind is PredictorKind:
        kind = str
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return value  # kept as written: config.json stays the JSON it was
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{_name(dotted)} must be {want[kind]}, not {value!r}", path)


def _check_value(dotted: str, value, path) -> None:
    choices = CHOICES.get(dotted)
    if choices is not None and value not in choices:
        raise ConfigError(f"{_name(dotted)} must be one of {', '.join(choices)}, not {value!r}", path)
    low = AT_LEAST.get(dotted)
    if low is not None and value < low:
        raise ConfigError(f"{_name(dotted)} must be at least {low}, not {value!r}", path)


def _section(cls, name: str, values, path):
    if not isinstance(values, dict):
        raise ConfigError(f"[{name}] must be a table of settings, not {values!r}", path)
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown setting {name}.{unknown[0]} (known: {', '.join(sorted(known))})", path)
    out = {}
    for key, value in values.items():
        dotted = f"{name}.{key}"
        kind = hints[key]
        kind = int if dotted == "geometry.context" else kind
        out[key] = _typed(dotted, value, kind, path)
        if dotted != "geometry.context":
            _check_value(dotted, out[key], path)
    if name == "predictor" and "kind" in out:
        out["kind"] = PredictorKind(out["kind"])
    return cls(**out)


def _augment(values, path) -> dict:
    if not isinstance(values, dict):
        raise ConfigError(f"[augment] must be a table of settings, not {values!r}", path)
    from .augment import AugmentConfig  # torch: not at import

    hints = typing.get_type_hints(AugmentConfig)
    for key, value in values.items():
        if key not in hints:
            raise ConfigError(f"unknown setting augment.{key} (known: {', '.join(sorted(hints))})", path)
        typed = _typed(f"augment.{key}", value, hints[key], path)
        if hints[key] is not bool and typed < 0:
            raise ConfigError(f"augment.{key} must be at least 0, not {value!r}", path)
    return dict(values)


def _cross_checks(cfg, path) -> None:
    g = cfg.geometry
    if g.context != "full" and g.context < 0:
        raise ConfigError(f"{_name('geometry.context')} must be an integer >= the window, or 'full', not {g.context!r}",
                          path)
    try:
        g.window_geometry()
    except ValueError as exc:
        raise ConfigError(f"bad window geometry (size {g.reference_size}, window {g.window}, stride {g.stride}, "
                          f"context {g.context}): {exc}", path) from None
    v = cfg.predictor.variant
    if v and not variant_ok(v):
        raise ConfigError(f"{_name('predictor.variant')} must be lower-case letters and digits, not {v!r}", path)
    if cfg.preset is not None and not isinstance(cfg.preset, str):
        raise ConfigError(f"preset must be a string, not {cfg.preset!r}", path)


def check_config(cls, d: dict, path=None):
    if not isinstance(d, dict):
        raise ConfigError("a training config must be a table of sections", path)
    known = set(SECTIONS) | {"augment", "preset"}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"unknown section {unknown[0]!r} (known: {', '.join(sorted(known))})", path)
    parts = {name: _section(sec, name, d.get(name, {}), path) for name, sec in SECTIONS.items()}
    cfg = cls(augment=_augment(d.get("augment", {}), path), preset=d.get("preset"), **parts)
    _cross_checks(cfg, path)
    return cfg
