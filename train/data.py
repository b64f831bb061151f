"""Dataset preparation (``rlp-train prepare``) and reading.

Sources: an NFBS_Dataset folder, any folder or glob of NIfTI volumes (brain
masks paired by name), or ``mni152`` (the skull-stripped MNI ICBM152 2009a
template inside the nilearn wheel; nothing is downloaded).

Every slice goes through the shared preprocessing contract
(:func:`rlp.runtime.core.preprocess.preprocess_slice`), so training and deployment
cannot drift apart. The HDF5 file is built as ``<out>.partial``, marked
complete, fsynced and moved into place; readers refuse files without the mark.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rlp.runtime import __version__
from rlp.runtime.core.errors import EX_CANTCREAT, EX_IOERR, BadInput, CannotCreate, InputMissing, RlpError, one_line
from rlp.runtime.core.manifest import sha256_file
from rlp.runtime.core.nifti import AXES, check_header, load_nifti, nifti_stem
from rlp.runtime.core.preprocess import CURRENT_VERSION, Preprocessing, preprocess_slice
from rlp.runtime.core.progress import progress
from rlp.runtime.inputs import nifti_files

from .prepare_report import is_label, split_counts, subject_rule, warn

SPLITS = ("train", "val", "test")
MNI152 = "mni152"
MNI152_FILE = "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"


@dataclass
class Subject:
    id: str
    image: Path
    mask: Path | None = None


def mni152_path() -> Path:
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise InputMissing("the mni152 source needs the nilearn package: pip install 'rlp[train]'", MNI152)
    p = Path(list(spec.submodule_search_locations)[0]) / MNI152_FILE
    if not p.is_file():
        raise InputMissing(f"nilearn is installed but {MNI152_FILE} is not in it", MNI152)
    return p


def _is_mask(name: str) -> bool:
    return bool(re.search(r"mask", name, re.IGNORECASE))


def discover(source: str, skipped: list | None = None) -> tuple[str, list[Subject]]:
    """Find the subjects of a source; returns (kind, subjects). Label maps (``_truth``, ``_lesion``, ...) are
    not subjects: each is appended to ``skipped`` (``{"file", "reason"}``)."""
    if source == MNI152:
        return "mni152", [Subject("mni152", mni152_path())]
    p = Path(source)
    if p.is_dir():
        nfbs = sorted(p.glob("*/*_T1w_brain.nii.gz"))
        if nfbs:
            subs = []
            for img in nfbs:
                mask = img.with_name(img.name.replace("_T1w_brain.nii.gz", "_T1w_brainmask.nii.gz"))
                subs.append(Subject(img.parent.name, img, mask if mask.is_file() else None))
            return "nfbs", subs
    files = nifti_files(source)  # every NIfTI file below a folder, or matching a glob (rlp.runtime.inputs)
    if files is None:
        if not p.is_file():
            raise InputMissing("no such file, folder or glob (or 'mni152')", source)
        files = [p]
    labels = [f for f in files if not _is_mask(f.name) and is_label(nifti_stem(f))]
    if skipped is not None:
        skipped += [{"file": str(f),
                     "reason": "a label map (ground truth or segmentation), not an image"} for f in labels]
    images = [f for f in files if not _is_mask(f.name) and f not in labels]
    masks = {nifti_stem(f): f for f in files if _is_mask(f.name)}
    subs = []
    seen: dict[str, int] = {}
    for img in images:
        stem = nifti_stem(img)
        mask = masks.get(stem + "mask") or masks.get(stem + "_mask") or masks.get(stem + "_brainmask")
        sid = stem
        if sid in seen:  # same stem in different folders
            seen[sid] += 1
            sid = f"{stem}#{seen[stem]}"
        else:
            seen[sid] = 0
        subs.append(Subject(sid, img, mask))
    if not subs:
        raise InputMissing("no NIfTI volumes (.nii, .nii.gz) found", source)
    return "folder", subs


def split_subjects(n: int, seed: int, fractions=(0.8, 0.1, 0.1)) -> np.ndarray:
    """Subject-wise split: 0 train, 1 val, 2 test; val and test get at least one subject when n >= 3."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    n_val = max(1, int(round(fractions[1] * n))) if n >= 3 else 0
    n_test = max(1, int(round(fractions[2] * n))) if n >= 3 else 0
    out = np.zeros(n, np.uint8)
    out[order[:n_val]] = 1
    out[order[n_val : n_val + n_test]] = 2
    return out


def split_slices_by_range(n: int, block: int = 5) -> np.ndarray:
    """Single-subject split by contiguous slice ranges: of every 10 blocks, 8 train, 1 val, 1 test."""
    b = np.arange(n) // block
    out = np.zeros(n, np.uint8)
    out[b % 10 == 4] = 1
    out[b % 10 == 9] = 2
    return out


def prepare(
    source: str,
    out: str | os.PathLike,
    *,
    axis: str = "axial",
    size: int = 256,
    skip_bad: bool = False,
    seed: int = 0,
    force: bool = False,
    quiet: bool = False,
    percentile: float | None = None,  # None: the version's own
    version: int = CURRENT_VERSION,
) -> dict:
    """Build the slice dataset; returns a summary dict."""
    import h5py

    if axis not in AXES:
        raise BadInput(f"unknown axis {axis!r}; choose one of {', '.join(AXES)}")
    out = Path(out)
    if out.exists() and not force:
        raise CannotCreate("exists; pass --force to overwrite", out)
    skipped: list[dict] = []
    kind, subjects = discover(source, skipped)
    subjects, bad_errors = _preflight(subjects)
    if bad_errors and not skip_bad:
        raise _bad_volumes(bad_errors, source)
    pre = Preprocessing(size=size, percentile=percentile, nonfinite="error", version=version)
    partial = out.with_name(out.name + ".partial")
    bad: list[str] = [str(e) for e in bad_errors]
    sources = []
    f = None
    try:  # from the partial file's creation on: a Ctrl-C or SIGTERM at any point removes it
        f = _create_partial(h5py, partial)
        with f:
            kept_subjects, n_empty = _write_volumes(f, subjects, axis, pre, quiet, skip_bad, bad_errors, sources,
                                                    skipped)
            bad += [str(e) for e in bad_errors[len(bad):]]
            images, subj_idx = f["images"], f["subject"]
            if bad_errors and not skip_bad:
                raise _bad_volumes(bad_errors, source)
            n = images.shape[0]
            if n == 0:
                raise BadInput("no slice with brain tissue in any volume", source)
            subj_of_slice = subj_idx[:]
            split, rule = _split(len(kept_subjects), subj_of_slice, seed)
            f.create_dataset("split", data=split.astype(np.uint8))
            f.create_dataset("subjects", data=np.asarray(kept_subjects, dtype=object), dtype=h5py.string_dtype())
            f.attrs.update({"source": str(source), "source_kind": kind, "axis": axis, "size": size,
                            "preprocessing": json.dumps(pre.to_dict()), "split_rule": rule,
                            "split_names": json.dumps(list(SPLITS)), "n_empty_slices_skipped": n_empty,
                            "bad_volumes_skipped": json.dumps(bad), "sources": json.dumps(sources),
                            "rlp_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
            f.attrs["complete"] = 1  # written last: readers refuse files without it
            f.flush()
        with open(partial, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(partial, out)
    except CannotCreate:  # _create_partial's own refusal (another writer's file): not ours to remove
        raise
    except (OSError, RuntimeError) as exc:  # disk full (h5py raises RuntimeError from a close that cannot
        # flush, e.g. past a file-size limit), I/O error, or the partial file removed under us
        if f is not None:  # created by this run: remove it
            _close_after_failure(f)
            partial.unlink(missing_ok=True)
        errno_ = getattr(exc, "errno", None)
        code = EX_CANTCREAT if errno_ in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else EX_IOERR
        reason = os.strerror(errno_) if errno_ else one_line(exc)  # not HDF5's page of details
        raise RlpError(f"cannot write the dataset ({reason}); nothing was written", out, code) from None
    except BaseException:
        if f is not None:  # created by this run: remove it
            _close_after_failure(f)
            partial.unlink(missing_ok=True)
        else:  # interrupted while creating it: ours or a dead writer's, unless a live writer holds it
            _remove_unless_locked(h5py, partial)
        raise
    return _summary(out, n, kept_subjects, split, subj_of_slice, n_empty, bad, rule, sources, skipped, quiet)


def _summary(out, n, kept_subjects, split, subj_of_slice, n_empty, bad, rule, sources, skipped, quiet) -> dict:
    counts, subjects = split_counts(split, subj_of_slice, SPLITS)
    summary = {"out": str(out), "slices": int(n), "subjects": len(kept_subjects), "split": counts,
               "split_subjects": subjects, "empty_slices_skipped": n_empty, "bad_volumes_skipped": len(bad),
               "split_rule": rule,
               "taken": [{"image": s["image"], "slices": s["n_slices"], "slices_in_volume": s["slices_in_volume"]}
                         for s in sources],
               "skipped": skipped + [{"file": b.split(": ")[0], "reason": b} for b in bad]}
    if not quiet:
        warn(summary)
    return summary


def _split(n_subjects: int, subj_of_slice: np.ndarray, seed: int) -> tuple[np.ndarray, str]:
    """(split of every slice, the rule in words with the counts it gave)."""
    if n_subjects == 1:
        return split_slices_by_range(len(subj_of_slice)), (
            "single subject: split by contiguous slice ranges (blocks of 5 slices; of every 10 blocks 8 train, 1 val, "
            "1 test); neighbouring slices are correlated, so held-out figures are optimistic")
    split = split_subjects(n_subjects, seed)[subj_of_slice]
    return split, subject_rule(seed, *split_counts(split, subj_of_slice, SPLITS))


def _write_volumes(f, subjects, axis, pre, quiet, skip_bad, bad_errors, sources, skipped) -> tuple[list[str], int]:
    """Every volume's brain slices into ``f``'s datasets; a bad volume goes to ``bad_errors``, one without
    brain to ``skipped``. Returns (the subjects kept, the empty slices dropped)."""
    size = pre.size
    images = f.create_dataset("images", (0, size, size), np.float32, maxshape=(None, size, size),
                              chunks=(1, size, size), compression="lzf")
    brains = f.create_dataset("brains", (0, size, size), np.bool_, maxshape=(None, size, size),
                              chunks=(1, size, size), compression="lzf")
    subj_idx = f.create_dataset("subject", (0,), np.int32, maxshape=(None,))
    slice_idx = f.create_dataset("slice_index", (0,), np.int32, maxshape=(None,))
    kept_subjects: list[str] = []
    n_empty = 0
    with progress(quiet) as bar:
        task = bar.add_task("preparing volumes", total=len(subjects))
        for sub in subjects:
            bar.advance(task)
            try:
                n, rows, brs, idxs = _volume_slices(sub, axis, pre)
                n_empty += n - len(rows)
            except RlpError as exc:
                bad_errors.append(exc)
                continue
            if bad_errors and not skip_bad:  # failing: only check the other volumes, to list them all
                continue
            if not rows:
                skipped.append({"file": str(sub.image), "reason": f"no slice with brain tissue ({n} slices)"})
                continue
            si = len(kept_subjects)
            kept_subjects.append(sub.id)
            a = images.shape[0]
            for ds, arr in ((images, np.stack(rows)), (brains, np.stack(brs)),
                            (subj_idx, np.full(len(rows), si, np.int32)), (slice_idx, np.asarray(idxs, np.int32))):
                ds.resize(a + len(rows), axis=0)
                ds[a:] = arr
            sources.append({"id": sub.id, "image": str(sub.image), "sha256": sha256_file(sub.image),
                            "mask": str(sub.mask) if sub.mask else None, "n_slices": len(rows), "slices_in_volume": n})
    return kept_subjects, n_empty


def _volume_slices(sub: Subject, axis: str, pre: Preprocessing) -> tuple[int, list, list, list]:
    """(slices along ``axis``, then the preprocessed images, brain masks and indices of those with brain)."""
    vol = load_nifti(sub.image)
    mvol = load_nifti(sub.mask) if sub.mask else None
    if mvol is not None and mvol.data.shape != vol.data.shape:
        raise BadInput(f"mask shape {mvol.data.shape} != image shape {vol.data.shape}", sub.mask)
    k, n = vol.slices(axis)
    rows, brs, idxs = [], [], []
    for i in range(n):
        sl, sp = vol.get_slice(k, i)
        m = None if mvol is None else mvol.get_slice(k, i)[0] > 0
        prep = preprocess_slice(sl, pre, sp, mask=m, path=sub.image)
        if not prep.empty:
            rows.append(prep.image)
            brs.append(prep.brain)
            idxs.append(i)
    return n, rows, brs, idxs


def _preflight(subjects: list[Subject]) -> tuple[list[Subject], list[RlpError]]:
    """Check every volume's header (and its mask's) before anything is written; returns (good, errors)."""
    good, errors = [], []
    for sub in subjects:
        try:
            shape = check_header(sub.image)
            mshape = check_header(sub.mask) if sub.mask is not None else shape
            if mshape[:3] != shape[:3]:
                raise BadInput(f"mask {sub.mask.name} has shape {mshape}, the image {shape}", sub.image)
            good.append(sub)
        except RlpError as exc:
            errors.append(exc)
    return good, errors


def _close_after_failure(f) -> None:
    """Close an HDF5 file whose writes failed (disk full): HDF5 may need a second try, and an
    HDF5 file left open with unwritable data crashes the interpreter when it is freed."""
    for _ in range(3):
        try:
            f.close()
            return
        except Exception:
            continue


def _bad_volumes(errors: list[RlpError], source: str) -> RlpError:
    """One error naming every bad volume (the first one's exit code)."""
    listed = "; ".join(str(e) for e in errors[:10]) + (f"; and {len(errors) - 10} more" if len(errors) > 10 else "")
    return RlpError(f"{len(errors)} bad volume(s), nothing written (fix them or pass --skip-bad): {listed}",
                    source, errors[0].code)


_LIVE_WRITER = "another process is writing it (HDF5 file lock); wait for it to finish"


def _remove_unless_locked(h5py, partial: Path) -> bool:
    """Remove ``partial`` unless a live writer holds its HDF5 lock; False when one does."""
    if not (partial.exists() or partial.is_symlink()):
        return True
    try:
        h5py.File(partial, "r").close()  # a writer holds an exclusive lock: this raises BlockingIOError
    except BlockingIOError:
        return False
    except OSError:
        pass  # left by a killed writer (not even a valid HDF5 file)
    partial.unlink(missing_ok=True)
    return True


def _create_partial(h5py, partial: Path):
    """Create ``partial`` for writing; a live writer's file (HDF5 lock) is a clean error, a dead one's is replaced."""
    try:
        partial.parent.mkdir(parents=True, exist_ok=True)
        if not _remove_unless_locked(h5py, partial):
            raise CannotCreate(_LIVE_WRITER, partial)
        # "x": exclusive, never truncates another writer's file. No chunk cache: every chunk (one slice) is
        # written once, whole, and a failed write must not leave dirty chunks that HDF5 cannot drop.
        return h5py.File(partial, "x", rdcc_nbytes=0)
    except (BlockingIOError, FileExistsError):  # a writer that started meanwhile
        raise CannotCreate(_LIVE_WRITER, partial) from None
    except OSError as exc:
        raise CannotCreate(one_line(exc), partial) from None


class SliceData:
    """A prepared dataset, read fully into memory (images, brain masks, split)."""

    def __init__(self, path: str | os.PathLike):
        import h5py

        self.path = Path(path)
        if not self.path.is_file():
            raise InputMissing("dataset not found (run rlp-train prepare first)", self.path)
        try:
            with h5py.File(self.path, "r") as f:
                if int(f.attrs.get("complete", 0)) != 1:
                    raise BadInput("incomplete dataset (its writer did not finish); prepare it again", self.path)
                self.images = f["images"][:]
                self.brains = f["brains"][:]
                self.split = f["split"][:]
                self.subject = f["subject"][:]
                self.slice_index = f["slice_index"][:]
                self.subjects = [s.decode() if isinstance(s, bytes) else str(s) for s in f["subjects"][:]]
                self.attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}
        except RlpError:
            raise
        except BlockingIOError:
            raise BadInput("locked by a writer (HDF5 file locking); wait for it to finish", self.path) from None
        except (OSError, KeyError) as exc:
            raise BadInput(f"not a readable rlp dataset ({exc})", self.path) from None
        self.size = int(self.images.shape[-1])
        self.preprocessing = Preprocessing.from_dict(json.loads(self.attrs["preprocessing"]))

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == SPLITS.index(split))

    def provenance(self) -> dict:
        return {
            "path": str(self.path),
            "sha256": sha256_file(self.path),
            "source": self.attrs.get("source"),
            "source_kind": self.attrs.get("source_kind"),
            "axis": self.attrs.get("axis"),
            "size": self.size,
            "split_rule": self.attrs.get("split_rule"),
            "split_counts": {s: int(len(self.indices(s))) for s in SPLITS},
            "sources": json.loads(self.attrs.get("sources", "[]")),
            "rlp_version": self.attrs.get("rlp_version"),
        }
