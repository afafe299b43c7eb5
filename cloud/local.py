"""A throwaway local server for the demo, the benchmarks and the tests: `ppfr-cloud serve` as a child
process on a free loopback port, with a fresh gallery and its own API key, ready once its health service
says SERVING, stopped cleanly (SIGTERM to its process group, SIGKILL after a grace period).

    with LocalServer("artifacts/NAME", workdir="runs/x", extra_args=["--max-batch", "8"]) as server:
        server.address, server.api_key, server.metadata   # "127.0.0.1:PORT", the key, (("x-api-key", key),)

The key is made with `ppfr-cloud keys create` and read from its stdout; it never goes on a command line
(children get it through $PPFR_API_KEY, see `env()`). This is the one place that starts `ppfr-cloud` as a
process: adapt it here when the command's flags change."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SERVE = [sys.executable, "-m", "ppfr.cloud.cli"]  # the installed ppfr-cloud, whatever the PATH says
SCOPES = "verify,enroll,admin"


class LocalServerError(RuntimeError):
    """The server did not start (the message carries the end of its log)."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fresh(path: Path) -> Path:
    """`path` with no gallery (or key file) of an earlier run left behind."""
    for suffix in ("", "-wal", "-shm", ".keys", ".keys-wal", ".keys-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return path


class LocalServer:
    """`ppfr-cloud serve --bundle BUNDLE` on 127.0.0.1; a context manager (or start()/stop()).

    db: a gallery file or postgresql:// URL, used as it is (a restart, replicas); default a fresh SQLite
    gallery in `workdir` (default: a temporary folder, removed at stop). keys: the API key file (default
    <db>.keys beside a file gallery, `workdir`/api.keys for a URL). api_key: an existing key of that file
    (replicas, restarts); default a new one with every scope and no rate limit. extra_args: more `serve`
    flags. log_path: the server's stdout and stderr (default `workdir`/server_PORT.log, appended to)."""

    def __init__(
        self,
        bundle,
        *,
        db=None,
        port: int | None = None,
        workdir=None,
        keys=None,
        api_key: str | None = None,
        extra_args=(),
        log_path=None,
        timeout_s: float = 120.0,
    ):
        self._tmp = None if workdir else tempfile.mkdtemp(prefix="ppfr-local-")
        self.workdir = Path(workdir or self._tmp)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.bundle, self.port = Path(bundle), port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.db = db or fresh(self.workdir / f"gallery_{self.port}.sqlite")
        url = "://" in str(self.db)
        self.keys = Path(keys) if keys else (self.workdir / "api.keys" if url else None)
        self.api_key, self.extra_args, self.timeout_s = api_key, list(extra_args), timeout_s
        self.log_path = Path(log_path or self.workdir / f"server_{self.port}.log")
        self.process: subprocess.Popen | None = None

    @property
    def metadata(self) -> tuple:
        return (("x-api-key", self.api_key),)

    def env(self) -> dict:
        """This process's environment with the key in $PPFR_API_KEY, for ppfr-edge and the load generator."""
        return {**os.environ, "PPFR_API_KEY": self.api_key}

    def _where(self) -> list[str]:
        return ["--keys", str(self.keys)] if self.keys else ["--db", str(self.db)]

    def create_key(self, name: str = "local", scopes: str = SCOPES, rate: float = 0) -> str:
        """A new key in the server's key file (printed once on stdout by `ppfr-cloud keys create`)."""
        cmd = [*SERVE, "keys", "create", *self._where(), "--name", name, "--scopes", scopes]
        made = subprocess.run([*cmd, "--rate", f"{rate:g}"], capture_output=True, text=True)
        if made.returncode != 0:
            raise LocalServerError(f"ppfr-cloud keys create failed: {made.stderr.strip()}")
        return made.stdout.strip()

    def command(self) -> list[str]:
        cmd = [*SERVE, "serve", "--bundle", str(self.bundle), "--db", str(self.db)]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port)]
        return cmd + (["--keys", str(self.keys)] if self.keys else []) + self.extra_args

    def start(self) -> "LocalServer":
        try:
            self.api_key = self.api_key or self.create_key()
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with self.log_path.open("a") as log:  # the child keeps its own copy of the descriptor
                self.process = subprocess.Popen(
                    self.command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
            self.wait_serving()
        except BaseException:  # a failed start (or Ctrl-C during it) leaves no process and no temp folder
            self.stop()
            raise
        return self

    def wait_serving(self) -> None:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        serving = health_pb2.HealthCheckResponse.SERVING
        deadline = time.monotonic() + self.timeout_s
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise LocalServerError(
                        f"the server exited with status {self.process.returncode}:\n{self.log_tail()}"
                    )
                try:
                    if stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status == serving:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
        raise LocalServerError(
            f"the server at {self.address} was not SERVING after {self.timeout_s:.0f} s:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        except OSError:
            return ""

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def info(self):
        """GetServerInfo (the served bundle, runtime, threshold, gallery counts)."""
        import grpc
        from ppfr.protos import verification_pb2 as pb
        from ppfr.protos import verification_pb2_grpc as pb_grpc

        with grpc.insecure_channel(self.address) as channel:
            stub = pb_grpc.FaceVerificationStub(channel)
            return stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=30, metadata=self.metadata)

    def kill(self) -> None:
        """SIGKILL, as a crash would (the gallery and key file stay for a restart)."""
        if self.alive:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self, grace_s: float = 30.0) -> int | None:
        """SIGTERM (the server drains its calls), SIGKILL after `grace_s`; safe to call more than once.
        Returns the exit status."""
        if self.alive:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self.kill()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
        return None if self.process is None else self.process.returncode

    def __enter__(self) -> "LocalServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
