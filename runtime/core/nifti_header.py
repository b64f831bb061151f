"""Reading a NIfTI file's bytes with care, before nibabel sees them.

Regular files only (never opened blocking: a FIFO or a device would hang the reader), the name checked against
the gzip magic, the header parsed and checked from its raw bytes (dimensions, data type, zooms, intent, declared
size against :mod:`~rlp.runtime.core.limits`) before any voxel is allocated, and gzip streams read to the end
so their CRC is verified (nibabel never reads it). Every problem is one
:class:`~rlp.runtime.core.errors.RlpError` naming the file. :mod:`~rlp.runtime.core.nifti` builds on it.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import logging
import math
import os
import stat
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from . import limits
from .errors import EX_IOERR, BadInput, InputMissing, RlpError, one_line

_OK_DTYPES = {2, 4, 8, 16, 64, 256, 512, 768, 1024, 1280}  # u8 i16 i32 f32 f64 i8 u16 u32 i64 u64


def nifti_suffix(path: str | os.PathLike) -> str | None:
    name = os.fspath(path).lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    if name.endswith(".nii"):
        return ".nii"
    return None


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def not_regular(mode: int) -> str | None:
    """What a file of this ``st_mode`` is when it is not a regular file ("a FIFO (named pipe)"...), else None."""
    if stat.S_ISREG(mode):
        return None
    return next((what for test, what in _KINDS if test(mode)), "not a file")


def _stat_input(path: Path) -> os.stat_result:
    """``os.stat`` of an input, refusing anything but a regular file before it is ever opened
    (a FIFO or a device would block the reader forever, or never end)."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise InputMissing("no such file", path) from None
    except OSError as exc:  # e.g. a name too long, a permission denied on a folder
        raise RlpError(exc.strerror or str(exc), path, EX_IOERR) from None
    kind = not_regular(st.st_mode)
    if kind:
        raise BadInput(f"not a regular file (it is {kind}); expected a .nii or .nii.gz file", path)
    return st


def _open_regular(path: Path):
    """Open ``path`` for reading without ever blocking on it; refuse it unless it is a regular file.

    The name is checked before and the open file after (it may have been swapped for a FIFO in between)."""
    _stat_input(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise InputMissing("no such file", path) from None
    except OSError as exc:
        raise RlpError(exc.strerror or str(exc), path, EX_IOERR) from None
    try:
        kind = not_regular(os.fstat(fd).st_mode)
        if kind:
            raise BadInput(f"not a regular file (it is {kind}); expected a .nii or .nii.gz file", path)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def _opener(gz: bool):
    @contextlib.contextmanager
    def opened(path: Path, mode: str = "rb"):
        with _open_regular(Path(path)) as raw:
            if gz:
                with gzip.GzipFile(fileobj=raw, mode="rb") as fh:
                    yield fh
            else:
                yield raw

    return opened


def _open_nifti(path: Path):
    """Check the name against the gzip magic; return an opener for the (decompressed) stream."""
    if _stat_input(path).st_size == 0:
        raise BadInput("empty file", path)
    try:
        with _open_regular(path) as fh:
            magic = fh.read(2)
    except OSError as exc:
        raise RlpError(exc.strerror or str(exc), path, EX_IOERR) from None
    gz = magic == b"\x1f\x8b"
    suf = nifti_suffix(path)
    if suf is None:
        raise BadInput("unknown extension; expected .nii or .nii.gz", path)
    if suf == ".nii.gz" and not gz:
        raise BadInput("named .nii.gz but is not gzip-compressed", path)
    if suf == ".nii" and gz:
        raise BadInput("named .nii but is gzip-compressed (rename it to .nii.gz)", path)
    return _opener(gz), gz


def _check_declared(head: bytes, path: Path, gz: bool):
    """Parse the header; refuse a declared size over the cap (or, for ``.nii``, over the file size).

    Returns (header class, header, bytes the file must hold: header, extensions and voxels).
    """
    klass, hdr = _parse_header(head, path)
    shape = hdr.get_data_shape()
    itemsize = np.dtype(hdr.get_data_dtype()).itemsize
    # Python integers: a product of NIfTI dims can overflow int64 and wrap below the cap.
    nbytes = math.prod(int(s) for s in shape) * itemsize
    too_large = limits.refusal(tuple(int(s) for s in shape), nbytes)
    if too_large:
        raise BadInput(too_large, path)
    offset = float(hdr["vox_offset"])
    if not (np.isfinite(offset) and len(hdr.binaryblock) + 4 <= offset <= limits.MAX_VOXEL_BYTES):
        # (a single-file NIfTI's voxels follow the header and its 4 extension bytes; 0 would read the header)
        raise BadInput(f"header vox_offset {offset:g} is not a usable data offset", path)
    need = int(hdr.get_data_offset()) + nbytes
    if not gz and os.path.getsize(path) < need:
        raise BadInput(f"truncated: {os.path.getsize(path)} bytes, header needs {need}", path)
    return klass, hdr, need


@contextlib.contextmanager
def _stream_errors(path: Path):
    """Turn decompression and read errors into one :class:`BadInput` naming the file."""
    try:
        yield
    except RlpError:
        raise
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise BadInput(f"corrupt or truncated gzip stream ({one_line(exc)})", path) from None
    except OSError as exc:
        raise BadInput(f"cannot read ({one_line(exc)})", path) from None


def check_header(path: str | os.PathLike) -> tuple[int, ...]:
    """A cheap preflight of one NIfTI file: its name, header and declared size, without reading voxels.

    Raises :class:`RlpError` for what :func:`load_nifti` would refuse from the header alone
    (bad extension or magic, dimensions, data type, voxel sizes, size cap, a short ``.nii``);
    returns the declared data shape. Truncated or corrupt gzip data is only found by loading.
    """
    path = Path(path)
    opener, gz = _open_nifti(path)
    with _stream_errors(path), opener(path, "rb") as fh:
        _, hdr, _ = _check_declared(fh.read(540), path, gz)
    return tuple(int(s) for s in hdr.get_data_shape())


def read_stream(path: Path):
    """Return (header class, raw header, full file bytes) after checking the header and size cap."""
    opener, gz = _open_nifti(path)
    with _stream_errors(path), opener(path, "rb") as fh:
        head = fh.read(540)
        klass, hdr, need = _check_declared(head, path, gz)
        chunks, remaining = [head], need - len(head)
        while remaining > 0:  # in chunks: memory follows the data present, not the size declared
            chunk = fh.read(min(remaining, 1 << 24))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        data = b"".join(chunks)
        if len(data) < need:
            raise BadInput(f"truncated: {len(data)} bytes of data, header needs {need}", path)
        # Read to the end: for gzip this verifies the CRC32 and length trailer.
        while fh.read(1 << 20):
            pass
    return klass, hdr, data


def _parse_header(head: bytes, path: Path):
    """Parse and check a header from raw bytes, before nibabel "fixes" anything.

    nibabel's own checks silently replace zero pixdims by 1 and negative ones by
    their absolute value, and guess the byte order from ``dim[0]``; the raw
    fields are therefore checked here first.
    """
    if len(head) < 348:
        raise BadInput("too short to be a NIfTI file (no complete header)", path)
    le, be = int.from_bytes(head[:4], "little"), int.from_bytes(head[:4], "big")
    if 348 in (le, be):
        klass, endian, dim_at, dim_t = nib.Nifti1Image, "<" if le == 348 else ">", 40, "i2"
    elif 540 in (le, be):
        if len(head) < 540:
            raise BadInput("too short to be a NIfTI-2 file (no complete header)", path)
        klass, endian, dim_at, dim_t = nib.Nifti2Image, "<" if le == 540 else ">", 16, "i8"
    else:
        raise BadInput("not a NIfTI file (bad header size)", path)
    dim = [int(v) for v in np.frombuffer(head, endian + dim_t, 8, dim_at)]
    if not 1 <= dim[0] <= 7:
        raise BadInput(f"header dim[0]={dim[0]} outside 1..7", path)
    if any(d <= 0 for d in dim[1 : dim[0] + 1]):
        raise BadInput(f"header has a zero or negative dimension {tuple(dim[1:dim[0] + 1])}", path)
    try:
        with nibabel_log(None):
            hdr = klass.header_class.from_fileobj(io.BytesIO(head), check=False)
    except Exception as exc:  # nibabel raises several types for broken headers
        raise BadInput(f"invalid NIfTI header ({one_line(exc)})", path) from None
    _refuse_cifti(hdr, path)
    code = int(hdr["datatype"])
    if code not in _OK_DTYPES:
        raise BadInput(f"unsupported NIfTI data type code {code} (complex, RGB or unknown)", path)
    try:
        itemsize = np.dtype(hdr.get_data_dtype()).itemsize
    except Exception as exc:
        raise BadInput(f"unsupported data type ({one_line(exc)})", path) from None
    if int(hdr["bitpix"]) != 8 * itemsize:  # nibabel ignores bitpix; a disagreement means a damaged header
        raise BadInput(f"header datatype {code} ({8 * itemsize} bits) disagrees with bitpix {int(hdr['bitpix'])}", path)
    pixdim = np.asarray(hdr["pixdim"], dtype=np.float64)
    for ax in range(min(3, dim[0])):
        z = float(pixdim[ax + 1])
        if dim[ax + 1] > 1 and not (np.isfinite(z) and z > 0):
            raise BadInput(f"voxel size pixdim[{ax + 1}]={z:g} is not a positive number", path)
    return klass, hdr


#: NIfTI intent codes 3000-3099 (NIFTI_INTENT_CONNECTIVITY_*) mark CIFTI files: a NIfTI-2 container of grayordinates
CIFTI_INTENTS = range(3000, 3100)


def _refuse_cifti(hdr, path: Path) -> None:
    """A CIFTI file (surface vertices and grayordinates, not a voxel grid) is refused for what it is."""
    code = int(hdr["intent_code"])
    if code in CIFTI_INTENTS:
        raise BadInput(f"is a CIFTI file (NIfTI intent code {code}: grayordinates, not a voxel volume); "
                       "CIFTI is not supported: give a NIfTI volume", path)


class _ListHandler(logging.Handler):
    def __init__(self, sink: list[str] | None):
        super().__init__(logging.WARNING)
        self.sink = sink

    def emit(self, record):
        if self.sink is not None:
            msg = f"header fixed by nibabel: {one_line(record.getMessage())}"
            if msg not in self.sink:
                self.sink.append(msg)


@contextlib.contextmanager
def nibabel_log(sink: list[str] | None):
    """Route nibabel's header-fix messages into ``sink`` (or drop them) instead of stderr."""
    logger = nib.imageglobals.logger
    saved, propagate = logger.handlers[:], logger.propagate
    logger.handlers = [_ListHandler(sink)]
    logger.propagate = False
    try:
        yield
    finally:
        logger.handlers = saved
        logger.propagate = propagate
