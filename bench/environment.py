"""The machine a bench report was measured on: CPU, cores, load, libraries, onnxruntime providers, GPUs."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess

from rlp.runtime.backends import ort_providers


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def gpus() -> list[dict]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.stdout.splitlines() if out.returncode == 0 else []:
        parts = [x.strip() for x in line.split(",")]
        if len(parts) == 3:
            gpus.append({"name": parts[0], "memory": parts[1], "driver": parts[2]})
    return gpus


def environment(threads: int) -> dict:
    libs = ("numpy", "scipy", "onnxruntime", "onnxruntime-gpu", "onnx", "torch", "nibabel", "matplotlib",
            "tensorrt", "rich")
    return {"cpu": _cpu_model(), "cores": os.cpu_count(), "affinity_cores": len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity") else os.cpu_count(), "threads": threads,
            "loadavg_start": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
            "nice": os.nice(0) if hasattr(os, "nice") else None, "python": platform.python_version(),
            "platform": platform.platform(), "libraries": {k: _version(k) for k in libs},
            "ort_providers": ort_providers(), "gpu": gpus()}
