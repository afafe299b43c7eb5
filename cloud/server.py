"""Assembles and runs the gRPC server: bundle + runtime + batcher + gallery behind FaceVerification, the
standard health and reflection services, optional TLS / mutual TLS, graceful shutdown.

For tests and benchmarks:
    async:  running = await start(ServerConfig(bundle, db, port=0)); running.port; await running.stop()
    sync:   with ServerThread(ServerConfig(bundle, db, port=0)) as server: server.address
"""

import asyncio
import ipaddress
import logging
import signal
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from ppfr.bundle import BundleError, numpy_dtype, read_manifest
from ppfr.cloud import http_gateway
from ppfr.cloud.auth import FailedAttempts, open_key_store, shared_file_warning
from ppfr.cloud.batcher import DynamicBatcher
from ppfr.cloud.gallery import db_label, open_gallery
from ppfr.cloud.health import GalleryWatch
from ppfr.cloud.interceptor import STREAMS_PER_CONNECTION, CallGate
from ppfr.cloud.metrics import Metrics
from ppfr.cloud.runtime import create_runtime
from ppfr.cloud.service import FaceVerificationService
from ppfr.cloud.template_key import SecretSource
from ppfr.protos import verification_pb2, verification_pb2_grpc

log = logging.getLogger("ppfr.cloud")

SERVICE_NAME = verification_pb2.DESCRIPTOR.services_by_name["FaceVerification"].full_name
MIN_MESSAGE_BYTES = 4 * 1024 * 1024
# Calls gRPC holds before the application picks them up. Its default (1,000) cancels the rest of a burst
# with a bare CANCELLED; this high, every call reaches the gate and beyond --max-concurrent-calls gets a
# clear RESOURCE_EXHAUSTED. HTTP/2 flow control still bounds the bytes they hold.
MAX_PENDING_CALLS = 20_000  # the default of ServerConfig.max_pending_calls
START_LIMIT_S = 600.0  # ServerThread: a start that takes longer raises (a hang fails, not blocks)
ENROLL_DRAIN_S = 60.0  # on shutdown, Enrolls still running after the grace get this much longer


class ConfigError(ValueError):
    """Server settings that cannot work (missing bundle, bad port, unreadable certificate)."""


@dataclass
class ServerConfig:
    bundle: Path
    db: Path | str  # a SQLite file, or a postgresql:// URL (cloud/gallery.py)
    port: int = 50051
    host: str = "127.0.0.1"
    runtime: str = "auto"
    # Recognizer precision: fp32, or int8 (the bundle's recognizer.int8.onnx on ONNX Runtime).
    precision: str = "fp32"
    # Dynamic batching: gather up to max_batch requests or max_delay_ms; max_batch<=1 or delay 0 = off.
    max_batch: int = 8
    max_delay_ms: float = 2.0
    # Recognizer intra-op threads (ONNX Runtime); 0 = one per physical core.
    threads: int = 0
    # Recognizer calls run at once, each on its own engine thread (one shared ONNX Runtime session);
    # `engines=N, threads=1` uses N cores with one call per core (docs/benchmarks.md, ONNX Runtime settings).
    engines: int = 1
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # CA that signs client certificates; setting it turns on mutual TLS (clients must present one).
    tls_client_ca: Path | None = None
    # Largest request/response accepted; None = enough for the bundle's float32 tensor (at least 4 MiB).
    max_message_bytes: int | None = None
    # Shutdown: calls in progress get this long to finish (Enrolls in progress are waited for, up to
    # ENROLL_DRAIN_S more); new calls are refused UNAVAILABLE meanwhile.
    grace_s: float = 30.0
    # API keys (see cloud/auth.py): a key file (default `<db>.keys` beside a SQLite gallery; a PostgreSQL
    # gallery keeps them in its database); authentication is on unless insecure_no_auth (experiments only).
    keys: Path | None = None
    insecure_no_auth: bool = False
    # Failed Verifies per subject (verify keys): this many within failed_window_s lock the subject out
    # (answered as a non-match) until they age out; 0 = no limit. Per replica.
    max_failed_verifies: int = 10
    failed_window_s: float = 300.0
    # Show Verify's score to verify keys too (it helps an attacker hill-climb; admin keys always see it).
    verify_scores: bool = False
    # False accept rate of the thresholds applied (the bundle's per-template-count thresholds at that FAR,
    # ppfr.bundle.thresholds); None = the FAR of the bundle's threshold.
    far: float | None = None
    # Operational log: level and format (text, or json: one object per line).
    log_level: str = "INFO"
    log_format: str = "text"
    # FaceVerification calls in progress at once; beyond it calls are answered RESOURCE_EXHAUSTED.
    max_concurrent_calls: int = 256
    # Calls gRPC holds (with their request bytes) before the gate sees them; beyond it a burst's excess is
    # CANCELLED. It bounds the memory a flood can take: about this many requests (docs/cloud.md).
    max_pending_calls: int = MAX_PENDING_CALLS
    # Prometheus /metrics on its own HTTP port; None = off, 0 = a free port (RunningServer.metrics_port).
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    # HTTP/JSON beside gRPC on its own port (cloud/http_gateway.py): same keys, limits and metrics;
    # None = off, 0 = a free port (RunningServer.http.port).
    http_port: int | None = None
    # Renewable templates: the deployment secret (cloud/template_key.py) read by the CLI from a file or
    # $PPFR_TEMPLATE_KEY; None stores embeddings as they are. Its repr shows the secret's id only.
    template_secret: SecretSource | None = None
    # Sealed templates (cloud/sealed.py, docs/cloud.md): "plain", or "sealed-gallery" / "sealed-edge" with
    # the tenant's public evaluation context (a file from `ppfr-edge tenant keygen`); SQLite or PostgreSQL.
    sealed: str = "plain"
    tenant_context: Path | None = None


def _lower_bounds(config: ServerConfig) -> tuple:
    """(flag, value, least allowed) of every setting with a lower bound."""
    return (
        ("max-batch", config.max_batch, 1),
        ("max-delay-ms", config.max_delay_ms, 0),
        ("threads", config.threads, 0),
        ("engines", config.engines, 1),
        ("grace-s", config.grace_s, 0),
        ("max-pending-calls", config.max_pending_calls, 1),
        ("max-concurrent-calls", config.max_concurrent_calls, 1),
    )


def check_config(config: ServerConfig) -> None:
    """Raises ConfigError with a message a user can act on."""
    if not (0 <= int(config.port) <= 65535):
        raise ConfigError(f"--port must be between 0 and 65535, got {config.port}")
    if not Path(config.bundle).is_dir():
        raise ConfigError(f"bundle folder {config.bundle} does not exist (run `make export` first)")
    for flag, value, least in _lower_bounds(config):
        if value < least:
            raise ConfigError(f"--{flag} must be >= {least}, got {value}")
    if config.max_failed_verifies < 0 or config.failed_window_s <= 0:
        raise ConfigError("--max-failed-verifies must be >= 0 and --failed-window-s > 0")
    if config.metrics_port is not None and not (0 <= int(config.metrics_port) <= 65535):
        raise ConfigError(f"--metrics-port must be between 0 and 65535, got {config.metrics_port}")
    if config.max_message_bytes is not None and config.max_message_bytes < 1024:
        raise ConfigError(f"--max-message-bytes must be at least 1024, got {config.max_message_bytes}")
    if config.log_format not in ("text", "json"):
        raise ConfigError(f"--log-format must be text or json, got {config.log_format!r}")
    _check_tls(config)


def _check_tls(config: ServerConfig) -> None:
    if bool(config.tls_cert) != bool(config.tls_key):
        raise ConfigError("TLS needs both --tls-cert and --tls-key")
    if config.tls_client_ca and not config.tls_cert:
        raise ConfigError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key as well")
    for flag, path in (
        ("--tls-cert", config.tls_cert),
        ("--tls-key", config.tls_key),
        ("--tls-client-ca", config.tls_client_ca),
    ):
        if path:
            try:
                Path(path).read_bytes()
            except OSError as err:
                raise ConfigError(f"{flag} {path}: cannot read ({err.strerror})") from None
    if config.tls_cert:
        try:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(config.tls_cert), str(config.tls_key))
            if config.tls_client_ca:
                context.load_verify_locations(str(config.tls_client_ca))
        except (ssl.SSLError, ValueError) as err:
            raise ConfigError(f"TLS files are not a valid PEM certificate/key pair or CA: {err}") from None


def server_credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    if not config.tls_cert:
        return None
    key, cert = Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes()
    ca = Path(config.tls_client_ca).read_bytes() if config.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )


SEALED_SEND_BYTES = 64 * 1024 * 1024  # what ppfr-edge receives (edge/client.py MAX_MESSAGE)


def message_limit(config: ServerConfig, manifest) -> int:
    if config.max_message_bytes:
        return int(config.max_message_bytes)
    dims = [max(1, int(d)) for d in manifest.protected_tensor.shape[1:]]
    n = 1
    for d in dims:
        n *= d
    return max(MIN_MESSAGE_BYTES, n * 4 + 64 * 1024)


def _format_host(host: str) -> str:
    try:
        return f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        return host


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


class RunningServer:
    """A started server: its bound port and address, and a graceful stop."""

    def __init__(
        self, server, service, batcher, gallery, health_servicer, host, port, grace_s, gate, metrics
    ):
        self.server = server
        self.gate = gate  # the CallGate: key store, limits
        self.metrics = metrics
        self.metrics_port: int | None = None
        self.service = service
        self.batcher = batcher
        self.gallery = gallery
        self.health = health_servicer
        self.host = host
        self.port = port
        self.grace_s = grace_s
        self._stopped = False
        self.watch = None  # the GalleryWatch (cloud/health.py)
        self.http = None  # the HTTP/JSON gateway, when config.http_port is set

    @property
    def address(self) -> str:
        return f"{_format_host(self.host)}:{self.port}"

    async def stop(self, grace: float | None = None) -> None:
        """Reports NOT_SERVING, refuses new calls (UNAVAILABLE), lets calls in progress finish (up to grace
        seconds; Enrolls up to ENROLL_DRAIN_S longer), then closes the engine and the database."""
        if self._stopped:
            return
        self._stopped = True
        self.gate.draining = True
        await self.health.enter_graceful_shutdown()
        if self.watch is not None:
            await self.watch.stop()
        if self.http is not None:  # no new HTTP/JSON connections; its calls in flight drain below
            await self.http.stop()
        await self._drain(self.grace_s if grace is None else grace)
        await self.server.stop(1.0)
        await self.batcher.close()
        self.service.close()
        self.batcher.runtime.close()
        self.gallery.close()
        self.metrics.stop()
        if self.gate.keys is not None:
            self.gate.keys.close()
        log.info("ppfr-cloud stopped")

    async def _drain(self, grace: float) -> None:
        deadline = time.monotonic() + grace
        while self.gate.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        deadline += ENROLL_DRAIN_S
        while self.gate.active["Enroll"] and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if self.gate.in_flight:
            log.warning(
                "shutdown: %d calls still in progress after the grace are cancelled", self.gate.in_flight
            )

    async def wait(self) -> None:
        await self.server.wait_for_termination()


def _listen(config: ServerConfig, manifest, runtime, gallery, gate, transform=None):
    """The grpc.aio server with every service added and its port bound (not yet started)."""
    batcher = DynamicBatcher(runtime, config.max_batch, config.max_delay_ms, config.engines)
    kind, extra = _service_kind(config)
    service = kind(
        manifest,
        manifest.name or Path(config.bundle).name,
        batcher,
        gallery,
        transform,
        metrics=gate.metrics,
        failed_attempts=FailedAttempts(config.max_failed_verifies, config.failed_window_s),
        verify_scores=config.verify_scores,
        far=config.far,
        **extra,
    )
    gate.metrics.watch(batcher, gallery)

    limit = message_limit(config, manifest)
    server = grpc.aio.server(
        interceptors=[gate],
        options=[
            ("grpc.max_receive_message_length", limit),
            # a sealed Identify answer carries a ciphertext per block and per pooled subject (~235 KB each)
            ("grpc.max_send_message_length", limit if config.sealed == "plain" else SEALED_SEND_BYTES),
            ("grpc.so_reuseport", 0),
            ("grpc.server.max_pending_requests", config.max_pending_calls),
            ("grpc.server.max_pending_requests_hard_limit", config.max_pending_calls),
            # Calls in flight per connection (HTTP/2 streams): a client's burst beyond waits in the
            # client, so one connection's flood holds at most this many requests here.
            ("grpc.max_concurrent_streams", STREAMS_PER_CONNECTION),
            # Count open streams only (HTTP/2's rule): gRPC's default also counts streams whose calls
            # finished but are not yet freed, and refuses new ones (UNAVAILABLE) in a client's burst.
            ("grpc.http.overload_protection", 0),
        ],
    )
    verification_pb2_grpc.add_FaceVerificationServicer_to_server(service, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    address = f"{_format_host(config.host)}:{config.port}"
    credentials = server_credentials(config)
    try:
        port = (
            server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
        )
    except RuntimeError as err:
        raise ConfigError(f"cannot listen on {address}: {err}") from None
    if port == 0:
        raise ConfigError(f"cannot listen on {address} (port in use or address not available)")
    return server, service, batcher, health_servicer, port, credentials


def _service_kind(config: ServerConfig):
    """The plain service, or the sealed one over its store; a plain server refuses a sealed gallery."""
    from ppfr.cloud import sealed

    if config.sealed == "plain":
        sealed.check_plain_gallery(config.db)
        return FaceVerificationService, {}
    from ppfr.cloud.sealed_service import SealedVerificationService

    return SealedVerificationService, {"sealed": sealed.open_sealed(config)}


async def start(config: ServerConfig) -> RunningServer:
    """Builds everything and starts listening; port 0 picks a free port (see RunningServer.port)."""
    check_config(config)
    bundle = Path(config.bundle)
    manifest = _read_bundle(bundle)
    _warn_if_gallery_is_readable(config.db)
    transform, gallery = _open_gallery(config, manifest)
    keys = runtime = None
    metrics = Metrics()
    try:
        keys = None if config.insecure_no_auth else open_key_store(config.keys, config.db, watch=True)
        gate = CallGate(keys, metrics, config.max_concurrent_calls)
        runtime = create_runtime(
            config.runtime,
            bundle,
            threads=config.threads,
            max_batch=max(config.max_batch, 1),
            precision=config.precision,
        )
        server, service, batcher, health_servicer, port, credentials = _listen(
            config, manifest, runtime, gallery, gate, transform
        )
        metrics_port = None if config.metrics_port is None else _serve_metrics(config, gate.metrics)
    except BaseException:
        metrics.stop()
        gallery.close()
        if keys is not None:
            keys.close()
        if runtime is not None:
            runtime.close()
        raise
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    watch = GalleryWatch(gallery, health_servicer, ("", SERVICE_NAME), gate.metrics)
    service.watch = watch
    watch.start()

    running = RunningServer(
        server,
        service,
        batcher,
        gallery,
        health_servicer,
        config.host,
        port,
        config.grace_s,
        gate,
        gate.metrics,
    )
    running.metrics_port = metrics_port
    running.watch = watch
    if config.http_port is not None:  # HTTP/JSON beside gRPC: the same gate and servicer
        await http_gateway.attach(running, config, message_limit(config, manifest))
    _log_serving(config, manifest, running, credentials, transform)
    _log_access(config, keys, running.address)
    if metrics_port is not None:
        log.info("metrics at http://%s:%d/metrics", _format_host(config.metrics_host), metrics_port)
    return running


def _read_bundle(bundle: Path):
    manifest = read_manifest(bundle)
    if not manifest.frontend_id:
        raise BundleError(f"{bundle}/manifest.json has no frontend_id")
    numpy_dtype(manifest.protected_tensor.data_type)
    if len(manifest.protected_tensor.shape) < 2 or manifest.embedding_size <= 0:
        raise BundleError(f"{bundle}/manifest.json lacks the protected tensor shape or embedding size")
    return manifest


def _log_serving(config: ServerConfig, manifest, running: RunningServer, credentials, transform) -> None:
    batcher, gallery = running.batcher, running.gallery
    tls = "mtls" if config.tls_client_ca else "tls" if credentials else "off"
    batching = (
        f"max_batch={batcher.max_batch} max_delay_ms={config.max_delay_ms:g}" if batcher.enabled else "off"
    )
    log.info(
        "ppfr-cloud serving bundle=%s method=%s frontend_id=%s runtime=%s threads=%d engines=%d address=%s "
        "tls=%s batching=%s gallery=%s (%d subjects, %d templates)",
        config.bundle,
        manifest.method,
        manifest.frontend_id[:12],
        batcher.runtime.name,
        config.threads,
        batcher.engines,
        running.address,
        tls,
        batching,
        db_label(config.db),
        *gallery.sizes(),
    )
    if transform is not None:
        log.info(
            "templates are transformed by the template secret id=%s before storage and matching",
            transform.key_id,
        )
    if credentials is None and not _is_loopback(config.host):
        log.warning("serving without TLS on %s: protected tensors cross the network unencrypted", config.host)


def _log_access(config: ServerConfig, keys, address: str) -> None:
    if keys is None:  # at the logger's own level: shown however quiet the log is (--log-level ERROR)
        log.log(
            max(logging.WARNING, log.getEffectiveLevel()),
            "AUTHENTICATION IS OFF (--insecure-no-auth): anyone who can reach %s can enroll, identify, "
            "list and delete subjects. Use this for local experiments only.",
            address,
        )
        return
    active = sum(k.active for k in keys.list_keys())
    log.info("API keys required (keys in %s, %d active keys)", keys.path, active)
    if isinstance(keys.path, Path) and (warning := shared_file_warning(keys.path)):
        log.warning(warning)
    if not active:
        log.warning(
            "no active API key: every call will be refused; create one with "
            "`ppfr-cloud keys create --db DB --name NAME --scopes verify,enroll` (--keys FILE for a key file)"
        )


def _open_gallery(config: ServerConfig, manifest):
    """(template transform or None, gallery). The gallery records the template secret's id ("none"
    without one), so it refuses a server started with another secret (or none) than it was enrolled
    under."""
    transform = config.template_secret.transform(manifest.embedding_size) if config.template_secret else None
    key = f"tk={transform.key_id[:12]}" if transform else "none"
    return transform, open_gallery(
        config.db, manifest.embedding_size, manifest.recognizer.sha256, template_key=key
    )


def _warn_if_gallery_is_readable(db) -> None:
    """Templates are biometric data: the gallery creates its file 0600; an older one others can read gets
    a warning (the operator decides, the server does not change it)."""
    if "://" not in str(db) and Path(db).exists() and Path(db).stat().st_mode & 0o077:
        log.warning("gallery file %s is readable by other users (chmod 600 it)", db)


def _serve_metrics(config: ServerConfig, metrics: Metrics) -> int:
    try:
        return metrics.serve(config.metrics_host, int(config.metrics_port))
    except OSError as err:
        raise ConfigError(
            f"cannot serve metrics on {config.metrics_host}:{config.metrics_port}: {err.strerror}"
        ) from None


async def serve(config: ServerConfig) -> None:
    """Runs until SIGINT or SIGTERM, then drains in-flight calls and exits."""
    running = await start(config)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread / not supported
            pass
    await stop.wait()
    log.info("shutting down: draining in-flight calls (up to %gs)", config.grace_s)
    await running.stop()


class ServerThread:
    """The server on its own event loop in a background thread, for synchronous callers (tests, bench)."""

    def __init__(self, config: ServerConfig):
        self.config = config
        self.running: RunningServer | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="ppfr-cloud", daemon=True)

    def start(self) -> "ServerThread":
        self._thread.start()
        try:
            starting = asyncio.run_coroutine_threadsafe(start(self.config), self._loop)
            self.running = starting.result(timeout=START_LIMIT_S)  # TimeoutError past it
        except BaseException:
            self._shutdown_loop()
            raise
        return self

    @property
    def port(self) -> int:
        return self.running.port

    @property
    def address(self) -> str:
        return self.running.address

    def stop(self, grace: float | None = None) -> None:
        """Stops the server (RunningServer.stop); a stop that outlasts its drain by a minute raises
        TimeoutError instead of blocking its caller (a test, the bench) forever."""
        if self.running is not None:
            drain = (self.config.grace_s if grace is None else grace) + ENROLL_DRAIN_S
            stopping = asyncio.run_coroutine_threadsafe(self.running.stop(grace), self._loop)
            self.running = None
            stopping.result(timeout=drain + 60)  # TimeoutError past it
        self._shutdown_loop()

    def _shutdown_loop(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=60)
            if self._thread.is_alive():  # its loop is blocked: leave the daemon thread, keep the loop open
                return
        if not self._loop.is_closed():
            self._loop.close()

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
