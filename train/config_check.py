"""Checking a training config dict into a :class:`~rlp.train.config.TrainConfig`: every bad value one line.

Each setting is checked against its field's type (an integer setting takes an integer, not ``2.5`` or
``"8"``; a float setting takes an integer too), then its range or choices, then the window geometry is
built as training will build it. Unknown sections and settings are refused (a misspelt setting would
otherwise be silently ignored).
"""

from __future__ import annotations

import dataclasses
import typing

from rlp.runtime.kinds import PredictorKind

from .augment import AugmentConfig
from .config import AT_LEAST, CHOICES, FLAGS, SECTIONS, ConfigError, variant_ok


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
