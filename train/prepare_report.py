"""What ``rlp-train prepare`` took and skipped, and the split it really made.

A folder of volumes may hold other files: label maps (``_truth``, ``_lesion``, ``_seg``...) are not
images and are skipped; 2D and single-slice files are taken, each a subject of its own, and said so;
volumes with no brain slice are skipped. The split is subject-wise, so with subjects of very different
sizes the slice shares are not the subjects' 80/10/10: the summary gives both.
"""

from __future__ import annotations

import re

import numpy as np

from rlp.runtime.core.progress import stderr_console

#: file stems of label maps (ground truth, lesion masks, segmentations): never taken as images
LABEL = re.compile(r"(_truth|_lesion|_lesions|_label|_labels|_seg|_dseg|_roi)$", re.IGNORECASE)


def is_label(stem: str) -> bool:
    return bool(LABEL.search(stem))


def split_counts(split: np.ndarray, subject_of_slice: np.ndarray, names: tuple[str, ...]) -> tuple[dict, dict]:
    """(slices per split, subjects per split)."""
    slices = {name: int((split == i).sum()) for i, name in enumerate(names)}
    subjects = {name: int(len(np.unique(subject_of_slice[split == i]))) for i, name in enumerate(names)}
    return slices, subjects


def shares(counts: dict) -> str:
    total = max(1, sum(counts.values()))
    return "/".join(f"{100 * v / total:.0f}" for v in counts.values()) + "%"


def subject_rule(seed: int, slices: dict, subjects: dict) -> str:
    return (f"subject-wise, seeded permutation (seed {seed}): subjects {'/'.join(map(str, subjects.values()))} "
            f"(aiming at 80/10/10), slices {'/'.join(map(str, slices.values()))} ({shares(slices)}); "
            "no subject in two splits")


def warn(summary: dict) -> None:
    """The lines a user needs on stderr: what was skipped, single-slice subjects, a lopsided slice split."""
    skipped = summary["skipped"]
    if skipped:
        listed = "; ".join(f"{s['file']}: {s['reason']}" for s in skipped[:5])
        more = f"; and {len(skipped) - 5} more (listed in the summary)" if len(skipped) > 5 else ""
        stderr_console.print(f"prepare: skipped {len(skipped)} file(s): {listed}{more}", markup=False, highlight=False,
                             soft_wrap=True)
    singles = [t["image"] for t in summary["taken"] if t.get("slices_in_volume") == 1]
    if singles:
        stderr_console.print(f"prepare: {len(singles)} file(s) hold a single slice and were each taken as a subject "
                             f"of its own (e.g. {singles[0]})", markup=False, highlight=False, soft_wrap=True)
    sl = summary["split"]
    total = max(1, sum(sl.values()))
    if summary["subjects"] > 1 and abs(sl.get("train", 0) / total - 0.8) > 0.15:
        stderr_console.print(f"prepare: the subject-wise split puts {shares(sl)} of the slices in train/val/test "
                             f"({'/'.join(map(str, sl.values()))} slices): the subjects differ in size",
                             markup=False, highlight=False, soft_wrap=True)
