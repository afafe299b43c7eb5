"""End-to-end Verify through the real gRPC server on loopback, driven by the separate load generator.

For each bundle and batching mode: a local server (ppfr.cloud.local) with a fresh gallery, the bench
subject enrolled, `python -m ppfr.bench.loadgen` over the concurrency sweep. Dynamic batching "off" is the
same server with --max-batch 1.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from ppfr.cloud.local import LocalServer, fresh

from .loadgen import CHANNEL_OPTIONS, write_requests


class ServerError(RuntimeError):
    pass


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process (Linux /proc), None where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def enroll(server: LocalServer, request: bytes) -> None:
    """One serialized EnrollRequest, sent as raw bytes with the server's key."""
    import grpc

    with grpc.insecure_channel(server.address, options=CHANNEL_OPTIONS) as ch:
        try:
            ch.unary_unary("/ppfr.v1.FaceVerification/Enroll")(request, timeout=30, metadata=server.metadata)
        except grpc.RpcError as err:
            raise ServerError(f"Enroll failed: {err.code().name}: {err.details()}") from None


def run_loadgen(targets: dict, requests_file, cfg, api_key: str | None = None) -> list[dict]:
    """Run the load-generator process over the sweep ({label: host:port}, interleaved per level);
    one result dict per (level, target), streamed as the levels finish. `api_key`: the servers' key."""
    cmd = [sys.executable, "-m", "ppfr.bench.loadgen", "--requests", str(requests_file)]
    for label, target in targets.items():
        cmd += ["--target", f"{label}={target}"]
    cmd += ["--concurrency", ",".join(str(c) for c in cfg.concurrency), "--seconds", str(cfg.e2e_seconds)]
    cmd += ["--warmup-s", str(cfg.e2e_warmup_s), "--max-requests", str(cfg.e2e_max_requests)]
    cmd += ["--max-window-s", str(cfg.e2e_max_window_s)]
    # Hard bound on the whole sweep: per level the window, a warm-up and a drain of at most the deadline.
    budget = len(targets) * len(cfg.concurrency) * (cfg.e2e_max_window_s + cfg.e2e_warmup_s + 60) + 30
    env = {**os.environ, **({"PPFR_API_KEY": api_key} if api_key else {})}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=None, text=True, env=env)
    results = []
    try:
        deadline = time.monotonic() + budget
        for line in proc.stdout:
            results.append(json.loads(line))
            if time.monotonic() > deadline:
                break
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if len(results) < len(targets) * len(cfg.concurrency):
        raise ServerError(
            f"load generator failed or ran out of time (exit {proc.returncode}): {' '.join(cmd)}"
        )
    return results


MODES = (("on", "batching_on"), ("off", "batching_off"))


def bench_e2e(bundle_dir, name: str, verify_requests: list[bytes], request: bytes, cfg, workdir, log) -> dict:
    """{"batching_on": {...}, "batching_off": {...}}: both servers run at once and the load generator
    alternates between them level by level, so the two modes see the same background load. Both take
    one key (one key file), the load generator's."""
    workdir = Path(workdir)
    requests_file = write_requests(workdir / f"requests_{name}.bin", verify_requests)
    batches = {"batching_on": cfg.max_batch, "batching_off": 1}
    keys = fresh(workdir / f"{name}.keys")

    def server(mode: str, api_key=None) -> LocalServer:
        flags = ["--max-batch", str(batches[mode]), "--max-delay-ms", str(cfg.max_delay_ms)]
        log_path = workdir / "logs" / f"{name}_{mode}.log"
        return LocalServer(
            bundle_dir, workdir=workdir, keys=keys, api_key=api_key, extra_args=flags, log_path=log_path
        )

    log(
        f"  e2e: batching on (max batch {cfg.max_batch}, max delay {cfg.max_delay_ms} ms) vs off, interleaved"
    )
    out = {}
    with server("batching_on") as on, server("batching_off", on.api_key) as off:
        servers = {"batching_on": on, "batching_off": off}
        for srv in (on, off):
            enroll(srv, request)
        cpu0 = {mode: cpu_seconds(s.process.pid) for mode, s in servers.items()}
        t0 = time.perf_counter()
        targets = {label: servers[mode].address for label, mode in MODES}
        sweep = run_loadgen(targets, requests_file, cfg, on.api_key)
        wall = time.perf_counter() - t0
        for label, mode in MODES:
            srv = servers[mode]
            rows = [r for r in sweep if r["target"] == label]
            answered = sum(r["requests"] for r in rows)
            cpu1 = cpu_seconds(srv.process.pid)  # includes warm-up calls: an upper bound per answer
            cpu = (
                None if cpu0[mode] is None or cpu1 is None or not answered else (cpu1 - cpu0[mode]) / answered
            )
            out[mode] = {
                "max_batch": batches[mode],
                "max_delay_ms": cfg.max_delay_ms,
                "runtime": srv.info().runtime,
                "sweep": rows,
                "server_cpu_ms_per_request": None if cpu is None else round(cpu * 1e3, 3),
                "sweep_wall_s": round(wall, 2),
            }
            bad = [r for r in rows if r["errors"]]
            if bad:
                log(
                    f"  WARNING: errors with batching {label}: {bad[0]['errors']}"
                    f" first: {bad[0]['first_error']}"
                )
    return out
