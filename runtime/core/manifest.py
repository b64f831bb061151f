"""The bundle manifest: the contract between ``rlp-export`` and the runtime.

A bundle is a folder holding ``manifest.json`` and the model files it lists.
:func:`load_bundle_manifest` checks the schema version and the size and sha256
of every listed file *before* any model is parsed, and refuses paths that
resolve outside the bundle (``..``, absolute paths, symlinks).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .domain import domain_problem
from .errors import EX_IOERR, BadInput, InputMissing, RlpError, SecurityRefusal
from .geometry import SCORES, WindowGeometry, window_positions
from .kinds import InputKind
from .preprocess import CEILINGS, Preprocessing

SCHEMA = "rlp.bundle"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
REBUILD = "rebuild the bundle with rlp-export"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            b = fh.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


@dataclass
class TensorSpec:
    name: str
    shape: list  # ints or a string for a dynamic axis ("batch")
    dtype: str = "float32"


#: heatmap heads (``rlp-heatmap --path``): ``g``, the default predictor ``r``, and named predictor variants ``r-NAME``
HEAD_PATTERN = re.compile(r"g|r(-[a-z0-9]+)?")


def model_head(key: str) -> str:
    """The heatmap head a bundle model serves: its key without a precision suffix (``r_fp16`` serves ``r``)."""
    return key.split("_", 1)[0]


#: precision -> the suffix of its model's key (and file name: KEY.onnx) in a bundle: the one home of the ``_fp16`` rule
PRECISION_SUFFIX = {"fp32": "", "fp16": "_fp16"}


def model_key(head: str, precision: str = "fp32") -> str:
    """The manifest key of ``head``'s model at ``precision`` (``r`` and fp16: ``r_fp16``); :func:`model_head` undoes
    it."""
    return head + PRECISION_SUFFIX[precision]


def model_shapes(role: str, input_kind: str, side: int, grid_shape: tuple[int, int],
                 g_channels: int = 1) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The input and output shapes after the batch axis that a bundle model must have.

    Input: one channel of ``side`` x ``side``. Output: G, ``g_channels`` images of that size (2 for a
    Laplace G's mean and scale); a dense predictor, the window map ``(1, *grid_shape)``; any other
    predictor, one loss per window ``(1,)``. The exporter writes these, the runtime checks them.
    """
    if role == "g":
        out = (g_channels, side, side)
    elif input_kind == InputKind.DENSE:
        out = (1, *grid_shape)
    else:
        out = (1,)
    return (1, side, side), out


def head_role(head: str) -> str:
    """The role (``"g"`` or ``"r"``) of a heatmap head; ValueError for a name that is not a head."""
    if not isinstance(head, str) or not HEAD_PATTERN.fullmatch(head):
        raise ValueError(f"{head!r} is not a heatmap path (g, r or r-NAME)")
    return head[0]


@dataclass
class ModelEntry:
    """One ONNX model of a bundle.

    ``role``: ``"g"`` (reconstruction: inpainted input -> image) or ``"r"``
    (predictor: model input -> predicted window loss). ``input_kind`` says what
    the model reads: ``"crop"`` (the context crop around the box, the box
    painted with ``fill``), ``"image"`` (the whole inpainted slice), or
    ``"dense"`` (a predictor only: the whole slice, no box painted, read once;
    its output is the window map, ``(batch, 1, rows, cols)``).

    A bundle's models are keyed by heatmap head (see :func:`head_role`), with
    ``_fp16`` for the fp16 copy of a model.
    """

    role: str
    file: str
    sha256: str
    size: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    opset: int
    precision: str = "fp32"  # "fp32" | "fp16"
    io_dtype: str = "float32"  # dtype of the graph's inputs and outputs
    input_kind: str = InputKind.CROP
    architecture: dict = field(default_factory=dict)
    target_transform: str = "identity"  # how the predictor's output maps to an L1 loss
    # ONNX external-data files of this model (bundle-relative), each {"file", "sha256", "size"}.
    # Verified like the model file; the runtime refuses external data not listed here.
    external_data: list[dict] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelEntry":
        d = dict(d)
        d["inputs"] = [TensorSpec(**t) for t in d.get("inputs", [])]
        d["outputs"] = [TensorSpec(**t) for t in d.get("outputs", [])]
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class EngineEntry:
    """A TensorRT plan built for one GPU (compute capability) and TensorRT version."""

    model: str  # key of the ONNX model it was built from
    file: str
    sha256: str
    size: int
    precision: str
    tensorrt_version: str
    compute_capability: str
    min_batch: int = 1
    opt_batch: int = 64
    max_batch: int = 256


@dataclass
class Manifest:
    preprocessing: Preprocessing
    geometry: WindowGeometry
    models: dict[str, ModelEntry]
    loss: dict = field(default_factory=lambda: {"kind": "l1", "region": "window"})
    training: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    parity: dict = field(default_factory=dict)
    #: optional (:mod:`.domain`): the training domain and the healthy reference; None in bundles made before it,
    #: which load as before and skip the domain checks
    domain: dict | None = None
    engines: list[EngineEntry] = field(default_factory=list)
    rlp_version: str = ""
    created: str = ""
    schema: str = SCHEMA
    schema_version: int = SCHEMA_VERSION

    def heads(self) -> tuple[str, ...]:
        """The heatmap heads the bundle can run: ``g``, ``r``, then predictor variants ``r-NAME`` (sorted)."""
        have = {model_head(k) for k in self.models}
        have = {h for h in have if HEAD_PATTERN.fullmatch(h)}
        return tuple(h for h in ("g", "r") if h in have) + tuple(sorted(have - {"g", "r"}))

    def to_dict(self) -> dict:
        return {
            "schema": self.schema,
            "schema_version": self.schema_version,
            "rlp_version": self.rlp_version,
            "created": self.created,
            "preprocessing": self.preprocessing.to_dict(),
            "geometry": self.geometry.to_dict(),
            "loss": self.loss,
            "models": {k: asdict(v) for k, v in self.models.items()},
            "engines": [asdict(e) for e in self.engines],
            "training": self.training,
            "data": self.data,
            "parity": self.parity,
            **({"domain": self.domain} if self.domain is not None else {}),
        }

    @classmethod
    def from_dict(cls, d: dict, path=None) -> "Manifest":
        if d.get("schema") != SCHEMA:
            raise BadInput(f"not an rlp bundle manifest (schema {d.get('schema')!r}); {REBUILD}", path)
        ver = d.get("schema_version")
        if ver != SCHEMA_VERSION:
            raise BadInput(f"manifest schema version {ver!r} is not supported by this rlp "
                           f"(reads version {SCHEMA_VERSION}); {REBUILD} or upgrade rlp", path)
        problem = _schema_problem(d)
        if problem:
            raise BadInput(f"malformed manifest ({problem}); {REBUILD}", path)
        prep_version = d["preprocessing"].get("version", 1)
        if prep_version not in CEILINGS:
            raise BadInput(f"the bundle's preprocessing version {prep_version} is not known to this rlp "
                           f"(it knows {', '.join(map(str, CEILINGS))}); upgrade rlp", path)
        score = (d.get("loss") or {}).get("kind", "l1")
        if score not in SCORES:
            raise BadInput(f"the bundle's window score {score!r} is not known to this rlp "
                           f"(it knows {', '.join(SCORES)}); upgrade rlp", path)
        try:
            return cls(
                preprocessing=Preprocessing.from_dict(d["preprocessing"]),
                geometry=WindowGeometry.from_dict(d["geometry"]),
                models={k: ModelEntry.from_dict(v) for k, v in d["models"].items()},
                loss=d.get("loss", {}),
                training=d.get("training", {}),
                data=d.get("data", {}),
                parity=d.get("parity", {}),
                domain=d.get("domain"),
                engines=[EngineEntry(**e) for e in d.get("engines", [])],
                rlp_version=d.get("rlp_version", ""),
                created=d.get("created", ""),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BadInput(f"malformed manifest ({type(exc).__name__}: {exc}); {REBUILD}", path) from None


# --------------------------------------------------------------------------- field types
# A manifest is untrusted input: every field the runtime computes with must have the type it
# expects (and a sane range), or the manifest is refused as malformed before anything uses it.
_NUM = (int, float)
_MAX_SIDE = 8192  # model grid, window, stride and context sides (a 2D float32 grid of this side is 256 MiB)
_TENSOR = {"name": str, "shape": list, "dtype": str}
_FILE = {"file": str, "sha256": str, "size": int}
_MODEL = {"role": str, "file": str, "sha256": str, "size": int, "inputs": list, "outputs": list, "opset": int,
          "precision": str, "io_dtype": str, "input_kind": str, "architecture": dict, "target_transform": str,
          "external_data": list}
_ENGINE = {"model": str, "file": str, "sha256": str, "size": int, "precision": str, "tensorrt_version": str,
           "compute_capability": str, "min_batch": int, "opt_batch": int, "max_batch": int}
_PREPROCESSING = {"size": int, "percentile": _NUM, "nonfinite": str, "interpolation_order": int, "antialias": bool,
                  "min_brain_pixels": int, "version": int}
_GEOMETRY = {"size": int, "window": int, "stride": int, "context": (int, type(None)), "fill": _NUM, "min_tissue": _NUM,
             "paint": str}


def _typed(value, kinds) -> bool:
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if isinstance(value, bool) and bool not in kinds:  # True is an int to Python, not to a manifest
        return False
    if isinstance(value, float) and not math.isfinite(value):
        return False
    return isinstance(value, kinds)


def _fields_problem(d, spec: dict, where: str) -> str | None:
    if not isinstance(d, dict):
        return f"{where} is not an object"
    for key, kinds in spec.items():
        if key in d and not _typed(d[key], kinds):
            return f"{where}.{key} is {d[key]!r}"
    return None


def _geometry_problem(geom: dict) -> str | None:
    """A window geometry that cannot place a window where the brain is, or None.

    Positions are 0, stride, 2*stride, ... and size - window (:func:`.geometry.window_positions`):
    a stride over size - window leaves windows only at the slice's edges, and a grid whose gaps
    hide the slice's centre never scores the middle of the brain (preprocessing centres it):
    a heatmap of zeros, exit 0, no warning. Refused when the bundle is loaded.
    """
    size, window, stride = (geom.get(k, getattr(WindowGeometry, k)) for k in ("size", "window", "stride"))
    if not 0 < window <= size:
        return None  # WindowGeometry refuses it, with its own message
    if window < size and stride > size - window:
        return (f"geometry.stride {stride} is larger than size - window = {size - window} (size {size}, window "
                f"{window}): windows fit only at the slice's edges, so the heatmap would be (nearly) all zero")
    pos = window_positions(size, window, stride)
    lo, hi = (size - 1) // 2, size // 2  # the centre pixel(s)
    if not ((pos <= hi) & (pos + window - 1 >= lo)).any():  # no window touches them
        return (f"geometry (size {size}, window {window}, stride {stride}) places no window over the centre of "
                f"the slice, where the brain is; use a stride of at most the window")
    return None


def _schema_problem(d: dict) -> str | None:
    """The first field of ``d`` with a wrong type or an impossible value, or None."""
    problem = _fields_problem(d.get("preprocessing"), _PREPROCESSING, "preprocessing") or _fields_problem(
        d.get("geometry"), _GEOMETRY, "geometry")
    if problem:
        return problem
    loss = d.get("loss", {})
    if not isinstance(loss, dict) or not isinstance(loss.get("kind", "l1"), str):
        return f"loss is {loss!r}, not an object with a string kind"
    prep, geom = d["preprocessing"], d["geometry"]
    for where, v in (("preprocessing.size", prep.get("size")), *((f"geometry.{k}", geom.get(k))
                                                                 for k in ("size", "window", "stride", "context"))):
        if v is not None and not 0 < v <= _MAX_SIDE:
            return f"{where} {v} outside 1..{_MAX_SIDE}"
    problem = _geometry_problem(geom)
    if problem:
        return problem
    if not 0 < prep.get("percentile", 50) <= 100 or not 0 <= prep.get("interpolation_order", 1) <= 5 \
            or prep.get("min_brain_pixels", 0) < 0 or prep.get("nonfinite", "error") not in ("error", "zero"):
        return "preprocessing holds a value out of range"
    models = d.get("models")
    if not isinstance(models, dict) or not models:
        return "models is not a non-empty object"
    for key, m in models.items():
        problem = _fields_problem(m, _MODEL, f"models.{key}")
        if problem:
            return problem
        for io in ("inputs", "outputs"):
            for t in m.get(io, []):
                problem = _fields_problem(t, _TENSOR, f"models.{key}.{io}")
                if problem:
                    return problem
                if not all(_typed(v, (int, str)) for v in t.get("shape", [])):
                    return f"models.{key}.{io} shape {t.get('shape')!r} holds something other than sizes and names"
        for x in m.get("external_data", []):
            problem = _fields_problem(x, _FILE, f"models.{key}.external_data")
            if problem:
                return problem
    if d.get("domain") is not None and (problem := domain_problem(d["domain"])):
        return problem
    engines = d.get("engines", [])
    if not isinstance(engines, list):
        return "engines is not a list"
    for e in engines:
        problem = _fields_problem(e, _ENGINE, "engines[]")
        if problem:
            return problem
    return None


def resolve_inside(bundle: Path, rel: str, what: str = "file") -> Path:
    """``bundle / rel``, refusing anything that leaves the bundle or is a link."""
    if not isinstance(rel, str) or not rel or os.path.isabs(rel) or "\\" in rel:
        raise SecurityRefusal(f"{what} path {rel!r} must be relative to the bundle", bundle)
    if "\x00" in rel:
        raise SecurityRefusal(f"{what} path {rel!r} holds a NUL byte", bundle)
    parts = Path(rel).parts
    if any(p in ("..", "") for p in parts):
        raise SecurityRefusal(f"{what} path {rel!r} leaves the bundle", bundle)
    root = bundle.resolve()
    p = bundle / rel
    cur = bundle
    for part in parts:
        cur = cur / part
        if cur.is_symlink():
            raise SecurityRefusal(f"{what} {rel!r} is a symbolic link; refused", bundle)
    try:
        real = p.resolve(strict=False)
    except OSError as exc:
        raise SecurityRefusal(f"cannot resolve {what} {rel!r} ({exc})", bundle) from None
    if root not in real.parents and real != root:
        raise SecurityRefusal(f"{what} {rel!r} resolves outside the bundle", bundle)
    if p.exists() and p.is_file() and os.stat(p).st_nlink > 1:
        raise SecurityRefusal(f"{what} {rel!r} is a hard link; refused", bundle)
    return p


def verify_file(bundle: Path, rel: str, sha256: str, size: int | None) -> Path:
    p = resolve_inside(bundle, rel)
    if not p.is_file():
        if p.exists():
            raise BadInput(f"bundle file {rel} is not a regular file; {REBUILD}", bundle)
        raise InputMissing(f"bundle file {rel} is missing; {REBUILD}", bundle)
    if size is not None and p.stat().st_size != int(size):
        raise SecurityRefusal(f"{rel} has {p.stat().st_size} bytes, the manifest says {size}; {REBUILD}", bundle)
    got = sha256_file(p)
    if got != sha256:
        raise SecurityRefusal(f"{rel} sha256 {got[:12]}... does not match the manifest ({sha256[:12]}...); {REBUILD}",
                              bundle)
    return p


#: limits checked before a manifest is parsed (it is untrusted input; the real ones are about 12 KB, 6 levels)
MAX_MANIFEST_BYTES = 16 << 20
MAX_MANIFEST_DEPTH = 32


def json_depth(text: str) -> int:
    """The deepest nesting of arrays and objects in JSON ``text`` (brackets inside strings ignored), without
    parsing it: a document nested thousands deep would otherwise exhaust the parser's recursion."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def load_bundle_manifest(bundle: str | os.PathLike, verify: bool = True) -> Manifest:
    """Read ``manifest.json`` and (by default) verify every listed file's size and hash."""
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise InputMissing("bundle folder not found", bundle)
    mpath = resolve_inside(bundle, MANIFEST, "manifest")
    if not mpath.is_file():
        if mpath.exists():
            raise BadInput(f"{MANIFEST} is not a regular file; {REBUILD}", mpath)
        raise InputMissing(f"no {MANIFEST}; is this an rlp bundle? {REBUILD}", bundle)
    try:
        size = mpath.stat().st_size
        if size > MAX_MANIFEST_BYTES:  # refused before it is read: a manifest is kilobytes
            raise BadInput(f"manifest is {size} bytes, more than the {MAX_MANIFEST_BYTES >> 20} MiB a manifest can be; "
                           f"{REBUILD}", mpath)
        text = mpath.read_text(encoding="utf-8")
        depth = json_depth(text)
        if depth > MAX_MANIFEST_DEPTH:
            raise BadInput(f"manifest nests {depth} levels deep, more than the {MAX_MANIFEST_DEPTH} a manifest can; "
                           f"{REBUILD}", mpath)
        d = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInput(f"manifest is not valid JSON ({exc}); {REBUILD}", mpath) from None
    except OSError as exc:
        raise RlpError(f"cannot read the manifest ({exc.strerror or exc})", mpath, EX_IOERR) from None
    if not isinstance(d, dict):
        raise BadInput(f"manifest is not a JSON object; {REBUILD}", mpath)
    man = Manifest.from_dict(d, mpath)
    if verify:
        for m in man.models.values():
            verify_file(bundle, m.file, m.sha256, m.size)
            for x in m.external_data:
                if not isinstance(x, dict) or not {"file", "sha256"} <= set(x):
                    raise BadInput(f"malformed external_data entry {x!r}; {REBUILD}", mpath)
                verify_file(bundle, x["file"], x["sha256"], x.get("size"))
        for e in man.engines:
            verify_file(bundle, e.file, e.sha256, e.size)
    return man


def file_entry_fields(path: Path) -> dict:
    return {"sha256": sha256_file(path), "size": path.stat().st_size}
