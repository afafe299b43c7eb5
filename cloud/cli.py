"""`ppfr-cloud serve`: the verification server's command line. Bad input exits 2 with one clear line."""

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from ppfr.cloud.gallery import GalleryError
from ppfr.cloud.runtime import RUNTIME_KINDS, RuntimeUnavailable
from ppfr.cloud.server import ConfigError, ServerConfig, serve
from ppfr.protos.bundle import BundleError


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be between 0 and 65535, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ppfr-cloud", description="ppfr cloud verification server (gRPC)")
    commands = parser.add_subparsers(dest="command", required=True)
    s = commands.add_parser("serve", help="serve a bundle's recognizer over gRPC")
    s.add_argument("--bundle", type=Path, required=True, help="bundle folder written by ppfr-export")
    s.add_argument("--db", type=Path, required=True, help="SQLite gallery file (created if missing)")
    s.add_argument("--port", type=_port, default=50051, help="TCP port; 0 picks a free one (default 50051)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind; 0.0.0.0 for all (default 127.0.0.1)")
    s.add_argument(
        "--runtime", choices=RUNTIME_KINDS, default="auto", help="recognizer runtime (default auto)"
    )
    s.add_argument("--max-batch", type=int, default=8, help="dynamic batching: largest batch; 1 = off")
    s.add_argument(
        "--max-delay-ms",
        type=float,
        default=2.0,
        help="dynamic batching: longest wait to fill a batch; 0 = off",
    )
    s.add_argument("--threads", type=int, default=0, help="recognizer CPU threads; 0 = one per core")
    s.add_argument("--tls-cert", type=Path, help="server certificate chain (PEM); turns on TLS")
    s.add_argument("--tls-key", type=Path, help="server private key (PEM)")
    s.add_argument("--tls-client-ca", type=Path, help="CA (PEM) for client certificates; turns on mutual TLS")
    s.add_argument(
        "--max-message-bytes",
        type=int,
        help="largest gRPC message; default fits the bundle's tensor (>= 4 MiB)",
    )
    s.add_argument("--grace-s", type=float, default=5.0, help="seconds to drain in-flight calls on shutdown")
    s.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = ServerConfig(
        bundle=args.bundle,
        db=args.db,
        port=args.port,
        host=args.host,
        runtime=args.runtime,
        max_batch=args.max_batch,
        max_delay_ms=args.max_delay_ms,
        threads=args.threads,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        max_message_bytes=args.max_message_bytes,
        grace_s=args.grace_s,
    )
    try:
        asyncio.run(serve(config))
    except (ConfigError, BundleError, GalleryError, RuntimeUnavailable) as err:
        print(f"ppfr-cloud: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
