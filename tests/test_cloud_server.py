"""The real server on a loopback port with a small exported bundle and real LFW faces, through real gRPC.

The test bundle's recognizer is a tiny untrained MobileFaceNet exported through the real exporter, so
"genuine" here is the same face protected twice with fresh randomness (a new draw of every random input
per query, as the edge does), and "impostor" is another person's face.
"""

import re
import signal
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest
import scenarios
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import SlowRuntime, code_of, make_certs
from keys import keyed_channel, new_key
from ppfr.bundle import read_manifest
from ppfr.cloud.server import ServerConfig, ServerThread
from ppfr.protos import verification_pb2, verification_pb2_grpc


@pytest.fixture(scope="module")
def server(bundle, tmp_path_factory):
    db = tmp_path_factory.mktemp("db") / "gallery.sqlite"
    with ServerThread(ServerConfig(bundle=bundle, db=db, port=0, max_batch=4, max_delay_ms=2)) as running:
        yield running


@pytest.fixture(scope="module")
def stub(server):
    with keyed_channel(f"127.0.0.1:{server.port}", new_key(server.config.db)) as channel:
        yield verification_pb2_grpc.FaceVerificationStub(channel)


def test_enroll_verify_identify_delete(stub, protect, people):
    scenarios.enroll_verify_identify_delete(stub, protect, people)


def test_every_malformed_tensor_is_invalid_argument_and_the_server_keeps_serving(stub, protect, people):
    scenarios.malformed_tensors_are_refused(stub, protect, people)


def test_health_reflection_and_server_info(server, stub, bundle):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "ppfr.v1.FaceVerification"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        (answer,) = reflect.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = {s.name for s in answer.list_services_response.service}
        assert {"ppfr.v1.FaceVerification", "grpc.health.v1.Health"} <= names
    info = stub.GetServerInfo(verification_pb2.GetServerInfoRequest())
    manifest = read_manifest(bundle)
    assert info.runtime == "onnxruntime" and info.frontend_id == manifest.frontend_id
    assert info.embedding_size == manifest.embedding_size
    assert list(info.protected_tensor.shape) == list(manifest.protected_tensor.shape)


def test_concurrent_calls_are_batched(server, stub, protect, people):
    from concurrent.futures import ThreadPoolExecutor

    stub.Enroll(verification_pb2.EnrollRequest(subject_id="batched", face=protect(people[5])))
    faces = [protect(people[5]) for _ in range(16)]
    before = server.running.batcher.batches, server.running.batcher.items
    with ThreadPoolExecutor(8) as pool:
        replies = list(
            pool.map(
                lambda f: stub.Verify(verification_pb2.VerifyRequest(subject_id="batched", face=f)), faces
            )
        )
    assert all(r.match for r in replies)
    batches = server.running.batcher.batches - before[0]
    items = server.running.batcher.items - before[1]
    assert items == 16 and batches < 16


def test_enrollments_survive_a_restart(bundle, protect, people, tmp_path):
    db = tmp_path / "gallery.sqlite"
    key = new_key(db)
    for round_ in range(2):
        with ServerThread(ServerConfig(bundle=bundle, db=db, port=0)) as running:
            with keyed_channel(running.address, key) as channel:
                stub = verification_pb2_grpc.FaceVerificationStub(channel)
                if round_ == 0:
                    stub.Enroll(verification_pb2.EnrollRequest(subject_id="kept", face=protect(people[2])))
                    stub.Enroll(verification_pb2.EnrollRequest(subject_id="kept", face=protect(people[2])))
                    continue
                info = stub.GetServerInfo(verification_pb2.GetServerInfoRequest())
                assert (info.subject_count, info.template_count) == (1, 2)
                reply = stub.Verify(
                    verification_pb2.VerifyRequest(subject_id="kept", face=protect(people[2]))
                )
                assert reply.match


def test_mutual_tls_refuses_a_client_without_a_certificate(bundle, tmp_path):
    pem = make_certs(tmp_path)
    config = ServerConfig(
        bundle=bundle,
        db=tmp_path / "gallery.sqlite",
        port=0,
        tls_cert=tmp_path / "server.pem",
        tls_key=tmp_path / "server.key",
        tls_client_ca=tmp_path / "ca.pem",
    )
    request = verification_pb2.GetServerInfoRequest()
    with ServerThread(config) as running:
        target = f"127.0.0.1:{running.port}"
        anonymous = grpc.ssl_channel_credentials(root_certificates=pem["ca.pem"])
        with grpc.secure_channel(target, anonymous) as channel:
            with pytest.raises(grpc.RpcError) as err:
                verification_pb2_grpc.FaceVerificationStub(channel).GetServerInfo(request, timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        with grpc.insecure_channel(target) as channel:  # plaintext is refused too
            with pytest.raises(grpc.RpcError):
                verification_pb2_grpc.FaceVerificationStub(channel).GetServerInfo(request, timeout=10)
        # mTLS admits the client's connection; the API key still decides what it may call
        known = grpc.ssl_channel_credentials(pem["ca.pem"], pem["client.key"], pem["client.pem"])
        with grpc.secure_channel(target, known) as channel:
            with pytest.raises(grpc.RpcError) as err:
                verification_pb2_grpc.FaceVerificationStub(channel).GetServerInfo(request, timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with keyed_channel(target, new_key(config.db, "verify"), known) as channel:
            info = verification_pb2_grpc.FaceVerificationStub(channel).GetServerInfo(request, timeout=10)
            assert info.runtime == "onnxruntime"


SERVE_WITHOUT_TORCH = """
import sys
import time
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from ppfr.cloud.server import ServerConfig, ServerThread

with ServerThread(ServerConfig(bundle=sys.argv[1], db=sys.argv[2], port=0)) as running:
    with grpc.insecure_channel(running.address) as channel:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
print("torch" in sys.modules)
"""


def test_starting_the_server_does_not_import_torch(bundle, tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", SERVE_WITHOUT_TORCH, str(bundle), str(tmp_path / "g.sqlite")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_serve_command_logs_startup_and_drains_on_sigterm(bundle, protect, people, tmp_path):
    cmd = [sys.executable, "-c", "import sys; from ppfr.cloud.cli import main; sys.exit(main())", "serve"]
    cmd += ["--bundle", str(bundle), "--db", str(tmp_path / "g.sqlite"), "--port", "0"]
    key = new_key(tmp_path / "g.sqlite", "verify,enroll")
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if "serving" in line:
                break
        startup = lines[-1]
        assert f"bundle={bundle}" in startup and "runtime=onnxruntime" in startup
        address = re.search(r"address=(\S+)", startup).group(1)
        with keyed_channel(address, key) as channel:
            stub = verification_pb2_grpc.FaceVerificationStub(channel)
            face = protect(people[1])
            stub.Enroll(verification_pb2.EnrollRequest(subject_id="logged", face=face), timeout=30)
            assert stub.Verify(
                verification_pb2.VerifyRequest(subject_id="logged", face=face), timeout=30
            ).match
        proc.send_signal(signal.SIGTERM)
        rest = proc.stderr.read()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = "".join(lines) + rest
    assert "stopped" in log and "Traceback" not in log
    assert re.search(r"request_id=\w+ key=\w+ peer=\S+ Enroll OK", log)  # writes are logged, with the key id
    assert key[-43:] not in log  # never the secret
    assert max(len(line) for line in log.splitlines()) < 400  # nothing tensor-sized is ever logged


def test_deadlines_are_honoured(bundle, protect, people, tmp_path, monkeypatch):
    from ppfr.cloud import server as server_module

    real = server_module.create_runtime
    monkeypatch.setattr(server_module, "create_runtime", lambda *a, **k: SlowRuntime(real(*a, **k), 0.6))
    with ServerThread(ServerConfig(bundle=bundle, db=tmp_path / "g.sqlite", port=0)) as running:
        with keyed_channel(running.address, new_key(tmp_path / "g.sqlite")) as channel:
            stub = verification_pb2_grpc.FaceVerificationStub(channel)
            request = verification_pb2.EnrollRequest(subject_id="late", face=protect(people[0]))
            code, _ = code_of(lambda: stub.Enroll(request, timeout=0.2))
            assert code == grpc.StatusCode.DEADLINE_EXCEEDED
            time.sleep(0.8)  # the engine call finishes; the expired Enroll must not be committed
            info = stub.GetServerInfo(verification_pb2.GetServerInfoRequest())
            assert info.template_count == 0
            assert stub.Enroll(request, timeout=10).template_count == 1  # and the server keeps serving


def test_runtime_choice(bundle):
    from ppfr.cloud.runtime import RuntimeUnavailable, create_runtime, tensorrt_available

    runtime = create_runtime("auto", bundle, threads=1, max_batch=4)
    try:
        if not tensorrt_available():
            assert runtime.name == "onnxruntime"
        spec = read_manifest(bundle).protected_tensor
        batch = np.random.default_rng(0).standard_normal((3, *spec.shape[1:])).astype(np.float32)
        out = runtime.embed(batch)
        assert out.shape == (3, read_manifest(bundle).embedding_size) and out.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-3)
    finally:
        runtime.close()
    if not tensorrt_available():
        with pytest.raises(RuntimeUnavailable, match="TensorRT"):
            create_runtime("tensorrt", bundle)
    with pytest.raises(RuntimeUnavailable, match="unknown runtime"):
        create_runtime("cuda", bundle)
