"""Access control, the gallery API and observability, on the real server (loopback gRPC, real SQLite, the
small real bundle): keys and scopes, revocation, rate and concurrency limits, Identify revealing only
matches, idempotent Enroll across a deadline, DeleteTemplate, ListSubjects, metrics, request ids, and the
small faults (undecodable requests, huge shapes, file modes)."""

import logging
import stat
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import SlowRuntime, code_of, lfw_faces, serving
from keys import keyed_channel, new_key
from ppfr.cloud.cli import main as cloud_cli
from ppfr.cloud.server import ServerConfig, ServerThread
from ppfr.protos import verification_pb2 as pb
from ppfr.protos import verification_pb2_grpc as pb_grpc


@pytest.fixture(scope="module")
def faces():
    return lfw_faces(8, start=0)


@pytest.fixture(scope="module")
def server(bundle, tmp_path_factory):
    with serving(bundle, tmp_path_factory.mktemp("access"), metrics_port=0) as running:
        yield running


@pytest.fixture(scope="module")
def stubs(server):
    """A stub per key kind, plus one without a key."""
    db = server.config.db
    channels = {
        "admin": keyed_channel(server.address, new_key(db)),
        "verify": keyed_channel(server.address, new_key(db, "verify")),
        "enroll": keyed_channel(server.address, new_key(db, "enroll")),
        "none": grpc.insecure_channel(server.address),
    }
    yield {kind: pb_grpc.FaceVerificationStub(channel) for kind, channel in channels.items()}
    for channel in channels.values():
        channel.close()


def test_a_call_without_a_valid_key_is_unauthenticated(server, stubs, protect, faces):
    request = pb.VerifyRequest(subject_id="x", face=protect(faces[0]))
    code, details = code_of(lambda: stubs["none"].Verify(request))
    assert code == grpc.StatusCode.UNAUTHENTICATED and "x-api-key" in details
    for bad in ("nonsense", "ppfr_000000000000_" + "A" * 43, new_key(server.config.db)[:-1] + "#"):
        with keyed_channel(server.address, bad) as channel:
            code, details = code_of(lambda ch=channel: pb_grpc.FaceVerificationStub(ch).Verify(request))
            assert code == grpc.StatusCode.UNAUTHENTICATED and "not valid" in details
    for call in (
        lambda: stubs["none"].ListSubjects(pb.ListSubjectsRequest()),
        lambda: stubs["none"].DeleteSubject(pb.DeleteSubjectRequest(subject_id="x")),
        lambda: stubs["none"].Identify(pb.IdentifyRequest(face=protect(faces[0]), top_k=1000)),
        lambda: stubs["none"].GetServerInfo(pb.GetServerInfoRequest()),
    ):
        assert code_of(call)[0] == grpc.StatusCode.UNAUTHENTICATED
    with grpc.insecure_channel(server.address) as channel:  # health needs no key (load balancers)
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_scopes(stubs, protect, faces):
    face = protect(faces[1])
    enrolled = stubs["enroll"].Enroll(pb.EnrollRequest(subject_id="scoped", face=face))
    assert stubs["verify"].Verify(pb.VerifyRequest(subject_id="scoped", face=face)).match
    assert stubs["verify"].Identify(pb.IdentifyRequest(face=face)).candidates[0].subject_id == "scoped"
    assert stubs["verify"].GetServerInfo(pb.GetServerInfoRequest()).template_count >= 1
    denied = {
        "verify": [
            lambda s: s.Enroll(pb.EnrollRequest(subject_id="scoped", face=face)),
            lambda s: s.DeleteTemplate(pb.DeleteTemplateRequest(template_id=enrolled.template_id)),
            lambda s: s.DeleteSubject(pb.DeleteSubjectRequest(subject_id="scoped")),
            lambda s: s.ListSubjects(pb.ListSubjectsRequest()),
        ],
        "enroll": [
            lambda s: s.Verify(pb.VerifyRequest(subject_id="scoped", face=face)),
            lambda s: s.DeleteSubject(pb.DeleteSubjectRequest(subject_id="scoped")),
            lambda s: s.ListSubjects(pb.ListSubjectsRequest()),
        ],
    }
    for kind, calls in denied.items():
        for call in calls:
            code, details = code_of(lambda call=call, kind=kind: call(stubs[kind]))
            assert code == grpc.StatusCode.PERMISSION_DENIED and "scope" in details, (kind, details)
    assert (
        stubs["admin"].DeleteSubject(pb.DeleteSubjectRequest(subject_id="scoped")).deleted_template_count == 1
    )


def test_a_revoked_key_stops_working_at_once(server, protect, faces, capsys):
    key = new_key(server.config.db, "verify", name="to-revoke")
    key_id = key.split("_")[1]
    with keyed_channel(server.address, key) as channel:
        stub = pb_grpc.FaceVerificationStub(channel)
        assert stub.GetServerInfo(pb.GetServerInfoRequest()).embedding_size > 0
        # `ppfr-cloud keys revoke`: its own connection to the key file, as another process would have
        assert cloud_cli(["keys", "revoke", "--db", str(server.config.db), key_id]) == 0
        code, _ = code_of(lambda: stub.GetServerInfo(pb.GetServerInfoRequest()))
        assert code == grpc.StatusCode.UNAUTHENTICATED
    capsys.readouterr()


def test_identify_reveals_no_subject_below_the_threshold(stubs, protect, faces):
    admin = stubs["admin"]
    names = [f"gallery-{i}" for i in range(6)]
    for name, face in zip(names, faces[:6]):
        admin.Enroll(pb.EnrollRequest(subject_id=name, face=protect(face)))
    zero = protect(faces[0])
    zero.data = bytes(len(zero.data))
    probes = [protect(faces[2]), protect(faces[7]), zero]
    for probe in probes:
        scores = {n: admin.Verify(pb.VerifyRequest(subject_id=n, face=probe)).score for n in names}
        found = admin.Identify(pb.IdentifyRequest(face=probe, top_k=1000))
        returned = {c.subject_id for c in found.candidates} & set(names)
        assert returned == {n for n, s in scores.items() if s >= found.threshold}
        assert all(c.match and c.score >= found.threshold for c in found.candidates)
    assert "gallery-2" in {
        c.subject_id for c in admin.Identify(pb.IdentifyRequest(face=probes[0])).candidates
    }


def test_rate_limit_answers_resource_exhausted(server, protect, faces):
    with keyed_channel(server.address, new_key(server.config.db, "verify", rate=1)) as channel:
        stub = pb_grpc.FaceVerificationStub(channel)
        request = pb.GetServerInfoRequest()
        stub.GetServerInfo(request)  # a burst of one second's worth
        code, details = code_of(lambda: stub.GetServerInfo(request))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "rate limit of 1 calls/s" in details
        time.sleep(1.05)  # refills at 1/s
        assert stub.GetServerInfo(request).embedding_size > 0


def test_a_retried_enroll_with_the_same_idempotency_key_leaves_one_template(stubs, protect, faces):
    admin = stubs["admin"]
    request = pb.EnrollRequest(subject_id="once", face=protect(faces[3]), idempotency_key="attempt-1")
    first = admin.Enroll(request)
    again = admin.Enroll(request)
    assert (again.template_id, again.template_count) == (first.template_id, 1)
    other = admin.Enroll(pb.EnrollRequest(subject_id="once", face=protect(faces[3]), idempotency_key="b"))
    assert other.template_count == 2 and other.template_id != first.template_id
    code, _ = code_of(
        lambda: admin.Enroll(pb.EnrollRequest(subject_id="once", face=request.face, idempotency_key="x\n"))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_delete_template_and_list_subjects(stubs, protect, faces):
    admin = stubs["admin"]
    kept = admin.Enroll(pb.EnrollRequest(subject_id="pages-b", face=protect(faces[4])))
    bad = admin.Enroll(pb.EnrollRequest(subject_id="pages-b", face=protect(faces[5])))
    assert bad.template_count == 2
    gone = admin.DeleteTemplate(pb.DeleteTemplateRequest(template_id=bad.template_id))
    assert (gone.subject_id, gone.template_id) == ("pages-b", bad.template_id)
    code, _ = code_of(lambda: admin.DeleteTemplate(pb.DeleteTemplateRequest(template_id=bad.template_id)))
    assert code == grpc.StatusCode.NOT_FOUND
    code, _ = code_of(lambda: admin.DeleteTemplate(pb.DeleteTemplateRequest(template_id=0)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert admin.Verify(pb.VerifyRequest(subject_id="pages-b", face=protect(faces[4]))).match
    assert kept.template_id != bad.template_id
    for name in ("pages-a", "pages-c", "pages-d"):
        admin.Enroll(pb.EnrollRequest(subject_id=name, face=protect(faces[4])))

    listed, token, pages = [], "", 0
    while True:
        page = admin.ListSubjects(pb.ListSubjectsRequest(page_size=2, page_token=token))
        assert len(page.subjects) <= 2
        listed += [(s.subject_id, s.template_count) for s in page.subjects]
        pages, token = pages + 1, page.next_page_token
        if not token:
            break
    names = [n for n, _ in listed]
    assert names == sorted(names) and len(set(names)) == len(names)
    assert pages == (len(names) + 1) // 2
    assert {"pages-a": 1, "pages-b": 1, "pages-c": 1, "pages-d": 1}.items() <= dict(listed).items()
    info = admin.GetServerInfo(pb.GetServerInfoRequest())
    assert (len(listed), sum(n for _, n in listed)) == (info.subject_count, info.template_count)
    bad_requests = [pb.ListSubjectsRequest(page_size=n) for n in (-1, 5000)]
    for bad_request in [*bad_requests, pb.ListSubjectsRequest(page_token="not-a-token")]:
        assert code_of(lambda r=bad_request: admin.ListSubjects(r))[0] == grpc.StatusCode.INVALID_ARGUMENT


def test_undecodable_requests_and_huge_shapes_are_invalid_argument_in_short(
    server, stubs, protect, faces, caplog
):
    key = new_key(server.config.db, "verify")
    with grpc.insecure_channel(server.address) as channel:
        raw = channel.unary_unary("/ppfr.v1.FaceVerification/Verify")
        with caplog.at_level(logging.INFO, logger="ppfr.cloud"):
            caplog.clear()
            for garbage in (b"\xff\xff\xff\xff", b"\x0a\xff\xff\xff\xff\x0f", b"\x12\x05abc"):
                with pytest.raises(grpc.RpcError) as err:
                    raw(garbage, metadata=[("x-api-key", key), ("x-request-id", "probe-1")], timeout=10)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "not a valid ppfr.v1.VerifyRequest" in err.value.details()
                assert ("x-request-id", "probe-1") in err.value.trailing_metadata()
            for _ in range(50):  # the server logs each call just after answering it
                if len(caplog.records) >= 3:
                    break
                time.sleep(0.05)
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == 3 and all("request_id=probe-1" in m and "undecodable" in m for m in lines)
        assert all(len(m) < 200 for m in lines) and not any(r.exc_info for r in caplog.records)

    face = protect(faces[0])
    del face.shape[:]
    face.shape.extend([1] * 100_000)
    code, details = code_of(lambda: stubs["verify"].Verify(pb.VerifyRequest(subject_id="x", face=face)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "100000 dims" in details and len(details) < 300


def test_gallery_and_key_files_are_private(server):
    db = server.config.db
    for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + ".keys")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_metrics_count_calls_by_rpc_and_code(server, stubs, protect, faces):
    face = protect(faces[6])
    stubs["admin"].Enroll(pb.EnrollRequest(subject_id="metered", face=face))
    with ThreadPoolExecutor(4) as pool:
        list(
            pool.map(
                lambda _: stubs["verify"].Verify(pb.VerifyRequest(subject_id="metered", face=face)), range(8)
            )
        )
    code_of(lambda: stubs["none"].Verify(pb.VerifyRequest(subject_id="metered", face=face)))
    port = server.running.metrics_port
    for _ in range(50):  # each call is counted just after it is answered
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                samples[name] = float(value)
        if samples.get('ppfr_requests_total{code="UNAUTHENTICATED",method="Verify"}', 0) >= 1:
            break
        time.sleep(0.05)
    assert samples['ppfr_requests_total{code="OK",method="Verify"}'] >= 8
    assert samples['ppfr_requests_total{code="UNAUTHENTICATED",method="Verify"}'] >= 1
    assert samples['ppfr_request_duration_seconds_count{method="Verify"}'] >= 9
    assert samples["ppfr_batch_size_count"] >= 1 and samples["ppfr_batch_size_sum"] >= 9
    info = stubs["admin"].GetServerInfo(pb.GetServerInfoRequest())
    assert samples["ppfr_gallery_templates"] == info.template_count
    assert samples["ppfr_gallery_subjects"] == info.subject_count
    assert "ppfr_batch_queue_depth" in samples and "ppfr_calls_in_flight" in text
    assert "x-api-key" not in text and "metered" not in text  # no keys or subject ids in labels


@pytest.fixture
def slow_server(bundle, tmp_path, monkeypatch):
    """A server whose recognizer takes 0.4 s per call and that takes at most 2 calls at once."""
    from ppfr.cloud import server as server_module

    real = server_module.create_runtime
    monkeypatch.setattr(server_module, "create_runtime", lambda *a, **k: SlowRuntime(real(*a, **k), 0.4))
    config = ServerConfig(bundle=bundle, db=tmp_path / "g.sqlite", port=0, max_concurrent_calls=2)
    with ServerThread(config) as running:
        yield running


def test_concurrency_limit_answers_resource_exhausted(slow_server, protect, faces):
    face = protect(faces[0])
    with keyed_channel(slow_server.address, new_key(slow_server.config.db)) as channel:
        stub = pb_grpc.FaceVerificationStub(channel)

        def identify(_):
            try:
                return stub.Identify(pb.IdentifyRequest(face=face), timeout=20).threshold and "OK"
            except grpc.RpcError as err:
                return f"{err.code().name}: {err.details()}"

        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(identify, range(6)))
    busy = [a for a in answers if a.startswith("RESOURCE_EXHAUSTED")]
    assert busy and answers.count("OK") >= 2 and len(busy) + answers.count("OK") == 6, answers
    assert "server busy" in busy[0] and "--max-concurrent-calls" in busy[0]


def test_enroll_past_its_deadline_then_retried_leaves_one_template(slow_server, protect, faces):
    """docs/cloud.md: DEADLINE_EXCEEDED does not prove nothing was stored (the deadline can pass during the
    commit); a retry with the same idempotency_key returns the original template and adds none."""
    gallery = slow_server.running.gallery
    commit = gallery.enroll

    def slow_commit(*args):
        time.sleep(2.0)
        return commit(*args)

    gallery.enroll = slow_commit  # the deadline passes while the template is being committed
    with keyed_channel(slow_server.address, new_key(slow_server.config.db)) as channel:
        stub = pb_grpc.FaceVerificationStub(channel)
        request = pb.EnrollRequest(subject_id="retry", face=protect(faces[1]), idempotency_key="k-1")
        code, _ = code_of(lambda: stub.Enroll(request, timeout=1.5))  # 0.4 s embedding + 2 s commit
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
        time.sleep(1.5)
        assert stub.GetServerInfo(pb.GetServerInfoRequest()).template_count == 1  # committed anyway
        retried = stub.Enroll(request, timeout=10)
        assert retried.template_count == 1
        assert stub.GetServerInfo(pb.GetServerInfoRequest()).template_count == 1


def test_insecure_no_auth_serves_without_keys_and_says_so(bundle, tmp_path, caplog, protect, faces):
    config = ServerConfig(bundle=bundle, db=tmp_path / "g.sqlite", port=0, insecure_no_auth=True)
    with caplog.at_level(logging.WARNING, logger="ppfr.cloud"):
        with ServerThread(config) as running, grpc.insecure_channel(running.address) as channel:
            stub = pb_grpc.FaceVerificationStub(channel)
            assert (
                stub.Enroll(pb.EnrollRequest(subject_id="open", face=protect(faces[0]))).template_count == 1
            )
    assert any("AUTHENTICATION IS OFF" in r.getMessage() for r in caplog.records)
    assert not (tmp_path / "g.sqlite.keys").exists()


def test_request_id_is_echoed(stubs):
    _, call = stubs["admin"].GetServerInfo.with_call(
        pb.GetServerInfoRequest(), metadata=[("x-request-id", "trace-42")]
    )
    assert ("x-request-id", "trace-42") in call.trailing_metadata()
    _, call = stubs["admin"].GetServerInfo.with_call(pb.GetServerInfoRequest())
    generated = dict(call.trailing_metadata())["x-request-id"]
    assert len(generated) == 16 and generated.isalnum()


def test_zero_face_identify_lists_nobody(stubs, protect, faces):
    """The attack from issue 13: an all-zero tensor with top_k=1000 used to list every subject."""
    zero = protect(faces[0])
    zero.data = bytes(len(zero.data))
    found = stubs["verify"].Identify(pb.IdentifyRequest(face=zero, top_k=1000))
    info = stubs["admin"].GetServerInfo(pb.GetServerInfoRequest())
    assert len(found.candidates) < info.subject_count
    assert np.all([c.score >= found.threshold for c in found.candidates])


def test_a_fuzz_of_malformed_requests_gets_no_ok_and_no_internal_error(server, stubs, protect, faces):
    """The harness's malformed cases (tests/hardening.py; docs/cloud.md has the 1,200-case figures)."""
    import asyncio

    from hardening import malformed_cases, send_all

    good = protect(faces[0])
    stubs["admin"].Enroll(pb.EnrollRequest(subject_id="fuzz-subject", face=good))
    cases = malformed_cases(good, 300, seed=13)
    metadata = (("x-api-key", new_key(server.config.db, rate=0)),)
    codes = asyncio.run(send_all(server.address, [(m, p) for _, m, p in cases], metadata, 8, 30))
    assert set(codes) == {"INVALID_ARGUMENT"}, {k: codes.count(k) for k in set(codes)}
    assert stubs["verify"].Verify(pb.VerifyRequest(subject_id="fuzz-subject", face=good)).match
