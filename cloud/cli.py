"""`ppfr-cloud serve` (the verification server) and `ppfr-cloud keys create|list|revoke` (its API keys).
Bad input exits 2 with one clear line."""

import argparse
import asyncio
import logging
import sys
import time
from pathlib import Path

from ppfr.cloud.auth import DEFAULT_RATE, SCOPES, KeyStoreError, open_key_store, parse_scopes
from ppfr.cloud.gallery import GalleryError, db_arg
from ppfr.cloud.runtime import PRECISIONS, RUNTIME_KINDS, RuntimeUnavailable
from ppfr.cloud.server import ConfigError, ServerConfig, serve
from ppfr.cloud.template_key import TemplateKeyError, file_is_shared, load_secret
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
    s.add_argument(
        "--db",
        type=db_arg,
        required=True,
        help="SQLite gallery file (created if missing), or postgresql://... shared by replicas",
    )
    s.add_argument("--port", type=_port, default=50051, help="TCP port; 0 picks a free one (default 50051)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind; 0.0.0.0 for all (default 127.0.0.1)")
    s.add_argument(
        "--runtime", choices=RUNTIME_KINDS, default="auto", help="recognizer runtime (default auto)"
    )
    s.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="recognizer precision (default fp32); int8 serves the bundle's recognizer.int8.onnx on ONNX "
        "Runtime (make it with python -m ppfr.export.quantize; figures in docs/benchmarks.md)",
    )
    s.add_argument("--max-batch", type=int, default=8, help="dynamic batching: largest batch; 1 = off")
    s.add_argument(
        "--max-delay-ms",
        type=float,
        default=2.0,
        help="dynamic batching: longest wait to fill a batch; 0 = off",
    )
    s.add_argument("--threads", type=int, default=0, help="recognizer CPU threads; 0 = one per core")
    s.add_argument(
        "--engines",
        type=int,
        default=1,
        help="recognizer calls run at once, on one shared session (default 1); for throughput on N cores "
        "use --engines N --threads 1 (docs/benchmarks.md)",
    )
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
    s.add_argument("--keys", type=Path, help="API key file (default: <db>.keys); see `ppfr-cloud keys`")
    s.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="accept calls without an API key (local experiments only: anyone may change the gallery)",
    )
    s.add_argument(
        "--max-concurrent-calls",
        type=int,
        default=256,
        help="calls in progress at once; more are answered RESOURCE_EXHAUSTED (default 256)",
    )
    s.add_argument(
        "--metrics-port", type=_port, help="serve Prometheus /metrics on this HTTP port (default off)"
    )
    s.add_argument("--metrics-host", default="127.0.0.1", help="address for /metrics (default 127.0.0.1)")
    s.add_argument(
        "--http-port",
        type=_port,
        help="also serve the API as HTTP/JSON on this port, same keys and limits (default off)",
    )
    s.add_argument(
        "--template-key-file",
        type=Path,
        help="renewable templates: file holding the deployment's template secret (or set "
        "PPFR_TEMPLATE_KEY); stored and matched templates are Q e for the secret's orthogonal Q. "
        "Keep it outside the gallery database; the gallery records only its id",
    )

    k = commands.add_parser("keys", help="create, list and revoke API keys")
    actions = k.add_subparsers(dest="action", required=True)
    for name, text in (
        ("create", "create a key and print it once on stdout"),
        ("list", "list the keys (never the secrets)"),
        ("revoke", "revoke a key: it stops working at its next call"),
    ):
        a = actions.add_parser(name, help=text, description=text)
        where = a.add_mutually_exclusive_group(required=True)
        where.add_argument("--keys", type=Path, help="API key file (the server's --keys)")
        where.add_argument(
            "--db", help="the server's --db: keys in <db>.keys for SQLite, in the database for postgresql://"
        )
        if name == "create":
            a.add_argument("--name", required=True, help="who or what uses the key, e.g. door-3")
            a.add_argument(
                "--scopes",
                default="verify",
                help=f"comma-separated, from {','.join(SCOPES)} (default verify)",
            )
            a.add_argument(
                "--rate",
                type=float,
                default=DEFAULT_RATE,
                help=f"calls per second this key may make; 0 = unlimited (default {DEFAULT_RATE:g})",
            )
        if name == "revoke":
            a.add_argument("key_id", help="the key id shown by `keys list`")
    return parser


def _keys(args) -> int:
    store = open_key_store(args.keys, args.db, create=args.action == "create")
    path = store.path
    try:
        if args.action == "create":
            record, secret = store.create(args.name, parse_scopes(args.scopes), args.rate)
            print(secret)  # stdout holds the key alone, so `KEY=$(ppfr-cloud keys create ...)` works
            print(
                f"created key {record.key_id} ({record.name}, scopes {','.join(sorted(record.scopes))}, "
                f"rate {record.rate:g}/s) in {path}; it is shown only this once",
                file=sys.stderr,
            )
        elif args.action == "list":
            print(f"{'KEY_ID':<12}  {'NAME':<20}  {'SCOPES':<19}  {'RATE/S':>6}  {'CREATED':<19}  STATUS")
            for r in store.list_keys():
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.create_time))
                status = "active" if r.active else "revoked"
                scopes = ",".join(sorted(r.scopes))
                print(f"{r.key_id:<12}  {r.name:<20}  {scopes:<19}  {r.rate:>6g}  {when:<19}  {status}")
        elif not store.revoke(args.key_id):
            raise KeyStoreError(f"no active key {args.key_id!r} in {path} (see `ppfr-cloud keys list`)")
        else:
            print(f"revoked key {args.key_id}", file=sys.stderr)
    finally:
        store.close()
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "keys":
        try:
            return _keys(args)
        except KeyStoreError as err:
            print(f"ppfr-cloud: error: {err}", file=sys.stderr)
            return 2
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        template_secret = load_secret(args.template_key_file)
    except TemplateKeyError as err:
        print(f"ppfr-cloud: error: {err}", file=sys.stderr)
        return 2
    if args.template_key_file and file_is_shared(args.template_key_file):
        logging.getLogger("ppfr.cloud").warning(
            "template secret file %s is readable by other users (chmod 600 it)", args.template_key_file
        )
    config = ServerConfig(
        bundle=args.bundle,
        db=args.db,
        port=args.port,
        host=args.host,
        runtime=args.runtime,
        precision=args.precision,
        max_batch=args.max_batch,
        max_delay_ms=args.max_delay_ms,
        threads=args.threads,
        engines=args.engines,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        max_message_bytes=args.max_message_bytes,
        grace_s=args.grace_s,
        keys=args.keys,
        insecure_no_auth=args.insecure_no_auth,
        max_concurrent_calls=args.max_concurrent_calls,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        http_port=args.http_port,
        template_secret=template_secret,
    )
    try:
        asyncio.run(serve(config))
    except (ConfigError, BundleError, GalleryError, RuntimeUnavailable, KeyStoreError) as err:
        print(f"ppfr-cloud: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
