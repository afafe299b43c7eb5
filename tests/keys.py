"""API keys for tests against the real server: create one in the server's key file, and a channel that sends
it with every call (as ppfr-edge does).

    key = new_key(db)                       # all scopes, no rate limit, in <db>.keys
    with keyed_channel(server.address, key) as channel: ...
"""

import grpc
from ppfr.cloud.auth import KeyStore, default_key_path, parse_scopes

ALL_SCOPES = "verify,enroll,admin"


def new_key(db, scopes: str = ALL_SCOPES, rate: float = 0, name: str = "test") -> str:
    store = KeyStore(default_key_path(db))
    try:
        return store.create(name, parse_scopes(scopes), rate)[1]
    finally:
        store.close()


class _SendKey(grpc.UnaryUnaryClientInterceptor):
    def __init__(self, key: str):
        self.key = key

    def intercept_unary_unary(self, continuation, details, request):
        metadata = [*(details.metadata or ()), ("x-api-key", self.key)]
        return continuation(details._replace(metadata=metadata), request)


def keyed_channel(address: str, key: str, credentials=None) -> grpc.Channel:
    channel = grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address)
    return grpc.intercept_channel(channel, _SendKey(key))
