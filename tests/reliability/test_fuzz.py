"""Fuzzing the NIfTI and bundle loaders under a memory cap (RELIABILITY.md, "How to test it" 4).

Hypothesis mutates a valid NIfTI file (header fields set to odd values, bytes
overwritten, truncation, gzip, big-endian, NIfTI-2) and a valid bundle (manifest
fields replaced or removed, model bytes changed with their hash updated, as an
attacker would). Each input goes through the loader and, when it loads, through the
heatmap. Only :class:`~rlp.runtime.core.errors.RlpError` may escape, and no example may
run out of memory: the fuzzing runs in a child process whose address space is capped
(``RLIMIT_AS``) at what it had after start-up plus 768 MiB, with the voxel cap at
64 MiB. CI runs a short budget; ``RLP_FUZZ_EXAMPLES=5000`` runs a longer one.
"""

from __future__ import annotations

import copy
import gzip
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = int(os.environ.get("RLP_FUZZ_EXAMPLES", "150"))
HEADROOM = 768 << 20
VOXEL_CAP = 64 << 20


def _run_fuzzer(kind: str, n: int) -> subprocess.CompletedProcess:
    here = Path(__file__).resolve().parent  # the child imports this module and tests/helpers
    code = (f"import sys; sys.path[:0] = [{str(here)!r}, {str(here.parent)!r}]; "
            f"import test_fuzz as t; t._child({kind!r}, {n})")
    env = {**os.environ, "RLP_MAX_VOXEL_BYTES": str(VOXEL_CAP), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=max(300, n))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the memory cap reads /proc")
@pytest.mark.parametrize("kind, n", [("nifti", EXAMPLES), ("bundle", max(1, EXAMPLES // 3))])
def test_only_rlp_errors_escape_the_loaders_under_a_memory_cap(kind, n):
    r = _run_fuzzer(kind, n)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    stats = json.loads(r.stdout.strip().splitlines()[-1])
    assert stats["examples"] >= n * 0.9
    assert stats["refused"] > 0 and stats["loaded"] > 0  # the mutations reach both outcomes


@pytest.mark.parametrize("where, value", [
    (("models", "r", "sha256"), False), (("models", "r", "size"), ""), (("models", "r", "external_data"), 7),
    (("models", "r", "inputs", 0, "shape"), None), (("preprocessing", "interpolation_order"), None),
    (("preprocessing", "percentile"), 438), (("geometry", "fill"), []), (("geometry", "size"), 2**40),
])
def test_mistyped_manifest_fields_found_by_fuzzing_are_refused(tmp_path, where, value):
    """Regressions: each of these once escaped as TypeError/ValueError/MemoryError instead of a clean refusal."""
    from helpers.runtime import edit_manifest, make_bundle, phantom
    from rlp.runtime.core.errors import EX_DATAERR, RlpError
    from rlp.runtime.heatmap import Bundle

    def mutate(d):
        for k in where[:-1]:
            d = d[k]
        d[where[-1]] = value

    bundle = make_bundle(tmp_path / "b")
    edit_manifest(bundle, mutate, rehash=False)
    with pytest.raises(RlpError) as exc:
        with Bundle.load(bundle, backend="ort-cpu", threads=1) as b:
            b.heatmap_slice(phantom((20, 20)))
    assert exc.value.code == EX_DATAERR and "malformed manifest" in str(exc.value)


# --------------------------------------------------------------------------- in the child
def _child(kind: str, n: int) -> None:
    from hypothesis import HealthCheck, given, settings

    from rlp.runtime.core.errors import RlpError

    strategy, check = {"nifti": _nifti_case, "bundle": _bundle_case}[kind]()
    pages = int(Path("/proc/self/statm").read_text().split()[0])
    cap = pages * resource.getpagesize() + HEADROOM
    resource.setrlimit(resource.RLIMIT_AS, (cap, resource.getrlimit(resource.RLIMIT_AS)[1]))
    stats = {"examples": 0, "loaded": 0, "refused": 0}

    @settings(max_examples=n, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(strategy)
    def fuzz(case):
        stats["examples"] += 1
        try:
            check(case)
            stats["loaded"] += 1
        except RlpError as exc:
            assert "memory" not in str(exc), exc  # a refusal for lack of memory means the cap was hit
            stats["refused"] += 1
        except BaseException:
            print(f"escaped on {case!r}:\n{traceback.format_exc()}", file=sys.stderr)
            raise

    fuzz()
    print(json.dumps(stats))


def _nifti_case():
    import nibabel as nib
    from hypothesis import strategies as st

    from helpers.runtime import make_bundle, phantom, write_nifti
    from rlp.runtime.core.nifti import load_nifti
    from rlp.runtime.heatmap import Bundle

    tmp = Path(tempfile.mkdtemp())
    bundle = Bundle.load(make_bundle(tmp / "b"), backend="ort-cpu", threads=1)
    bases = {v2: write_nifti(tmp / f"base{int(v2)}.nii", phantom((6, 7, 3)), np.diag([1.0, 2, 3, 1]), nifti2=v2)
             .read_bytes() for v2 in (False, True)}
    values = (st.integers(-2**31, 2**31 - 1) | st.floats(width=32)
              | st.sampled_from([0, 1, -1, 2, 3, 4, 7, 8, 16, 64, 256, 348, 352, 540, 544, 32767, 1e-30, 1e30]))

    @st.composite
    def case(draw):
        v2 = draw(st.booleans())
        klass = nib.Nifti2Header if v2 else nib.Nifti1Header
        raw, n = bases[v2], 540 if v2 else 348
        h = np.frombuffer(raw[:n], klass.template_dtype).copy()
        for _ in range(draw(st.integers(0, 4))):
            name = draw(st.sampled_from(klass.template_dtype.names))
            v = draw(values)
            try:
                if h.dtype[name].shape:
                    h[name][0][draw(st.integers(0, h.dtype[name].shape[0] - 1))] = v
                elif h.dtype[name].kind in "SV":
                    h[name] = str(v).encode()[: h.dtype[name].itemsize]
                else:
                    h[name] = v
            except (OverflowError, ValueError, TypeError):
                pass
        if draw(st.booleans()):  # big-endian header (the voxels stay as they are)
            h = h.byteswap().view(h.dtype.newbyteorder())
        data = bytearray(h.tobytes() + raw[n:])
        for i, b in draw(st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(0, 255)), max_size=4)):
            data[i] = b
        cut = draw(st.none() | st.integers(0, len(data)))
        data = bytes(data[:cut])
        gz = draw(st.booleans())
        return ("x.nii.gz", gzip.compress(data, mtime=0)) if gz else ("x.nii", data)

    def check(c):
        name, data = c
        (tmp / name).write_bytes(data)
        vol = load_nifti(tmp / name)
        res = bundle.heatmap_volume(vol, nonfinite="zero")
        assert res.heatmap.shape == vol.file_shape and np.isfinite(res.heatmap).all()

    return case(), check


def _bundle_case():
    from hypothesis import strategies as st

    from helpers.runtime import make_bundle, phantom
    from rlp.runtime.core.manifest import sha256_file
    from rlp.runtime.heatmap import Bundle

    tmp = Path(tempfile.mkdtemp())
    src = make_bundle(tmp / "src")
    base = json.loads((src / "manifest.json").read_text())

    def leaves(o, pre=()):
        if pre:
            yield pre
        items = o.items() if isinstance(o, dict) else enumerate(o) if isinstance(o, list) else ()
        for k, v in items:
            yield from leaves(v, pre + (k,))

    paths = list(leaves(base))
    value = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=8),
                      st.lists(st.integers(-3, 40), max_size=4), st.dictionaries(st.text(max_size=3), st.integers(),
                                                                                 max_size=2))

    @st.composite
    def case(draw):
        man = copy.deepcopy(base)
        for path, v, remove in draw(st.lists(st.tuples(st.sampled_from(paths), value, st.booleans()), max_size=3)):
            parent = man
            for k in path[:-1]:  # an earlier edit may have replaced part of the way
                parent = _child_of(parent, k)
            if isinstance(parent, dict) and remove:
                parent.pop(path[-1], None)
            elif isinstance(parent, dict) or _child_of(parent, path[-1]) is not None:
                parent[path[-1]] = v
        edits = draw(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=4))
        return man, edits, draw(st.booleans())

    def check(c):
        man, edits, rehash = c
        b = tmp / "b"
        shutil.rmtree(b, ignore_errors=True)
        shutil.copytree(src, b)
        f = b / "r.onnx"
        raw = bytearray(f.read_bytes())
        for i, v in edits:
            raw[i % len(raw)] = v
        f.write_bytes(bytes(raw))
        models = man.get("models")
        if rehash and isinstance(models, dict) and isinstance(models.get("r"), dict):
            models["r"]["sha256"], models["r"]["size"] = sha256_file(f), f.stat().st_size
        (b / "manifest.json").write_text(json.dumps(man))
        with Bundle.load(b, backend="ort-cpu", threads=1) as loaded:
            res = loaded.heatmap_slice(phantom((20, 20)))
            assert np.isfinite(res.window_map).all()

    return case(), check


def _child_of(parent, key):
    if isinstance(parent, dict):
        return parent.get(key)
    if isinstance(parent, list) and isinstance(key, int) and key < len(parent):
        return parent[key]
    return None
