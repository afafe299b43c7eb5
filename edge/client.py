"""gRPC client of the FaceVerification service, with optional TLS / mTLS and clear errors.

Calls answered UNAVAILABLE (server restarting, connection lost) or RESOURCE_EXHAUSTED (rate limit, server
busy) are retried with exponential backoff and full jitter, at most `Retry.attempts` times and never past
`Retry.budget_s`; every Enroll carries an idempotency key (a fresh UUID, the same on each retry), so a
retried Enroll never adds a template twice (docs/cloud.md).
"""

import random
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import grpc
from ppfr.protos import verification_pb2 as pb
from ppfr.protos import verification_pb2_grpc as pb_grpc

from .errors import EdgeError, ServerError

# Status codes after which the remaining images would fail the same way.
FATAL = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNIMPLEMENTED,
}
MAX_MESSAGE = 64 * 1024 * 1024
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}


@dataclass(frozen=True)
class Retry:
    """Bounded retries: attempt n (from 1) waits uniform(0, min(cap_s, base_s * 2**(n-1))) before the next
    one; no wait goes past `budget_s` from the first attempt."""

    attempts: int = 5
    base_s: float = 0.2
    cap_s: float = 3.0
    budget_s: float = 15.0

    def wait_s(self, attempt: int, started: float, now: float) -> float | None:
        """Seconds to sleep before attempt `attempt + 1`, or None when no attempt is left."""
        if attempt >= self.attempts:
            return None
        wait = random.uniform(0, min(self.cap_s, self.base_s * 2 ** (attempt - 1)))
        return wait if now + wait - started < self.budget_s else None


NO_RETRY = Retry(attempts=1)


def clean_api_key(api_key: str | None) -> str | None:
    """The key without surrounding whitespace (a trailing newline from a file or `echo`); EdgeError for a
    key that cannot travel as gRPC metadata (control or non-ASCII characters inside it)."""
    if api_key is None:
        return None
    key = api_key.strip()
    if not key:
        raise EdgeError("the API key is empty (pass --api-key or set PPFR_API_KEY)")
    if not all(" " <= c <= "~" for c in key):
        raise EdgeError("the API key holds characters an API key cannot have (control or non-ASCII)")
    return key


def _read(path, what: str) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise EdgeError(f"{what} file not found: {path}")
    return path.read_bytes()


def make_channel(server: str, ca=None, cert=None, key=None, server_name: str | None = None) -> grpc.Channel:
    """Plain channel, TLS (--ca) or mutual TLS (--ca --cert --key)."""
    if not server or ":" not in server or not server.rsplit(":", 1)[1].isdigit():
        raise EdgeError(f"bad server address {server!r}: expected HOST:PORT, e.g. 127.0.0.1:50051")
    options = [
        ("grpc.max_send_message_length", MAX_MESSAGE),
        ("grpc.max_receive_message_length", MAX_MESSAGE),
    ]
    if bool(cert) != bool(key):
        raise EdgeError("mutual TLS needs both --cert and --key")
    if not (ca or cert):
        return grpc.insecure_channel(server, options=options)
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read(ca, "CA certificate") if ca else None,
        private_key=_read(key, "client key") if key else None,
        certificate_chain=_read(cert, "client certificate") if cert else None,
    )
    return grpc.secure_channel(server, credentials, options=options)


class Client:
    def __init__(
        self,
        channel: grpc.Channel,
        server: str,
        timeout: float = 10.0,
        tls: bool = False,
        api_key: str | None = None,
        retry: Retry = Retry(),
    ):
        self.server = server
        self.tls = tls
        self.timeout = timeout
        self.retry = retry
        # The server's API key travels as call metadata on every call (see docs/cloud.md).
        api_key = clean_api_key(api_key)
        self.metadata = (("x-api-key", api_key),) if api_key else None
        self.retries = 0  # calls repeated after UNAVAILABLE / RESOURCE_EXHAUSTED, over the client's life
        self.stub = pb_grpc.FaceVerificationStub(channel)
        self.channel = channel

    def _call(self, name: str, request):
        started, attempt = time.monotonic(), 0
        while True:
            attempt += 1
            try:
                return getattr(self.stub, name)(request, timeout=self.timeout, metadata=self.metadata)
            except grpc.RpcError as err:
                code = err.code() if hasattr(err, "code") else None
                wait = self.retry.wait_s(attempt, started, time.monotonic()) if code in RETRYABLE else None
                if wait is None:
                    raise self._error(err) from None
            self.retries += 1
            time.sleep(wait)

    def _error(self, err: grpc.RpcError) -> ServerError:
        code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
        detail = (err.details() if hasattr(err, "details") else "") or ""
        if code == grpc.StatusCode.UNAVAILABLE:
            hint = "do --ca/--cert/--key match its TLS setup?" if self.tls else "if it uses TLS, pass --ca"
            message = (
                f"cannot reach the server at {self.server}: {detail} "
                f"(is `ppfr-cloud serve` running there? {hint})"
            )
        elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
            message = f"the server at {self.server} did not answer within {self.timeout:g} s (--timeout)"
        elif code == grpc.StatusCode.NOT_FOUND:
            message = f"not found: {detail}"
        elif code == grpc.StatusCode.INVALID_ARGUMENT:
            message = f"the server rejected the request: {detail}"
        elif code == grpc.StatusCode.UNAUTHENTICATED:
            given = "the API key was refused" if self.metadata else "no API key given"
            message = f"{given}: {detail} (pass --api-key or set PPFR_API_KEY; `ppfr-cloud keys create`)"
        elif code == grpc.StatusCode.PERMISSION_DENIED:
            message = f"the API key may not do this: {detail}"
        elif code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            message = f"the server asks to slow down: {detail}"
        else:
            message = f"server error {code.name}: {detail}"
        return ServerError(message, code=code.name, fatal=code in FATAL)

    def info(self) -> pb.ServerInfo:
        return self._call("GetServerInfo", pb.GetServerInfoRequest())

    def enroll(
        self, subject_id: str, face: pb.ProtectedFace, idempotency_key: str | None = None
    ) -> pb.EnrollResponse:
        """Add `face` as a template of `subject_id`. The idempotency key (default: a fresh UUID) makes a
        retry of this enrollment - by this client or by the caller - add the template at most once."""
        key = idempotency_key or str(uuid.uuid4())
        return self._call("Enroll", pb.EnrollRequest(subject_id=subject_id, face=face, idempotency_key=key))

    def verify(self, subject_id: str, face: pb.ProtectedFace) -> pb.VerifyResponse:
        return self._call("Verify", pb.VerifyRequest(subject_id=subject_id, face=face))

    def identify(self, face: pb.ProtectedFace, top_k: int = 5) -> pb.IdentifyResponse:
        return self._call("Identify", pb.IdentifyRequest(face=face, top_k=top_k))

    def delete(self, subject_id: str) -> pb.DeleteSubjectResponse:
        return self._call("DeleteSubject", pb.DeleteSubjectRequest(subject_id=subject_id))

    def close(self) -> None:
        self.channel.close()
