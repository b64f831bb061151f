"""What a model is and what it reads: the names shared by training, export, the manifest and the runtime.

``str`` enums, so that a member is its string everywhere a string goes (JSON, manifests, ``==``
against the strings of files written before these enums existed), and CLI choices are built from the
same members the code checks against.
"""

from __future__ import annotations

from enum import Enum


class _Named(str, Enum):
    def __str__(self) -> str:  # "crop", not "PredictorKind.CROP", in messages and f-strings
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @classmethod
    def values(cls) -> tuple[str, ...]:
        return tuple(m.value for m in cls)


class PredictorKind(_Named):
    """A predictor R's architecture (``rlp-train --predictor``)."""

    DENSE = "dense"  # the slice in, every window's score out
    CROP = "crop"  # the context crop around the painted box in, that window's score out
    PAPER = "paper"  # the paper's R: the whole inpainted slice in, the box's score out


class InputKind(_Named):
    """What a model reads (the manifest's ``input_kind``)."""

    CROP = "crop"  # the context crop around the painted box
    IMAGE = "image"  # the whole inpainted slice
    DENSE = "dense"  # the whole slice, unpainted, read once for every window


#: what each predictor kind reads
PREDICTOR_INPUT = {PredictorKind.DENSE: InputKind.DENSE, PredictorKind.CROP: InputKind.CROP,
                   PredictorKind.PAPER: InputKind.IMAGE}
