"""API keys in the PostgreSQL gallery database, shared by every replica (cloud/auth.py says why).

`ppfr_api_keys` holds the keys (sha256 of the secret only), `ppfr_key_version` one counter that every
create or revoke increments in the same transaction. A replica loads the keys once and then polls the
counter every POLL_S seconds on a thread of its own, re-reading the table when it moved: a call never waits
on the database for its key, and a revocation on any replica is refused everywhere within POLL_S plus one
query. While the database is unreachable the keys last read stay in force (the gallery calls fail anyway).
"""

import logging
import threading
import time

from ppfr.cloud.auth import COLUMNS, DEFAULT_RATE, ApiKey, KeyStoreError, _CachedKeys

log = logging.getLogger("ppfr.cloud")

POLL_S = 0.25
SCHEMA = """
CREATE TABLE IF NOT EXISTS ppfr_api_keys (
    key_id text PRIMARY KEY,
    name text NOT NULL,
    sha256 text NOT NULL,
    scopes text NOT NULL,
    rate double precision NOT NULL,
    create_time double precision NOT NULL,
    revoke_time double precision
);
CREATE TABLE IF NOT EXISTS ppfr_key_version (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    version bigint NOT NULL
);
INSERT INTO ppfr_key_version (one, version) VALUES (true, 0) ON CONFLICT DO NOTHING;
"""
BUMP = "UPDATE ppfr_key_version SET version = version + 1"


class PostgresKeyStore(_CachedKeys):
    def __init__(self, url: str, watch: bool = False):
        import psycopg

        self._psycopg, self.url, self.path = psycopg, url, "the gallery database (ppfr_api_keys)"
        self._lock = threading.Lock()
        self._conn = None
        self._version = None
        self._stop = threading.Event()
        try:
            with self._lock:
                self._connect().execute(SCHEMA)
        except psycopg.Error as err:
            raise KeyStoreError(f"cannot open the API key table: {_short(err)}") from None
        self._reload()
        self._thread = None
        if watch:  # servers follow changes; a CLI command reads once
            self._thread = threading.Thread(target=self._poll, name="ppfr-keys", daemon=True)
            self._thread.start()

    def _connect(self):
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = self._psycopg.connect(self.url, autocommit=True, connect_timeout=2)
        return self._conn

    def _reload(self) -> None:
        with self._lock:
            conn = self._connect()
            with conn.transaction():
                version = conn.execute("SELECT version FROM ppfr_key_version").fetchone()[0]
                rows = conn.execute(f"SELECT {COLUMNS} FROM ppfr_api_keys").fetchall()
        self._set_rows(rows)
        self._version = version

    def _poll(self) -> None:
        failing = False
        while not self._stop.wait(POLL_S):
            try:
                with self._lock:
                    version = self._connect().execute("SELECT version FROM ppfr_key_version").fetchone()[0]
                if version != self._version:
                    self._reload()
                failing = False
            except self._psycopg.Error as err:
                if not failing:
                    log.warning(
                        "cannot refresh the API keys (the last ones read stay in force): %s", _short(err)
                    )
                failing = True

    def _write(self, sql: str, params) -> int:
        try:
            with self._lock:
                conn = self._connect()
                with conn.transaction():
                    count = conn.execute(sql, params).rowcount
                    conn.execute(BUMP)
        except self._psycopg.Error as err:
            raise KeyStoreError(f"cannot change the API key table: {_short(err)}") from None
        self._reload()
        return count

    def create(self, name: str, scopes: frozenset, rate: float = DEFAULT_RATE) -> tuple[ApiKey, str]:
        record, secret, row = self._new(name, scopes, rate)
        self._write(
            "INSERT INTO ppfr_api_keys (key_id, name, sha256, scopes, rate, create_time) "
            "VALUES (%s, %s, %s, %s, %s, %s)",
            row,
        )
        return record, secret

    def revoke(self, key_id: str) -> bool:
        return (
            self._write(
                "UPDATE ppfr_api_keys SET revoke_time = %s WHERE key_id = %s AND revoke_time IS NULL",
                (time.time(), key_id),
            )
            == 1
        )

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            if self._conn is not None:
                self._conn.close()


def _short(err) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__
