"""The load parts of tests/cloud_probe.py: a keyless flood, a PostgreSQL outage under enrollment load, a
backup under enrollment load, and deletion searched for in every gallery file (docs/cloud.md)."""

import asyncio
import contextlib
import multiprocessing
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import grpc
import numpy as np
from cloud_probe import WORK, key_for, start_postgres, stub
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import lfw_faces
from ppfr.cloud.cli import main as cloud_cli
from ppfr.cloud.local import LocalServer
from ppfr.cloud.server import ServerConfig, ServerThread
from ppfr.protos import verification_pb2 as pb


def rss_mb(pid) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_s(pid) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def keyed_rate(address, key, face, seconds) -> float:
    s, md = stub(address, key)
    n, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        s.Verify(pb.VerifyRequest(subject_id="p0", face=face), metadata=md)
        n += 1
    return n / seconds


async def keyless_flood(address, request: bytes, n, connections=1):
    # A subchannel pool of its own per channel: one TCP connection each (gRPC shares them otherwise).
    channels = [
        grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(connections)
    ]
    calls = [channel.unary_unary("/ppfr.v1.FaceVerification/Verify") for channel in channels]
    try:
        results = await asyncio.gather(
            *(calls[i % connections](request, timeout=120) for i in range(n)), return_exceptions=True
        )
    finally:
        for channel in channels:
            await channel.close()
    codes = [type(r).__name__ if not isinstance(r, grpc.aio.AioRpcError) else r.code().name for r in results]
    return {c: codes.count(c) for c in set(codes)}


def flood_process(address, request: bytes, n, connections, go, queue) -> None:
    """The attacker: its own process (and connections), as it would be. It floods once `go` is set, so
    that its start-up (imports) is not measured as the flood's cost."""
    queue.put("ready")
    go.wait()
    queue.put(asyncio.run(keyless_flood(address, request, n, connections)))


def flood(bundle, protect, n=8000):
    face = protect(lfw_faces(1, start=100)[0])
    extra = os.environ.get("PPFR_PROBE_SERVE_ARGS", "").split()  # e.g. "--max-pending-calls 2000"
    connections = int(os.environ.get("PPFR_PROBE_FLOOD_CONNECTIONS", "1"))  # the flooder's connections
    with LocalServer(bundle, workdir=WORK / "flood", extra_args=extra) as server:
        s, md = stub(server.address, server.api_key)
        s.Enroll(pb.EnrollRequest(subject_id="p0", face=face), metadata=md)
        context = multiprocessing.get_context("spawn")
        queue, go = context.Queue(), context.Event()
        request = pb.VerifyRequest(subject_id="x", face=face).SerializeToString()
        flooder = context.Process(
            target=flood_process, args=(server.address, request, n, connections, go, queue)
        )
        flooder.start()
        assert queue.get(timeout=120) == "ready"
        keyed_rate(server.address, server.api_key, face, 2)  # warm-up (engine, connections)
        base = keyed_rate(server.address, server.api_key, face, 6)
        rss0, lines0 = rss_mb(server.process.pid), len(server.log_path.read_text().splitlines())
        peak, rates = [rss0], []
        t0, cpu0 = time.monotonic(), cpu_s(server.process.pid)
        go.set()
        while flooder.is_alive():
            rates.append(keyed_rate(server.address, server.api_key, face, 1))
            peak.append(rss_mb(server.process.pid))
        took, cpu = time.monotonic() - t0, cpu_s(server.process.pid) - cpu0
        codes = queue.get()
        lines = len(server.log_path.read_text().splitlines()) - lines0
        after = keyed_rate(server.address, server.api_key, face, 6)  # the machine's load drifts (shared)
        during = np.mean(rates)
        print(
            f"flood (serve {' '.join(extra) or 'defaults'}): {n} keyless Verify calls on {connections} "
            f"connection(s) in {took:.1f}s ({codes}); keyed Verify/s baseline {base:.1f} (after: "
            f"{after:.1f}), during the flood {during:.1f} ({during / base:.0%} of the baseline, "
            f"{during / after:.0%} of after; worst second {min(rates):.1f}); server RSS {rss0:.0f} -> "
            f"peak {max(peak):.0f} MB (+{max(peak) - rss0:.0f}); log lines written {lines}; server CPU "
            f"during the flood {cpu:.1f}s (keyed calls included)"
        )


def stop_postgres(pg) -> None:
    """Fast shutdown (SIGINT to the postmaster), waiting until it is gone."""
    pid = pg.get_pid()
    os.kill(pid, signal.SIGINT)
    while Path(f"/proc/{pid}").exists():
        time.sleep(0.01)


def outage(bundle, protect, workers=4):
    pg, url = start_postgres("outage")
    faces = [protect(f) for f in lfw_faces(8, start=100)]
    stop, acked, codes, events = threading.Event(), [], {}, []
    try:
        with LocalServer(bundle, db=url, workdir=WORK / "outage") as server:
            threads = [
                threading.Thread(target=enroller, args=(server, faces, w, stop, acked, codes))
                for w in range(workers)
            ]
            threads.append(threading.Thread(target=watch_health, args=(server.address, stop, events)))
            for t in threads:
                t.start()
            try:
                time.sleep(3)
                t_stop = time.monotonic()
                stop_postgres(pg)
                t_stopped = time.monotonic()
                time.sleep(5)
                pg.ensure_postgres_running()
                t_up = time.monotonic()
                time.sleep(6)
            finally:
                stop.set()
                for t in threads:
                    t.join()
            report_outage(server, acked, codes, events, t_stop, t_stopped, t_up)
    finally:
        pg.cleanup()


def enroller(server, faces, worker, stop, acked, codes):
    s, md = stub(server.address, server.api_key)
    i = 0
    while not stop.is_set():
        subject = f"w{worker}-{i}"
        request = pb.EnrollRequest(subject_id=subject, face=faces[i % len(faces)], idempotency_key=subject)
        while True:  # retried with the same idempotency key until acknowledged
            try:
                s.Enroll(request, metadata=md, timeout=10)
                acked.append(subject)
                break
            except grpc.RpcError as err:
                codes[err.code().name] = codes.get(err.code().name, 0) + 1
                if stop.is_set():
                    return
                time.sleep(0.1)
        i += 1


def watch_health(address, stop, events):
    last = None
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while not stop.is_set():
            try:
                status = health.Check(health_pb2.HealthCheckRequest(), timeout=2).status
            except grpc.RpcError as err:
                status = err.code().name
            if status != last:
                name = (
                    status
                    if isinstance(status, str)
                    else health_pb2.HealthCheckResponse.ServingStatus.Name(status)
                )
                events.append((time.monotonic(), name))
                last = status
            time.sleep(0.02)


def report_outage(server, acked, codes, events, t_stop, t_stopped, t_up):
    s, md = stub(server.address, server.api_key)
    present, token = set(), ""
    while True:
        page = s.ListSubjects(pb.ListSubjectsRequest(page_size=1000, page_token=token), metadata=md)
        present |= {x.subject_id for x in page.subjects}
        token = page.next_page_token
        if not token:
            break
    print("health events (s from the stop):", [(round(t - t_stop, 2), name) for t, name in events])
    down = next((t for t, name in events if name == "NOT_SERVING" and t >= t_stop), None)
    back = next((t for t, name in events if name == "SERVING" and t >= t_up), None)
    log = server.log_path.read_text()
    print(
        f"outage: PostgreSQL stopped (fast shutdown), NOT_SERVING after {down - t_stop:.2f}s "
        f"(stop took {t_stopped - t_stop:.2f}s); "
        f"restarted, SERVING {back - t_up:.2f}s after it was up; errors seen by enrollers {codes}; "
        f"acknowledged {len(acked)}, lost {len(set(acked) - present)}; 'unavailable' log lines "
        f"{log.count('gallery database unavailable')}"
    )


@contextlib.contextmanager
def fresh_server(bundle, protect, db: Path, n_faces: int):
    """A server on a new gallery `db`, an admin stub and its key, and n protected LFW faces (from 100)."""
    faces = [protect(f) for f in lfw_faces(n_faces, start=100)]
    with ServerThread(ServerConfig(bundle=bundle, db=db, port=0)) as running:
        key = key_for(db)
        yield running, *stub(running.address, key), key, faces


def backup(bundle, protect):
    db = WORK / "live.sqlite"
    with fresh_server(bundle, protect, db, 12) as (running, s, md, key, faces):
        stop = threading.Event()

        def load():
            i = 0
            while not stop.is_set():
                s.Enroll(pb.EnrollRequest(subject_id=f"b{i}", face=faces[i % 12]), metadata=md)
                i += 1

        writers = [threading.Thread(target=load) for _ in range(2)]
        for w in writers:
            w.start()
        time.sleep(2)
        assert cloud_cli(["backup", "--db", str(db), "--out", str(WORK / "b.sqlite")]) == 0
        time.sleep(1)
        stop.set()
        for w in writers:
            w.join()
        assert cloud_cli(["restore", "--db", str(WORK / "r.sqlite"), "--from", str(WORK / "b.sqlite")]) == 0
        compare_decisions(running, s, md, WORK / "r.sqlite", key, faces)


def compare_decisions(running, s, md, restored_db, key, faces):
    with ServerThread(ServerConfig(bundle=running.config.bundle, db=restored_db, port=0)) as restored:
        r, rmd = stub(restored.address, key)
        subjects = [
            x.subject_id
            for x in r.ListSubjects(pb.ListSubjectsRequest(page_size=1000), metadata=rmd).subjects
        ]
        same = total = 0
        for subject in subjects:
            for face in faces[:3]:
                a = s.Verify(pb.VerifyRequest(subject_id=subject, face=face), metadata=md).match
                b = r.Verify(pb.VerifyRequest(subject_id=subject, face=face), metadata=rmd).match
                same, total = same + (a == b), total + 1
        live = s.GetServerInfo(pb.GetServerInfoRequest(), metadata=md).subject_count
        print(
            f"backup: under 2 enrollers, the backup holds {len(subjects)} of the {live} subjects enrolled "
            f"by the end; Verify decisions identical for {same}/{total} (subject, probe) pairs"
        )


def erase(bundle, protect):
    db = WORK / "erase.sqlite"
    with fresh_server(bundle, protect, db, 20) as (_, s, md, _, faces):
        enrolled = [
            s.Enroll(pb.EnrollRequest(subject_id=f"e{i}", face=f), metadata=md) for i, f in enumerate(faces)
        ]
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            blobs = dict(conn.execute("SELECT subject_id, embedding FROM templates").fetchall())
        for i in range(5):
            s.DeleteSubject(pb.DeleteSubjectRequest(subject_id=f"e{i}"), metadata=md)
        for e in enrolled[5:10]:
            s.DeleteTemplate(pb.DeleteTemplateRequest(template_id=e.template_id), metadata=md)
        files = [p for p in db.parent.iterdir() if p.name.startswith(db.name)]
        data = {p.name: p.read_bytes() for p in files}
        found = sum(blobs[f"e{i}"][:64] in d for i in range(10) for d in data.values())
        kept = sum(blobs[f"e{i}"][:64] in d for i in range(10, 20) for d in data.values())
        print(
            f"erase: 10 templates deleted through the API; their bytes found in {found} places across "
            f"{sorted(data)}; the 10 kept found in {kept}"
        )


LOAD_PARTS = {"flood": flood, "outage": outage, "backup": backup, "erase": erase}


def pg_erase(bundle, protect):
    """Where a deleted template's bytes stay in PostgreSQL's files, step by step (no server needed)."""
    import psycopg
    from ppfr.cloud.gallery import open_gallery, unit

    pg, url = start_postgres("erase")
    data = Path(pg.pgdata)
    try:
        g = open_gallery(url, 128)
        vecs = np.random.default_rng(1).standard_normal((6, 128)).astype(np.float32)
        for i, v in enumerate(vecs):
            g.enroll(f"s{i}", v)
        g.delete("s1")
        g.close()
        gone = unit(vecs[1]).astype("<f4").tobytes()[:64]
        steps = ["CHECKPOINT", "VACUUM ppfr_templates; CHECKPOINT", "VACUUM FULL ppfr_templates; CHECKPOINT"]
        steps.append("SELECT pg_switch_wal(); CHECKPOINT; SELECT pg_switch_wal(); CHECKPOINT")
        for step in steps:
            with psycopg.connect(url, autocommit=True) as conn:
                for sql in step.split("; "):
                    conn.execute(sql)
            hits = [
                str(p.relative_to(data)) for p in data.rglob("*") if p.is_file() and gone in p.read_bytes()
            ]
            print(f"pgerase: after DELETE, then {step}: the deleted template's bytes in {hits or 'no file'}")
    finally:
        pg.cleanup()


LOAD_PARTS["pgerase"] = pg_erase
