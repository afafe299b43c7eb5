"""TensorRT glue, tested against a fake `tensorrt` + `cuda.bindings.runtime` (the one fake this project
allows: TensorRT cannot be installed on these machines). The fake keeps real host memory behind the
pinned buffers and a dict of bytearrays as device memory, so every copy, shape and address the
runtime hands over is checked; its "engine" maps [N,C,H,W] to the first D flattened values.
"""

import ctypes
import sys
import types

import numpy as np
import pytest
from google.protobuf import json_format
from ppfr.bundle import read_manifest, write_manifest
from ppfr.bundle.tensorrt import TensorRTUnavailable, tensorrt_available
from ppfr.cloud import tensorrt_runtime
from ppfr.export import cli, tensorrt_build
from ppfr.protos import manifest_pb2, tensor_pb2

SHAPE, D = (4, 2, 2), 8


class FakeCuda:
    class cudaError_t:  # noqa: N801 (mirrors cuda-python)
        cudaSuccess = 0

    class cudaMemcpyKind:  # noqa: N801
        cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost = 1, 2

    def __init__(self, gpus=1):
        self.gpus, self.host, self.device, self.calls = gpus, {}, {}, []

    def cudaGetDeviceCount(self):  # noqa: N802
        return (0, self.gpus) if self.gpus else (100, 0)

    def cudaGetDeviceProperties(self, dev):  # noqa: N802
        return 0, types.SimpleNamespace(name=b"NVIDIA Fake GPU 80GB\x00\x00", major=9, minor=0)

    def cudaSetDevice(self, dev):  # noqa: N802
        return (0,)

    def cudaMallocHost(self, n):  # noqa: N802
        buf = ctypes.create_string_buffer(n)
        self.host[ctypes.addressof(buf)] = buf
        return 0, ctypes.addressof(buf)

    def cudaMalloc(self, n):  # noqa: N802
        ptr = 0x10000 * (len(self.device) + 1)
        self.device[ptr] = bytearray(n)
        return 0, ptr

    def cudaMemcpyAsync(self, dst, src, n, kind, stream):  # noqa: N802
        self.calls.append(("memcpy", kind, n))
        if kind == self.cudaMemcpyKind.cudaMemcpyHostToDevice:
            self.device[dst][:n] = ctypes.string_at(src, n)
        else:
            ctypes.memmove(dst, bytes(self.device[src][:n]), n)
        return (0,)

    def cudaStreamCreate(self):  # noqa: N802
        return 0, 7

    def cudaStreamSynchronize(self, stream):  # noqa: N802
        self.calls.append(("sync", stream))
        return (0,)

    def cudaStreamDestroy(self, stream):  # noqa: N802
        return (0,)

    def cudaFree(self, ptr):  # noqa: N802
        return (0,)

    def cudaFreeHost(self, ptr):  # noqa: N802
        return (0,)


def fake_tensorrt(cuda: FakeCuda, dtype=np.float16) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.99.0-fake"
    trt.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level=2: None})
    trt.nptype = lambda t: t
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="ws")
    trt.BuilderFlag = types.SimpleNamespace(FP16="fp16")
    built = {}

    class Context:
        def __init__(self):
            self.addr, self.shape = {}, None

        def set_tensor_address(self, name, ptr):
            self.addr[name] = ptr
            return True

        def set_input_shape(self, name, shape):
            assert name == "protected"
            self.shape = tuple(shape)
            return 1 <= shape[0] <= 64

        def execute_async_v3(self, stream):
            assert stream == 7
            n, size = self.shape[0], int(np.prod(self.shape))
            x = np.frombuffer(
                bytes(cuda.device[self.addr["protected"]][: size * np.dtype(dtype).itemsize]), dtype
            )
            out = x.reshape(n, -1)[:, :D].astype(np.float32) * 3.0  # unnormalised on purpose
            cuda.device[self.addr["embedding"]][: out.nbytes] = out.tobytes()
            return True

    class Engine:
        num_io_tensors = 2

        def get_tensor_name(self, i):
            return ["protected", "embedding"][i]

        def get_tensor_mode(self, name):
            return "in" if name == "protected" else "out"

        def get_tensor_shape(self, name):
            return (-1, *SHAPE) if name == "protected" else (-1, D)

        def get_tensor_dtype(self, name):
            return dtype if name == "protected" else np.float32

        def get_tensor_profile_shape(self, name, profile):
            return [(1, *SHAPE), (8, *SHAPE), (64, *SHAPE)]

        def create_execution_context(self):
            return Context()

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            return Engine() if data == b"PLAN" else None

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            built["profile"] = (name, lo, opt, hi)

    class Cache:
        def serialize(self):
            return b"CACHE"

    class Config:
        def set_memory_pool_limit(self, pool, size):
            built["workspace"] = size

        def set_flag(self, flag):
            built["flag"] = flag

        def add_optimization_profile(self, p):
            pass

        def create_timing_cache(self, data):
            built["cache_in"] = data
            return Cache()

        def set_timing_cache(self, cache, ignore_mismatch):
            pass

        def get_timing_cache(self):
            return Cache()

    class Parser:
        num_errors = 0

        def __init__(self, network, logger):
            pass

        def parse(self, data):
            built["onnx"] = data
            return True

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            return object()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            return b"PLAN"

    trt.Runtime, trt.Builder, trt.OnnxParser = Runtime, Builder, Parser
    trt.built = built
    return trt


@pytest.fixture
def fake(monkeypatch):
    cuda = FakeCuda()
    trt = fake_tensorrt(cuda)
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = cuda
    monkeypatch.setitem(sys.modules, "cuda", types.ModuleType("cuda"))
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", cuda)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    return cuda, trt


def test_no_gpu_here_means_unavailable():
    assert tensorrt_available() is False  # no tensorrt, no GPU on this machine
    with pytest.raises(TensorRTUnavailable):
        tensorrt_runtime.TensorRTRuntime("missing.plan", 8)


def test_runtime_embeds_through_pinned_buffers(fake, tmp_path):
    cuda, _ = fake
    plan = tmp_path / "recognizer.plan"
    plan.write_bytes(b"PLAN")
    rt = tensorrt_runtime.TensorRTRuntime(plan, max_batch=16)
    assert rt.name == "tensorrt" and rt.input_shape == SHAPE and rt.embedding_size == D
    rng = np.random.default_rng(0)
    for n, dtype in ((1, np.float16), (7, np.float32)):
        batch = rng.standard_normal((n, *SHAPE)).astype(dtype)
        emb = rt.embed(batch)
        assert emb.shape == (n, D) and emb.dtype == np.float32
        ref = batch.astype(np.float16).reshape(n, -1)[:, :D].astype(np.float32)
        np.testing.assert_allclose(emb, ref / np.linalg.norm(ref, axis=1, keepdims=True), rtol=1e-5)
    h2d = [c for c in cuda.calls if c[0] == "memcpy" and c[1] == 1]
    assert h2d[-1][2] == 7 * int(np.prod(SHAPE)) * 2  # only the used part of the pinned buffer
    assert cuda.calls[-1] == ("sync", 7)
    with pytest.raises(ValueError, match="outside"):
        rt.embed(np.zeros((17, *SHAPE), np.float16))
    with pytest.raises(ValueError, match="expected"):
        rt.embed(np.zeros((2, 3, 2, 2), np.float16))
    rt.close()
    with pytest.raises(RuntimeError, match="closed"):
        rt.embed(np.zeros((1, *SHAPE), np.float16))
    assert tensorrt_available() is True


def test_runtime_rejects_a_foreign_engine(fake, tmp_path):
    plan = tmp_path / "other.plan"
    plan.write_bytes(b"NOT A PLAN")
    with pytest.raises(RuntimeError, match="another GPU or version"):
        tensorrt_runtime.TensorRTRuntime(plan, 8)


def _bundle(tmp_path):
    m = manifest_pb2.BundleManifest(name="t", method="ppfr_fd")
    m.recognizer.path = "recognizer.onnx"
    m.protected_tensor.CopyFrom(
        tensor_pb2.TensorSpec(name="protected", shape=[-1, *SHAPE], data_type=tensor_pb2.DATA_TYPE_FLOAT16)
    )
    (tmp_path / "recognizer.onnx").write_bytes(b"ONNX")
    write_manifest(m, tmp_path)
    return tmp_path


def test_engine_build_records_manifest(fake, tmp_path):
    _, trt = fake
    bundle = _bundle(tmp_path)
    assert cli.main(["engine", str(bundle), "--profile", "2,8,32"]) == 0
    plan = bundle / "recognizer.nvidia-fake-gpu-80gb.plan"
    assert plan.read_bytes() == b"PLAN"
    assert (bundle / "timing_cache.nvidia-fake-gpu-80gb.bin").read_bytes() == b"CACHE"
    assert trt.built["profile"] == ("protected", (2, *SHAPE), (8, *SHAPE), (32, *SHAPE))
    assert trt.built["flag"] == "fp16" and trt.built["onnx"] == b"ONNX"
    engines = read_manifest(bundle).engines
    assert len(engines) == 1
    e = engines[0]
    assert (e.path, e.gpu_name, e.compute_capability, e.tensorrt_version) == (
        plan.name,
        "NVIDIA Fake GPU 80GB",
        "9.0",
        "10.99.0-fake",
    )
    assert e.fp16 and list(e.profile_batch_sizes) == [2, 8, 32]
    json_format.MessageToJson(read_manifest(bundle))
    # A rebuild reuses the timing cache and replaces (not duplicates) the engine entry.
    tensorrt_build.build_engine(bundle)
    assert trt.built["cache_in"] == b"CACHE"
    assert len(read_manifest(bundle).engines) == 1


def test_engine_command_without_gpu_is_a_clear_error(tmp_path, capsys):
    bundle = _bundle(tmp_path)
    assert cli.main(["engine", str(bundle)]) == 2
    err = capsys.readouterr().err
    assert "ppfr-export: error:" in err and "Traceback" not in err
    assert cli.main(["engine", str(tmp_path / "nope")]) == 2
    assert "not a bundle" in capsys.readouterr().err
