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
from conftest import lfw_faces
from grpc_health.v1 import health_pb2, health_pb2_grpc
from keys import keyed_channel, new_key
from ppfr.cloud.server import ServerConfig, ServerThread
from ppfr.protos import tensor_pb2, verification_pb2, verification_pb2_grpc
from ppfr.protos.bundle import data_type, numpy_dtype, read_manifest

try:  # the edge's CSPRNG drawer, when present; the test only needs fresh draws per query
    from ppfr.edge.randomness import draw_all
except ImportError:  # pragma: no cover
    draw_all = None


class Protector:
    """The bundle's frontend.onnx on ONNX Runtime with freshly drawn random inputs per face."""

    def __init__(self, bundle):
        import onnxruntime as ort

        self.manifest = read_manifest(bundle)
        m = self.manifest
        self.session = ort.InferenceSession(str(bundle / m.frontend.path), providers=["CPUExecutionProvider"])
        self.rng = np.random.default_rng()

    def _random_inputs(self):
        if draw_all is not None:
            return draw_all(self.manifest.random_inputs, batch=1)
        from google.protobuf import json_format

        feeds = {}
        for spec in self.manifest.random_inputs:
            params = json_format.MessageToDict(spec.params)
            shape = (1, *spec.shape)
            if spec.distribution == "permutation":
                value = self.rng.permutation(int(params.get("n", spec.shape[-1])))[None]
            elif spec.distribution == "uniform_int":
                value = self.rng.integers(int(params["low"]), int(params["high"]), shape)
            else:
                value = self.rng.laplace(params.get("loc", 0.0), params.get("scale", 1.0), shape)
            feeds[spec.name] = value.astype({3: np.int64, 2: np.float32, 4: np.uint8}[spec.data_type])
        return feeds

    def __call__(self, face_rgb) -> verification_pb2.ProtectedFace:
        m = self.manifest
        feeds = {m.frontend_image_input.name: np.ascontiguousarray(face_rgb, np.uint8)[None]}
        feeds.update(self._random_inputs())
        (out,) = self.session.run([m.protected_tensor.name], feeds)
        out = np.ascontiguousarray(out, dtype=out.dtype.newbyteorder("<"))
        return verification_pb2.ProtectedFace(
            data=out.tobytes(),
            shape=list(out.shape),
            data_type=data_type(out.dtype),
            frontend_id=m.frontend_id,
        )


@pytest.fixture(scope="module")
def bundle(small_bundle):
    return small_bundle("ppfr_fd")


@pytest.fixture(scope="module")
def protect(bundle):
    return Protector(bundle)


@pytest.fixture(scope="module")
def people():
    """One face each of several different LFW people (the first image of each pair-list name)."""
    from conftest import DATA

    names = (DATA / "lfw" / "pairs_images.txt").read_text().split()
    firsts, seen = [], set()
    for i, path in enumerate(names):
        person = path.split("/")[0]
        if person not in seen:
            seen.add(person)
            firsts.append(i)
        if len(firsts) == 6:
            break
    return np.stack([lfw_faces(1, start=i)[0] for i in firsts])


@pytest.fixture(scope="module")
def server(bundle, tmp_path_factory):
    db = tmp_path_factory.mktemp("db") / "gallery.sqlite"
    with ServerThread(ServerConfig(bundle=bundle, db=db, port=0, max_batch=4, max_delay_ms=2)) as running:
        yield running


@pytest.fixture(scope="module")
def stub(server):
    with keyed_channel(f"127.0.0.1:{server.port}", new_key(server.config.db)) as channel:
        yield verification_pb2_grpc.FaceVerificationStub(channel)


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details()


def test_enroll_verify_identify_delete(stub, protect, people):
    threshold = protect.manifest.threshold.cosine
    subjects = [f"person-{i}" for i in range(len(people))]
    for name, face in zip(subjects, people):
        reply = stub.Enroll(verification_pb2.EnrollRequest(subject_id=name, face=protect(face)), timeout=30)
        assert reply.template_count == 1 and reply.create_time.seconds > 0

    genuine = stub.Verify(verification_pb2.VerifyRequest(subject_id="person-0", face=protect(people[0])))
    others = [
        stub.Verify(verification_pb2.VerifyRequest(subject_id="person-0", face=protect(face)))
        for face in people[1:]
    ]
    # The untrained test model's threshold is rough (a few LFW pairs), so some impostor pairs may score
    # above it; the impostor is the least similar other person, and every other person scores below genuine.
    impostor = min(others, key=lambda r: r.score)
    assert genuine.threshold == pytest.approx(threshold)
    assert genuine.match and genuine.score >= genuine.threshold
    assert not impostor.match and impostor.score < impostor.threshold
    assert all(r.match == (r.score >= r.threshold) for r in others)
    assert genuine.score > max(r.score for r in others)

    for i in (2, 4):
        found = stub.Identify(verification_pb2.IdentifyRequest(face=protect(people[i]), top_k=3))
        assert [c.subject_id for c in found.candidates][0] == f"person-{i}"
        assert 1 <= len(found.candidates) <= 3
        assert all(c.match and c.score >= found.threshold for c in found.candidates)  # matches only
        assert list(c.score for c in found.candidates) == sorted(
            (c.score for c in found.candidates), reverse=True
        )

    gone = stub.DeleteSubject(verification_pb2.DeleteSubjectRequest(subject_id="person-0"))
    assert gone.deleted_template_count == 1
    # a subject no longer enrolled is a plain non-match (Verify never tells which subject ids exist)
    gone_verify = stub.Verify(verification_pb2.VerifyRequest(subject_id="person-0", face=protect(people[0])))
    assert (gone_verify.match, gone_verify.score) == (False, 0.0)
    code, _ = code_of(
        lambda: stub.DeleteSubject(verification_pb2.DeleteSubjectRequest(subject_id="person-0"))
    )
    assert code == grpc.StatusCode.NOT_FOUND
    found = stub.Identify(verification_pb2.IdentifyRequest(face=protect(people[0]), top_k=10))
    assert "person-0" not in {c.subject_id for c in found.candidates}


def other_type(face) -> int:
    if face.data_type == tensor_pb2.DATA_TYPE_FLOAT32:
        return tensor_pb2.DATA_TYPE_FLOAT16
    return tensor_pb2.DATA_TYPE_FLOAT32


def malformed(good: verification_pb2.ProtectedFace):
    """(what is wrong, the bad face) for every kind of malformed tensor."""
    dtype = numpy_dtype(good.data_type)
    other = other_type(good)
    shape = list(good.shape)

    def variant(**fields):
        face = verification_pb2.ProtectedFace()
        face.CopyFrom(good)
        for key, value in fields.items():
            if key == "shape":
                del face.shape[:]
                face.shape.extend(value)
            else:
                setattr(face, key, value)
        return face

    nan = np.frombuffer(good.data, dtype).copy()
    nan[nan.size // 2] = np.nan
    inf = np.frombuffer(good.data, dtype).copy()
    inf[0] = -np.inf
    return [
        ("unspecified dtype", variant(data_type=tensor_pb2.DATA_TYPE_UNSPECIFIED)),
        ("integer dtype", variant(data_type=tensor_pb2.DATA_TYPE_INT64)),
        ("the other float type, same bytes", variant(data_type=other)),
        ("no batch dimension", variant(shape=shape[1:])),
        ("wrong channel count", variant(shape=[1, shape[1] + 1, *shape[2:]])),
        ("batch of two", variant(shape=[2, *shape[1:]], data=good.data * 2)),
        ("short data", variant(data=good.data[: -dtype.itemsize])),
        ("long data", variant(data=good.data + bytes(dtype.itemsize))),
        ("empty data", variant(data=b"")),
        ("NaN value", variant(data=nan.tobytes())),
        ("infinite value", variant(data=inf.tobytes())),
        ("no frontend_id", variant(frontend_id="")),
        ("foreign frontend_id", variant(frontend_id="0" * 64)),
    ]


def test_every_malformed_tensor_is_invalid_argument_and_the_server_keeps_serving(stub, protect, people):
    stub.Enroll(verification_pb2.EnrollRequest(subject_id="valid", face=protect(people[3])))
    good = protect(people[3])
    for what, face in malformed(good):
        for call in (
            lambda face=face: stub.Verify(verification_pb2.VerifyRequest(subject_id="valid", face=face)),
            lambda face=face: stub.Enroll(verification_pb2.EnrollRequest(subject_id="valid", face=face)),
            lambda face=face: stub.Identify(verification_pb2.IdentifyRequest(face=face)),
        ):
            code, details = code_of(call)
            assert code == grpc.StatusCode.INVALID_ARGUMENT, what
            assert "face." in details, (what, details)
    foreign = malformed(good)[-1][1]
    _, details = code_of(
        lambda: stub.Verify(verification_pb2.VerifyRequest(subject_id="valid", face=foreign))
    )
    assert "not the front-end this server serves" in details
    # the same face in the other float type is accepted (converted to the recognizer's input type)
    converted = np.frombuffer(good.data, numpy_dtype(good.data_type)).astype(numpy_dtype(other_type(good)))
    as_other = verification_pb2.ProtectedFace(
        data=converted.tobytes(), shape=good.shape, data_type=other_type(good), frontend_id=good.frontend_id
    )
    assert stub.Verify(verification_pb2.VerifyRequest(subject_id="valid", face=as_other)).match
    code, _ = code_of(lambda: stub.Verify(verification_pb2.VerifyRequest(subject_id="", face=good)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, _ = code_of(lambda: stub.Identify(verification_pb2.IdentifyRequest(face=good, top_k=-1)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    # still serving
    assert stub.Verify(verification_pb2.VerifyRequest(subject_id="valid", face=protect(people[3]))).match


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


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certs(folder):
    """A CA, a server certificate for 127.0.0.1/localhost, and a client certificate, all signed by the CA."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ca = ["-subj", "/CN=ppfr-test-ca", "-addext", "basicConstraints=critical,CA:TRUE"]
    ca += ["-addext", "keyUsage=critical,keyCertSign"]
    openssl("req", "-x509", *ec, *ca, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", cwd=folder)
    (folder / "server.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    (folder / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for who in ("server", "client"):
        openssl("req", *ec, "-keyout", f"{who}.key", "-out", f"{who}.csr", "-subj", f"/CN={who}", cwd=folder)
        sign = [
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            f"{who}.ext",
        ]
        openssl("x509", "-req", "-in", f"{who}.csr", *sign, "-out", f"{who}.pem", cwd=folder)
    return {
        name: (folder / name).read_bytes() for name in ("ca.pem", "server.pem", "client.pem", "client.key")
    }


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


class SlowRuntime:
    """Wraps the real runtime and takes `delay` seconds per call, to outlast a client's deadline."""

    def __init__(self, runtime, delay):
        self.runtime, self.delay = runtime, delay
        self.name, self.max_batch = runtime.name, runtime.max_batch

    def embed(self, batch):
        time.sleep(self.delay)
        return self.runtime.embed(batch)

    def close(self):
        self.runtime.close()


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
