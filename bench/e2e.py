"""End-to-end Verify through the real gRPC server on loopback, driven by the separate load generator.

For every bundle and batching mode at once: a local server (ppfr.cloud.local) with a fresh gallery and
the bench subject enrolled; then one `python -m ppfr.bench.loadgen` over the concurrency sweep, visiting
every server at each level in turn. Dynamic batching "off" is the same server with --max-batch 1.
"""

import contextlib
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


def run_loadgen(targets: dict, cfg, api_key: str | None = None) -> list[dict]:
    """Run the load-generator process over the sweep ({label: (host:port, requests file)}, interleaved per
    level); one result dict per (level, target), streamed as the levels finish. api_key: the servers' key."""
    cmd = [sys.executable, "-m", "ppfr.bench.loadgen"]
    for label, (target, requests_file) in targets.items():
        cmd += ["--target", f"{label}={target}", "--requests", str(requests_file)]
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


def _max_batch(cfg, label: str) -> int:
    """Dynamic batching on: the configured batch; off: the same server with --max-batch 1."""
    return cfg.max_batch if label == "on" else 1


def _servers(stack, bundles: dict, cfg, workdir: Path) -> tuple[dict, dict]:
    """({(name, label, mode): LocalServer}, load-generator targets {name/label: (address, requests)}):
    two servers per bundle, batching on and off, all started with one key file and one key, each with
    the bench subject enrolled."""
    keys, api_key = fresh(workdir / "bench.keys"), None
    servers, targets = {}, {}
    for name, (bundle_dir, verify_requests, request) in bundles.items():
        requests_file = write_requests(workdir / f"requests_{name}.bin", verify_requests)
        for label, mode in MODES:
            flags = ["--max-batch", str(_max_batch(cfg, label))]
            flags += ["--max-delay-ms", str(cfg.max_delay_ms)]
            log_path = workdir / "logs" / f"{name}_{mode}.log"
            srv = LocalServer(
                bundle_dir, workdir=workdir, keys=keys, api_key=api_key, extra_args=flags, log_path=log_path
            )
            stack.enter_context(srv)
            api_key = srv.api_key
            enroll(srv, request)
            servers[name, label, mode] = srv
            targets[f"{name}/{label}"] = (srv.address, requests_file)
    return servers, targets


def bench_e2e(bundles: dict, cfg, workdir, log) -> dict:
    """{name: {"batching_on": {...}, "batching_off": {...}}} for bundles {name: (bundle folder, serialized
    VerifyRequests, one EnrollRequest)}. Every bundle's two servers run at once and the load generator
    alternates between all of them level by level, so bundles and modes see the same background load:
    their ratios are measured side by side, not minutes apart."""
    workdir = Path(workdir)
    log(
        f"  e2e: batching on (max batch {cfg.max_batch}, max delay {cfg.max_delay_ms} ms) vs off, "
        f"{len(bundles)} bundle(s), all interleaved"
    )
    with contextlib.ExitStack() as stack:
        servers, targets = _servers(stack, bundles, cfg, workdir)
        cpu0 = {k: cpu_seconds(s.process.pid) for k, s in servers.items()}
        t0 = time.perf_counter()
        sweep = run_loadgen(targets, cfg, next(iter(servers.values())).api_key)
        wall = time.perf_counter() - t0
        out = {name: {} for name in bundles}
        for (name, label, mode), srv in servers.items():
            rows = [r for r in sweep if r["target"] == f"{name}/{label}"]
            answered = sum(r["requests"] for r in rows)
            cpu1 = cpu_seconds(srv.process.pid)  # includes warm-up calls: an upper bound per answer
            before = cpu0[name, label, mode]
            cpu = None if None in (before, cpu1) or not answered else (cpu1 - before) / answered
            out[name][mode] = {
                "max_batch": _max_batch(cfg, label),
                "max_delay_ms": cfg.max_delay_ms,
                "runtime": srv.info().runtime,
                "sweep": rows,
                "server_cpu_ms_per_request": None if cpu is None else round(cpu * 1e3, 3),
                "sweep_wall_s": round(wall, 2),
            }
            bad = [r for r in rows if r["errors"]]
            if bad:
                log(f"  WARNING: errors at {name}/{label}: {bad[0]['errors']} first: {bad[0]['first_error']}")
    return out
