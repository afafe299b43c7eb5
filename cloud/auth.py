"""API keys: who may call the server, for what, and how often.

A key is `ppfr_<key id>_<secret>`: the id is public (it names the key in `keys list` and `keys revoke`), the
secret is 32 random bytes. The key is shown once, at creation; the store keeps only its sha256 (a hash of a
high-entropy secret needs no salt or slow KDF). Each key carries scopes and a rate limit.

Where keys live (docs/cloud.md, "API keys"):
* a SQLite gallery: a key file of its own beside it (`<db>.keys`, mode 0600, or --keys FILE). Every call
  checks the file cheaply (a stat for its inode, SQLite's data_version for commits by other processes) and
  re-reads the keys when either changed, so `keys revoke` from another process, or a new file renamed over
  the old one by a deploy, acts at the next call.
* a PostgreSQL gallery: the table `ppfr_api_keys` in the gallery database, shared by every replica. Each
  replica holds the keys in memory and polls a version counter every POLL_S seconds: a revocation on any
  replica reaches all of them within about POLL_S plus a query, with no database round trip per call.
"""

import hashlib
import hmac
import os
import re
import secrets
import sqlite3
import threading
import time
from collections import OrderedDict, deque
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
    """The key file beside a gallery file: `<db>.keys` (a PostgreSQL gallery keeps its keys in a table)."""
    if "://" in str(db):
        raise KeyStoreError("the gallery is a database URL: its keys live in the database, not a file")
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


class _CachedKeys:
    """The active keys in memory (key id -> (sha256, ApiKey)); subclasses fill it and keep it fresh."""

    _keys: dict = {}

    def _fresh(self) -> None:
        pass

    def _set_rows(self, rows) -> None:
        self._keys = {r[0]: (r[2], _record(r)) for r in rows}

    def authenticate(self, key: str) -> ApiKey | None:
        """The active key this secret belongs to, or None (malformed, unknown, wrong secret, revoked)."""
        found = KEY_PATTERN.fullmatch(key)
        if not found:
            return None
        self._fresh()
        entry = self._keys.get(found.group(1))
        if entry is None or not entry[1].active or not hmac.compare_digest(entry[0], _hash(key)):
            return None
        return entry[1]

    def list_keys(self) -> list[ApiKey]:
        self._reload()
        return sorted((entry[1] for entry in self._keys.values()), key=lambda k: k.create_time)

    def _new(self, name: str, scopes: frozenset, rate: float) -> tuple[ApiKey, str, tuple]:
        if not name or len(name) > 100 or not name.isprintable():
            raise KeyStoreError("--name must be 1-100 printable characters")
        if not rate >= 0:
            raise KeyStoreError(f"--rate must be >= 0 (0 = unlimited), got {rate}")
        key_id = secrets.token_hex(6)
        secret = f"ppfr_{key_id}_{secrets.token_urlsafe(32)}"
        record = ApiKey(key_id, name, frozenset(scopes), float(rate), time.time())
        row = (key_id, name, _hash(secret), ",".join(sorted(scopes)), record.rate, record.create_time)
        return record, secret, row


COLUMNS = "key_id, name, sha256, scopes, rate, create_time, revoke_time"


def _record(row) -> ApiKey:
    return ApiKey(row[0], row[1], frozenset(row[3].split(",")), row[4], row[5], row[6])


class KeyStore(_CachedKeys):
    """The key file of a SQLite deployment."""

    def __init__(self, path, create: bool = True):
        self.path = Path(path)
        if not self.path.exists():
            if not create:
                raise KeyStoreError(f"key file {self.path} does not exist (create a key first)")
            try:
                create_private_file(self.path)
            except OSError as err:
                raise KeyStoreError(f"cannot create the key file {self.path}: {err.strerror}") from None
        self._lock = threading.Lock()
        self._db = None
        self._open()

    def _open(self) -> None:
        try:
            inode = _inode(self.path)
            # SQLite gives the -wal/-shm files the permissions of the database file.
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=5)
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
        except (sqlite3.Error, OSError) as err:
            raise KeyStoreError(f"cannot open the key file {self.path}: {err}") from None
        with self._lock:  # never close the connection under a thread that is reading through it
            old, self._db, self._inode, self._version = self._db, db, inode, None
            if old is not None:
                old.close()
        self._reload()

    def _reload(self) -> None:
        with self._lock:
            self._version = self._db.execute("PRAGMA data_version").fetchone()[0]
            self._set_rows(self._db.execute(f"SELECT {COLUMNS} FROM api_keys").fetchall())

    def _fresh(self) -> None:
        """A file renamed over ours (a deploy) is opened afresh; a commit by another process re-reads."""
        try:
            if _inode(self.path) != self._inode:
                self._open()
                return
            with self._lock:
                changed = self._db.execute("PRAGMA data_version").fetchone()[0] != self._version
        except (OSError, KeyStoreError, sqlite3.Error):
            self._keys = {}  # a key file that vanished or broke accepts nobody
            return
        if changed:
            self._reload()

    def create(self, name: str, scopes: frozenset, rate: float = DEFAULT_RATE) -> tuple[ApiKey, str]:
        """A new key; returns its record and the key itself, which is never stored or shown again."""
        record, secret, row = self._new(name, scopes, rate)
        with self._lock:
            self._db.execute(
                "INSERT INTO api_keys (key_id, name, sha256, scopes, rate, create_time) VALUES (?,?,?,?,?,?)",
                row,
            )
        self._reload()
        return record, secret

    def revoke(self, key_id: str) -> bool:
        """True if an active key was revoked now."""
        with self._lock:
            cur = self._db.execute(
                "UPDATE api_keys SET revoke_time = ? WHERE key_id = ? AND revoke_time IS NULL",
                (time.time(), key_id),
            )
        self._reload()
        return cur.rowcount == 1

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _inode(path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def shared_file_warning(path) -> str | None:
    """A warning for a key or secret file that other users can read or write, else None."""
    try:
        mode = Path(path).stat().st_mode
    except OSError:
        return None
    if mode & 0o022:
        return f"key file {path} is writable by other users: anyone could add a key (chmod 600 it)"
    if mode & 0o044:
        return f"key file {path} is readable by other users (chmod 600 it)"
    return None


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


def open_key_store(keys=None, db=None, create: bool = True, watch: bool = False):
    """The key store of a deployment: --keys FILE if given; else the gallery database's table for a
    postgresql:// gallery; else the key file beside a SQLite gallery (`<db>.keys`)."""
    if keys:
        return KeyStore(keys, create=create)
    if str(db).startswith(("postgresql://", "postgres://")):
        from ppfr.cloud.keys_postgres import PostgresKeyStore

        return PostgresKeyStore(str(db), watch=watch)
    return KeyStore(default_key_path(db), create=create)


class FailedAttempts:
    """Failed Verifies per subject over a sliding window: a subject with `limit` failures in the last
    `window_s` seconds is locked out (its Verifies answer a plain non-match) until the oldest ages out.
    Unknown subjects count like known ones, so the lock-out reveals nothing either. In memory, per replica;
    at most `max_subjects` subjects tracked (the least recently failed are forgotten first). limit 0 = off."""

    def __init__(self, limit: int, window_s: float, max_subjects: int = 100_000, clock=time.monotonic):
        self.limit, self.window_s, self.max_subjects, self._clock = (
            int(limit),
            float(window_s),
            max_subjects,
            clock,
        )
        self._failures: OrderedDict[str, deque] = OrderedDict()

    def locked(self, subject_id: str) -> bool:
        times = self._failures.get(subject_id)
        if not self.limit or times is None:
            return False
        cutoff = self._clock() - self.window_s
        while times and times[0] < cutoff:
            times.popleft()
        return len(times) >= self.limit

    def failed(self, subject_id: str) -> None:
        if not self.limit:
            return
        times = self._failures.pop(subject_id, None) or deque(maxlen=self.limit)
        times.append(self._clock())
        self._failures[subject_id] = times
        while len(self._failures) > self.max_subjects:
            self._failures.popitem(last=False)
