"""TensorRT recognizer runtime for the server (no torch): a recognizer.<gpu>.plan built by
`ppfr-export engine`, run with cuda-python on one CUDA stream.

Buffers are allocated once for `max_batch`: pinned (page-locked) host buffers for input and output,
device buffers bound with `set_tensor_address`; each call copies in, sets the input shape, runs
`execute_async_v3` and copies out on the same stream, then synchronises once. tensorrt and
cuda-python are imported lazily: `tensorrt_available()` answers False on a machine without a GPU
without creating anything.
"""

import ctypes
import threading

import numpy as np
from ppfr.bundle.tensorrt import cudart as _cudart
from ppfr.bundle.tensorrt import gpu_info, import_tensorrt


def _check(result, what: str):
    """cuda-python calls return (err, *values); raise on error, return the values."""
    cudart = _cudart()
    err, values = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
    if err != cudart.cudaError_t.cudaSuccess:
        raise RuntimeError(f"CUDA {what} failed: {err}")
    return values[0] if len(values) == 1 else values


class _Buffer:
    """Pinned host array + device allocation of the same size."""

    def __init__(self, cudart, shape: tuple[int, ...], dtype: np.dtype):
        self.dtype = np.dtype(dtype)
        self.nbytes = int(np.prod(shape)) * self.dtype.itemsize
        self.host_ptr = _check(cudart.cudaMallocHost(self.nbytes), "cudaMallocHost")
        raw = (ctypes.c_byte * self.nbytes).from_address(int(self.host_ptr))
        self.host = np.frombuffer(raw, dtype=self.dtype).reshape(shape)
        self.device = _check(cudart.cudaMalloc(self.nbytes), "cudaMalloc")

    def free(self, cudart) -> None:
        cudart.cudaFree(self.device)
        cudart.cudaFreeHost(self.host_ptr)


class TensorRTRuntime:
    """embed(batch [N,C,H,W] float16|float32) -> [N,D] float32 L2-normalised, N <= max_batch."""

    name = "tensorrt"

    def __init__(self, engine_path, max_batch: int = 64, device: int = 0):
        gpu_info(device)
        trt = import_tensorrt()
        self._cudart = cudart = _cudart()
        _check(cudart.cudaSetDevice(device), "cudaSetDevice")
        self._lock = threading.Lock()
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        with open(engine_path, "rb") as f:
            self._engine = self._runtime.deserialize_cuda_engine(f.read())
        if self._engine is None:
            raise RuntimeError(
                f"cannot load TensorRT engine {engine_path} (built for another GPU or version?)"
            )
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise RuntimeError(f"expected one input and one output, engine has {inputs} -> {outputs}")
        self.input_name, self.output_name = inputs[0], outputs[0]
        profile_max = int(self._engine.get_tensor_profile_shape(self.input_name, 0)[2][0])
        if max_batch > profile_max:
            raise ValueError(f"max_batch {max_batch} exceeds the engine's profile maximum {profile_max}")
        self.max_batch = int(max_batch)
        self.input_shape = tuple(int(d) for d in self._engine.get_tensor_shape(self.input_name))[1:]
        self.embedding_size = int(self._engine.get_tensor_shape(self.output_name)[-1])
        self.input_dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(self.input_name)))
        out_dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(self.output_name)))
        self._context = self._engine.create_execution_context()
        self._stream = _check(cudart.cudaStreamCreate(), "cudaStreamCreate")
        self._in = _Buffer(cudart, (self.max_batch, *self.input_shape), self.input_dtype)
        self._out = _Buffer(cudart, (self.max_batch, self.embedding_size), out_dtype)
        self._context.set_tensor_address(self.input_name, int(self._in.device))
        self._context.set_tensor_address(self.output_name, int(self._out.device))
        self._closed = False

    def embed(self, batch: np.ndarray) -> np.ndarray:
        if self._closed:
            raise RuntimeError("TensorRTRuntime is closed")
        if batch.ndim != 4 or tuple(batch.shape[1:]) != self.input_shape:
            raise ValueError(f"expected [N,{','.join(map(str, self.input_shape))}], got {tuple(batch.shape)}")
        if batch.dtype not in (np.float16, np.float32):
            raise ValueError(f"expected float16 or float32, got {batch.dtype}")
        n = batch.shape[0]
        if not 1 <= n <= self.max_batch:
            raise ValueError(f"batch of {n} outside 1..{self.max_batch}")
        cudart, kind = self._cudart, self._cudart.cudaMemcpyKind
        with self._lock:
            host_in = self._in.host[:n]
            np.copyto(host_in, batch, casting="same_kind" if batch.dtype == self.input_dtype else "unsafe")
            in_bytes = n * self._in.nbytes // self.max_batch
            out_bytes = n * self._out.nbytes // self.max_batch
            _check(
                cudart.cudaMemcpyAsync(
                    self._in.device, self._in.host_ptr, in_bytes, kind.cudaMemcpyHostToDevice, self._stream
                ),
                "cudaMemcpyAsync H2D",
            )
            if not self._context.set_input_shape(self.input_name, (n, *self.input_shape)):
                raise RuntimeError(f"engine rejected input shape {(n, *self.input_shape)}")
            if not self._context.execute_async_v3(int(self._stream)):
                raise RuntimeError("TensorRT execute_async_v3 failed")
            _check(
                cudart.cudaMemcpyAsync(
                    self._out.host_ptr, self._out.device, out_bytes, kind.cudaMemcpyDeviceToHost, self._stream
                ),
                "cudaMemcpyAsync D2H",
            )
            _check(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
            emb = self._out.host[:n].astype(np.float32, copy=True)
        # The graph normalises already; renormalise in float32 against FP16 rounding.
        return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)

    def close(self) -> None:
        if getattr(self, "_closed", True):
            return
        self._closed = True
        with self._lock:
            self._in.free(self._cudart)
            self._out.free(self._cudart)
            self._cudart.cudaStreamDestroy(self._stream)
            self._context = self._engine = self._runtime = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
