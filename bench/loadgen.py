"""The load generator: a separate process that drives Verify on a loopback gRPC server.

    python -m ppfr.bench.loadgen --target 127.0.0.1:PORT --requests FILE --concurrency 1,4,16,64

FILE holds pre-serialized VerifyRequest messages (see `write_requests`), one file for all targets or one
per target (`--target a=HOST:PORT --requests A --target b=HOST:PORT --requests B`); they are sent as raw bytes
(no per-request protobuf work in the client) and cycled. Each concurrency level runs `--concurrency`
closed-loop workers on one HTTP/2 channel: a warm-up, then a measured window bounded both by time
(`--seconds`) and by request count (`--max-requests`). One JSON line per level goes to stdout;
progress goes to stderr. The server's API key comes from $PPFR_API_KEY (sent as x-api-key metadata).
"""

import argparse
import asyncio
import json
import os
import struct
import sys
import time
from pathlib import Path

VERIFY = "/ppfr.v1.FaceVerification/Verify"
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
CHANNEL_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]


def write_requests(path, messages: list[bytes]) -> Path:
    """Store serialized requests, each prefixed by its little-endian uint32 length."""
    path = Path(path)
    with path.open("wb") as f:
        for m in messages:
            f.write(struct.pack("<I", len(m)))
            f.write(m)
    return path


def read_requests(path) -> list[bytes]:
    data = Path(path).read_bytes()
    out, i = [], 0
    while i < len(data):
        (n,) = struct.unpack_from("<I", data, i)
        out.append(data[i + 4 : i + 4 + n])
        i += 4 + n
    if not out:
        raise SystemExit(f"loadgen: no requests in {path}")
    return out


def check_loopback(target: str) -> None:
    host = target.rsplit(":", 1)[0]
    if host not in LOOPBACK:
        raise SystemExit(f"loadgen: refusing non-loopback target {target!r}; the bench runs on loopback only")


async def run_level(channel, payloads, concurrency, seconds, warmup_s, max_requests, timeout_s, max_window_s):
    """One closed-loop level. Warm-up lasts `warmup_s` and until every client has had one answer (so the
    first, queued round at high concurrency is never measured). The measured window then lasts
    max(`seconds`, 2 x that warm-up) capped at `max_window_s`, or until `max_requests` answers; the
    answers completed inside it give the latency percentiles and the throughput. Calls still in flight
    when it closes are cancelled (no drain: the server drops cancelled work)."""
    import grpc

    call = channel.unary_unary(VERIFY)  # bytes in, bytes out: no client-side (de)serialization
    key = os.environ.get("PPFR_API_KEY")
    metadata = (("x-api-key", key),) if key else None
    clock = time.perf_counter
    t_start = clock()
    inf = float("inf")
    state = {"measure": inf, "stop": inf, "warm": 0}
    latencies: list[float] = []  # answers completed inside the measured window
    errors: dict[str, int] = {}
    first_error: list[str] = []
    done = asyncio.Event()

    async def worker(k: int) -> None:
        first = True
        while True:
            t0 = clock()
            try:
                await call(payloads[k % len(payloads)], timeout=timeout_s, metadata=metadata)
                ok = True
            except grpc.aio.AioRpcError as err:
                ok = False
                name = err.code().name
                errors[name] = errors.get(name, 0) + 1
                if not first_error:
                    first_error.append(f"{name}: {err.details()}")
            k += concurrency
            t1 = clock()
            if first:
                first = False
                state["warm"] += 1
                if state["warm"] == concurrency:  # every client answered once: open the window
                    state["measure"] = max(t1, t_start + warmup_s)
                    span = min(max(seconds, 2 * (state["measure"] - t_start)), max(seconds, max_window_s))
                    state["stop"] = state["measure"] + span
            if ok and state["measure"] <= t1 < state["stop"]:
                latencies.append((t1 - t0) * 1e3)
            if t1 >= state["stop"] or len(latencies) >= max_requests:
                done.set()
                return

    tasks = [asyncio.create_task(worker(i)) for i in range(concurrency)]
    waiter = asyncio.create_task(done.wait())
    await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
    while not done.is_set() and not all(t.done() for t in tasks):
        await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
    t_end = min(clock(), state["stop"])
    for t in [waiter, *tasks]:
        t.cancel()
    await asyncio.gather(waiter, *tasks, return_exceptions=True)
    window = max(t_end - state["measure"], 1e-9) if state["measure"] < inf else 0.0
    from ppfr.bench.stats import summarize

    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": errors,
        "first_error": first_error[0] if first_error else None,
        "warmup_s": round(state["measure"] - t_start, 3) if window else None,
        "window_s": round(window, 3),
        "throughput_rps": round(len(latencies) / window, 2) if window else 0.0,
        "latency": summarize(latencies),
    }


async def main_async(args) -> None:
    import grpc

    files = args.requests * len(args.target) if len(args.requests) == 1 else args.requests
    payloads = {label: read_requests(f) for (label, _), f in zip(args.target, files)}
    channels = {}
    try:
        for label, target in args.target:
            channels[label] = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
            await asyncio.wait_for(channels[label].channel_ready(), timeout=args.timeout_s)
        for c in args.concurrency:  # targets interleaved per level: side by side under the same load
            for label, channel in channels.items():
                res = await run_level(
                    channel,
                    payloads[label],
                    c,
                    args.seconds,
                    args.warmup_s,
                    args.max_requests,
                    args.timeout_s,
                    args.max_window_s,
                )
                res["target"] = label
                print(json.dumps(res), flush=True)
                lat = {"p50_ms": float("nan"), "p99_ms": float("nan"), **res["latency"]}
                print(
                    f"    loadgen {label:>4s} c={c:<3d} {res['throughput_rps']:8.1f} req/s  "
                    f"p50 {lat['p50_ms']:8.2f} ms  p99 {lat['p99_ms']:8.2f} ms"
                    + (f"  errors {res['errors']}" if res["errors"] else ""),
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        for ch in channels.values():
            await ch.close()


def _target(text: str) -> tuple[str, str]:
    label, _, target = text.rpartition("=")
    check_loopback(target)
    return label or target, target


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="ppfr-bench-loadgen", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--target",
        type=_target,
        action="append",
        required=True,
        help="[label=]host:port on loopback (repeatable)",
    )
    p.add_argument(
        "--requests",
        action="append",
        required=True,
        help="length-prefixed VerifyRequest bytes: one file for all targets, or one per --target, in order",
    )
    p.add_argument("--concurrency", default="1,4,16,64", help="comma-separated levels")
    p.add_argument("--seconds", type=float, default=2.0, help="measured window per level")
    p.add_argument("--warmup-s", type=float, default=0.3, help="unmeasured warm-up per level")
    p.add_argument("--max-requests", type=int, default=4000, help="measured requests per level, at most")
    p.add_argument("--max-window-s", type=float, default=6.0, help="longest measured window per level")
    p.add_argument("--timeout-s", type=float, default=30.0, help="per-request deadline")
    args = p.parse_args(argv)
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c]
    if len(args.requests) not in (1, len(args.target)):
        p.error(f"give one --requests for every target or one per --target ({len(args.target)})")
    return args


def main(argv=None) -> None:
    asyncio.run(main_async(parse_args(argv)))


if __name__ == "__main__":
    main()
