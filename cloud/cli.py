"""`ppfr-cloud serve` (the verification server), `ppfr-cloud keys create|list|revoke` (its API keys) and the
gallery's data commands (backup, restore, rotate-template-key, audit: cloud/data_commands.py).
Bad input exits 2 with one clear line."""

import argparse
import asyncio
import logging
import sys
import time
from pathlib import Path

from ppfr.bundle import BundleError
from ppfr.bundle.thresholds import ThresholdError
from ppfr.cloud import config
from ppfr.cloud.auth import DEFAULT_RATE, SCOPES, KeyStoreError, open_key_store, parse_scopes
from ppfr.cloud.data_commands import DATA_COMMANDS, add_data_commands
from ppfr.cloud.gallery import GalleryError, db_arg
from ppfr.cloud.logs import setup_logging
from ppfr.cloud.runtime import PRECISIONS, RUNTIME_KINDS, RuntimeUnavailable
from ppfr.cloud.server import ConfigError, ServerConfig, serve
from ppfr.cloud.template_key import TemplateKeyError, file_is_shared, load_secret


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be between 0 and 65535, got {value}")
    return value


def _default(name: str):
    """A setting's default: ServerConfig is the one source of defaults (flags, TOML and environment)."""
    return ServerConfig.__dataclass_fields__[name].default


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ppfr-cloud", description="ppfr cloud verification server (gRPC)")
    commands = parser.add_subparsers(dest="command", required=True)
    s = commands.add_parser(
        "serve",
        help="serve a bundle's recognizer over gRPC",
        description="Every setting may also come from --config FILE (TOML) or $PPFR_CLOUD_<SETTING>; flags "
        "win over the environment, which wins over the file (docs/cloud.md, Configuration).",
    )
    s.add_argument("--config", type=Path, help="TOML file of settings (or $PPFR_CLOUD_CONFIG)")
    _serve_engine_args(s)
    _serve_access_args(s)
    # Defaults stay ServerConfig's: None marks a flag not given, so TOML and environment can set it.
    s.set_defaults(**{a.dest: None for a in s._actions if a.dest != "help"})
    _keys_parser(commands)
    add_data_commands(commands)
    return parser


def _serve_engine_args(s) -> None:
    s.add_argument("--bundle", type=Path, help="bundle folder written by ppfr-export (required)")
    s.add_argument(
        "--db",
        type=db_arg,
        help="SQLite gallery file (created if missing), or postgresql://... shared by replicas (required; "
        "keep a password out of argv: $PGPASSWORD, ~/.pgpass, $PPFR_CLOUD_DB or --config)",
    )
    s.add_argument("--port", type=_port, help=f"TCP port; 0 picks a free one (default {_default('port')})")
    s.add_argument("--host", help=f"address to bind; 0.0.0.0 for all (default {_default('host')})")
    s.add_argument(
        "--runtime", choices=RUNTIME_KINDS, help=f"recognizer runtime (default {_default('runtime')})"
    )
    s.add_argument(
        "--precision",
        choices=PRECISIONS,
        help=f"recognizer precision (default {_default('precision')}); int8 serves the bundle's "
        "recognizer.int8.onnx on ONNX Runtime (python -m ppfr.export.quantize; docs/benchmarks.md)",
    )
    s.add_argument("--max-batch", type=int, help="dynamic batching: largest batch; 1 = off")
    s.add_argument(
        "--max-delay-ms", type=float, help="dynamic batching: longest wait to fill a batch; 0 = off"
    )
    s.add_argument("--threads", type=int, help="recognizer CPU threads; 0 = one per core")
    s.add_argument(
        "--engines",
        type=int,
        help=f"recognizer calls run at once, on one shared session (default {_default('engines')}); for "
        "throughput on N cores use --engines N --threads 1 (docs/benchmarks.md)",
    )
    s.add_argument(
        "--max-message-bytes", type=int, help="largest gRPC message; default fits the bundle's tensor"
    )
    s.add_argument(
        "--grace-s",
        type=float,
        help=f"on shutdown, seconds for calls in progress to finish (default {_default('grace_s'):g}; "
        "Enrolls are waited for longer)",
    )
    s.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    s.add_argument("--log-format", choices=("text", "json"), help="operational log lines (default text)")
    s.add_argument(
        "--max-concurrent-calls",
        type=int,
        help="calls in progress at once; more are answered RESOURCE_EXHAUSTED "
        f"(default {_default('max_concurrent_calls')})",
    )
    s.add_argument(
        "--metrics-port", type=_port, help="serve Prometheus /metrics on this HTTP port (default off)"
    )
    s.add_argument("--metrics-host", help=f"address for /metrics (default {_default('metrics_host')})")
    s.add_argument(
        "--http-port",
        type=_port,
        help="also serve the API as HTTP/JSON on this port, same keys and limits (default off)",
    )


def _serve_access_args(s) -> None:
    s.add_argument("--tls-cert", type=Path, help="server certificate chain (PEM); turns on TLS")
    s.add_argument("--tls-key", type=Path, help="server private key (PEM)")
    s.add_argument("--tls-client-ca", type=Path, help="CA (PEM) for client certificates; turns on mutual TLS")
    s.add_argument(
        "--keys",
        type=Path,
        help="API key file (default: <db>.keys; a postgresql:// gallery keeps them inside)",
    )
    s.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="accept calls without an API key (local experiments only: anyone may change the gallery)",
    )
    s.add_argument(
        "--max-pending-calls",
        type=int,
        help="calls held before the server picks them up, request bytes included; beyond it a burst's excess "
        f"is CANCELLED (default {_default('max_pending_calls')}; it bounds a flood's memory)",
    )
    s.add_argument(
        "--max-failed-verifies",
        type=int,
        help=f"failed Verifies per subject (verify keys) that lock it out for --failed-window-s (default "
        f"{_default('max_failed_verifies')}; 0 = no limit)",
    )
    s.add_argument("--failed-window-s", type=float, help=f"(default {_default('failed_window_s'):g})")
    s.add_argument(
        "--far",
        type=float,
        help="false accept rate of the thresholds applied: the bundle's thresholds by template count at this "
        "FAR (exported at 1e-2, 1e-3, 1e-4; `ppfr-export calibrate --far` sets others; default: the FAR of "
        "the bundle's threshold)",
    )
    s.add_argument(
        "--verify-scores",
        action="store_true",
        help="show Verify's score to verify keys too (default: admin only)",
    )
    s.add_argument(
        "--template-key-file",
        type=Path,
        help="renewable templates: file holding the deployment's template secret (or set "
        "PPFR_TEMPLATE_KEY); stored and matched templates are Q e for the secret's orthogonal Q. "
        "Keep it outside the gallery database; the gallery records only its id",
    )
    s.add_argument(
        "--sealed",
        choices=("plain", "sealed-gallery", "sealed-edge"),
        help="sealed templates: the gallery stores CKKS ciphertexts under the tenant's key and answers with "
        "encrypted scores (docs/cloud.md, 'Sealed templates'; default plain)",
    )
    s.add_argument(
        "--tenant-context",
        type=Path,
        help="with --sealed: the tenant's public context (tenant.public of `ppfr-edge tenant keygen`)",
    )


def _keys_parser(commands) -> None:
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


def serve_config(args, environ=None) -> ServerConfig:
    """The server's settings: ServerConfig defaults < --config TOML < $PPFR_CLOUD_* < flags
    (cloud/config.py)."""
    settings = config.resolve(vars(args), args.config, environ)
    return config.build(settings, load_secret(settings.get("template_key_file"), environ))


def _serve(args) -> int:
    server_config = serve_config(args)
    setup_logging(server_config.log_level, server_config.log_format)
    secret_file = config.resolve(vars(args), args.config).get("template_key_file")
    if secret_file and file_is_shared(secret_file):
        logging.getLogger("ppfr.cloud").warning(
            "template secret file %s is readable by other users (chmod 600 it)", secret_file
        )
    asyncio.run(serve(server_config))
    return 0


USER_ERRORS = (ConfigError, BundleError, GalleryError, RuntimeUnavailable, KeyStoreError, TemplateKeyError)
USER_ERRORS += (ThresholdError,)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    command = {"keys": _keys, "serve": _serve, **DATA_COMMANDS}[args.command]
    try:
        return command(args)
    except USER_ERRORS as err:
        print(f"ppfr-cloud: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
