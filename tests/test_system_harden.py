"""The server tried as an attacker and an operator would, with API keys on: real `ppfr-cloud serve` processes
on loopback (ppfr.cloud.local), the small test bundle, real faces. docs/cloud.md has the figures.

fuzz   malformed requests with a valid key over five RPCs, plus calls without a key or with a forged one:
       no OK, no INTERNAL/UNKNOWN, the server alive and answering a valid call after, little log per call.
kill9  enrollers (unique subjects, idempotency keys) against a server killed with SIGKILL, several rounds on
       one gallery: every acknowledged enrollment is listed after the restart, none twice.
burst  Identify calls all at once: each answered OK or RESOURCE_EXHAUSTED (the concurrency limit).
soak   the load generator (a separate process): Verify calls at concurrency 64 with the key, 0 errors.

    .venv/bin/python -m pytest -m slow -s tests/test_system_harden.py
    PPFR_HARDEN_FUZZ=1200 PPFR_HARDEN_KILLS=3 PPFR_HARDEN_BURST=8000 PPFR_HARDEN_SOAK=10000 ...  # docs' sizes
"""

import asyncio
import os
import random
from dataclasses import replace

import pytest
from hardening import count, enroll_until_killed, list_all, malformed_cases, send_all
from helpers import lfw_faces
from ppfr.bench.config import BenchConfig
from ppfr.bench.e2e import run_loadgen
from ppfr.bench.loadgen import write_requests
from ppfr.cloud.local import LocalServer
from ppfr.protos import verification_pb2 as pb

pytestmark = pytest.mark.slow
SIZES = {"fuzz": 1200, "kills": 2, "burst": 2000, "soak": 3000}
SIZES = {k: int(os.environ.get(f"PPFR_HARDEN_{k.upper()}", v)) for k, v in SIZES.items()}


@pytest.fixture(scope="module")
def bundle(small_bundle):
    return small_bundle("ppfr_fd")


@pytest.fixture(scope="module")
def faces(bundle):
    """16 ProtectedFace messages of different LFW people, through the edge's own front-end."""
    from ppfr.edge.frontend import FrontEnd

    fe = FrontEnd(bundle, threads=1)
    return [fe.to_proto(fe.protect(face)) for face in lfw_faces(32)[::2]]


def test_malformed_requests_get_invalid_argument_and_the_server_keeps_serving(bundle, faces, tmp_path):
    cases = malformed_cases(faces[0], SIZES["fuzz"])
    valid = pb.VerifyRequest(subject_id="fuzz-subject", face=faces[0]).SerializeToString()
    with LocalServer(bundle, workdir=tmp_path) as server:
        enroll = pb.EnrollRequest(subject_id="fuzz-subject", face=faces[0]).SerializeToString()
        assert asyncio.run(send_all(server.address, [("Enroll", enroll)], server.metadata, 1, 30)) == ["OK"]
        size0 = server.log_path.stat().st_size
        codes = asyncio.run(send_all(server.address, [(m, p) for _, m, p in cases], server.metadata, 8, 30))
        forged = (("x-api-key", "ppfr_" + server.api_key[5:17] + "_" + "A" * 43),)
        no_key = asyncio.run(send_all(server.address, [("Verify", valid)] * 50, None, 8, 30))
        bad_key = asyncio.run(send_all(server.address, [("Verify", valid)] * 50, forged, 8, 30))
        after = asyncio.run(send_all(server.address, [("Verify", valid)], server.metadata, 1, 30))
        assert server.alive
        log_bytes = server.log_path.stat().st_size - size0
    print(f"fuzz: {len(cases)} cases {count(codes)}; log {log_bytes / (len(cases) + 100):.0f} B per request")
    assert count(codes) == {"INVALID_ARGUMENT": len(cases)}
    assert set(no_key) == set(bad_key) == {"UNAUTHENTICATED"} and after == ["OK"]
    assert log_bytes / (len(cases) + 100) < 400  # one line per call, never a traceback


def test_kill_9_under_enrollment_loses_no_acknowledged_enrollment(bundle, faces, tmp_path):
    db, rng, acked = tmp_path / "kill9.sqlite", random.Random(1), []
    first = LocalServer(bundle, db=db, workdir=tmp_path)  # the key it makes serves every restart
    for r in range(SIZES["kills"]):
        server = first if r == 0 else LocalServer(bundle, db=db, workdir=tmp_path, api_key=first.api_key)
        with server:
            kill_after = rng.uniform(2.0, 4.0)
            run = enroll_until_killed(
                server.address, server.metadata, faces, f"k{r}", 16, kill_after, server.process
            )
            round_acked = asyncio.run(run)
            assert not server.alive and len(round_acked) > 0
        acked += round_acked
        with LocalServer(bundle, db=db, workdir=tmp_path, api_key=first.api_key) as restarted:
            present = list_all(restarted.address, restarted.metadata)
        print(f"kill -9 round {r + 1} after {kill_after:.1f} s: {len(round_acked)} acknowledged")
        assert [s for s in acked if s not in present] == []  # 0 acknowledged enrollments lost
        assert all(n == 1 for n in present.values())  # idempotency keys: no duplicate templates


def test_a_burst_is_answered_or_refused_as_busy(bundle, faces, tmp_path):
    request = pb.IdentifyRequest(face=faces[0]).SerializeToString()
    n = SIZES["burst"]
    with LocalServer(bundle, workdir=tmp_path) as server:
        codes = asyncio.run(send_all(server.address, [("Identify", request)] * n, server.metadata, n, 60))
        assert server.alive
    print(f"burst: {n} Identify calls at once: {count(codes)}")
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"} and "OK" in codes


def test_a_soak_at_concurrency_64_has_no_errors(bundle, faces, tmp_path):
    n = SIZES["soak"]
    requests = write_requests(
        tmp_path / "soak_requests.bin",
        [pb.VerifyRequest(subject_id="soak", face=f).SerializeToString() for f in faces],
    )
    cfg = replace(BenchConfig(), concurrency=(64,), e2e_seconds=3600, e2e_max_window_s=3600)
    cfg = replace(cfg, e2e_warmup_s=1.0, e2e_max_requests=n)
    with LocalServer(bundle, workdir=tmp_path) as server:
        enroll = pb.EnrollRequest(subject_id="soak", face=faces[0]).SerializeToString()
        assert asyncio.run(send_all(server.address, [("Enroll", enroll)], server.metadata, 1, 30)) == ["OK"]
        (result,) = run_loadgen({"soak": (server.address, requests)}, cfg, server.api_key)
        assert server.alive
    print(
        f"soak: {result['requests']} Verify calls at c=64, {result['throughput_rps']} req/s,"
        f" errors {result['errors']}"
    )
    # the load generator stops at n, give or take the calls in flight at concurrency 64
    assert result["errors"] == {} and n <= result["requests"] <= n + 64
