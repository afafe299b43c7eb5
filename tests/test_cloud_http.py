"""The HTTP/JSON gateway (`--http-port`) on a real server: a small exported bundle, real LFW faces protected
by the bundle's own front-end, real gRPC and real HTTP on loopback. The same tensor gets the same decision
over both; keys, scopes, limits and metrics are the gRPC ones; bad bodies are answered 4xx, never a crash.
Also: the .proto files compile with a plain `protoc -I protos`."""

import base64
import http.client
import json
import socket
import subprocess
import sys
import time

import pytest
from google.protobuf import json_format
from helpers import REPO, make_certs, serving
from keys import keyed_channel, new_key
from ppfr.cloud.server import ServerConfig, ServerThread
from ppfr.edge.frontend import FrontEnd
from ppfr.protos import verification_pb2 as pb
from ppfr.protos import verification_pb2_grpc

RPC = "/ppfr.v1.FaceVerification/"


@pytest.fixture(scope="module")
def frontend(bundle):
    return FrontEnd(bundle)


@pytest.fixture(scope="module")
def people(people):
    """Four different LFW people (conftest's first six, the first four)."""
    return people[:4]


@pytest.fixture(scope="module")
def server(bundle, tmp_path_factory):
    with serving(bundle, tmp_path_factory.mktemp("http"), http_port=0, max_delay_ms=2) as running:
        yield running


@pytest.fixture(scope="module")
def admin_key(server):
    return new_key(server.config.db)


@pytest.fixture(scope="module")
def stub(server, admin_key):
    with keyed_channel(server.address, admin_key) as channel:
        yield verification_pb2_grpc.FaceVerificationStub(channel)


def post(server, rpc: str, body, key: str | None = None, headers: dict | None = None):
    """(HTTP status, parsed JSON body, response headers)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.running.http.port, timeout=60)
    try:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        sent = {"Content-Type": "application/json", **(headers or {})}
        if key:
            sent["x-api-key"] = key
        conn.request("POST", RPC + rpc, body=data, headers=sent)
        reply = conn.getresponse()
        return reply.status, json.loads(reply.read()), dict(reply.getheaders())
    finally:
        conn.close()


def as_json(message) -> dict:
    return json_format.MessageToDict(message)


def test_http_verify_gives_the_grpc_decision(server, stub, frontend, people, admin_key):
    enroll = pb.EnrollRequest(subject_id="alice", face=frontend.to_proto(frontend.protect(people[0])))
    status, enrolled, headers = post(server, "Enroll", as_json(enroll), admin_key)
    assert status == 200, enrolled
    assert enrolled["subjectId"] == "alice" and enrolled["templateCount"] == 1
    assert int(enrolled["templateId"]) > 0 and headers.get("x-request-id")

    decisions = []
    for face in people:  # alice again (fresh randomness), then three other people
        request = pb.VerifyRequest(subject_id="alice", face=frontend.to_proto(frontend.protect(face)))
        over_grpc = stub.Verify(request, timeout=60)
        status, over_http, _ = post(server, "Verify", as_json(request), admin_key)
        assert status == 200, over_http
        assert set(over_http) == {
            f.json_name for f in pb.VerifyResponse.DESCRIPTOR.fields
        }  # every field, false too
        assert over_http["match"] is over_grpc.match
        assert over_http["score"] == pytest.approx(over_grpc.score, abs=1e-5)
        assert over_http["threshold"] == pytest.approx(over_grpc.threshold)
        decisions.append(over_grpc.match)
    assert decisions[0] is True, "the enrolled face, protected afresh, must match"
    assert False in decisions, "expected at least one impostor rejected (match: false in the JSON)"

    listed = stub.ListSubjects(pb.ListSubjectsRequest(), timeout=30)  # the HTTP enrollment, seen by gRPC
    assert [(s.subject_id, s.template_count) for s in listed.subjects] == [("alice", 1)]


def test_http_answers_with_the_keys_and_scopes_of_grpc(server, frontend, people):
    verify_key = new_key(server.config.db, scopes="verify", name="door")
    face = as_json(frontend.to_proto(frontend.protect(people[1])))

    status, body, _ = post(server, "GetServerInfo", {})
    assert (status, body["status"]) == (401, "UNAUTHENTICATED") and "x-api-key" in body["message"]
    status, body, _ = post(server, "GetServerInfo", {}, "ppfr_000000000000_" + "x" * 43)
    assert (status, body["status"]) == (401, "UNAUTHENTICATED")
    status, body, _ = post(server, "DeleteSubject", {"subject_id": "alice"}, verify_key)
    assert (status, body["status"], body["code"]) == (403, "PERMISSION_DENIED", 7)
    assert "'admin' scope" in body["message"]
    status, body, _ = post(server, "Identify", {"face": face, "top_k": 3}, verify_key)
    assert status == 200 and body["threshold"] > 0 and isinstance(body["candidates"], list)
    status, body, _ = post(server, "GetServerInfo", b"", verify_key)  # an empty body is {}
    assert status == 200 and body["frontendId"] == frontend.frontend_id


def test_http_shares_rate_limits_and_metrics(server, admin_key):
    slow_key = new_key(server.config.db, scopes="verify", rate=1, name="slow")
    metrics = server.running.metrics.registry

    def count(code):
        return metrics.get_sample_value("ppfr_requests_total", {"method": "GetServerInfo", "code": code}) or 0

    before_ok, before_limited = count("OK"), count("RESOURCE_EXHAUSTED")
    statuses = [post(server, "GetServerInfo", {}, slow_key)[0] for _ in range(3)]
    assert statuses[0] == 200 and 429 in statuses  # a burst of one second's worth at 1/s
    limited = post(server, "GetServerInfo", {}, slow_key)
    assert limited[0] == 429 and limited[2].get("Retry-After") == "1"
    assert count("OK") == before_ok + statuses.count(200)
    assert count("RESOURCE_EXHAUSTED") == before_limited + statuses.count(429) + 1


def test_http_refuses_bad_bodies_with_4xx(server, frontend, people, admin_key):
    face = as_json(frontend.to_proto(frontend.protect(people[2])))
    cases = {
        "not JSON": (b"{not json", 400, "not a valid JSON ppfr.v1.VerifyRequest"),
        "not an object": (b"[1, 2]", 400, "must be a JSON object"),
        "unknown field": ({"subject_id": "alice", "nope": 1}, 400, "no field named"),
        "wrong type": ({"subject_id": 5}, 400, "subject_id field"),
        "bad base64": ({"subject_id": "a", "face": {**face, "data": "!!!!"}}, 400, "face.data is not base64"),
        "bad utf-8": (b'{"subject_id": "\xff"}', 400, "not a valid JSON"),
        "short tensor": (
            {"subject_id": "alice", "face": {**face, "data": base64.b64encode(b"\0" * 8).decode()}},
            400,
            "bytes",
        ),
    }
    for name, (body, want, text) in cases.items():
        status, reply, _ = post(server, "Verify", body, admin_key)
        assert status == want, (name, reply)
        assert text in reply["message"], (name, reply)

    huge = server.running.http.max_body + 1
    status, reply, _ = post(server, "Verify", b"x", admin_key, {"Content-Length": str(huge)})
    assert status == 413 and str(huge) in reply["message"]
    conn = http.client.HTTPConnection("127.0.0.1", server.running.http.port, timeout=30)
    conn.request("GET", RPC + "Verify")
    assert conn.getresponse().status == 405
    conn.close()
    status, reply, _ = post(server, "Nope", {}, admin_key)
    assert status == 404 and "Verify" in reply["message"]
    assert raw_exchange(server, b"garbage\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert raw_exchange(server, b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").startswith(
        b"HTTP/1.1 411 "
    )
    assert health(server) == (200, {"status": "SERVING"})  # still serving after all of it


def test_http_keep_alive_and_expect_100_continue(server, admin_key):
    with socket.create_connection(("127.0.0.1", server.running.http.port), timeout=30) as s:
        head = f"POST {RPC}GetServerInfo HTTP/1.1\r\nx-api-key: {admin_key}\r\nContent-Length: 2\r\n"
        s.sendall((head + "Expect: 100-continue\r\n\r\n").encode())
        assert s.recv(4096) == b"HTTP/1.1 100 Continue\r\n\r\n"  # only then the body
        s.sendall(b"{}")
        first = s.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 OK") and b"Connection: keep-alive" in first
        s.sendall((head + "\r\n{}").encode())  # a second request on the same connection
        assert s.recv(65536).startswith(b"HTTP/1.1 200 OK")


def test_keyless_calls_are_refused_before_their_body_and_paced(server):
    from ppfr.cloud.interceptor import Pacer

    head = f"POST {RPC}Verify HTTP/1.1\r\nContent-Length: 100000\r\n\r\n".encode()  # the body never comes
    with socket.create_connection(("127.0.0.1", server.running.http.port), timeout=30) as s:
        s.sendall(head)
        reply = s.recv(65536)
        assert reply.startswith(b"HTTP/1.1 401 ") and b"Connection: close" in reply
        assert s.recv(1) == b""  # closed: the unread body is never parsed
    gate = server.running.http.gate  # HTTP 401s and gRPC's keyless refusals share the gate's pace
    saved, gate.unauthenticated = gate.unauthenticated, Pacer(50)
    try:
        start = time.monotonic()
        statuses = [post(server, "Verify", {})[0] for _ in range(26)]
        assert statuses == [401] * 26 and time.monotonic() - start >= 25 / 50  # one answer per 20 ms
    finally:
        gate.unauthenticated = saved


def raw_exchange(server, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", server.running.http.port), timeout=30) as s:
        s.sendall(data)
        return s.recv(4096)


def health(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.running.http.port, timeout=30)
    try:
        conn.request("GET", "/healthz")
        reply = conn.getresponse()
        return reply.status, json.loads(reply.read())
    finally:
        conn.close()


def test_http_stops_with_the_server_even_with_idle_connections(bundle, tmp_path):
    config = ServerConfig(bundle=bundle, db=tmp_path / "g.sqlite", port=0, http_port=0, grace_s=1)
    running = ServerThread(config).start()
    port = running.running.http.port
    idle = socket.create_connection(("127.0.0.1", port), timeout=10)  # kept open, never sends
    try:
        assert health(running)[0] == 200
        running.stop()
        assert idle.recv(1) == b""  # closed by the server
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=5)
    finally:
        idle.close()
        running.stop()


def test_an_http_call_in_flight_at_stop_gets_its_answer(bundle, tmp_path, frontend, people):
    """The batcher holds the Identify for up to 800 ms; the server is stopped meanwhile and drains it."""
    import threading

    config = ServerConfig(
        bundle=bundle, db=tmp_path / "g.sqlite", port=0, http_port=0, max_batch=8, max_delay_ms=800
    )
    running = ServerThread(config).start()
    key = new_key(config.db)
    face = as_json(frontend.to_proto(frontend.protect(people[3])))
    answers = []
    call = threading.Thread(target=lambda: answers.append(post(running, "Identify", {"face": face}, key)))
    call.start()
    deadline = time.monotonic() + 20
    while not running.running.gate.in_flight and time.monotonic() < deadline:  # the call is in the gate
        time.sleep(0.01)
    running.stop()
    call.join(30)
    (status, body, headers) = answers[0]
    assert status == 200 and body["candidates"] == [] and headers["Connection"] == "close"


def test_grpc_still_works_without_the_http_port(bundle, tmp_path):
    with ServerThread(ServerConfig(bundle=bundle, db=tmp_path / "g.sqlite", port=0)) as running:
        assert running.running.http is None
        with keyed_channel(running.address, new_key(running.config.db)) as channel:
            info = verification_pb2_grpc.FaceVerificationStub(channel).GetServerInfo(
                pb.GetServerInfoRequest(), timeout=30
            )
        assert info.method == "ppfr_fd"


def test_protos_compile_with_plain_protoc(tmp_path):
    """`protoc -I protos protos/*.proto` (here grpc_tools' protoc), and the result imports on its own."""
    protos = sorted(str(p) for p in (REPO / "protos").glob("*.proto"))
    cmd = [sys.executable, "-m", "grpc_tools.protoc", "-I", str(REPO / "protos")]
    done = subprocess.run([*cmd, f"--python_out={tmp_path}", *protos], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    check = (
        "import verification_pb2 as v; s = v.DESCRIPTOR.services_by_name['FaceVerification']; "
        "o = v.DESCRIPTOR.GetOptions(); print(s.full_name, o.java_package, o.go_package, o.csharp_namespace)"
    )
    out = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["ppfr.v1.FaceVerification", "ppfr.v1", "ppfr/v1;ppfrv1", "Ppfr.V1"]


def test_http_port_uses_the_servers_mutual_tls(bundle, tmp_path):
    """With --tls-cert/--tls-key/--tls-client-ca the HTTP port is HTTPS and asks for a client certificate."""
    import ssl

    make_certs(tmp_path)
    config = ServerConfig(
        bundle=bundle,
        db=tmp_path / "g.sqlite",
        port=0,
        http_port=0,
        tls_cert=tmp_path / "server.pem",
        tls_key=tmp_path / "server.key",
        tls_client_ca=tmp_path / "ca.pem",
    )
    with ServerThread(config) as running:
        port, key = running.running.http.port, new_key(running.config.db)
        trusted = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        trusted.load_cert_chain(str(tmp_path / "client.pem"), str(tmp_path / "client.key"))
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=trusted, timeout=30)
        conn.request("POST", RPC + "GetServerInfo", body=b"{}", headers={"x-api-key": key})
        reply = conn.getresponse()
        assert reply.status == 200 and json.loads(reply.read())["method"] == "ppfr_fd"
        conn.close()

        anonymous = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))  # no client certificate
        with pytest.raises((ssl.SSLError, ConnectionError)):
            conn = http.client.HTTPSConnection("127.0.0.1", port, context=anonymous, timeout=30)
            conn.request("GET", "/healthz")
            conn.getresponse()
        plain = http.client.HTTPConnection("127.0.0.1", port, timeout=30)  # plaintext gets no HTTP answer
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            plain.request("GET", "/healthz")
            plain.getresponse()
