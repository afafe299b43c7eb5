"""Where the figures came from: CPU model, cores, memory, OS, Python and library versions, GPU."""

import os
import platform
import shutil
import subprocess
from importlib import metadata

_PACKAGES = (
    "ppfr",
    "numpy",
    "onnxruntime",
    "grpcio",
    "protobuf",
    "opencv-python-headless",
    "cryptography",
    "torch",
)


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gib() -> float | None:
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    try:
        out["tensorrt"] = metadata.version("tensorrt")
    except metadata.PackageNotFoundError:
        pass
    return out


def gpus() -> list[str]:
    """GPU names from nvidia-smi (empty when there is none); never imports torch."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        res = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in res.stdout.splitlines() if line.strip()] if res.returncode == 0 else []


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def describe() -> dict:
    return {
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": memory_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "gpus": gpus(),
        "load_average_at_start": load_average(),
        "versions": versions(),
    }
