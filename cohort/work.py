"""One volume of a cohort: the per-volume function every engine runs, and the record it leaves.

A :class:`Worker` holds one bundle, loaded once per worker process or Ray actor (its manifest and
every model file checked against their sha256, and the manifest's sha256 against the one the
driver saw, so that every volume of a cohort is made by one bundle), and one onnxruntime session
per head, reused for every volume it is given. :meth:`Worker.run` makes the volume's outputs with
``rlp-heatmap``'s own per-input code (the same files, written as one atomic set), then a sidecar
``<stem>_cohort.json`` holding the volume's index row and the key of the bundle and settings that
made it. A rerun skips a volume whose sidecar has the same key and whose outputs all exist
(:func:`done_row`), and recomputes (overwrites) the others.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from rlp.runtime import __version__
from rlp.runtime.core.atomic import write_json
from rlp.runtime.core.errors import EX_SOFTWARE, BadInput, RlpError
from rlp.runtime.core.nifti import nifti_stem
from rlp.runtime.heatmap import Bundle
from rlp.runtime.options import PER_INPUT

SIDECAR = "_cohort.json"
SIDECAR_SCHEMA = 1
OK, FAILED, SKIPPED = "ok", "failed", "skipped"


def _key(self, bundle_sha256: str) -> str:
    """The sha256 of the bundle's manifest sha256 and these settings: equal keys, equal outputs."""
    text = json.dumps({"bundle": bundle_sha256, "settings": dataclasses.asdict(self)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


#: What a volume's outputs depend on besides the bundle: ``rlp-heatmap``'s per-input options
#: (:data:`rlp.runtime.options.PER_INPUT`), by their argparse names and defaults, so that an option added to
#: rlp-heatmap is a setting here too (and part of the resume key). Frozen; ``key(bundle_sha256)``.
Settings = dataclasses.make_dataclass(
    "Settings", [(o.dest, object, dataclasses.field(default=o.default)) for o in PER_INPUT],
    namespace={"key": _key, "__module__": __name__}, frozen=True)


@dataclass(frozen=True)
class BundleSpec:
    """How every worker loads the bundle (the runtime options that do not change the scores)."""

    root: str | None
    sha256: str
    backend: str = "auto"
    threads: int | None = None
    batch: int = 256
    precision: str = "auto"
    score: str | None = None

    def load(self) -> Bundle:
        bundle = Bundle.load(self.root, backend=self.backend, threads=self.threads, batch=self.batch,
                             precision=self.precision, score=self.score)
        if bundle.manifest_sha256 != self.sha256:
            raise BadInput(f"the bundle changed while the cohort ran (manifest sha256 {bundle.manifest_sha256[:12]}, "
                           f"the cohort started with {self.sha256[:12]})", bundle.root)
        return bundle


def sidecar_of(out_dir: str | os.PathLike, path: str) -> Path:
    return Path(out_dir) / f"{nifti_stem(path)}{SIDECAR}"


def done_row(task: dict, key: str) -> dict | None:
    """The row a finished volume recorded, if it was made with ``key`` and its outputs are all there."""
    try:
        side = json.loads(sidecar_of(task["out_dir"], task["path"]).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    row = side.get("row") if isinstance(side, dict) else None
    if side.get("key") != key or not isinstance(row, dict) or row.get("status") != OK:
        return None
    if not all(os.path.isfile(p) for p in row.get("outputs", {}).values()):
        return None
    return row


def _row(task: dict, summary: dict, seconds: float) -> dict:
    return {"input": task["path"], "meta": task.get("meta", {}), "status": OK, "reason": "",
            "max_score": summary["max_score"],
            "top_windows": [{"score": t.get("score"), "slice": t.get("slice"), "voxel": t.get("voxel"),
                             "world_mm": t.get("world_mm")} for t in summary["top_windows"]],
            "slices": summary["slices"]["processed"],
            "outputs": summary["outputs"], "bundle_sha256": summary["bundle"]["manifest_sha256"],
            "seconds": round(seconds, 3), "warnings": summary["warnings"]}


def failed_row(task: dict, reason: str) -> dict:
    return {"input": task["path"], "meta": task.get("meta", {}), "status": FAILED, "reason": reason,
            "max_score": None, "top_windows": [], "slices": None, "outputs": {}, "bundle_sha256": None,
            "seconds": None, "warnings": []}


class SetupFailed(RlpError):
    """A worker could not load the bundle: every volume would fail the same way, so the cohort stops."""


class Worker:
    """A bundle loaded once, scoring one volume per :meth:`run` call (a worker process or a Ray actor)."""

    def __init__(self, spec: BundleSpec, settings: Settings):
        self.spec, self.settings = spec, settings
        self.bundle = spec.load()
        self.backend = self.bundle.backend(settings.path)
        self.key = settings.key(spec.sha256)
        self.args = argparse.Namespace(**dataclasses.asdict(settings), force=True)

    def run(self, task: dict) -> dict:
        """The volume's index row: its outputs made (replacing any earlier ones), or why not.

        A bad volume is a ``failed`` row (not retried: it would fail again); only a lost worker is retried,
        by the driver."""
        from rlp.runtime.outputs import failure, process_input  # rlp-heatmap's per-input code and messages

        t0 = time.perf_counter()
        out_dir = Path(task["out_dir"])
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            summary = process_input(task["path"], self.args, self.bundle, self.backend, out_dir, {}, None, "")
        except Exception as exc:  # a bad volume, out of memory, or a bug: one line (RLP_DEBUG=1: its traceback)
            return failed_row(task, failure(task["path"], exc)[0])
        row = _row(task, summary, time.perf_counter() - t0)
        write_json(sidecar_of(out_dir, task["path"]),
                   {"schema": SIDECAR_SCHEMA, "rlp_version": __version__, "key": self.key,
                    "settings": dataclasses.asdict(self.settings), "row": row})
        return row

    def close(self) -> None:
        self.bundle.close()


# -- worker processes (concurrent.futures): one Worker per process, made by the pool's initializer
_worker: Worker | None = None
_worker_error: str | None = None


def init_process(spec: BundleSpec, settings: Settings) -> None:
    global _worker, _worker_error
    try:
        _worker = Worker(spec, settings)
    except RlpError as exc:  # reported with each task (an initializer's exception would break the pool)
        _worker_error = str(exc)


def run_in_process(task: dict) -> dict:
    if _worker is None:
        raise SetupFailed(f"a worker could not load the bundle: {_worker_error}", code=EX_SOFTWARE)
    return _worker.run(task)
