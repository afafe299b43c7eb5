"""The gate every FaceVerification call passes before the service: a request id, the server-wide limit on
concurrent calls, the API key (authentication, scope, per-key rate limit), decoding, then one metrics
observation and at most one log line per call. Health checks and reflection pass through untouched, so
load balancers and grpcurl can use them without a key (they reveal no gallery content).

Checks run cheapest first. The key (authentication, scope, rate) is checked on the call's metadata before
the request is read at all: a refused call gets a handler that never reads its message (a stream handler
answering from the metadata), so a flood of keyless calls costs a dictionary lookup each and holds no
payload in Python. Refusals are logged by sampling (the first REFUSALS_LOGGED, then one a second with the
count of those not logged), so such a flood cannot fill the disk. UNAUTHENTICATED answers over gRPC are paced
(UNAUTHENTICATED_PER_S over all connections, as the HTTP gateway paces its 401s): gRPC's own work per call
(~250 us of CPU) runs on the event loop that serves keyed calls too, so a keyless flood gets a trickle of
it; with the server's HTTP/2 stream limit per connection (server.py), the flood waits in its client, not
in this server's memory. A request that is not valid protobuf is answered INVALID_ARGUMENT in one log line.
"""

import asyncio
import collections
import contextvars
import logging
import re
import secrets
import time

import grpc
from google.protobuf.message import DecodeError
from ppfr.cloud.auth import METHOD_SCOPES, KeyStore, RateLimiter

log = logging.getLogger("ppfr.cloud")

SERVICE_PREFIX = "/ppfr.v1.FaceVerification/"
API_KEY_HEADER = "x-api-key"
REQUEST_ID_HEADER = "x-request-id"
# The current call's request id, for every log line written while serving it.
REQUEST_ID = contextvars.ContextVar("request_id", default="-")
_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
# The calling key (an ApiKey; None when authentication is off), for the service's scope decisions.
CALLER = contextvars.ContextVar("caller", default=None)
# Successful calls of these RPCs are logged at DEBUG only (they are the bulk of the traffic).
_QUIET = {"Verify", "Identify", "GetServerInfo", "ListSubjects"}
REFUSALS_LOGGED = 10  # refusals logged in full before sampling starts
UNAUTHENTICATED_PER_S = 200.0  # UNAUTHENTICATED answers per second over gRPC; more wait their turn
# Refusals waiting for their turn at most; beyond, they are answered at once (memory over CPU: each waiting
# call holds its request bytes in gRPC). One flooding connection holds at most its stream limit.
MAX_PACED = 1024
# Calls one connection may have open at once (HTTP/2 streams; server.py): a client's burst beyond waits in
# the client, so one flooding connection holds at most this many requests in the server.
STREAMS_PER_CONNECTION = 100


class LogSampler:
    """The first `first` events pass, then at most one per `every_s` seconds; `allow()` also returns how
    many were held back since the last one that passed."""

    def __init__(self, first: int = REFUSALS_LOGGED, every_s: float = 1.0, clock=time.monotonic):
        self.first, self.every_s, self._clock = first, every_s, clock
        self._seen = 0
        self._held = 0
        self._last = -float("inf")

    def allow(self) -> tuple[bool, int]:
        self._seen += 1
        now = self._clock()
        if self._seen <= self.first or now - self._last >= self.every_s:
            held, self._held, self._last = self._held, 0, now
            return True, held
        self._held += 1
        return False, 0


class Pacer:
    """Evenly spaced turns: wait() returns at once when idle, else at the next free slot."""

    def __init__(self, per_second: float):
        self.interval, self._next = 1.0 / per_second, 0.0

    async def wait(self) -> None:
        now = asyncio.get_running_loop().time()
        slot = max(now, self._next)
        self._next = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


class Refused(Exception):
    def __init__(self, code: grpc.StatusCode, message: str, reason: str = ""):
        super().__init__(message)
        self.code, self.message, self.reason = code, message, reason or message


class CallGate(grpc.aio.ServerInterceptor):
    def __init__(self, keys: KeyStore | None, metrics=None, max_concurrent_calls: int = 256):
        self.keys = keys  # None: authentication off (--insecure-no-auth)
        self.metrics = metrics
        self.max_concurrent_calls = max_concurrent_calls
        self.in_flight = 0
        self.limiter = RateLimiter()
        self.active = collections.Counter()  # calls in progress by RPC (shutdown waits for Enrolls)
        self.draining = False  # set on shutdown: calls in progress finish, new ones are UNAVAILABLE
        self.refusals = LogSampler()
        self.unauthenticated = Pacer(UNAUTHENTICATED_PER_S)
        self.paced = 0  # refusals waiting for their turn now

    async def intercept_service(self, continuation, details):
        if not details.method.startswith(SERVICE_PREFIX):
            return await continuation(details)
        method = details.method[len(SERVICE_PREFIX) :]
        headers = {m.key: m.value for m in details.invocation_metadata or ()}
        try:  # decided before the service's handler is even looked up
            key = self._admit(method, headers)
        except Refused as refused:
            return self._refusal(method, refused)
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler

        async def behavior(raw: bytes, context):
            return await self._call(method, headers, handler, raw, context, key)

        # No deserializer: the raw bytes come here, and are decoded only after the checks.
        return grpc.unary_unary_rpc_method_handler(behavior, response_serializer=handler.response_serializer)

    def _admit(self, method: str, headers: dict):
        if self.draining:
            raise Refused(
                grpc.StatusCode.UNAVAILABLE, "the server is shutting down; retry on another replica"
            )
        return self._authorize(method, headers)

    def _refusal(self, method: str, refused: Refused):
        """A handler that answers `refused` without reading the request (see the module docstring)."""

        async def refuse(_requests, context):
            # A status without an exception (abort raises one): the cheapest answer grpc.aio gives.
            context.set_code(refused.code)
            context.set_details(refused.message)
            if self.metrics is not None:
                self.metrics.observe(method, refused.code.name, 0.0)
            logged, held = self.refusals.allow()
            if logged and log.isEnabledFor(logging.INFO):
                log.info(
                    "key=- peer=%s %s %s (%s)%s",
                    context.peer(),
                    method,
                    refused.code.name,
                    refused.reason,
                    f" [{held} similar refusals not logged]" if held else "",
                )

        async def paced(requests, context):
            if refused.code == grpc.StatusCode.UNAUTHENTICATED and self.paced < MAX_PACED:
                self.paced += 1
                try:
                    await self.unauthenticated.wait()
                finally:
                    self.paced -= 1
            await refuse(requests, context)

        # gRPC calls the stream behaviour (request_streaming), which never reads the message; in-process
        # callers of the handler (the HTTP gateway, which paces its own 401s) call unary_unary with the
        # body they already hold.
        return grpc.stream_unary_rpc_method_handler(paced)._replace(unary_unary=refuse)

    async def _call(self, method, headers, handler, raw, context, key):
        start = time.perf_counter()
        given = headers.get(REQUEST_ID_HEADER)
        request_id = given if isinstance(given, str) and _CLIENT_REQUEST_ID.fullmatch(given) else None
        request_id = request_id or secrets.token_hex(8)
        REQUEST_ID.set(request_id)
        CALLER.set(key)
        context.set_trailing_metadata(((REQUEST_ID_HEADER, request_id),))
        key_id, reason, code = (key.key_id if key else "-"), "", "OK"
        self.in_flight += 1
        self.active[method] += 1
        try:
            if self.in_flight > self.max_concurrent_calls:
                raise Refused(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"server busy: {self.max_concurrent_calls} calls already in progress "
                    "(--max-concurrent-calls); retry with backoff",
                    "concurrency limit",
                )
            try:
                request = handler.request_deserializer(raw)
            except DecodeError:
                raise Refused(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"the request is not a valid ppfr.v1.{method}Request message",
                    f"undecodable request ({len(raw)} bytes)",
                ) from None
            return await handler.unary_unary(request, context)
        except Refused as refused:
            code, reason = refused.code.name, refused.reason
            await context.abort(refused.code, refused.message)
        except BaseException:
            status = context.code()
            code = status.name if status is not None else "CANCELLED"
            raise
        finally:
            self.in_flight -= 1
            self.active[method] -= 1
            seconds = time.perf_counter() - start
            if self.metrics is not None:
                self.metrics.observe(method, code, seconds)
            level = logging.DEBUG if code == "OK" and method in _QUIET else logging.INFO
            if log.isEnabledFor(level):
                detail = reason or (context.details() or "" if code != "OK" else "")
                log.log(
                    level,
                    "request_id=%s key=%s peer=%s %s %s %.1fms%s",
                    request_id,
                    key_id,
                    context.peer(),
                    method,
                    code,
                    seconds * 1e3,
                    f" ({str(detail)[:120]})" if detail else "",
                )

    def _authorize(self, method: str, headers: dict):
        """The caller's key, or None when authentication is off; raises Refused otherwise."""
        if self.keys is None:
            return None
        presented = headers.get(API_KEY_HEADER)
        if not presented:
            raise Refused(
                grpc.StatusCode.UNAUTHENTICATED,
                f"this server needs an API key: send it as '{API_KEY_HEADER}' call metadata "
                "(ppfr-edge --api-key, grpcurl -H 'x-api-key: ...')",
                "no API key",
            )
        key = self.keys.authenticate(presented) if isinstance(presented, str) else None
        if key is None:
            raise Refused(
                grpc.StatusCode.UNAUTHENTICATED,
                "the API key is not valid (unknown, revoked or mistyped)",
                "invalid API key",
            )
        scope = METHOD_SCOPES.get(method, "admin")  # a call without a listed scope needs admin
        if scope is not None and scope not in key.scopes:
            raise Refused(
                grpc.StatusCode.PERMISSION_DENIED,
                f"API key {key.key_id} lacks the '{scope}' scope that {method} needs",
            )
        if not self.limiter.allow(key):
            raise Refused(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"API key {key.key_id} is over its rate limit of {key.rate:g} calls/s; retry later",
                "rate limit",
            )
        return key
