"""Method keys handled like keys (issue 15, item 4); here in train because export and evaluation use them.

A keyed method (PPFR-FD: the Shuffle1 permutation) needs a deployment secret at export. `ppfr-export`
takes it from a file (`--key-file`) or the environment (`PPFR_METHOD_KEY`), or, only when asked with
`--demo-key`, uses the public demonstration key that the training configs carry. The key itself never
reaches the manifest, the logs or the repository: the manifest holds a key id, HMAC-SHA256(key,
KEY_ID_LABEL) truncated to 64 bits, and whether the key is the public demo key.

What the key does and does not protect: docs/privacy.md, "Keys and renewable templates".
"""

import hashlib
import hmac
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

ENV_VAR = "PPFR_METHOD_KEY"
DEMO_KEY = b"ppfr-demo-key"  # public: it is in every training config and in the shipped bundle
KEY_ID_LABEL = b"ppfr/method-key-id/v1"
KEY_ID_HEX = 16
MIN_KEY_BYTES = 16
KEYED_METHODS = ("ppfr_fd",)  # methods whose front-end holds deployment key material
REDACTED = "<redacted: see methodParams.key_id>"


class KeyPolicyError(ValueError):
    """No usable key for a keyed method, or contradictory key options; the message says what to do."""


def key_id(key: bytes) -> str:
    """Public identifier of a key: HMAC-SHA256(key, KEY_ID_LABEL), first 64 bits in hex.

    It tells two keys apart (bundle, logs, galleries) and cannot be turned back into the key; like any
    function of the key it lets someone confirm a guessed key, so keys must be random (>= 16 bytes)."""
    return hmac.new(bytes(key), KEY_ID_LABEL, hashlib.sha256).hexdigest()[:KEY_ID_HEX]


@dataclass(frozen=True)
class MethodKey:
    """A method key and where it came from. repr and str never show the key."""

    key: bytes = field(repr=False)
    source: str  # "--key-file PATH", "$PPFR_METHOD_KEY", "--demo-key"

    @property
    def demo(self) -> bool:
        return self.key == DEMO_KEY

    @property
    def key_id(self) -> str:
        return key_id(self.key)

    def describe(self) -> str:
        if self.demo:
            return f"key id {self.key_id} (the PUBLIC demo key, {self.source}: not for deployment)"
        return f"key id {self.key_id} (from {self.source})"


def is_keyed(method_name: str) -> bool:
    return method_name in KEYED_METHODS


def _clean(raw: bytes) -> bytes:
    # A trailing newline from `echo ... > file` or a shell variable is not part of the key.
    return raw.strip(b"\r\n")


def _checked(key: bytes, source: str) -> MethodKey:
    if not key:
        raise KeyPolicyError(f"the method key from {source} is empty")
    if key == DEMO_KEY:
        raise KeyPolicyError(
            f"the key from {source} is the public demo key; pass --demo-key instead if a demonstration "
            "bundle is what you want"
        )
    if len(key) < MIN_KEY_BYTES:
        raise KeyPolicyError(
            f"the method key from {source} is {len(key)} bytes; use at least {MIN_KEY_BYTES} random bytes, "
            "e.g. `head -c 32 /dev/urandom | base64 > method.key`"
        )
    return MethodKey(key, source)


def read_key_file(path) -> MethodKey:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise KeyPolicyError(f"--key-file {path}: cannot read ({err.strerror})") from None
    return _checked(_clean(raw), f"--key-file {path}")


def key_file_is_shared(path) -> bool:
    """True when group or others may read the key file (the caller warns; it does not refuse)."""
    try:
        return bool(Path(path).stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO))
    except OSError:
        return False


def resolve(key_file=None, demo: bool = False, environ=None) -> MethodKey:
    """The key a keyed method's bundle is exported with, or KeyPolicyError.

    Exactly one source: --key-file FILE, $PPFR_METHOD_KEY, or --demo-key. A set environment variable
    together with --demo-key or --key-file is refused rather than silently ignored, so a bundle is never
    built with another key than the one its maker believes."""
    environ = os.environ if environ is None else environ
    env = environ.get(ENV_VAR)
    given = [
        name for name, on in (("--key-file", key_file), ("--demo-key", demo), (f"${ENV_VAR}", env)) if on
    ]
    if len(given) > 1:
        raise KeyPolicyError(f"give the method key one way only, got {' and '.join(given)}")
    if key_file:
        return read_key_file(key_file)
    if env:
        return _checked(_clean(env.encode()), f"${ENV_VAR}")
    if demo:
        return MethodKey(DEMO_KEY, "--demo-key")
    raise KeyPolicyError(
        "this method's front-end is keyed (PPFR-FD Shuffle1) and no key was given: pass --key-file FILE "
        f"or set {ENV_VAR}, or pass --demo-key to build a demonstration bundle with the public demo key "
        "(anyone can reproduce it; never deploy it)"
    )


def method_key_bytes(method) -> bytes | None:
    """The key a method instance was built with (None for unkeyed methods)."""
    key = getattr(method, "key_bytes", None)
    return bytes(key) if key is not None else None


def rekey(config: dict, method, key: bytes):
    """(config, method) with `key` in place of the training key; every trained parameter is kept.

    The keyed buffers (PPFR-FD: the Shuffle1 channel order `keep`) are those that differ between the
    method built with the training key and with the new key; they come from the new build, the rest of
    the state from the trained method. The returned config holds the new key: redact it before it is
    written anywhere (`redacted_config`)."""
    import torch

    from .methods import build_method

    method_cfg = dict(config["method"])
    name = method_cfg.pop("name")
    old = build_method(name, **method_cfg).state_dict()
    fresh = build_method(name, **{**method_cfg, "key": key})
    new = fresh.state_dict()
    state = method.state_dict()
    for k, v in new.items():
        if k in old and not torch.equal(old[k], v):
            state[k] = v
    fresh.load_state_dict(state)
    fresh.train(method.training)
    config = {**config, "method": {**config["method"], "key": key}}
    return config, fresh


SEALED_PREFIX = "<sealed: method key id "


def seal(config: dict, method) -> tuple[dict, dict]:
    """(config, method state) for a checkpoint of a method trained or adapted under a deployment key:
    the key is replaced by a marker that names its id, and the keyed buffers (PPFR-FD: the Shuffle1
    order, which is as good as the key) are those the marker itself would give. Loading such a
    checkpoint needs the key again (`unseal`). The demo key is public: a demo-key run is written as is."""
    key = method_key_bytes(method)
    if key is None or key == DEMO_KEY:
        return config, method.state_dict()
    marker = f"{SEALED_PREFIX}{key_id(key)}>"
    sealed, placeholder = rekey(config, method, marker.encode())
    return {**sealed, "method": {**sealed["method"], "key": marker}}, placeholder.state_dict()


def sealed_key_id(method_cfg: dict) -> str | None:
    """The key id a sealed checkpoint's method section names (None: not sealed)."""
    key = method_cfg.get("key")
    if isinstance(key, str) and key.startswith(SEALED_PREFIX) and key.endswith(">"):
        return key[len(SEALED_PREFIX) : -1]
    return None


def trained_key_id(method_cfg: dict) -> str:
    """The id of the key a checkpoint's recognizer was trained or adapted under."""
    sealed = sealed_key_id(method_cfg)
    if sealed is not None:
        return sealed
    key = method_cfg.get("key", DEMO_KEY)
    return key_id(key.encode() if isinstance(key, str) else bytes(key))


def unseal(config: dict, method, key: bytes):
    """(config, method) of a loaded checkpoint under `key`; KeyPolicyError when the checkpoint is sealed
    to another key id. The returned config holds the key: never write it (`seal`, `redacted_config`)."""
    want = sealed_key_id(config["method"])
    if want is not None and key_id(key) != want:
        raise KeyPolicyError(
            f"this checkpoint was adapted to method key id {want}; the key given has id {key_id(key)}"
        )
    return rekey(config, method, key)


def redacted_config(config: dict) -> dict:
    """The config with the method key replaced by a marker (the manifest records the config)."""
    method = config.get("method")
    if isinstance(method, dict) and "key" in method:
        return {**config, "method": {**method, "key": REDACTED}}
    return config
