"""Careful NIfTI reading and writing (nibabel underneath).

Every problem a NIfTI file can have becomes one :class:`~rlp.runtime.errors.RlpError`
naming the file: the header is parsed and checked (dimensions, data type, zooms,
declared size against a memory cap) before any voxel is allocated, gzip streams
are read to the end so their CRC is verified (nibabel never reads it), and the
voxels are read inside the loader so truncation surfaces here.

Volumes are handled in the closest canonical (RAS+) orientation; :class:`Volume`
keeps the transform so heatmaps go back on the input's own grid and affine.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import logging
import math
import os
import stat
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations as nio

from .atomic import atomic_path
from .errors import EX_IOERR, BadInput, InputMissing, RlpError, one_line

# Declared voxel data larger than this is refused before anything is allocated.
MAX_VOXEL_BYTES = int(os.environ.get("RLP_MAX_VOXEL_BYTES", 1 << 30))
_OK_DTYPES = {2, 4, 8, 16, 64, 256, 512, 768, 1024, 1280}  # u8 i16 i32 f32 f64 i8 u16 u32 i64 u64
AXES = {"sagittal": 0, "coronal": 1, "axial": 2}  # world axis (RAS) normal to the slice
# Ground-truth lesion masks beside their slice: <stem>_lesion.nii.gz (demo inputs, bench).
LESION_SUFFIX = "_lesion"
#: the description (header ``descrip``) of every heatmap rlp writes
HEATMAP_DESCRIP = b"rlp reconstruction-loss heatmap"


def nifti_suffix(path: str | os.PathLike) -> str | None:
    name = os.fspath(path).lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    if name.endswith(".nii"):
        return ".nii"
    return None


def nifti_stem(path: str | os.PathLike) -> str:
    name = Path(path).name
    suf = nifti_suffix(name)
    return name[: -len(suf)] if suf else Path(name).stem


@dataclass
class Volume:
    """A NIfTI image as a 3D float32 array in closest-canonical (RAS+) orientation."""

    path: Path
    data: np.ndarray  # canonical, 3D, float32
    zooms: tuple[float, float, float]  # canonical order
    affine: np.ndarray  # the input's affine (img.affine)
    header: object  # a copy of the input header
    file_shape: tuple[int, ...]  # shape as stored in the file
    ornt: np.ndarray  # file array axes -> canonical
    warnings: list[str] = field(default_factory=list)

    def slice_axis(self, axis: str = "axial") -> int:
        """Canonical axis to slice along: a singleton axis wins (single-slice files)."""
        singleton = [i for i, n in enumerate(self.data.shape) if n == 1]
        if singleton:
            return singleton[-1]
        if axis not in AXES:
            raise BadInput(f"unknown axis {axis!r}; choose one of {', '.join(AXES)}", self.path)
        return AXES[axis]

    def slices(self, axis: str = "axial") -> tuple[int, int]:
        k = self.slice_axis(axis)
        return k, self.data.shape[k]

    def get_slice(self, k: int, i: int) -> tuple[np.ndarray, tuple[float, float]]:
        sl = np.take(self.data, i, axis=k)
        sp = tuple(z for j, z in enumerate(self.zooms) if j != k)
        return sl, sp

    def to_file_grid(self, canonical: np.ndarray) -> np.ndarray:
        """Put a canonical-orientation 3D array back in the file's array order and shape."""
        inv = _invert_ornt(self.ornt)
        out = nio.apply_orientation(canonical, inv)
        return out.reshape(self.file_shape)

    def canonical_to_file(self, ijk_canonical: np.ndarray) -> np.ndarray:
        """File voxel indices (continuous, first three axes) of canonical voxel indices."""
        ijk = np.atleast_2d(np.asarray(ijk_canonical, dtype=np.float64))
        inv_aff = nio.inv_ornt_aff(self.ornt, _shape3(self.file_shape))  # canonical index -> file index
        return nib.affines.apply_affine(inv_aff, ijk)

    def voxel_to_world(self, ijk_canonical: np.ndarray) -> np.ndarray:
        """World (mm) coordinates of canonical voxel indices."""
        return nib.affines.apply_affine(self.affine, self.canonical_to_file(ijk_canonical))

    def file_axis(self, k: int) -> tuple[int, bool]:
        """The file array axis that canonical axis ``k`` comes from, and whether it is flipped."""
        for i, (j, flip) in enumerate(self.ornt):
            if int(j) == k:
                return i, bool(flip < 0)
        raise ValueError(f"canonical axis {k} has no file axis")  # io_orientation is a permutation

    def file_to_canonical_index(self, k: int, index: int) -> int:
        """Index along canonical axis ``k`` of the slice with file index ``index`` on that axis."""
        _, flip = self.file_axis(k)
        n = self.data.shape[k]
        return n - 1 - index if flip else index


def _shape3(shape):
    s = tuple(shape)
    if len(s) == 2:
        return s + (1,)
    return s[:3]


def _invert_ornt(ornt: np.ndarray) -> np.ndarray:
    inv = np.zeros_like(ornt)
    for i, (j, flip) in enumerate(ornt):
        inv[int(j)] = (i, flip)
    return inv


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
    if nbytes > MAX_VOXEL_BYTES:
        raise BadInput(
            f"header declares {'x'.join(map(str, shape))} voxels of {itemsize} bytes "
            f"({nbytes / 2**30:.2f} GiB), over the {MAX_VOXEL_BYTES / 2**30:.2f} GiB cap "
            "(set RLP_MAX_VOXEL_BYTES to raise it)", path)
    offset = float(hdr["vox_offset"])
    if not (np.isfinite(offset) and len(hdr.binaryblock) + 4 <= offset <= MAX_VOXEL_BYTES):
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
        raise BadInput(f"corrupt or truncated gzip stream ({_one_line(exc)})", path) from None
    except OSError as exc:
        raise BadInput(f"cannot read ({_one_line(exc)})", path) from None


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


def _read_stream(path: Path):
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
        with _nibabel_log(None):
            hdr = klass.header_class.from_fileobj(io.BytesIO(head), check=False)
    except Exception as exc:  # nibabel raises several types for broken headers
        raise BadInput(f"invalid NIfTI header ({_one_line(exc)})", path) from None
    code = int(hdr["datatype"])
    if code not in _OK_DTYPES:
        raise BadInput(f"unsupported NIfTI data type code {code} (complex, RGB or unknown)", path)
    try:
        itemsize = np.dtype(hdr.get_data_dtype()).itemsize
    except Exception as exc:
        raise BadInput(f"unsupported data type ({_one_line(exc)})", path) from None
    if int(hdr["bitpix"]) != 8 * itemsize:  # nibabel ignores bitpix; a disagreement means a damaged header
        raise BadInput(f"header datatype {code} ({8 * itemsize} bits) disagrees with bitpix {int(hdr['bitpix'])}", path)
    pixdim = np.asarray(hdr["pixdim"], dtype=np.float64)
    for ax in range(min(3, dim[0])):
        z = float(pixdim[ax + 1])
        if dim[ax + 1] > 1 and not (np.isfinite(z) and z > 0):
            raise BadInput(f"voxel size pixdim[{ax + 1}]={z:g} is not a positive number", path)
    return klass, hdr


class _ListHandler(logging.Handler):
    def __init__(self, sink: list[str] | None):
        super().__init__(logging.WARNING)
        self.sink = sink

    def emit(self, record):
        if self.sink is not None:
            msg = f"header fixed by nibabel: {_one_line(record.getMessage())}"
            if msg not in self.sink:
                self.sink.append(msg)


@contextlib.contextmanager
def _nibabel_log(sink: list[str] | None):
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


_one_line = one_line


def load_nifti(path: str | os.PathLike) -> Volume:
    """Load and check one NIfTI image; raise :class:`RlpError` on any problem."""
    path = Path(path)
    klass, raw_hdr, raw = _read_stream(path)
    notes: list[str] = []
    slope = float(raw_hdr["scl_slope"])
    if not np.isfinite(slope) or slope == 0:
        notes.append(f"scl_slope is {slope:g}; voxel values used unscaled (as nibabel does)")
    with warnings.catch_warnings(), _nibabel_log(notes):
        warnings.simplefilter("ignore")  # nibabel and numpy warn about broken affines: they are checked below
        try:
            img = klass.from_bytes(raw)
            data = np.asarray(img.get_fdata(dtype=np.float32))
        except MemoryError:
            raise BadInput("not enough memory to read the voxel data", path) from None
        except Exception as exc:
            raise BadInput(f"cannot read voxel data ({_one_line(exc)})", path) from None
        return _make_volume(path, data, img, notes)


def volume_from_array(data: np.ndarray, affine: np.ndarray | None = None, name: str = "array") -> Volume:
    """A :class:`Volume` from an in-memory 2D/3D array and its voxel-to-world affine.

    ``affine`` defaults to the identity (1 mm voxels, RAS axes). The same checks
    as for files apply (finite, non-singular affine; at most one volume).
    """
    arr = np.asarray(data)
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool) or np.issubdtype(arr.dtype, np.complexfloating):
        raise BadInput(f"unsupported data type {arr.dtype}", name)
    aff = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    if aff.shape != (4, 4):
        raise BadInput(f"affine has shape {aff.shape}, expected (4, 4)", name)
    if not np.all(np.isfinite(aff)) or abs(np.linalg.det(aff[:3, :3])) < 1e-12:  # nibabel cannot take a singular one
        raise BadInput("affine is singular or non-finite", name)
    with warnings.catch_warnings(), _nibabel_log(None):
        warnings.simplefilter("ignore")
        img = nib.Nifti1Image(arr.astype(np.float32), aff)
        return _make_volume(Path(name), np.asarray(img.dataobj, dtype=np.float32), img, [])


def _make_volume(path: Path, data: np.ndarray, img, notes: list[str]) -> Volume:
    hdr = img.header
    file_shape = tuple(int(s) for s in data.shape)
    # Squeeze singleton non-spatial dimensions only; 4D with one volume is fine.
    if data.ndim > 3:
        extra = data.shape[3:]
        if int(np.prod(extra)) != 1:
            raise BadInput(f"has {int(np.prod(extra))} volumes (shape {data.shape}); extract one volume first", path)
        data = data.reshape(data.shape[:3])
    if data.ndim < 2:
        raise BadInput(f"is not an image (shape {data.shape})", path)
    if data.ndim == 2:
        data = data[:, :, None]
    zooms = tuple(float(z) for z in hdr.get_zooms()[:3])
    zooms = (zooms + (1.0, 1.0, 1.0))[:3]
    for ax, z in enumerate(zooms):
        if data.shape[ax] > 1 and not (np.isfinite(z) and z > 0):
            raise BadInput(f"voxel size {z:g} along axis {ax} is not a positive number", path)
    zooms = tuple(z if np.isfinite(z) and z > 0 else 1.0 for z in zooms)
    try:
        affine = np.asarray(img.affine, dtype=np.float64)
        qform, qcode = img.get_qform(coded=True)
        sform, scode = img.get_sform(coded=True)
    except ValueError as exc:  # e.g. a qform quaternion that is not a rotation
        raise BadInput(f"invalid qform or sform ({_one_line(exc)})", path) from None
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise BadInput("affine is singular or non-finite", path)
    if qcode and scode and qform is not None and sform is not None and not np.allclose(qform, sform, atol=1e-3):
        notes.append("qform and sform disagree; using the sform (nibabel's choice)")
    if not qcode and not scode:
        notes.append("qform and sform codes are both 0; orientation is unknown, assuming the voxel axes")
    ornt = nio.io_orientation(affine)
    if np.isnan(ornt).any():  # a voxel axis with (almost) no extent in the world: no closest orientation
        raise BadInput("affine is degenerate (a voxel axis has no clear world direction)", path)
    canonical = nio.apply_orientation(data, ornt)
    czooms = [1.0, 1.0, 1.0]
    for i, (j, _flip) in enumerate(ornt):
        czooms[int(j)] = zooms[i]
    return Volume(path, np.ascontiguousarray(canonical, dtype=np.float32), tuple(czooms), affine,
                  hdr.copy(), file_shape, ornt, notes)


def save_like(path: str | os.PathLike, data_file_grid: np.ndarray, ref: Volume, *, force: bool = True) -> Path:
    """Write float32 data on ``ref``'s grid: same shape, affine, qform and sform, slope 1."""
    arr = np.asarray(data_file_grid, dtype=np.float32)
    if arr.shape != tuple(ref.file_shape):
        raise ValueError(f"data shape {arr.shape} != input shape {ref.file_shape}")
    hdr = ref.header.copy()
    hdr.set_data_dtype(np.float32)
    klass = nib.Nifti2Image if isinstance(hdr, nib.Nifti2Header) else nib.Nifti1Image
    qform, qcode = hdr.get_qform(coded=True)
    sform, scode = hdr.get_sform(coded=True)
    img = klass(arr, None, header=hdr)
    img.set_qform(qform, int(qcode))
    img.set_sform(sform, int(scode))
    img.header.set_slope_inter(1.0, 0.0)
    img.header.set_intent("none", (), name="")  # the heatmap is not the input's statistic or label map
    img.header["cal_min"] = 0
    img.header["cal_max"] = float(arr.max()) if arr.size else 0.0
    img.header["descrip"] = HEATMAP_DESCRIP
    suf = nifti_suffix(path) or ".nii.gz"
    with atomic_path(path, force=force, suffix=suf) as tmp:
        nib.save(img, tmp)
    return Path(path)
