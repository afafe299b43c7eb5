"""A deployment you can run: PostgreSQL, two `ppfr-cloud serve` replicas sharing it, and a client that
spreads its calls over both. `make cluster` runs `up`; the container files run the other commands.

    python deploy/cluster.py [up]    # make cluster: all of it on this machine, then stops it all
    python deploy/cluster.py bundle  # the bundle it serves (exports the shipped default once)
    python deploy/cluster.py key     # an API key in the deployment's key store (stdout, or --out FILE)
    python deploy/cluster.py client --targets H:P,H:P ...   # enroll and verify real faces over both

`up` starts PostgreSQL 16 + pgvector from PyPI pgserver (a fresh database in a temporary folder), makes
the bundle and a key, starts two replicas on free loopback ports, each `ppfr-cloud serve` with its settings
in PPFR_CLOUD_* variables as in a container (gRPC, HTTP/JSON, Prometheus /metrics; API keys in the
database's table), runs `client` against both (gRPC round_robin over the two addresses), prints each
replica's call counts from its /metrics, and stops everything, also on failure. Exit status 0 only if
every step and every call succeeded.

This file is the one place that runs `ppfr-cloud` for the deployment (`_cloud`, `start_replica`).
"""

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ppfr.cloud.local import LocalServer, LocalServerError, free_port

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "deploy"))  # the client beside this file, whatever the working folder

CHECKPOINT = REPO / "pretrained" / "dlib_ppfr_fd" / "checkpoint.pt"
BUNDLE = REPO / "runs" / "cluster" / "bundle"
SCOPES = "verify,enroll,admin"


class ClusterError(RuntimeError):
    pass


def say(message: str) -> None:
    print(f"[cluster {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _cloud(*args: str) -> list[str]:
    """The ppfr-cloud command line (the installed package, whatever the PATH says)."""
    return [sys.executable, "-m", "ppfr.cloud.cli", *args]


# --- the pieces, each also a command ---------------------------------------------------------------------
def ensure_bundle(out: Path = BUNDLE) -> Path:
    """The shipped default model exported once (demo key; the threshold for one enrolled photo, as the
    client enrolls, from the run's metrics.json: 6,000 LFW pairs); reused while newer than the checkpoint.
    --eval-pairs 100 caps only the extra per-template-count calibration the export records (minutes on
    all of LFW; the server does not use it)."""
    manifest = out / "manifest.json"
    if manifest.is_file() and manifest.stat().st_mtime >= CHECKPOINT.stat().st_mtime:
        return out
    say(f"exporting the shipped default {CHECKPOINT.relative_to(REPO)} -> {out}")
    export = [sys.executable, "-m", "ppfr.export.cli", "--checkpoint", str(CHECKPOINT), "--out", str(out)]
    export += ["--demo-key", "--enrolled-photos", "1", "--eval-pairs", "100"]
    done = subprocess.run(export, capture_output=True, text=True)
    if done.returncode != 0:
        raise ClusterError(f"export failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return out


def create_key(db: str, name: str = "cluster") -> str:
    """A key with every scope in the deployment's key store (the database's table for PostgreSQL)."""
    cmd = _cloud("keys", "create", "--db", db, "--name", name, "--scopes", SCOPES, "--rate", "0")
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise ClusterError(f"ppfr-cloud keys create failed: {done.stderr.strip()}")
    return done.stdout.strip()


@contextlib.contextmanager
def environment(variables: dict):
    """os.environ with `variables` set (a child started inside inherits them), restored after."""
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# --- up: everything on this machine ----------------------------------------------------------------------
class Postgres:
    """PostgreSQL 16 + pgvector from pgserver in a temporary folder, with one fresh database."""

    def __enter__(self) -> str:
        import warnings

        import psycopg

        with warnings.catch_warnings():  # no XDG_RUNTIME_DIR in CI: pgserver falls back to /tmp, and says so
            warnings.simplefilter("ignore")
            import pgserver

        self.folder = Path(tempfile.mkdtemp(prefix="ppfr-cluster-pg-"))
        self.server = pgserver.get_server(self.folder / "data", cleanup_mode="stop")
        with psycopg.connect(self.server.get_uri(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE ppfr")
        return self.server.get_uri("ppfr")

    def __exit__(self, *exc) -> None:
        self.server.cleanup()
        shutil.rmtree(self.folder, ignore_errors=True)


def start_replica(bundle: Path, db: str, key: str, workdir: Path, name: str):
    """One replica as a container runs it: `ppfr-cloud serve` with every setting in PPFR_CLOUD_* variables
    (deploy/Dockerfile.server) and the API keys in the database. cloud/local.py manages the process (SERVING
    wait, SIGTERM stop, log file)."""

    class Replica(LocalServer):
        def command(self) -> list[str]:
            return _cloud("serve")

    port, http_port, metrics_port = free_port(), free_port(), free_port()
    settings = {"BUNDLE": bundle, "DB": db, "HOST": "127.0.0.1", "PORT": port, "THREADS": 1}
    settings.update(HTTP_PORT=http_port, METRICS_PORT=metrics_port)
    started = time.monotonic()
    log_path = workdir / f"replica_{name}.log"
    server = Replica(bundle, db=db, port=port, workdir=workdir, api_key=key, log_path=log_path)
    with environment({f"PPFR_CLOUD_{k}": str(v) for k, v in settings.items()}):
        server.start()
    server.http_url, server.metrics_url = f"http://127.0.0.1:{http_port}", f"http://127.0.0.1:{metrics_port}"
    say(
        f"replica {name} SERVING at {server.address} (HTTP/JSON :{http_port}, metrics :{metrics_port}) "
        f"in {time.monotonic() - started:.1f} s"
    )
    return server


def up(args) -> int:
    started = time.monotonic()
    workdir = REPO / "runs" / "cluster"
    workdir.mkdir(parents=True, exist_ok=True)
    for old_log in workdir.glob("replica_*.log"):
        old_log.unlink()
    bundle = ensure_bundle()
    replicas = []
    status = 1
    with Postgres() as db:
        say("PostgreSQL 16 + pgvector (pgserver) started, database ppfr")
        key_file = workdir / "api.key"  # as the compose file's key job writes it for the client
        try:
            key = write_key(db, key_file)
            for name in ("A", "B"):  # one after the other: the first creates the schema
                replicas.append(start_replica(bundle, db, key, workdir, name))
            status = run_client(args, bundle, key_file, replicas)
        finally:
            key_file.unlink(missing_ok=True)  # the database it opens is gone too
            codes = [r.stop() for r in replicas]
            say(f"replicas stopped (exit status {', '.join(str(c) for c in codes)}); stopping PostgreSQL")
            status = status or int(any(codes))
    say(f"{'OK' if status == 0 else 'FAILED'} in {time.monotonic() - started:.0f} s (logs in {workdir})")
    return status


def run_client(args, bundle: Path, key_file: Path, replicas) -> int:
    """`client` as its own process, as the edge container runs it."""
    cmd = [sys.executable, __file__, "client", "--bundle", str(bundle), "--data", str(args.data)]
    cmd += ["--key-file", str(key_file)]
    cmd += ["--targets", ",".join(r.address for r in replicas)]
    cmd += ["--http", ",".join(r.http_url for r in replicas)]
    cmd += ["--metrics", ",".join(r.metrics_url + "/metrics" for r in replicas)]
    return subprocess.run(cmd).returncode


# --- commands ------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="deploy/cluster.py", description=__doc__.split("\n\n")[0])
    commands = p.add_subparsers(dest="command")
    u = commands.add_parser("up", help="PostgreSQL + 2 replicas + the client, then stop (make cluster)")
    b = commands.add_parser("bundle", help="export the shipped default for the replicas (once)")
    b.add_argument("--out", type=Path, default=BUNDLE)
    k = commands.add_parser("key", help="create an API key with every scope; printed, or written to --out")
    k.add_argument("--db", default=os.environ.get("PPFR_CLOUD_DB"), help="the replicas' db ($PPFR_CLOUD_DB)")
    k.add_argument("--out", type=Path, help="file for the key (mode 0600); default stdout")
    from client import add_arguments

    add_arguments(commands.add_parser("client", help="enroll and verify real faces over every replica"))
    for sub in (p, u):
        sub.set_defaults(data=Path(os.environ.get("PPFR_DATA") or REPO.parent / "shared" / "data"))
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "bundle":
            print(ensure_bundle(args.out))
        elif args.command == "key":
            if not args.db:
                raise ClusterError("key needs --db or $PPFR_CLOUD_DB")
            key = write_key(args.db, args.out)
            if args.out is None:
                print(key)
        elif args.command == "client":
            from client import run

            return run(args)
        else:
            return up(args)
    except (ClusterError, LocalServerError) as err:
        say(f"error: {err}")
        return 1
    except KeyboardInterrupt:  # everything started is stopped on the way out
        return 130
    return 0


def write_key(db: str, out: Path | None) -> str:
    """A new key (create_key), also written to `out` (mode 0600) when given; returns it."""
    key = create_key(db)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # also when the file was there before
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
        say(f"API key written to {out}")
    return key


if __name__ == "__main__":
    sys.exit(main())
