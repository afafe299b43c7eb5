"""Renewable templates (issue 15, item 5): a deployment secret turns every embedding into a stored
template by a keyed random orthogonal transform, t = Q e, before it enters the gallery and before it is
matched against it.

- Q is d x d orthogonal, so cosine scores, thresholds and accuracy are exactly those of the plain
  embeddings for templates made under the same secret: <Q a, Q b> = <a, b>.
- Under two secrets the templates of one face are Q1 e and Q2 e: a leaked gallery cannot be matched
  against another deployment's gallery or against a re-keyed one without the secrets (measured as
  D<->sys, docs/privacy.md). Renewing = enrolling again under a new secret (or re-transforming stored
  templates with Q2 Q1^T while both secrets are at hand).
- Q derivation (a KDF, then a Haar-random orthogonal matrix): seed = HMAC-SHA256(secret,
  "ppfr/template-transform/v1"); SHAKE-256(seed || "gaussian" || d as 4 bytes big-endian) gives
  2 d^2 64-bit words; pairs of words (top 53 bits each, as doubles in (0,1)) become standard normals by
  Box-Muller (cos branch and sin branch, in that order); they fill G row by row; G = Q R (Householder QR);
  Q's columns are multiplied by sign(diag R), which makes Q Haar-distributed and independent of the
  LAPACK build's sign conventions.
- The secret stays outside the gallery database: from a file or the environment variable PPFR_TEMPLATE_KEY,
  given to `ppfr-cloud serve`. Only its id (HMAC-SHA256(secret, "ppfr/template-key-id/v1"), 64 bits) is
  logged and recorded with the gallery, so a server started with another secret refuses the gallery.

What it does not protect: someone who holds the secret (the server's operator) or who learns about d
(face embedding, stored template) pairs of the same people can recover Q by linear algebra; it is a
renewable, unlinkable encoding of templates, not encryption of them.
"""

import hashlib
import hmac
import os
import stat
from pathlib import Path

import numpy as np

ENV_VAR = "PPFR_TEMPLATE_KEY"
MIN_SECRET_BYTES = 16
SEED_LABEL = b"ppfr/template-transform/v1"
ID_LABEL = b"ppfr/template-key-id/v1"


class TemplateKeyError(ValueError):
    """Unusable template secret or contradictory options; the message says what to do."""


def template_key_id(secret: bytes) -> str:
    return hmac.new(bytes(secret), ID_LABEL, hashlib.sha256).hexdigest()[:16]


def _normals(seed: bytes, d: int) -> np.ndarray:
    n = d * d
    stream = hashlib.shake_256(seed + b"gaussian" + d.to_bytes(4, "big")).digest(16 * ((n + 1) // 2))
    words = np.frombuffer(stream, dtype=">u8").astype(np.uint64)
    u = ((words >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0**53  # (0, 1), never 0
    u1, u2 = u[0::2], u[1::2]
    r = np.sqrt(-2.0 * np.log(u1))
    z = np.empty(2 * len(r))
    z[0::2], z[1::2] = r * np.cos(2 * np.pi * u2), r * np.sin(2 * np.pi * u2)
    return z[:n].reshape(d, d)


def orthogonal_matrix(secret: bytes, d: int) -> np.ndarray:
    """The d x d orthogonal Q of a secret (float64)."""
    seed = hmac.new(bytes(secret), SEED_LABEL, hashlib.sha256).digest()
    q, r = np.linalg.qr(_normals(seed, int(d)))
    return q * np.where(np.diag(r) < 0, -1.0, 1.0)[None, :]


class TemplateTransform:
    """t = Q e for embeddings e of size d; repr and str show the secret's id only."""

    def __init__(self, secret: bytes, dim: int, source: str = "given"):
        _check(secret, source)
        self.key_id = template_key_id(secret)
        self.dim = int(dim)
        self.source = source
        self._q = orthogonal_matrix(secret, self.dim).astype(np.float32)

    def __repr__(self) -> str:
        return f"TemplateTransform(key_id={self.key_id}, dim={self.dim}, source={self.source})"

    __str__ = __repr__

    def apply(self, embeddings) -> np.ndarray:
        """[d] or [N, d] float embeddings -> templates of the same shape (float32)."""
        e = np.asarray(embeddings, dtype=np.float32)
        if e.shape[-1] != self.dim:
            raise ValueError(f"embedding size {e.shape[-1]} != the transform's {self.dim}")
        return e @ self._q.T


class SecretSource:
    """A template secret read from a file or the environment, not yet bound to an embedding size.
    repr never shows the secret."""

    def __init__(self, secret: bytes, source: str):
        self._secret = secret
        self.source = source
        self.key_id = template_key_id(secret)

    def __repr__(self) -> str:
        return f"SecretSource(key_id={self.key_id}, source={self.source})"

    def transform(self, dim: int) -> TemplateTransform:
        return TemplateTransform(self._secret, dim, self.source)


def _check(secret: bytes, source: str) -> None:
    if len(secret) < MIN_SECRET_BYTES:
        raise TemplateKeyError(
            f"the template secret from {source} is {len(secret)} bytes; use at least {MIN_SECRET_BYTES} "
            "random bytes, e.g. `head -c 32 /dev/urandom | base64 > template.key`"
        )


def _clean(raw: bytes) -> bytes:
    return raw.strip(b"\r\n")


def load_secret(key_file=None, environ=None) -> SecretSource | None:
    """The template secret from --template-key-file or $PPFR_TEMPLATE_KEY (one of them), or None."""
    environ = os.environ if environ is None else environ
    env = environ.get(ENV_VAR)
    if key_file and env:
        raise TemplateKeyError(f"give the template secret one way only: --template-key-file or ${ENV_VAR}")
    if key_file:
        path = Path(key_file)
        try:
            raw = path.read_bytes()
        except OSError as err:
            raise TemplateKeyError(f"--template-key-file {path}: cannot read ({err.strerror})") from None
        secret, source = _clean(raw), f"--template-key-file {path}"
    elif env:
        secret, source = _clean(env.encode()), f"${ENV_VAR}"
    else:
        return None
    _check(secret, source)
    return SecretSource(secret, source)


def file_is_shared(path) -> bool:
    try:
        return bool(Path(path).stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO))
    except OSError:
        return False
