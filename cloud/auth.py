"""API keys: who may call the server, for what, and how often.

A key is `ppfr_<key id>_<secret>`: the id is public (it names the key in `keys list` and `keys revoke`), the
secret is 32 random bytes. The key is shown once, at creation; the store keeps only its sha256 (a hash of a
high-entropy secret needs no salt or slow KDF). Each key carries scopes and a rate limit.

The store is a small SQLite file of its own (mode 0600), independent of the gallery backend, so keys work
the same whether templates live in SQLite or PostgreSQL. The server looks the key up on every call, so a
key revoked by `ppfr-cloud keys revoke` (another process) stops working at the next call.
"""

import hashlib
import hmac
import os
import re
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

# verify: Verify, Identify; enroll: Enroll, DeleteTemplate; admin: DeleteSubject, ListSubjects.
SCOPES = ("verify", "enroll", "admin")
METHOD_SCOPES = {
    "Verify": "verify",
    "Identify": "verify",
    "Enroll": "enroll",
    "DeleteTemplate": "enroll",
    "DeleteSubject": "admin",
    "ListSubjects": "admin",
    "GetServerInfo": None,  # any valid key
}
DEFAULT_RATE = 100.0  # requests per second per key; 0 = unlimited
KEY_PATTERN = re.compile(r"ppfr_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")

SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    scopes TEXT NOT NULL,
    rate REAL NOT NULL,
    create_time REAL NOT NULL,
    revoke_time REAL
);
"""


class KeyStoreError(RuntimeError):
    """A key file that cannot be opened, or a key command with bad arguments."""


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    name: str
    scopes: frozenset
    rate: float
    create_time: float
    revoke_time: float | None = None

    @property
    def active(self) -> bool:
        return self.revoke_time is None


def default_key_path(db) -> Path:
    """The key file beside a gallery file: `<db>.keys`. A database URL has no "beside": --keys it is."""
    if "://" in str(db):
        raise KeyStoreError("the gallery is a database URL: give the API key file with --keys FILE")
    return Path(f"{db}.keys")


def create_private_file(path) -> None:
    """Creates `path` (and its folder) readable by the owner only, unless it exists already."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        pass


def parse_scopes(text: str) -> frozenset:
    scopes = frozenset(s.strip() for s in text.split(",") if s.strip())
    unknown = sorted(scopes - set(SCOPES))
    if unknown or not scopes:
        raise KeyStoreError(f"scopes must be a comma-separated subset of {','.join(SCOPES)}, got {text!r}")
    return scopes


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyStore:
    def __init__(self, path, create: bool = True):
        self.path = Path(path)
        if not self.path.exists():
            if not create:
                raise KeyStoreError(f"key file {self.path} does not exist (create a key first)")
            try:
                create_private_file(self.path)
            except OSError as err:
                raise KeyStoreError(f"cannot create the key file {self.path}: {err.strerror}") from None
        try:
            # SQLite gives the -wal/-shm files the permissions of the database file.
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=5)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(SCHEMA)
        except sqlite3.Error as err:
            raise KeyStoreError(f"cannot open the key file {self.path}: {err}") from None
        self._lock = threading.Lock()

    def create(self, name: str, scopes: frozenset, rate: float = DEFAULT_RATE) -> tuple[ApiKey, str]:
        """A new key; returns its record and the key itself, which is never stored or shown again."""
        if not name or len(name) > 100 or not name.isprintable():
            raise KeyStoreError("--name must be 1-100 printable characters")
        if not rate >= 0:
            raise KeyStoreError(f"--rate must be >= 0 (0 = unlimited), got {rate}")
        key_id = secrets.token_hex(6)
        secret = f"ppfr_{key_id}_{secrets.token_urlsafe(32)}"
        record = ApiKey(key_id, name, frozenset(scopes), float(rate), time.time())
        with self._lock:
            self._db.execute(
                "INSERT INTO api_keys (key_id, name, sha256, scopes, rate, create_time) VALUES (?,?,?,?,?,?)",
                (key_id, name, _hash(secret), ",".join(sorted(scopes)), record.rate, record.create_time),
            )
        return record, secret

    def list_keys(self) -> list[ApiKey]:
        with self._lock:
            rows = self._db.execute(
                "SELECT key_id, name, scopes, rate, create_time, revoke_time FROM api_keys "
                "ORDER BY create_time"
            ).fetchall()
        return [ApiKey(r[0], r[1], frozenset(r[2].split(",")), r[3], r[4], r[5]) for r in rows]

    def revoke(self, key_id: str) -> bool:
        """True if an active key was revoked now."""
        with self._lock:
            cur = self._db.execute(
                "UPDATE api_keys SET revoke_time = ? WHERE key_id = ? AND revoke_time IS NULL",
                (time.time(), key_id),
            )
        return cur.rowcount == 1

    def authenticate(self, key: str) -> ApiKey | None:
        """The active key this secret belongs to, or None (malformed, unknown, wrong secret, revoked)."""
        found = KEY_PATTERN.fullmatch(key)
        if not found:
            return None
        with self._lock:
            row = self._db.execute(
                "SELECT key_id, name, sha256, scopes, rate, create_time, revoke_time FROM api_keys "
                "WHERE key_id = ?",
                (found.group(1),),
            ).fetchone()
        if row is None or row[6] is not None or not hmac.compare_digest(row[2], _hash(key)):
            return None
        return ApiKey(row[0], row[1], frozenset(row[3].split(",")), row[4], row[5])

    def close(self) -> None:
        with self._lock:
            self._db.close()


class RateLimiter:
    """A token bucket per key: `rate` calls per second on average, bursts of up to one second's worth.
    In-process: each server replica enforces the limit on its own."""

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, key: ApiKey) -> bool:
        if key.rate <= 0:
            return True
        now = self._clock()
        burst = max(1.0, key.rate)
        tokens, last = self._buckets.get(key.key_id, (burst, now))
        tokens = min(burst, tokens + (now - last) * key.rate)
        allowed = tokens >= 1.0
        self._buckets[key.key_id] = (tokens - 1.0 if allowed else tokens, now)
        return allowed
