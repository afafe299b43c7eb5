"""The bundle's TensorRT engines (recognizer.<gpu>.plan): finding the GPU, CUDA and TensorRT.

Shared by the builder (export/tensorrt_build.py) and the runtime (cloud/tensorrt_runtime.py), which may not
import each other. tensorrt and cuda-python are imported only inside these functions, so every module
imports fine on a machine without them.
"""

import re


class TensorRTUnavailable(RuntimeError):
    """No NVIDIA GPU, no cuda-python or no tensorrt here; the message says which and what to do."""


def cudart():
    """cuda-python's runtime module, or TensorRTUnavailable."""
    try:
        from cuda.bindings import runtime  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart as runtime  # older cuda-python
        except ImportError:
            raise TensorRTUnavailable(
                "cuda-python is not installed: pip install 'ppfr[gpu]' on the GPU server"
            ) from None
    return runtime


def import_tensorrt():
    try:
        import tensorrt
    except ImportError:
        raise TensorRTUnavailable(
            "tensorrt is not installed: pip install tensorrt --extra-index-url https://pypi.nvidia.com"
        ) from None
    return tensorrt


def gpu_info(device: int = 0) -> tuple[str, str]:
    """(GPU name, compute capability 'major.minor'); TensorRTUnavailable when there is no GPU."""
    rt = cudart()
    err, count = rt.cudaGetDeviceCount()
    if err != rt.cudaError_t.cudaSuccess or count <= device:
        raise TensorRTUnavailable(
            f"no CUDA GPU {device} on this machine: engines are built on the serving GPU"
        )
    err, prop = rt.cudaGetDeviceProperties(device)
    if err != rt.cudaError_t.cudaSuccess:
        raise TensorRTUnavailable(f"cannot query CUDA GPU {device}: {err}")
    name = (
        prop.name.decode(errors="replace").rstrip("\x00") if isinstance(prop.name, bytes) else str(prop.name)
    )
    return name, f"{prop.major}.{prop.minor}"


def tensorrt_available() -> bool:
    """True when a CUDA GPU is present and tensorrt + cuda-python import (creates no runtime)."""
    try:
        gpu_info(0)
        import_tensorrt()
    except Exception:  # any broken CUDA/TensorRT install means "not available", never a crash
        return False
    return True


def gpu_slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3' (file-name safe)."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"
