"""HTTP/JSON beside gRPC (`ppfr-cloud serve --http-port N`): the same FaceVerification service over
HTTP/1.1 with protobuf's JSON mapping, for clients without gRPC (curl, browsers' backends, any language).

    POST /ppfr.v1.FaceVerification/<Rpc>   body: the request as JSON   -> 200 and the response as JSON
    GET  /healthz                          -> 200 {"status": "SERVING"}, or 503 while not serving

There is one implementation of everything: each call goes through the server's own CallGate (API key in
the `x-api-key` header, scopes, rate and concurrency limits, metrics, the one log line per call) into the
gRPC servicer's own method, with a small context that stands in for gRPC's. A gRPC status becomes the
HTTP status grpc-gateway uses (INVALID_ARGUMENT 400, UNAUTHENTICATED 401, PERMISSION_DENIED 403,
NOT_FOUND 404, RESOURCE_EXHAUSTED 429, ...) with the body {"code", "status", "message"}. Responses
print every field, defaults included (`"match": false` is never dropped); int64 fields are JSON strings
and bytes are base64, as the mapping says. The request is parsed only after the key has been checked.

A small asyncio HTTP/1.1 server on the gRPC server's event loop (keep-alive, Content-Length bodies only,
bounded header and body sizes, bounded connections, read timeouts) - no web framework.
"""

import asyncio
import binascii
import json
import logging
import re
import ssl
from collections import namedtuple
from dataclasses import dataclass, field

import grpc
from google.protobuf import descriptor, json_format
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2
from ppfr.cloud.interceptor import Refused
from ppfr.protos import verification_pb2

log = logging.getLogger("ppfr.cloud")

SERVICE = verification_pb2.DESCRIPTOR.services_by_name["FaceVerification"]
RPC_PREFIX = f"/{SERVICE.full_name}/"
HEALTH_PATH = "/healthz"
MAX_HEADER_LINE = 16 * 1024
MAX_HEADERS = 100
MAX_CONNECTIONS = 1024
# 401 answers share the gate's pace (interceptor.UNAUTHENTICATED_PER_S over gRPC and HTTP together): the
# gate's work for a call without a valid key runs on the event loop that serves every call, so a keyless
# flood waits its turn (a waiting connection costs memory only, MAX_CONNECTIONS at most).
READ_TIMEOUT_S = 60.0  # for a whole request, between requests on a kept-alive connection, for an answer
MAX_MESSAGE_CHARS = 300
# grpc-gateway's mapping (runtime.HTTPStatusFromCode); anything else is 500.
HTTP_STATUS = {
    "OK": 200,
    "CANCELLED": 499,
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "ABORTED": 409,
    "RESOURCE_EXHAUSTED": 429,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    411: "Length Required",
    413: "Content Too Large",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    499: "Client Closed Request",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}
_BASE64 = re.compile(r"[A-Za-z0-9+/_-]*={0,2}")
Metadatum = namedtuple("Metadatum", "key value")
CallDetails = namedtuple("CallDetails", "method invocation_metadata")


class HttpError(Exception):
    """A request the gateway answers itself, before it becomes a call (bad framing, unknown path)."""

    def __init__(self, status: int, message: str, close: bool = False):
        super().__init__(message)
        self.status, self.message, self.close = status, message, close


@dataclass
class HttpRequest:
    method: str
    path: str
    headers: dict
    length: int = 0  # Content-Length, checked against the limit; the body is read by read_body
    body: bytes = b""
    keep_alive: bool = True


@dataclass
class Reply:
    status: int
    body: dict | str
    headers: dict = field(default_factory=dict)


# --- HTTP/1.1 framing ----------------------------------------------------------------------------------
async def read_head(reader: asyncio.StreamReader, max_body: int) -> HttpRequest | None:
    """The next request's line and headers (not its body), or None when the client closed the connection
    between requests."""
    try:
        line = await reader.readuntil(b"\r\n")
    except asyncio.IncompleteReadError as err:
        if not err.partial.strip():
            return None
        raise
    except asyncio.LimitOverrunError:
        raise HttpError(431, "request line too long", close=True) from None
    parts = line.decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HttpError(400 if len(parts) != 3 else 505, "malformed request line", close=True)
    method, target, version = parts
    headers = await _read_headers(reader)
    connection = headers.get("connection", "").lower()
    keep_alive = "close" not in connection and (version == "HTTP/1.1" or "keep-alive" in connection)
    length = _content_length(headers, max_body)
    return HttpRequest(method, target.split("?", 1)[0], headers, length, keep_alive=keep_alive)


async def _read_headers(reader: asyncio.StreamReader) -> dict:
    headers = {}
    for _ in range(MAX_HEADERS + 1):
        try:
            line = await reader.readuntil(b"\r\n")
        except asyncio.LimitOverrunError:
            raise HttpError(431, "header line too long", close=True) from None
        if line == b"\r\n":
            return headers
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep or not name or name != name.strip():
            raise HttpError(400, "malformed header line", close=True)
        headers[name.lower()] = value.strip()
    raise HttpError(431, f"more than {MAX_HEADERS} headers", close=True)


def _content_length(headers: dict, max_body: int) -> int:
    if "transfer-encoding" in headers:
        raise HttpError(411, "send the body with a Content-Length (chunked bodies are not accepted)", True)
    length = headers.get("content-length", "0")
    if not length.isdigit():
        raise HttpError(400, "Content-Length is not a number", close=True)
    if int(length) > max_body:
        raise HttpError(
            413, f"the body is {int(length)} bytes; this server accepts at most {max_body}", close=True
        )
    return int(length)


async def read_body(reader: asyncio.StreamReader, request: HttpRequest, writer) -> bytes:
    """The body; a client that sent `Expect: 100-continue` is told to go on first."""
    if not request.length:
        return b""
    if request.headers.get("expect", "").lower() == "100-continue":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    return await reader.readexactly(request.length)


def encode_reply(reply: Reply, keep_alive: bool) -> bytes:
    body = reply.body if isinstance(reply.body, str) else json.dumps(reply.body)
    data = (body + "\n").encode()
    lines = [
        f"HTTP/1.1 {reply.status} {REASONS.get(reply.status, 'Error')}",
        "Content-Type: application/json",
        f"Content-Length: {len(data)}",
        f"Connection: {'keep-alive' if keep_alive else 'close'}",
        *(f"{k}: {v}" for k, v in reply.headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + data


def error_reply(code: str, message: str, status: int | None = None, headers: dict | None = None) -> Reply:
    """google.rpc.Status in JSON ({"code": 3, "status": "INVALID_ARGUMENT", "message": ...})."""
    status = status or HTTP_STATUS.get(code, 500)
    headers = dict(headers or {})
    if status in (429, 503):
        headers["Retry-After"] = "1"
    number = grpc.StatusCode[code].value[0] if code in grpc.StatusCode.__members__ else 2
    return Reply(status, {"code": number, "status": code, "message": message[:MAX_MESSAGE_CHARS]}, headers)


# --- JSON <-> protobuf ---------------------------------------------------------------------------------
def _strict_base64(value, message_descriptor, path: str) -> None:
    """protobuf's JSON parser skips characters that are not base64; a bytes field must be clean base64."""
    if not isinstance(value, dict):
        return
    for f in message_descriptor.fields:
        item = value.get(f.json_name, value.get(f.name))
        if item is None:
            continue
        if f.type == descriptor.FieldDescriptor.TYPE_BYTES and isinstance(item, str):
            if not _BASE64.fullmatch(item) or len(item.rstrip("=")) % 4 == 1:
                raise ValueError(f"{path}{f.json_name} is not base64 (standard or URL-safe alphabet)")
        elif f.message_type is not None and not f.is_repeated:
            _strict_base64(item, f.message_type, f"{path}{f.json_name}.")


def json_parser(message_class):
    """The request deserializer the gate calls after its checks: JSON body -> request message."""
    full_name = message_class.DESCRIPTOR.full_name

    def parse(body: bytes):
        try:
            value = json.loads(body) if body.strip() else {}
            if not isinstance(value, dict):
                raise ValueError("the body must be a JSON object")
            _strict_base64(value, message_class.DESCRIPTOR, "")
            return json_format.ParseDict(value, message_class())
        except (ValueError, json_format.ParseError, RecursionError, binascii.Error) as err:
            raise Refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the body is not a valid JSON {full_name}: {err}",
                f"undecodable JSON request ({len(body)} bytes)",
            ) from None

    return parse


def to_json(message) -> str:
    """Every field, defaults included, in the order the .proto declares them."""
    value = json_format.MessageToDict(message, always_print_fields_with_no_presence=True)
    return json.dumps(_declared_order(value, message.DESCRIPTOR))


def _declared_order(value: dict, message_descriptor) -> dict:
    ordered = {}
    for f in message_descriptor.fields:
        if f.json_name not in value:
            continue
        item = value[f.json_name]
        if f.message_type is not None and not f.message_type.GetOptions().map_entry:
            if f.is_repeated:
                item = [_declared_order(v, f.message_type) if isinstance(v, dict) else v for v in item]
            elif isinstance(item, dict):
                item = _declared_order(item, f.message_type)
        ordered[f.json_name] = item
    return ordered


# --- the call ------------------------------------------------------------------------------------------
class HttpCallContext:
    """The part of grpc.aio.ServicerContext the gate and the servicer use, for one HTTP call."""

    def __init__(self, headers: dict, peer: str):
        self._metadata = tuple(Metadatum(k, v) for k, v in headers.items())
        self._peer = peer
        self._code: grpc.StatusCode | None = None
        self._details = ""
        self.trailing: tuple = ()

    async def abort(self, code, details="", trailing_metadata=()):
        self._code, self._details = code, details
        self.trailing = tuple(trailing_metadata) or self.trailing
        raise grpc.aio.AbortError(details)

    def set_code(self, code) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def code(self):
        return self._code

    def details(self) -> str:
        return self._details

    def set_trailing_metadata(self, metadata) -> None:
        self.trailing = tuple(metadata)

    def invocation_metadata(self):
        return self._metadata

    def time_remaining(self):
        return None  # HTTP calls carry no deadline

    def peer(self) -> str:
        return self._peer

    def cancelled(self) -> bool:
        return False

    def done(self) -> bool:
        return self._code is not None

    def auth_context(self) -> dict:
        return {}


class HttpGateway:
    def __init__(self, gate, service, health_servicer, max_body_bytes: int):
        self.gate, self.health, self.max_body = gate, health_servicer, max_body_bytes
        self.handlers = {}
        for m in SERVICE.methods:
            parser = json_parser(GetMessageClass(m.input_type))
            self.handlers[m.name] = grpc.unary_unary_rpc_method_handler(
                getattr(service, m.name), request_deserializer=parser
            )
        self.port: int | None = None
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task, bool] = {}  # task -> busy with a call
        self._closing = False

    async def start(self, host: str, port: int, ssl_context=None) -> int:
        self._server = await asyncio.start_server(
            self._connection, host, port, limit=MAX_HEADER_LINE, ssl=ssl_context
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        """Takes no new connections and closes the idle ones. Calls in progress count in the gate's calls
        in flight, so the server's drain waits for them as for gRPC's; each connection closes after its
        answer (a client that stops reading is dropped after READ_TIMEOUT_S)."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        idle = [task for task, busy in self._connections.items() if not busy]
        for task in idle:
            task.cancel()
        await asyncio.gather(*idle, return_exceptions=True)

    async def _connection(self, reader, writer) -> None:
        task = asyncio.current_task()
        if self._closing or len(self._connections) >= MAX_CONNECTIONS:
            writer.close()
            return
        self._connections[task] = False
        try:
            await self._serve_connection(reader, writer, _peer(writer), task)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass  # the client went away or stalled: nothing to answer
        except asyncio.CancelledError:
            pass  # stop(): the connection is closed below
        except Exception as err:  # a bug: one log line, the connection closes, the server goes on
            log.error("http %s: connection failed: %s", _peer(writer), type(err).__name__)
        finally:
            self._connections.pop(task, None)
            writer.close()

    async def _serve_connection(self, reader, writer, peer: str, task) -> None:
        while not self._closing:
            try:
                request = await asyncio.wait_for(self._read(reader, writer), READ_TIMEOUT_S)
            except HttpError as err:
                log.debug("http %s: %s", peer, err.message)
                code = "RESOURCE_EXHAUSTED" if err.status == 413 else "INVALID_ARGUMENT"
                writer.write(encode_reply(error_reply(code, err.message, err.status), False))
                await writer.drain()
                return
            if request is None:
                return
            self._connections[task] = True
            try:
                reply = await self.respond(request, peer)
            finally:
                self._connections[task] = False
            if reply.status == 401:
                await self.gate.unauthenticated.wait()  # one budget with gRPC's keyless refusals
            keep_alive = request.keep_alive and not self._closing
            writer.write(encode_reply(reply, keep_alive))
            await asyncio.wait_for(writer.drain(), READ_TIMEOUT_S)
            if not keep_alive:
                return

    async def _read(self, reader, writer) -> HttpRequest | None:
        """The next request. A call without an API key on a server that needs one is refused by the gate
        without its body: the body is left unread and the connection closes after the answer, so a
        keyless flood costs a request line and its headers per call."""
        request = await read_head(reader, self.max_body)
        if request is None:
            return None
        keyless = self.gate.keys is not None and "x-api-key" not in request.headers
        if keyless and request.path.startswith(RPC_PREFIX):
            request.keep_alive = False
        else:
            request.body = await read_body(reader, request, writer)
        return request

    async def respond(self, request: HttpRequest, peer: str) -> Reply:
        if request.path == HEALTH_PATH:
            if request.method != "GET":
                return error_reply("UNIMPLEMENTED", "use GET /healthz", 405, {"Allow": "GET"})
            return await self._health(peer)
        rpc = request.path[len(RPC_PREFIX) :] if request.path.startswith(RPC_PREFIX) else None
        if rpc not in self.handlers:
            known = ", ".join(sorted(self.handlers))
            return error_reply("NOT_FOUND", f"no such path: POST {RPC_PREFIX}<rpc> with rpc one of {known}")
        if request.method != "POST":
            return error_reply("UNIMPLEMENTED", f"use POST {request.path}", 405, {"Allow": "POST"})
        return await self._call(rpc, request, peer)

    async def _call(self, rpc: str, request: HttpRequest, peer: str) -> Reply:
        handler = self.handlers[rpc]

        async def continuation(details):
            return handler

        context = HttpCallContext(request.headers, peer)
        details = CallDetails(RPC_PREFIX + rpc, context.invocation_metadata())
        gated = await self.gate.intercept_service(continuation, details)
        try:
            response = await gated.unary_unary(request.body, context)
        except grpc.aio.AbortError:
            response = None
        except Exception as err:  # the gate and the servicer map their own errors; this is a bug
            log.error("http %s failed: %s", rpc, type(err).__name__, exc_info=log.isEnabledFor(10))
            return error_reply("INTERNAL", f"internal error ({type(err).__name__})")
        headers = {k: v for k, v in context.trailing if k == "x-request-id"}
        code = context.code()
        if response is None or (code is not None and code != grpc.StatusCode.OK):
            name = code.name if code is not None else "UNKNOWN"
            return error_reply(name, context.details() or name, headers=headers)
        return Reply(200, to_json(response), headers)

    async def _health(self, peer: str) -> Reply:
        context = HttpCallContext({}, peer)
        try:
            reply = await self.health.Check(health_pb2.HealthCheckRequest(service=""), context)
        except grpc.aio.AbortError:
            return error_reply("UNAVAILABLE", "no health status", 503)
        name = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        return Reply(200 if name == "SERVING" else 503, {"status": name})


def _peer(writer) -> str:
    address = writer.get_extra_info("peername")
    if isinstance(address, tuple) and len(address) >= 2:
        family = "ipv6" if ":" in str(address[0]) else "ipv4"
        return f"http:{family}:{address[0]}:{address[1]}"
    return "http:unknown"


def tls_context(config) -> ssl.SSLContext | None:
    """The gRPC port's certificate (and client CA for mutual TLS) on the HTTP port too."""
    if not config.tls_cert:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(config.tls_cert), str(config.tls_key))
    if config.tls_client_ca:
        context.load_verify_locations(str(config.tls_client_ca))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def body_limit(manifest, max_message_bytes: int) -> int:
    """The largest JSON body: the bundle's tensor as float32 in base64 (4/3 of its bytes) and 64 KiB for the
    rest, or the gRPC message limit's base64 if that is smaller. Not gRPC's 4 MiB floor: a body is held
    whole before the gate sees the call, so this bounds what MAX_CONNECTIONS slow senders can hold."""
    elements = 1
    for dim in manifest.protected_tensor.shape[1:]:
        elements *= max(1, int(dim))
    return min(elements * 4 + 64 * 1024, max_message_bytes) * 4 // 3 + 4096


async def attach(running, config, max_message_bytes: int) -> None:
    """Starts the gateway for a started server (`running.http`); on failure stops the server and raises
    ConfigError."""
    from ppfr.cloud.server import ConfigError

    limit = body_limit(running.service.manifest, max_message_bytes)
    gateway = HttpGateway(running.gate, running.service, running.health, limit)
    try:
        if not 0 <= int(config.http_port) <= 65535:
            raise OSError(0, f"the port must be between 0 and 65535, not {config.http_port}")
        port = await gateway.start(config.host, int(config.http_port), tls_context(config))
    except OSError as err:
        await running.stop(0)
        raise ConfigError(f"cannot serve HTTP on {config.host}:{config.http_port}: {err.strerror}") from None
    running.http = gateway
    scheme = "https" if config.tls_cert else "http"
    host = f"[{config.host}]" if ":" in config.host else config.host
    log.info("HTTP/JSON at %s://%s:%d%s<rpc> (same API keys)", scheme, host, port, RPC_PREFIX)
