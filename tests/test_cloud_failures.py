"""Failure semantics and shared API keys on a real PostgreSQL (pgserver): a database outage turns the health
check NOT_SERVING within 2 s and calls UNAVAILABLE (its cause logged once), and service comes back within 5 s
of the database; a key revoked through one replica is refused by another within a second."""

import logging
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import code_of, lfw_faces
from ppfr.cloud.auth import open_key_store, parse_scopes
from ppfr.cloud.cli import main as cloud_cli
from ppfr.cloud.server import ServerConfig, ServerThread
from ppfr.protos import verification_pb2 as pb
from ppfr.protos import verification_pb2_grpc as pb_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING


def new_key(url, scopes="verify,enroll,admin") -> str:
    store = open_key_store(None, url)
    try:
        return store.create("test", parse_scopes(scopes), 0)[1]
    finally:
        store.close()


def health(address) -> int:
    with grpc.insecure_channel(address) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2).status


def wait_for(predicate, limit_s: float, step: float = 0.02) -> float:
    """Seconds until predicate() held (asserts it did within limit_s)."""
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < limit_s, f"not within {limit_s} s"
        time.sleep(step)
    return time.monotonic() - start


def test_a_revocation_on_one_replica_is_refused_by_the_other_within_a_second(bundle, postgres):
    url = postgres()
    key = new_key(url, "verify")
    a = ServerThread(ServerConfig(bundle=bundle, db=url, port=0)).start()
    b = ServerThread(ServerConfig(bundle=bundle, db=url, port=0)).start()
    try:
        with grpc.insecure_channel(b.address) as channel:
            stub = pb_grpc.FaceVerificationStub(channel)
            metadata = (("x-api-key", key),)

            def refused() -> bool:
                try:
                    stub.GetServerInfo(pb.GetServerInfoRequest(), metadata=metadata, timeout=2)
                    return False
                except grpc.RpcError as err:
                    return err.code() == grpc.StatusCode.UNAUTHENTICATED

            assert not refused()
            assert a.running.gate.keys.revoke(key.split("_")[1])  # through replica A's own store
            assert wait_for(refused, 1.0) < 1.0
    finally:
        a.stop()
        b.stop()


def test_keys_commands_work_on_the_database(postgres, capsys):
    url = postgres()
    assert cloud_cli(["keys", "create", "--db", url, "--name", "door", "--scopes", "verify"]) == 0
    key = capsys.readouterr().out.strip()
    assert cloud_cli(["keys", "list", "--db", url]) == 0
    listed = capsys.readouterr().out
    assert key.split("_")[1] in listed and "door" in listed and key[18:] not in listed
    assert cloud_cli(["keys", "revoke", "--db", url, key.split("_")[1]]) == 0
    assert cloud_cli(["keys", "list", "--db", url]) == 0
    assert "revoked" in capsys.readouterr().out


@pytest.fixture
def own_postgres():
    """A PostgreSQL of this test's own, to stop and start again."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver
        from pgserver._commands import pg_ctl

    folder = Path(tempfile.mkdtemp(prefix="ppfr-pg-outage-"))
    server = pgserver.get_server(folder / "data", cleanup_mode="stop")
    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE outage")

    def stop():
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)

    yield server.get_uri("outage"), stop, server.ensure_postgres_running
    server.cleanup()
    shutil.rmtree(folder, ignore_errors=True)


def test_a_database_outage_is_not_serving_unavailable_and_recovers(bundle, protect, own_postgres, caplog):
    url, stop, start = own_postgres
    caplog.set_level(logging.INFO, logger="ppfr.cloud")
    key = new_key(url)
    face = protect(lfw_faces(1, start=30)[0])
    with ServerThread(ServerConfig(bundle=bundle, db=url, port=0)) as running:
        with grpc.insecure_channel(running.address) as channel:
            stub = pb_grpc.FaceVerificationStub(channel)
            md = (("x-api-key", key),)
            stub.Enroll(pb.EnrollRequest(subject_id="before", face=face), metadata=md)
            stop()
            t0 = time.monotonic()
            for call in (  # calls first: a call that meets the outage before the watch must not hide it
                lambda: stub.Verify(pb.VerifyRequest(subject_id="before", face=face), metadata=md),
                lambda: stub.Enroll(pb.EnrollRequest(subject_id="during", face=face), metadata=md),
            ):
                code, details = code_of(call)
                assert code == grpc.StatusCode.UNAVAILABLE and "database" in details
            wait_for(lambda: health(running.address) != SERVING, 2.0)
            down_s = time.monotonic() - t0
            start()
            up_s = wait_for(lambda: health(running.address) == SERVING, 5.0)
            assert stub.Verify(pb.VerifyRequest(subject_id="before", face=face), metadata=md).match
    incidents = [r for r in caplog.records if "gallery database unavailable" in r.getMessage()]
    assert len(incidents) == 1, [r.getMessage() for r in incidents]
    print(f"NOT_SERVING after {down_s:.2f} s, SERVING {up_s:.2f} s after the restart")
