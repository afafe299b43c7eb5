"""gRPC client of the FaceVerification service, with optional TLS / mTLS and clear errors."""

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
    ):
        self.server = server
        self.tls = tls
        self.timeout = timeout
        # The server's API key travels as call metadata on every call (see docs/cloud.md).
        self.metadata = (("x-api-key", api_key),) if api_key else None
        self.stub = pb_grpc.FaceVerificationStub(channel)
        self.channel = channel

    def _call(self, name: str, request):
        try:
            return getattr(self.stub, name)(request, timeout=self.timeout, metadata=self.metadata)
        except grpc.RpcError as err:
            raise self._error(err) from None

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

    def enroll(self, subject_id: str, face: pb.ProtectedFace) -> pb.EnrollResponse:
        return self._call("Enroll", pb.EnrollRequest(subject_id=subject_id, face=face))

    def verify(self, subject_id: str, face: pb.ProtectedFace) -> pb.VerifyResponse:
        return self._call("Verify", pb.VerifyRequest(subject_id=subject_id, face=face))

    def identify(self, face: pb.ProtectedFace, top_k: int = 5) -> pb.IdentifyResponse:
        return self._call("Identify", pb.IdentifyRequest(face=face, top_k=top_k))

    def delete(self, subject_id: str) -> pb.DeleteSubjectResponse:
        return self._call("DeleteSubject", pb.DeleteSubjectRequest(subject_id=subject_id))

    def close(self) -> None:
        self.channel.close()
