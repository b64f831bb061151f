"""The ``gpu`` extra pins one CUDA stack: every GPU package bounded above, all of them built for one CUDA major.

onnxruntime-gpu, TensorRT and cuda-python are each published for several CUDA majors; with lower bounds only,
pip resolves each to its newest release, and those need different CUDA majors (and onnxruntime's TensorRT
provider links one TensorRT major). The facts below are read from PyPI: each release's metadata (the
nvidia-*-cuXX requirements of onnxruntime-gpu's ``cuda`` extra), the package names, and the libraries the
provider libraries link (``readelf -d``).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"

#: onnxruntime-gpu releases on PyPI and the CUDA major they are built for: up to 1.18 CUDA 11.8 (onnxruntime's CUDA
#: provider docs: CUDA 12 became PyPI's default in 1.19); 1.19-1.26 CUDA 12 (the "cuda" extra of 1.22.0, 1.24.1, 1.25.1
#: and 1.26.0 needs nvidia-cuda-runtime-cu12~=12.0; 1.26.0's providers link libcudart.so.12, libcudnn.so.9 and
#: libnvinfer.so.10); 1.27 on CUDA 13 (1.27.0: nvidia-cuda-runtime-cu13~=13.0; 1.28-1.31: nvidia-cuda-runtime~=13.0)
ORT_GPU_RELEASES = {
    **{v: 11 for v in ("1.15.0", "1.15.1", "1.16.0", "1.16.3", "1.17.0", "1.17.1", "1.18.0", "1.18.1")},
    **{v: 12 for v in ("1.19.0", "1.19.2", "1.20.0", "1.20.2", "1.21.0", "1.21.1", "1.22.0", "1.23.0", "1.23.2",
                       "1.24.1", "1.24.4", "1.25.0", "1.25.1", "1.26.0")},
    **{v: 13 for v in ("1.27.0", "1.28.0", "1.29.0", "1.30.0", "1.31.0", "1.31.1")},
}
#: the TensorRT major onnxruntime-gpu's TensorRT provider links (libnvinfer.so.10: read in 1.26.0)
ORT_TRT_MAJOR = 10
GPU_PACKAGES = ("onnxruntime-gpu", "tensorrt", "cuda-python", "cuda-bindings")


def _gpu_extra() -> dict[str, Requirement]:
    data = tomllib.loads(PYPROJECT.read_text())
    reqs = [Requirement(r) for r in data["project"]["optional-dependencies"]["gpu"]]
    return {r.name.lower().replace("_", "-"): r for r in reqs}


def _is_gpu_package(name: str) -> bool:
    return any(name == p or name.startswith(p + "-") for p in GPU_PACKAGES)


def _bounded_above(spec: SpecifierSet) -> bool:
    return any(s.operator in ("<", "<=", "==", "===", "~=") for s in spec)


def _majors(name: str, spec: SpecifierSet) -> set[int]:
    """The CUDA majors the releases ``spec`` admits are built for (raises for a package it cannot tell)."""
    if name == "onnxruntime-gpu":
        admitted = [v for v in ORT_GPU_RELEASES if v in spec]
        assert admitted, f"onnxruntime-gpu{spec} admits none of the known releases"
        return {ORT_GPU_RELEASES[v] for v in admitted}
    if name.startswith("tensorrt"):
        assert name.startswith("tensorrt-cu"), (
            f"{name}: plain tensorrt installs the build for NVIDIA's newest CUDA; name tensorrt-cuXX")
        return {int(name.removeprefix("tensorrt-cu"))}
    # cuda-python and cuda-bindings: the version's major is the CUDA major; the bound must keep it to one
    lows = [Version(s.version).major for s in spec if s.operator in (">=", ">", "~=", "==")]
    assert lows, f"{name}{spec} has no lower bound"
    major = max(lows)
    assert Version(f"{major + 1}.0") not in spec and Version(f"{major + 1}.0.0.dev0") not in spec, (
        f"{name}{spec} admits CUDA {major + 1}")
    return {major}


def check_gpu_pins(extra: dict[str, Requirement]) -> set[int]:
    """The one CUDA major of the GPU packages of ``extra``; AssertionError when the pins do not give one."""
    gpu = {n: r for n, r in extra.items() if _is_gpu_package(n)}
    assert {"onnxruntime-gpu", "cuda-python"} <= set(gpu) and any(n.startswith("tensorrt") for n in gpu), gpu
    majors: dict[str, set[int]] = {}
    for name, req in gpu.items():
        assert _bounded_above(req.specifier), f"{req}: no upper bound, so pip can move it to another CUDA major"
        majors[name] = _majors(name, req.specifier)
    found = set().union(*majors.values())
    assert len(found) == 1, f"the gpu extra names several CUDA majors: {majors}"
    trt = next(r for n, r in gpu.items() if n.startswith("tensorrt"))
    assert all(Version(f"{m}.0") not in trt.specifier for m in (ORT_TRT_MAJOR - 1, ORT_TRT_MAJOR + 1)) and any(
        Version(f"{ORT_TRT_MAJOR}.{minor}.0") in trt.specifier for minor in range(20)), (
        f"{trt}: onnxruntime-gpu's TensorRT provider loads TensorRT {ORT_TRT_MAJOR} only")
    return found


def test_the_gpu_extra_is_one_bounded_cuda_stack():
    assert check_gpu_pins(_gpu_extra()) == {12}


def test_cuda_python_is_one_that_returns_error_codes_without_a_driver():
    # cuda-python 12.0-12.8 raise RuntimeError("Failed to dlopen libcuda.so.1") from cudaGetDeviceCount where no
    # driver is installed; 12.9.0 and later return cudaErrorInsufficientDriver (both run here, without libcuda)
    spec = _gpu_extra()["cuda-python"].specifier
    assert Version("12.8.0") not in spec and Version("12.9.0") in spec


@pytest.mark.parametrize("pins, words", [
    (["onnxruntime-gpu>=1.19", "tensorrt-cu12>=10,<11", "cuda-python>=12.9,<13"], "no upper bound"),
    (["onnxruntime-gpu>=1.19,<1.27", "tensorrt-cu12>=10,<11", "cuda-python>=12.9"], "no upper bound"),
    (["onnxruntime-gpu>=1.27,<1.32", "tensorrt-cu12>=10,<11", "cuda-python>=12.9,<13"], "several CUDA majors"),
    (["onnxruntime-gpu>=1.19,<1.32", "tensorrt-cu12>=10,<11", "cuda-python>=12.9,<13"], "several CUDA majors"),
    (["onnxruntime-gpu>=1.19,<1.27", "tensorrt-cu13>=10,<11", "cuda-python>=12.9,<13"], "several CUDA majors"),
    (["onnxruntime-gpu>=1.19,<1.27", "tensorrt-cu12>=10,<11", "cuda-python>=13,<14"], "several CUDA majors"),
    (["onnxruntime-gpu>=1.19,<1.27", "tensorrt-cu12>=10,<12", "cuda-python>=12.9,<13"], "TensorRT 10 only"),
    (["onnxruntime-gpu>=1.19,<1.27", "tensorrt>=10,<11", "cuda-python>=12.9,<13"], "name tensorrt-cuXX"),
    (["onnxruntime-gpu>=1.19,<1.27", "tensorrt-cu12>=10,<11", "cuda-python>=12,<14"], "admits CUDA 13"),
])
def test_mixed_or_unbounded_pins_are_caught(pins, words):
    extra = {Requirement(p).name: Requirement(p) for p in pins}
    with pytest.raises(AssertionError, match=words):
        check_gpu_pins(extra)
