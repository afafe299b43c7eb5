"""A local PostgreSQL 16 with pgvector for the shared gallery, from PyPI pgserver (no root, no system
install; as root it runs the server as a `pgserver` system user). For trying replicas on one machine:

    python -m ppfr.cloud.pglocal runs/postgres        # or: make postgres
    ppfr-cloud serve --db 'postgresql://...' --keys runs/keys --port 50051 ...   # the URL it prints
    ppfr-cloud serve --db 'postgresql://...' --keys runs/keys --port 50052 ...

It listens on a Unix socket only (nothing on the network) and stops on Ctrl-C / SIGTERM. Production uses a
real PostgreSQL server with `CREATE EXTENSION vector` (docs/cloud.md).
"""

import argparse
import signal
import sys
import warnings
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ppfr.cloud.pglocal", description=__doc__.split("\n\n")[0])
    p.add_argument("data", nargs="?", default="runs/postgres", help="data folder (default runs/postgres)")
    p.add_argument("--database", default="ppfr", help="database to create and print (default ppfr)")
    args = p.parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import pgserver
        except ImportError:
            print("pglocal: needs pgserver (pip install pgserver==0.1.4, in the dev extra)", file=sys.stderr)
            return 2
    import psycopg

    data = Path(args.data).resolve()
    data.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(data, cleanup_mode="stop")
    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (args.database,)).fetchone():
            conn.execute(f'CREATE DATABASE "{args.database}"')
    print(server.get_uri(args.database), flush=True)
    print(f"PostgreSQL + pgvector running from {data}; Ctrl-C stops it", file=sys.stderr, flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        server.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
