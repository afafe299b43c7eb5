"""End-to-end Verify through the real gRPC server on loopback, driven by the separate load generator.

For each bundle and batching mode: start `ppfr-cloud serve` as its own process on a free loopback port
with a fresh gallery, enroll the bench subject, run `python -m ppfr.bench.loadgen` over the concurrency
sweep, stop the server. Dynamic batching "off" is the same server with --max-batch 1.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from .loadgen import CHANNEL_OPTIONS, write_requests


class ServerError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cloud_command() -> list[str]:
    exe = Path(sys.executable).parent / "ppfr-cloud"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("ppfr-cloud")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; from ppfr.cloud.cli import main; sys.exit(main())"]


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process (Linux /proc), None where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


_KEYS: dict[Path, str] = {}


def bench_key(workdir) -> tuple[Path, str]:
    """The key file every bench server in `workdir` uses, and its one key (all scopes, no rate limit),
    made once per run; the load generator gets it through $PPFR_API_KEY."""
    from ppfr.cloud.auth import KeyStore, parse_scopes

    path = Path(workdir) / "bench.keys"
    if path not in _KEYS:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        store = KeyStore(path)
        _KEYS[path] = store.create("bench", parse_scopes("verify,enroll,admin"), rate=0)[1]
        store.close()
    return path, _KEYS[path]


class Server:
    """A `ppfr-cloud serve` child process on loopback; use as a context manager."""

    def __init__(self, bundle_dir, workdir, max_batch: int, max_delay_ms: float, log_path):
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        db = workdir / f"gallery_{self.port}.sqlite"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        keys, self.api_key = bench_key(workdir)
        self.metadata = (("x-api-key", self.api_key),)
        self.cmd = [
            *cloud_command(),
            "serve",
            "--bundle",
            str(bundle_dir),
            "--db",
            str(db),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--max-batch",
            str(max_batch),
            "--max-delay-ms",
            str(max_delay_ms),
            "--keys",
            str(keys),
        ]
        self.log_path = Path(log_path)
        self.proc = None

    def __enter__(self):
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT)
        self.wait_ready()
        return self

    def __exit__(self, *exc):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def log_tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-n:])
        except OSError:
            return ""

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        import grpc
        from ppfr.protos import verification_pb2

        deadline = time.monotonic() + timeout_s
        with grpc.insecure_channel(self.target, options=CHANNEL_OPTIONS) as ch:
            info = ch.unary_unary(
                "/ppfr.v1.FaceVerification/GetServerInfo",
                request_serializer=verification_pb2.GetServerInfoRequest.SerializeToString,
                response_deserializer=verification_pb2.ServerInfo.FromString,
            )
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise ServerError(
                        f"server exited with code {self.proc.returncode} before it was ready:\n"
                        f"  {' '.join(self.cmd)}\n{self.log_tail()}"
                    )
                try:
                    self.info = info(
                        verification_pb2.GetServerInfoRequest(), timeout=1.0, metadata=self.metadata
                    )
                    return
                except grpc.RpcError:
                    time.sleep(0.2)
        raise ServerError(
            f"server not ready after {timeout_s:.0f} s: {' '.join(self.cmd)}\n{self.log_tail()}"
        )

    def enroll(self, request: bytes) -> None:
        import grpc

        with grpc.insecure_channel(self.target, options=CHANNEL_OPTIONS) as ch:
            call = ch.unary_unary("/ppfr.v1.FaceVerification/Enroll")
            try:
                call(request, timeout=30, metadata=self.metadata)
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


def bench_e2e(bundle_dir, name: str, verify_requests: list[bytes], enroll: bytes, cfg, workdir, log) -> dict:
    """{"batching_on": {...}, "batching_off": {...}}: both servers run at once and the load generator
    alternates between them level by level, so the two modes see the same background load."""
    workdir = Path(workdir)
    requests_file = write_requests(workdir / f"requests_{name}.bin", verify_requests)
    batches = {"batching_on": cfg.max_batch, "batching_off": 1}
    servers = {
        mode: Server(
            bundle_dir, workdir, batches[mode], cfg.max_delay_ms, workdir / "logs" / f"{name}_{mode}.log"
        )
        for _, mode in MODES
    }
    log(
        f"  e2e: batching on (max batch {cfg.max_batch}, max delay {cfg.max_delay_ms} ms) vs off, interleaved"
    )
    out = {}
    with servers["batching_on"] as on, servers["batching_off"] as off:
        for srv in (on, off):
            srv.enroll(enroll)
        cpu0 = {mode: cpu_seconds(s.proc.pid) for mode, s in servers.items()}
        t0 = time.perf_counter()
        targets = {label: servers[mode].target for label, mode in MODES}
        sweep = run_loadgen(targets, requests_file, cfg, on.api_key)
        wall = time.perf_counter() - t0
        for label, mode in MODES:
            srv = servers[mode]
            rows = [r for r in sweep if r["target"] == label]
            answered = sum(r["requests"] for r in rows)
            cpu1 = cpu_seconds(srv.proc.pid)  # includes warm-up calls: an upper bound per answer
            cpu = (
                None if cpu0[mode] is None or cpu1 is None or not answered else (cpu1 - cpu0[mode]) / answered
            )
            out[mode] = {
                "max_batch": batches[mode],
                "max_delay_ms": cfg.max_delay_ms,
                "runtime": srv.info.runtime,
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
