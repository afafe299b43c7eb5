"""Two `ppfr-cloud serve` replicas (separate processes) on one PostgreSQL + pgvector (pgserver, real), through
real gRPC on loopback: the single-server tests pass against a replica, writes on one replica are seen by the
other on its next call, and kill -9 of a replica under enrollment load loses no acknowledged enrollment
(on PostgreSQL and, for comparison, on SQLite). Replicas are ppfr.cloud.local.LocalServer processes; the
kill -9 helpers are tests/hardening.py's."""

import asyncio
import signal

import grpc
import pytest
import scenarios
from hardening import enroll_until_killed, list_all
from helpers import code_of
from ppfr.cloud.auth import KeyStore, parse_scopes
from ppfr.cloud.local import LocalServer
from ppfr.protos import verification_pb2 as pb
from ppfr.protos import verification_pb2_grpc as pb_grpc


def make_key(path) -> str:
    store = KeyStore(path, create=True)
    try:
        return store.create("replica-test", parse_scopes("verify,enroll,admin"), 0)[1]
    finally:
        store.close()


class Replicas:
    def __init__(self, bundle, db, folder, n=2):
        self.keys = folder / "keys"
        self.key = make_key(self.keys)
        self.metadata = (("x-api-key", self.key),)
        self.bundle, self.db, self.folder = bundle, db, folder
        self.servers = []
        for _ in range(n):
            self.start()

    @property
    def procs(self):
        return [server.process for server in self.servers]

    @property
    def targets(self):
        return [server.address for server in self.servers]

    def start(self):
        server = LocalServer(
            self.bundle,
            db=self.db,
            keys=self.keys,
            api_key=self.key,
            workdir=self.folder,
            log_path=self.folder / "replicas.log",
        )
        self.servers.append(server.start())
        return server

    def stub(self, i):
        channel = grpc.insecure_channel(self.targets[i])
        self._channels = getattr(self, "_channels", []) + [channel]
        return pb_grpc.FaceVerificationStub(channel)

    def close(self):
        for channel in getattr(self, "_channels", []):
            channel.close()
        for server in self.servers:
            server.stop()


class Keyed:
    """A stub that sends the API key with every call."""

    def __init__(self, stub, metadata):
        self._stub, self._metadata = stub, metadata

    def __getattr__(self, name):
        method = getattr(self._stub, name)
        return lambda request, **kw: method(request, metadata=self._metadata, **kw)


@pytest.fixture(scope="module")
def replicas(bundle, postgres, tmp_path_factory):
    running = Replicas(bundle, postgres(), tmp_path_factory.mktemp("replicas"))
    yield running
    running.close()


@pytest.fixture(scope="module")
def stub(replicas):
    return Keyed(replicas.stub(0), replicas.metadata)


def test_writes_on_one_replica_are_seen_by_the_other_on_its_next_call(replicas, protect, people):
    a, b = (Keyed(replicas.stub(i), replicas.metadata) for i in (0, 1))
    first = a.Enroll(pb.EnrollRequest(subject_id="shared", face=protect(people[1]), idempotency_key="k1"))
    assert b.Verify(
        pb.VerifyRequest(subject_id="shared", face=protect(people[1]))
    ).match  # enroll A, verify B
    found = b.Identify(pb.IdentifyRequest(face=protect(people[1]), top_k=3))
    best = found.candidates[0].score  # "shared" ties with "person-1" (the same face) when that test ran first
    assert any(c.subject_id == "shared" and c.score == pytest.approx(best) for c in found.candidates)
    again = b.Enroll(pb.EnrollRequest(subject_id="shared", face=protect(people[1]), idempotency_key="k1"))
    assert (again.template_id, again.template_count) == (first.template_id, 1)  # a retry on another replica
    extra = b.Enroll(pb.EnrollRequest(subject_id="shared", face=protect(people[2])))
    assert extra.template_count == 2
    gone = a.DeleteTemplate(pb.DeleteTemplateRequest(template_id=extra.template_id))
    assert gone.subject_id == "shared"
    info_a, info_b = (s.GetServerInfo(pb.GetServerInfoRequest()) for s in (a, b))
    assert (info_a.subject_count, info_a.template_count) == (info_b.subject_count, info_b.template_count)
    pages = [s.ListSubjects(pb.ListSubjectsRequest(page_size=100)) for s in (a, b)]
    assert pages[0] == pages[1] and ("shared", 1) in [
        (x.subject_id, x.template_count) for x in pages[0].subjects
    ]

    assert b.DeleteSubject(pb.DeleteSubjectRequest(subject_id="shared")).deleted_template_count == 1
    gone_on_a = a.Verify(pb.VerifyRequest(subject_id="shared", face=protect(people[1])))
    assert not gone_on_a.match and gone_on_a.score == 0.0  # delete on B: not enrolled on A, at once
    found = a.Identify(pb.IdentifyRequest(face=protect(people[1]), top_k=10))
    assert "shared" not in {c.subject_id for c in found.candidates}
    code, _ = code_of(lambda: a.DeleteSubject(pb.DeleteSubjectRequest(subject_id="shared")))
    assert code == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_kill_9_of_a_replica_under_enrollment_load_loses_no_acknowledged_enrollment(
    backend, bundle, postgres, protect, people, tmp_path
):
    """Eight enrollers against replica A, SIGKILLed after 2 s. PostgreSQL: replica B, still serving, lists
    every acknowledged subject exactly once. SQLite (one process): the restarted server does."""
    db = postgres() if backend == "postgres" else tmp_path / "g.sqlite"
    group = Replicas(bundle, db, tmp_path, n=2 if backend == "postgres" else 1)
    try:
        faces = [protect(face) for face in people]
        acked = asyncio.run(
            enroll_until_killed(group.targets[0], group.metadata, faces, "k", 8, 2.0, group.procs[0])
        )
        assert group.procs[0].returncode == -signal.SIGKILL and len(acked) >= 8
        if backend == "sqlite":
            group.start()
        present = list_all(group.targets[-1], group.metadata)
        assert [s for s in acked if s not in present] == []  # 0 acknowledged enrollments lost
        assert all(n == 1 for n in present.values())  # idempotency keys: no duplicates
    finally:
        group.close()


def test_enroll_verify_identify_delete_on_a_replica(stub, protect, people):
    scenarios.enroll_verify_identify_delete(stub, protect, people)


def test_malformed_tensors_on_a_replica(stub, protect, people):
    scenarios.malformed_tensors_are_refused(stub, protect, people)
