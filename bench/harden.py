"""The server tried as an attacker and an operator would, with API keys on (the figures in docs/cloud.md):

    python -m ppfr.bench.harden --bundle artifacts/NAME --out runs/harden [--fuzz 1200] [--kills 3]
        [--soak 10000] [--burst 2000]

fuzz   N malformed requests with a valid key (undecodable bytes, truncations, bad shapes up to 100,000 dims,
       dtypes, lengths, NaN/Inf, foreign front-ends, bad ids and limits) over five RPCs, plus calls without a
       key or with a forged one. Pass: no answer OK, no INTERNAL/UNKNOWN, the server alive and serving after,
       and the server's log bytes per request.
kill9  16 enrollers (unique subjects, idempotency keys) against a server killed with SIGKILL after 2-4 s,
       K times on one gallery; every acknowledged enrollment must be listed after the restart.
burst  M Identify calls at once; each must be answered OK or RESOURCE_EXHAUSTED (the concurrency limit).
soak   the load generator (a separate process): N Verify calls at concurrency 64 with the key; 0 errors.

Prints progress on stderr and one JSON document on stdout (also written to OUT/harden.json).
"""

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from .config import BenchConfig
from .e2e import CHANNEL_OPTIONS, Server, bench_key, cloud_command, free_port, run_loadgen
from .loadgen import write_requests

FACES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lfw" / "aligned112"


def log(message: str) -> None:
    print(f"[harden] {message}", file=sys.stderr, flush=True)


def protected_faces(bundle, n: int) -> list:
    """n ProtectedFace messages of different LFW people, through the edge's own front-end."""
    import cv2
    from ppfr.edge.frontend import FrontEnd

    fe = FrontEnd(bundle, threads=1)
    people = sorted(p for p in FACES.iterdir() if p.is_dir())[:: max(1, len(os.listdir(FACES)) // n)][:n]
    faces = []
    for person in people:
        bgr = cv2.imread(str(sorted(person.glob("*.jpg"))[0]))
        faces.append(fe.to_proto(fe.protect(np.ascontiguousarray(bgr[:, :, ::-1]))))
    return faces


# --- fuzz ------------------------------------------------------------------------------------------------
def malformed_cases(good, n: int, seed: int = 0) -> list[tuple[str, str, bytes]]:
    """(kind, RPC, request bytes) for n requests that are each wrong in at least one way."""
    from ppfr.protos import tensor_pb2
    from ppfr.protos import verification_pb2 as pb

    rng = random.Random(seed)
    valid = pb.VerifyRequest(subject_id="fuzz-subject", face=good).SerializeToString()
    itemsize = 2 if good.data_type == tensor_pb2.DATA_TYPE_FLOAT16 else 4
    dtype = "<f2" if itemsize == 2 else "<f4"

    def face(**changes):
        f = pb.ProtectedFace()
        f.CopyFrom(good)
        for key, value in changes.items():
            if key == "shape":
                del f.shape[:]
                f.shape.extend(value)
            else:
                setattr(f, key, value)
        return f

    def bad_face():
        k = rng.randrange(9)
        if k == 0:
            dims = rng.choice([0, 1, 3, 5, 100, 100_000])
            return "shape dims", face(shape=[rng.randrange(-(2**40), 2**40) for _ in range(dims)])
        if k == 1:
            return "shape values", face(shape=[rng.choice([0, 2, -1, 2**31]), *good.shape[1:]])
        if k == 2:
            return "dtype", face(data_type=rng.choice([0, 3, 4, 5, 99, -1, 2**31 - 1]))
        if k == 3:
            cut = rng.randrange(1, len(good.data))
            return "short data", face(data=good.data[:-cut])
        if k == 4:
            return "long data", face(data=good.data + os.urandom(rng.randrange(1, 4096)))
        if k == 5:
            values = np.frombuffer(good.data, dtype).copy()
            values[rng.randrange(values.size)] = rng.choice([np.nan, np.inf, -np.inf])
            return "non-finite", face(data=values.tobytes())
        if k == 6:
            other = rng.choice(["", "0" * 64, good.frontend_id[:-1] + "x", "\x00" * 8, "é" * 300])
            return "frontend_id", face(frontend_id=other)
        if k == 7:
            other = (
                tensor_pb2.DATA_TYPE_FLOAT32 if itemsize == 2 else tensor_pb2.DATA_TYPE_FLOAT16
            )  # the same bytes read as the other float type: wrong length
            return "other float type", face(data_type=other)
        return "empty face", pb.ProtectedFace()

    def bad_subject():
        return rng.choice(["", "x" * 257, "a\nb", "\x00", "tab\there", "x" * 100_000])

    cases = []
    while len(cases) < n:
        k = rng.randrange(10)
        if k == 0:
            cases.append(("random bytes", "Verify", os.urandom(rng.randrange(1, 64))))
        elif k == 1:
            cut = rng.randrange(1, 40)  # inside the header and first fields: never a complete message
            cases.append(("truncated", "Verify", valid[:cut] + b"\xff"))
        elif k == 2:
            kind, f = bad_face()
            cases.append(
                (kind, "Verify", pb.VerifyRequest(subject_id="fuzz-subject", face=f).SerializeToString())
            )
        elif k == 3:
            kind, f = bad_face()
            cases.append((kind, "Enroll", pb.EnrollRequest(subject_id="fuzz", face=f).SerializeToString()))
        elif k == 4:
            kind, f = bad_face()
            cases.append((kind, "Identify", pb.IdentifyRequest(face=f, top_k=1000).SerializeToString()))
        elif k == 5:
            request = pb.VerifyRequest(subject_id=bad_subject(), face=good)
            cases.append(("subject_id", "Verify", request.SerializeToString()))
        elif k == 6:
            top_k = rng.choice([-1, -(2**31), 1001, 2**31 - 1])
            cases.append(
                ("top_k", "Identify", pb.IdentifyRequest(face=good, top_k=top_k).SerializeToString())
            )
        elif k == 7:
            key = rng.choice(["x" * 129, "a\x00b", "line\nbreak"])
            request = pb.EnrollRequest(subject_id="fuzz", face=good, idempotency_key=key)
            cases.append(("idempotency_key", "Enroll", request.SerializeToString()))
        elif k == 8:
            request = pb.DeleteTemplateRequest(template_id=rng.choice([0, -1, -(2**63)]))
            cases.append(("template_id", "DeleteTemplate", request.SerializeToString()))
        else:
            size, token = rng.choice(
                [(-1, ""), (1001, ""), (2**31 - 1, ""), (10, "\x00bad"), (10, "t" * 5000)]
            )
            request = pb.ListSubjectsRequest(page_size=size, page_token=token)
            cases.append(("page", "ListSubjects", request.SerializeToString()))
    return cases


async def send_all(target: str, calls: list[tuple[str, bytes]], metadata, concurrency: int, timeout: float):
    """Raw-bytes calls, `concurrency` at a time; returns the status code name of each."""
    import grpc

    codes: list[str] = [""] * len(calls)
    async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        gate = asyncio.Semaphore(concurrency)

        async def one(i: int, method: str, payload: bytes) -> None:
            async with gate:
                try:
                    await channel.unary_unary(f"/ppfr.v1.FaceVerification/{method}")(
                        payload, timeout=timeout, metadata=metadata
                    )
                    codes[i] = "OK"
                except grpc.aio.AioRpcError as err:
                    codes[i] = err.code().name

        await asyncio.gather(*(one(i, m, p) for i, (m, p) in enumerate(calls)))
    return codes


def count(values) -> dict:
    out: dict = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items()))


def fuzz(bundle, out: Path, faces, n: int) -> dict:
    from ppfr.protos import verification_pb2 as pb

    cases = malformed_cases(faces[0], n)
    with Server(bundle, out, 8, 2.0, out / "logs" / "fuzz_server.log") as srv:
        metadata = (("x-api-key", srv.api_key),)
        srv.enroll(pb.EnrollRequest(subject_id="fuzz-subject", face=faces[0]).SerializeToString())
        size0 = srv.log_path.stat().st_size
        t0 = time.perf_counter()
        codes = asyncio.run(send_all(srv.target, [(m, p) for _, m, p in cases], metadata, 8, 30))
        wall = time.perf_counter() - t0
        valid = pb.VerifyRequest(subject_id="fuzz-subject", face=faces[0]).SerializeToString()
        forged = "ppfr_" + srv.api_key[5:17] + "_" + "A" * 43
        no_key = asyncio.run(send_all(srv.target, [("Verify", valid)] * 50, None, 8, 30))
        bad_key = asyncio.run(send_all(srv.target, [("Verify", valid)] * 50, (("x-api-key", forged),), 8, 30))
        after = asyncio.run(send_all(srv.target, [("Verify", valid)], metadata, 1, 30))
        alive = srv.proc.poll() is None
        log_bytes = srv.log_path.stat().st_size - size0
    by_kind: dict = {}
    for (kind, _, _), code in zip(cases, codes):
        by_kind.setdefault(kind, []).append(code)
    return {
        "cases": len(cases),
        "codes": count(codes),
        "by_kind": {k: count(v) for k, v in sorted(by_kind.items())},
        "ok_answers": codes.count("OK"),
        "internal_or_unknown": sum(c in ("INTERNAL", "UNKNOWN") for c in codes),
        "without_key": count(no_key),
        "forged_key": count(bad_key),
        "valid_call_after": after[0],
        "server_alive": alive,
        "log_bytes_per_request": round(log_bytes / (len(cases) + 100), 1),
        "wall_s": round(wall, 2),
    }


# --- kill -9 ---------------------------------------------------------------------------------------------
def start_server(bundle, db: Path, keys: Path, log_path: Path) -> tuple[subprocess.Popen, str]:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    port = free_port()
    cmd = [*cloud_command(), "serve", "--bundle", str(bundle), "--db", str(db), "--keys", str(keys)]
    cmd += ["--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=log_path.open("a"), stderr=subprocess.STDOUT)
    target = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    with grpc.insecure_channel(target) as channel:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return proc, target
            except grpc.RpcError:
                time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server did not start: {' '.join(cmd)} (log {log_path})")


async def enroll_until_killed(target, metadata, faces, prefix: str, workers: int, kill_after: float, proc):
    """Enrollers of unique subjects; SIGKILL the server after kill_after s; returns acknowledged ids."""
    import grpc
    from ppfr.protos import verification_pb2 as pb

    acked: list[str] = []
    stop = asyncio.Event()
    async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        call = channel.unary_unary(
            "/ppfr.v1.FaceVerification/Enroll",
            request_serializer=pb.EnrollRequest.SerializeToString,
            response_deserializer=pb.EnrollResponse.FromString,
        )

        async def worker(w: int) -> None:
            i = 0
            while not stop.is_set():
                subject = f"{prefix}-{w}-{i}"
                request = pb.EnrollRequest(
                    subject_id=subject, face=faces[i % len(faces)], idempotency_key=subject
                )
                try:
                    await call(request, timeout=10, metadata=metadata)
                    acked.append(subject)
                except grpc.aio.AioRpcError:
                    if proc.poll() is not None:
                        return
                i += 1

        async def killer() -> None:
            await asyncio.sleep(kill_after)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            stop.set()

        await asyncio.gather(killer(), *(worker(w) for w in range(workers)))
    return acked


def list_all(target, metadata) -> dict:
    import grpc
    from ppfr.protos import verification_pb2 as pb
    from ppfr.protos import verification_pb2_grpc as pb_grpc

    subjects, token = {}, ""
    with grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        stub = pb_grpc.FaceVerificationStub(channel)
        while True:
            page = stub.ListSubjects(
                pb.ListSubjectsRequest(page_size=1000, page_token=token), timeout=30, metadata=metadata
            )
            subjects.update({s.subject_id: s.template_count for s in page.subjects})
            token = page.next_page_token
            if not token:
                return subjects


def kill9(bundle, out: Path, faces, rounds: int, workers: int = 16) -> dict:
    db = out / "kill9.sqlite"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    keys, key = bench_key(out)
    metadata = (("x-api-key", key),)
    rng = random.Random(1)
    results, acked_all = [], []
    for r in range(rounds):
        proc, target = start_server(bundle, db, keys, out / "logs" / "kill9_server.log")
        kill_after = rng.uniform(2.0, 4.0)
        acked = asyncio.run(enroll_until_killed(target, metadata, faces, f"k{r}", workers, kill_after, proc))
        acked_all += acked
        proc, target = start_server(bundle, db, keys, out / "logs" / "kill9_server.log")
        try:
            present = list_all(target, metadata)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        lost = [s for s in acked_all if s not in present]
        duplicates = sum(n > 1 for n in present.values())
        extra = len([s for s in present if s.startswith(f"k{r}-")]) - len(acked)
        results.append(
            {
                "kill_after_s": round(kill_after, 2),
                "acknowledged": len(acked),
                "lost": len(lost),
                "committed_unacknowledged": extra,
                "subjects_with_duplicates": duplicates,
            }
        )
        log(f"kill -9 round {r + 1}: {results[-1]}")
    return {
        "rounds": results,
        "acknowledged": sum(x["acknowledged"] for x in results),
        "lost": sum(x["lost"] for x in results),
    }


# --- burst and soak ----------------------------------------------------------------------------------------
def burst(bundle, out: Path, faces, n: int) -> dict:
    from ppfr.protos import verification_pb2 as pb

    request = pb.IdentifyRequest(face=faces[0]).SerializeToString()
    with Server(bundle, out, 8, 2.0, out / "logs" / "burst_server.log") as srv:
        t0 = time.perf_counter()
        codes = asyncio.run(
            send_all(srv.target, [("Identify", request)] * n, (("x-api-key", srv.api_key),), n, 60)
        )
        wall = time.perf_counter() - t0
        alive = srv.proc.poll() is None
    return {"calls": n, "codes": count(codes), "wall_s": round(wall, 2), "server_alive": alive}


def soak(bundle, out: Path, faces, n: int, concurrency: int = 64) -> dict:
    from ppfr.protos import verification_pb2 as pb

    requests = write_requests(
        out / "soak_requests.bin",
        [pb.VerifyRequest(subject_id="soak", face=f).SerializeToString() for f in faces],
    )
    cfg = replace(
        BenchConfig(),
        concurrency=(concurrency,),
        e2e_seconds=3600,
        e2e_max_window_s=3600,
        e2e_warmup_s=1.0,
        e2e_max_requests=n,
    )
    with Server(bundle, out, 8, 2.0, out / "logs" / "soak_server.log") as srv:
        srv.enroll(pb.EnrollRequest(subject_id="soak", face=faces[0]).SerializeToString())
        (result,) = run_loadgen({"soak": srv.target}, requests, cfg, srv.api_key)
        alive = srv.proc.poll() is None
    result["server_alive"] = alive
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ppfr.bench.harden", description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, required=True, help="bundle folder (artifacts/NAME)")
    p.add_argument("--out", type=Path, default=Path("runs/harden"), help="work folder (galleries, logs)")
    p.add_argument("--fuzz", type=int, default=1200, help="malformed requests (0 = skip)")
    p.add_argument("--kills", type=int, default=3, help="kill -9 rounds (0 = skip)")
    p.add_argument("--burst", type=int, default=2000, help="calls at once (0 = skip)")
    p.add_argument("--soak", type=int, default=10000, help="Verify calls at concurrency 64 (0 = skip)")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    faces = protected_faces(args.bundle, 16)
    report: dict = {"bundle": str(args.bundle)}
    for name, n, run in (
        ("fuzz", args.fuzz, fuzz),
        ("kill9", args.kills, kill9),
        ("burst", args.burst, burst),
        ("soak", args.soak, soak),
    ):
        if n:
            log(f"{name} ({n})")
            t0 = time.perf_counter()
            report[name] = run(args.bundle, args.out, faces, n)
            report[name]["took_s"] = round(time.perf_counter() - t0, 1)
            log(f"{name}: {json.dumps(report[name])}")
    text = json.dumps(report, indent=2)
    (args.out / "harden.json").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
