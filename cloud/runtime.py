"""Recognizer runtimes behind one small interface: protected tensors in, L2-normalised embeddings out.

ONNX Runtime is the default (the embedded choice on CPU); TensorRT (cloud/tensorrt_runtime.py, written
with the export issue) is imported lazily, only when asked for or when `auto` finds a GPU and an engine.
"""

import hashlib
import logging
from pathlib import Path
from typing import Protocol

import numpy as np
from ppfr.bundle import BundleError, l2_normalise, read_manifest, session
from ppfr.bundle.tensorrt import tensorrt_available

log = logging.getLogger("ppfr.cloud")

RUNTIME_KINDS = ("auto", "onnxruntime", "tensorrt")
# Recognizer precision: fp32 = recognizer.onnx; int8 = the bundle's recognizer.int8.onnx (export/quantize.py,
# ONNX Runtime only).
PRECISIONS = ("fp32", "int8")

_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


class RuntimeUnavailable(RuntimeError):
    """A runtime that cannot be created (missing engine, missing package, unreadable model)."""


class Runtime(Protocol):
    """What the server needs from a recognizer engine."""

    name: str
    # Largest batch one embed() call accepts.
    max_batch: int

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """[N, C, H, W] protected tensors -> [N, D] float32 L2-normalised embeddings."""
        ...

    def close(self) -> None: ...


class OnnxRuntime:
    """recognizer.onnx on ONNX Runtime: one session created at startup with fixed options, reused by every
    call: one at a time from the server's engine thread, or several at once with `serve --engines N` (a
    session may be run from several threads), with ppfr.bundle's session options."""

    name = "onnxruntime"

    def __init__(self, model_path, threads: int = 0, max_batch: int = 64, providers=None, name: str = ""):
        if name:
            self.name = name
        try:
            self._session = session(model_path, threads, providers)  # threads 0 = one per physical core
        except BundleError as err:
            raise RuntimeUnavailable(str(err)) from None
        (inp,) = self._session.get_inputs()
        self._input = inp.name
        self._output = self._session.get_outputs()[0].name
        self.input_dtype = np.dtype(_ORT_TYPES.get(inp.type, np.float32))
        batch_dim = inp.shape[0]
        self.max_batch = int(batch_dim) if isinstance(batch_dim, int) and batch_dim > 0 else int(max_batch)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        if batch.dtype != self.input_dtype:
            batch = batch.astype(self.input_dtype)
        (out,) = self._session.run([self._output], {self._input: np.ascontiguousarray(batch)})
        return l2_normalise(out)

    def close(self) -> None:
        self._session = None


def tensorrt_engine(bundle_dir) -> Path | None:
    """The bundle's first TensorRT engine file that exists, if any."""
    manifest = read_manifest(bundle_dir)
    for engine in manifest.engines:
        path = Path(bundle_dir) / engine.path
        if engine.path and path.is_file():
            return path
    return None


def int8_model(bundle_dir, manifest=None) -> Path:
    """The bundle's INT8 recognizer file, checked against the manifest; RuntimeUnavailable with what to do
    when there is none, it is missing or altered, or it was made from another recognizer.onnx."""
    manifest = manifest or read_manifest(bundle_dir)
    q = manifest.recognizer_int8
    make = f"make one with `python -m ppfr.export.quantize --bundle {bundle_dir}` or serve --precision fp32"
    if not manifest.HasField("recognizer_int8") or not q.model.path:
        raise RuntimeUnavailable(f"bundle {bundle_dir} has no INT8 recognizer: {make}")
    path = Path(bundle_dir) / q.model.path
    if not path.is_file():
        raise RuntimeUnavailable(
            f"bundle {bundle_dir}: the manifest names {q.model.path}, which is missing: {make}"
        )
    if q.source_sha256 != manifest.recognizer.sha256:
        raise RuntimeUnavailable(
            f"bundle {bundle_dir}: {q.model.path} was made from another recognizer.onnx (re-exported "
            f"since): {make}"
        )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if q.model.sha256 and digest != q.model.sha256:
        raise RuntimeUnavailable(
            f"bundle {bundle_dir}: {q.model.path} does not match its sha256 in the manifest"
        )
    return path


def create_runtime(
    kind: str, bundle_dir, threads: int = 0, max_batch: int = 64, precision: str = "fp32"
) -> Runtime:
    """The recognizer runtime of a bundle: `onnxruntime`, `tensorrt`, or `auto` (TensorRT when TensorRT,
    a GPU and an engine are present, else ONNX Runtime). precision `int8` serves the bundle's
    recognizer.int8.onnx on ONNX Runtime (with `auto` or `onnxruntime`)."""
    if kind not in RUNTIME_KINDS:
        raise RuntimeUnavailable(f"unknown runtime {kind!r}; choose one of {', '.join(RUNTIME_KINDS)}")
    if precision not in PRECISIONS:
        raise RuntimeUnavailable(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    manifest = read_manifest(bundle_dir)
    if precision == "int8":
        if kind == "tensorrt":
            raise RuntimeUnavailable(
                "--precision int8 runs on ONNX Runtime (a CPU model); use --runtime onnxruntime or auto"
            )
        path = int8_model(bundle_dir, manifest)
        return OnnxRuntime(path, threads=threads, max_batch=max_batch, name="onnxruntime-int8")
    if kind in ("auto", "tensorrt"):
        engine = tensorrt_engine(bundle_dir)
        if kind == "tensorrt" or (engine is not None and tensorrt_available()):
            try:
                return _tensorrt_runtime(manifest, bundle_dir, engine, max_batch)
            except RuntimeUnavailable as err:
                if kind == "tensorrt":
                    raise
                log.warning("%s; falling back to ONNX Runtime", err)
        else:
            log.debug("TensorRT not used (engine=%s); using ONNX Runtime", engine)
    path = Path(bundle_dir) / (manifest.recognizer.path or "recognizer.onnx")
    if not path.is_file():
        raise BundleError(f"{bundle_dir} has no recognizer model {path.name}")
    return OnnxRuntime(path, threads=threads, max_batch=max_batch)


def _tensorrt_runtime(manifest, bundle_dir, engine: Path | None, max_batch: int) -> Runtime:
    if engine is None:
        raise RuntimeUnavailable(
            f"{bundle_dir} has no TensorRT engine; build one on this GPU with ppfr-export "
            "or use --runtime onnxruntime"
        )
    if not tensorrt_available():
        raise RuntimeUnavailable("TensorRT or a CUDA GPU is not available; use --runtime onnxruntime")
    from ppfr.cloud.tensorrt_runtime import TensorRTRuntime

    # Never ask for more than the engine's optimisation profile allows.
    for spec in manifest.engines:
        if Path(bundle_dir) / spec.path == engine and len(spec.profile_batch_sizes) == 3:
            max_batch = min(max_batch, int(spec.profile_batch_sizes[2]))
    try:
        return TensorRTRuntime(engine, max_batch)
    except (RuntimeError, ValueError, OSError) as err:
        raise RuntimeUnavailable(f"cannot use TensorRT engine {engine}: {err}") from None
