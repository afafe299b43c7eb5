"""The measurements behind docs/cloud.md's "Production service" figures (issue 25), against real servers on
loopback with a real bundle, real SQLite and a real PostgreSQL (pgserver). Each part prints its figures:

    .venv/bin/python tests/cloud_probe.py PART [--bundle artifacts/NAME]
    PART: scrapes | sweep | hillclimb | revoke | flood | outage | backup | erase | pgerase | all

The bundle defaults to $PPFR_PROBE_BUNDLE, else a small one built by tests/bundles.py (seconds).
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
import warnings
from pathlib import Path

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from helpers import (
    Protector,  # noqa: E402
    lfw_faces,  # noqa: E402
)
from ppfr.cloud.auth import open_key_store, parse_scopes  # noqa: E402
from ppfr.cloud.server import ServerConfig, ServerThread  # noqa: E402
from ppfr.protos import verification_pb2 as pb  # noqa: E402
from ppfr.protos import verification_pb2_grpc as pb_grpc  # noqa: E402

WORK = Path(tempfile.mkdtemp(prefix="ppfr-probe-"))


def key_for(db, scopes="verify,enroll,admin", keys=None) -> str:
    store = open_key_store(keys, db)
    try:
        return store.create("probe", parse_scopes(scopes), 0)[1]
    finally:
        store.close()


def stub(address, key=None):
    channel = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", -1)])
    return pb_grpc.FaceVerificationStub(channel), ((("x-api-key", key),) if key else ())


def start_postgres(name="probe"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver
    import psycopg

    server = pgserver.get_server(
        Path(tempfile.mkdtemp(prefix="ppfr-probe-pg-")) / "data", cleanup_mode="stop"
    )
    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return server, server.get_uri(name)


def pg_connections(url) -> int:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        sql = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        return conn.execute(sql).fetchone()[0] - 1  # not this one


def enroll_people(admin, md, protect, n, prefix="p"):
    faces = lfw_faces(n, start=100)
    return {
        f"{prefix}{i}": (
            admin.Enroll(pb.EnrollRequest(subject_id=f"{prefix}{i}", face=protect(f)), metadata=md),
            f,
        )
        for i, f in enumerate(faces)
    }


# --- parts ---------------------------------------------------------------------------------------------
def scrapes(bundle, protect):
    pg, url = start_postgres()
    try:
        with ServerThread(ServerConfig(bundle=bundle, db=url, port=0, metrics_port=0)) as running:
            address = f"http://127.0.0.1:{running.running.metrics_port}/metrics"
            for _ in range(10):  # the gallery's threads open their connections at their first use
                urllib.request.urlopen(address, timeout=5).read()
            time.sleep(1.5)
            before, peak = pg_connections(url), 0
            for i in range(1000):
                urllib.request.urlopen(address, timeout=5).read()
                if i % 100 == 0:
                    peak = max(peak, pg_connections(url))
            print(
                f"scrapes: 1000 /metrics scrapes, PostgreSQL connections before {before}, peak {peak}, "
                f"after {pg_connections(url)}"
            )
    finally:
        pg.cleanup()


def sweep(bundle, protect):
    db = WORK / "sweep.sqlite"
    with ServerThread(ServerConfig(bundle=bundle, db=db, port=0)) as running:
        admin, amd = stub(running.address, key_for(db))
        enroller, emd = stub(running.address, key_for(db, "enroll"))
        enrolled = enroll_people(admin, amd, protect, 40)
        codes, named, t0 = {}, set(), time.perf_counter()
        for template_id in range(1, 10_001):
            try:
                reply = enroller.DeleteTemplate(
                    pb.DeleteTemplateRequest(template_id=template_id), metadata=emd
                )
                named.add(reply.subject_id)
                codes["OK"] = codes.get("OK", 0) + 1
            except grpc.RpcError as err:
                codes[err.code().name] = codes.get(err.code().name, 0) + 1
        left = admin.GetServerInfo(pb.GetServerInfoRequest(), metadata=amd).template_count
        ids = [r.template_id for r, _ in enrolled.values()]
        print(
            f"sweep: template ids 1..10000 by an enroll key in {time.perf_counter() - t0:.1f}s: {codes}, "
            f"subject ids learned {len(named - {''})}, templates left {left}/40; "
            f"smallest enrolled id {min(ids)} (random 63-bit)"
        )


def hillclimb(bundle, protect, queries=10_000):
    db = WORK / "climb.sqlite"
    with ServerThread(ServerConfig(bundle=bundle, db=db, port=0, max_batch=8)) as running:
        admin, amd = stub(running.address, key_for(db))
        verifier, vmd = stub(running.address, key_for(db, "verify"))
        enrolled = enroll_people(admin, amd, protect, 4, prefix="victim")
        start_face = lfw_faces(1, start=300)[0]
        total, t0 = 0, time.perf_counter()
        for subject in enrolled:
            total += climb_one(verifier, vmd, protect, subject, start_face, queries)
        print(
            f"hillclimb: {queries} queries per subject on 4 subjects by a verify key in "
            f"{time.perf_counter() - t0:.0f}s: {total} of 4 matched"
        )
        indistinguishable(verifier, vmd, protect, admin, amd)


def climb_one(verifier, md, protect, subject, start_face, queries) -> int:
    """Greedy hill-climb on the returned score (as the probe did); a verify key gets no score, only match."""
    rng = np.random.default_rng(0)
    best = protect(start_face)
    base = np.frombuffer(best.data, np.float16).astype(np.float32)
    best_score, matched, sent = -2.0, 0, 0
    while sent < queries:
        batch = []
        for _ in range(16):
            face = pb.ProtectedFace()
            face.CopyFrom(best)
            face.data = (base + rng.normal(0, 0.05, base.shape)).astype(np.float16).tobytes()
            batch.append(
                (face, verifier.Verify.future(pb.VerifyRequest(subject_id=subject, face=face), metadata=md))
            )
        sent += len(batch)
        for face, future in batch:
            reply = future.result()
            matched |= reply.match
            if reply.score > best_score:
                best_score, best = reply.score, face
                base = np.frombuffer(face.data, np.float16).astype(np.float32)
    return int(matched)


def indistinguishable(verifier, md, protect, admin, amd, rounds=9):
    """Answers and latency for a subject enrolled (another person's face) and one never enrolled, below the
    lock-out (9 failures each), interleaved so that machine load hits both alike."""
    enrolled_face, other_face = lfw_faces(1, start=400)[0], lfw_faces(1, start=1500)[0]
    admin.Enroll(pb.EnrollRequest(subject_id="fresh", face=protect(enrolled_face)), metadata=amd)
    wrong = protect(other_face)
    answers, times = {"fresh": set(), "nobody": set()}, {"fresh": [], "nobody": []}
    for _ in range(rounds):
        for subject in ("fresh", "nobody"):
            t0 = time.perf_counter()
            reply = verifier.Verify(pb.VerifyRequest(subject_id=subject, face=wrong), metadata=md)
            times[subject].append(time.perf_counter() - t0)
            answers[subject].add((reply.match, reply.score))
    medians = {k: round(statistics.median(v) * 1e3, 1) for k, v in times.items()}
    print(
        f"indistinguishable: enrolled subject + other face vs never-enrolled subject, {rounds} each: answers "
        f"{answers['fresh']} vs {answers['nobody']}, median latency {medians['fresh']} vs "
        f"{medians['nobody']} ms"
    )


def wait_until_valid(s, md, limit_s=2.0):
    end = time.monotonic() + limit_s
    while True:
        try:
            return s.GetServerInfo(pb.GetServerInfoRequest(), metadata=md)
        except grpc.RpcError:
            if time.monotonic() > end:
                raise
            time.sleep(0.02)


def revoke(bundle, protect, rounds=10):
    pg, url = start_postgres()
    try:
        a = ServerThread(ServerConfig(bundle=bundle, db=url, port=0)).start()
        b = ServerThread(ServerConfig(bundle=bundle, db=url, port=0)).start()
        waits = []
        for _ in range(rounds):
            key = key_for(url, "verify")
            s, md = stub(b.address, key)
            wait_until_valid(s, md)  # a new key reaches B within a poll too
            a.running.gate.keys.revoke(key.split("_")[1])
            t0 = time.perf_counter()
            while True:
                try:
                    s.GetServerInfo(pb.GetServerInfoRequest(), metadata=md)
                except grpc.RpcError:
                    break
            waits.append(time.perf_counter() - t0)
        a.stop()
        b.stop()
        print(
            f"revoke: {rounds} revocations through replica A, refused on B after median "
            f"{statistics.median(waits) * 1e3:.0f} ms, max {max(waits) * 1e3:.0f} ms"
        )
    finally:
        pg.cleanup()


PARTS = {"scrapes": scrapes, "sweep": sweep, "hillclimb": hillclimb, "revoke": revoke}


def main() -> int:
    from probe_load import LOAD_PARTS

    parts = {**PARTS, **LOAD_PARTS}
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("part", choices=[*parts, "all"])
    p.add_argument("--bundle", type=Path, default=os.environ.get("PPFR_PROBE_BUNDLE"))
    args = p.parse_args()
    bundle = args.bundle
    if bundle is None:
        from bundles import make_bundle

        bundle = make_bundle(WORK / "bundle", method="ppfr_fd", train_steps=0)
    protect = Protector(Path(bundle))
    chosen = list(parts) if args.part == "all" else [args.part]
    try:
        for name in chosen:
            parts[name](Path(bundle), protect)
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
