"""Where the time goes: cProfile of the edge front-end loop and of the server's hot path under load.

    python -m ppfr.bench.profile --bundle artifacts/small_ppfr_fd [--seconds 4 --concurrency 16]

Edge: N queries of draw + front-end + serialize on one thread, profiled. Server: `ppfr-cloud serve` run in
a child process with cProfile on its event-loop thread (gRPC, validation, batching, gallery match) and a
timer around the engine thread's batch calls (the recognizer), driven by the load generator; stopped with
SIGINT so the profile is written. Top functions go to runs/bench/profile_{edge,server}_<bundle>.txt.
"""

import argparse
import cProfile
import io
import json
import os
import pstats
import signal
import sys
import time
from pathlib import Path


def top(profile, n: int = 25, sort: str = "tottime") -> str:
    buf = io.StringIO()
    stats = profile if isinstance(profile, pstats.Stats) else pstats.Stats(profile)
    stats.stream = buf
    stats.strip_dirs().sort_stats(sort).print_stats(n)
    return buf.getvalue()


def profile_edge(bundle_dir, queries: int) -> str:
    from ppfr.edge.frontend import FrontEnd
    from ppfr.edge.image import read_bgr

    from .cli import PHOTOS
    from .edge_bench import wire_request

    fe = FrontEnd(bundle_dir, threads=1)
    import cv2

    face = cv2.resize(read_bgr(sorted(PHOTOS.glob("*.jpg"))[0]), (112, 112))[:, :, ::-1].copy()
    for _ in range(20):
        wire_request(fe, fe.protect(face))
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    for _ in range(queries):
        wire_request(fe, fe.protect(face))
    prof.disable()
    per = (time.perf_counter() - t0) * 1e3 / queries
    return f"edge: {queries} queries, {per:.3f} ms each under the profiler\n\n" + top(prof)


def serve_child(argv) -> None:
    """Child process: the real server with cProfile on the loop thread and a timer on the engine thread."""
    from ppfr.cloud import batcher, cli

    stats = {"engine_s": 0.0, "calls": 0, "items": 0}
    inner = batcher.DynamicBatcher._embed_batch

    def timed(self, tensors):
        t0 = time.perf_counter()
        try:
            return inner(self, tensors)
        finally:
            stats["engine_s"] += time.perf_counter() - t0
            stats["calls"] += 1
            stats["items"] += len(tensors)

    batcher.DynamicBatcher._embed_batch = timed
    out = Path(os.environ["PPFR_PROFILE_OUT"])
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    try:
        cli.main(argv)
    finally:
        prof.disable()
        prof.dump_stats(str(out))
        stats["wall_s"] = time.perf_counter() - t0
        Path(f"{out}.json").write_text(json.dumps(stats))


def profile_server(bundle_dir, workdir: Path, seconds: float, concurrency: int, max_batch: int) -> str:
    import cv2
    from ppfr.edge.frontend import FrontEnd
    from ppfr.edge.image import read_bgr

    from .cli import PHOTOS
    from .e2e import Server, run_loadgen
    from .edge_bench import enroll_request, wire_request
    from .loadgen import write_requests

    fe = FrontEnd(bundle_dir, threads=1)
    faces = [cv2.resize(read_bgr(p), (112, 112))[:, :, ::-1].copy() for p in sorted(PHOTOS.glob("*.jpg"))]
    reqs = write_requests(workdir / "profile_requests.bin", [wire_request(fe, fe.protect(f)) for f in faces])
    prof_path = workdir / "server.prof"
    os.environ["PPFR_PROFILE_OUT"] = str(prof_path)
    srv = Server(bundle_dir, workdir, max_batch, 2.0, workdir / "logs" / "profile_server.log")
    srv.cmd = [sys.executable, "-m", "ppfr.bench.profile", "--serve-child", *srv.cmd[1:]]
    from .config import BenchConfig

    cfg = BenchConfig(concurrency=(concurrency,), e2e_seconds=seconds, e2e_max_requests=10**6)
    with srv:
        srv.enroll(enroll_request(fe, fe.protect(faces[0])))
        (res,) = run_loadgen({"srv": srv.target}, reqs, cfg, srv.api_key)
        srv.proc.send_signal(signal.SIGINT)
        srv.proc.wait(timeout=30)
    eng = json.loads(Path(f"{prof_path}.json").read_text())
    head = (
        f"server: concurrency {concurrency}, max batch {max_batch}: {res['throughput_rps']:.1f} req/s, "
        f"p50 {res['latency']['p50_ms']:.2f} ms\n"
        f"engine thread (recognizer) busy {eng['engine_s']:.2f} s of {eng['wall_s']:.2f} s server wall; "
        f"{eng['calls']} calls, mean batch {eng['items'] / max(1, eng['calls']):.2f}\n"
        f"event-loop thread profile (gRPC, validation, batching, gallery; excludes the engine thread):\n\n"
    )
    return head + top(pstats.Stats(str(prof_path)), 30)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--serve-child":
        serve_child(argv[1:])
        return 0
    p = argparse.ArgumentParser(prog="python -m ppfr.bench.profile", description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", required=True)
    p.add_argument("--out", default="runs/bench")
    p.add_argument("--queries", type=int, default=2000)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--edge-only", action="store_true", help="profile the edge front-end only")
    args = p.parse_args(argv)
    out = Path(args.out)
    (out / "work").mkdir(parents=True, exist_ok=True)
    name = Path(args.bundle).name
    edge = profile_edge(args.bundle, args.queries)
    (out / f"profile_edge_{name}.txt").write_text(edge)
    print(edge[:3000])
    if args.edge_only:
        return 0
    server = profile_server(args.bundle, out / "work", args.seconds, args.concurrency, args.max_batch)
    (out / f"profile_server_{name}.txt").write_text(server)
    print(server[:4000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
