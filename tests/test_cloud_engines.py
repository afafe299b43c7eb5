"""`ppfr-cloud serve --engines N`: N recognizer calls at once on one shared ONNX Runtime session (the layout
`ppfr-bench ort-settings` measured best for throughput; docs/benchmarks.md). Real sessions on the small
test bundle, real LFW faces protected by the bundle's own front-end, real gRPC."""

import asyncio
import threading
import time

import numpy as np
import pytest
from helpers import lfw_faces
from keys import keyed_channel, new_key
from ppfr.cloud.batcher import DynamicBatcher
from ppfr.cloud.runtime import create_runtime
from ppfr.cloud.server import ConfigError, ServerConfig, ServerThread, check_config
from ppfr.edge.frontend import FrontEnd
from ppfr.protos import verification_pb2, verification_pb2_grpc


@pytest.fixture(scope="module")
def faces():
    return lfw_faces(12)


class Overlap:
    """A real runtime whose calls are held 30 ms, counting how many run at once and on which threads."""

    def __init__(self, runtime):
        self.runtime, self.max_batch = runtime, runtime.max_batch
        self.running = self.peak = 0
        self.threads, self.sizes = set(), []
        self._lock = threading.Lock()

    def embed(self, batch):
        with self._lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
            self.threads.add(threading.current_thread().name)
            self.sizes.append(len(batch))
        time.sleep(0.03)
        try:
            return self.runtime.embed(batch)
        finally:
            with self._lock:
                self.running -= 1


@pytest.mark.parametrize("max_batch, delay_ms", [(4, 5.0), (1, 0.0)])
def test_two_engines_run_at_once_on_one_session_and_agree(bundle, faces, max_batch, delay_ms):
    front = FrontEnd(bundle)
    tensors = [front.protect(face) for face in faces]  # [1, C, H, W] each, fresh draws per face
    runtime = create_runtime("onnxruntime", bundle, threads=1)
    expected = runtime.embed(np.concatenate(tensors))
    spy = Overlap(runtime)

    async def main():
        batcher = DynamicBatcher(spy, max_batch=max_batch, max_delay_ms=delay_ms, engines=2)
        out = await asyncio.gather(*(batcher.embed(t) for t in tensors))
        await batcher.close()
        return np.stack(out)

    got = asyncio.run(main())
    runtime.close()
    np.testing.assert_allclose(got, expected, atol=1e-4)  # every caller gets its own face's embedding
    assert spy.peak == 2 and len(spy.threads) == 2  # two calls at once, each on its own engine thread
    assert sum(spy.sizes) == len(faces) and max(spy.sizes) <= max_batch


def test_server_with_two_single_thread_engines(bundle, faces, tmp_path):
    front = FrontEnd(bundle)

    def protect(face):
        return front.to_proto(front.protect(face))

    config = ServerConfig(
        bundle=bundle, db=tmp_path / "g.sqlite", port=0, max_batch=4, max_delay_ms=2, threads=1, engines=2
    )
    with ServerThread(config) as server:
        assert server.running.batcher.engines == 2
        with keyed_channel(f"127.0.0.1:{server.port}", new_key(config.db)) as channel:
            stub = verification_pb2_grpc.FaceVerificationStub(channel)
            stub.Enroll(verification_pb2.EnrollRequest(subject_id="p0", face=protect(faces[0])), timeout=30)
            calls = [
                stub.Verify.future(
                    verification_pb2.VerifyRequest(subject_id="p0", face=protect(f)), timeout=30
                )
                for f in [faces[0]] * 4 + list(faces[1:9])
            ]
            replies = [c.result() for c in calls]
    genuine, others = replies[:4], replies[4:]
    assert all(r.match for r in genuine)
    assert min(r.score for r in genuine) > max(r.score for r in others)


def test_engines_must_be_positive(bundle, tmp_path):
    with pytest.raises(ConfigError, match="--engines must be >= 1"):
        check_config(ServerConfig(bundle=bundle, db=tmp_path / "g.sqlite", engines=0))
