"""The shared gallery: PostgreSQL with the pgvector extension, for several server replicas.

Consistency: every call reads PostgreSQL at the time of the call; nothing is cached in the process. A write
(enroll, delete) is committed (WAL flushed: synchronous_commit stays on) before it returns, so any replica's
next request sees it: enroll on A, verify on B; delete on B, NOT_FOUND on A. Writes to one subject are
serialised by a row lock on its `ppfr_subjects` row (which also keeps its template count), so concurrent
enrolls, idempotent retries and deletes from different replicas cannot interleave badly.

1:N search runs in PostgreSQL: exact (a sequential scan, every distance computed) while the table holds at
most `exact_max` templates, and through the pgvector HNSW index (inner product on unit vectors) beyond it,
with `hnsw.ef_search` = `ef_search`. Inserts maintain the index: no rebuild, O(log n) per enroll.

Connections: one per thread that uses the gallery (the server: its event loop and its write thread), opened
on first use, reopened after a failure.
"""

import threading
import time

import numpy as np
from ppfr.cloud.gallery import (
    POSTGRES_EF_SEARCH,
    POSTGRES_EXACT_MAX,
    Enrollment,
    GalleryError,
    Match,
    check_meta,
    check_page_size,
    decode_page_token,
    encode_page_token,
    unit,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS ppfr_meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS ppfr_subjects (
    subject_id text COLLATE "C" PRIMARY KEY,
    template_count integer NOT NULL
);
CREATE TABLE IF NOT EXISTS ppfr_templates (
    template_id bigserial PRIMARY KEY,
    subject_id text COLLATE "C" NOT NULL,
    embedding vector({dim}) NOT NULL,
    create_time double precision NOT NULL,
    idempotency_key text
);
CREATE INDEX IF NOT EXISTS ppfr_templates_subject ON ppfr_templates (subject_id);
CREATE UNIQUE INDEX IF NOT EXISTS ppfr_templates_idempotency ON ppfr_templates (subject_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
"""
HNSW_INDEX = "ppfr_templates_hnsw"
SCHEMA_LOCK = 0x70706672  # advisory lock: replicas starting together create the schema once


def vector_text(vec: np.ndarray) -> str:
    """pgvector's text form, '[x,y,...]' (float32 values print exactly through repr of their float)."""
    return "[" + ",".join(map(repr, np.asarray(vec, np.float32).tolist())) + "]"


class PostgresGallery:
    backend = "postgres"

    def __init__(
        self,
        url: str,
        embedding_size: int,
        recognizer_sha256: str = "",
        exact_max: int = POSTGRES_EXACT_MAX,
        ef_search: int = POSTGRES_EF_SEARCH,
        hnsw_m: int = 16,
        ef_construction: int = 64,
        create_index: bool = True,
    ):
        try:
            import psycopg
        except ImportError:
            raise GalleryError(
                "a postgresql:// gallery needs psycopg: pip install 'ppfr[cloud]' (psycopg[binary])"
            ) from None
        self._psycopg = psycopg
        self.url = url
        self.embedding_size = int(embedding_size)
        self.exact_max = int(exact_max)
        self.ef_search = int(ef_search)
        self.hnsw = {"m": int(hnsw_m), "ef_construction": int(ef_construction)}
        self._local = threading.local()
        self._all: list = []
        self._all_lock = threading.Lock()
        self._size_cache = (0.0, 0)
        self._closed = False
        self._setup(recognizer_sha256, create_index)

    # --- connections -------------------------------------------------------------------------------
    def _connect(self):
        try:
            conn = self._psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        except self._psycopg.Error as err:
            raise GalleryError(f"cannot connect to the gallery database: {_short(err)}") from None
        with self._all_lock:
            self._all.append(conn)
        return conn

    def _conn(self):
        if self._closed:
            raise GalleryError("the gallery is closed")
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.broken:
            conn = self._local.conn = self._connect()
        return conn

    def _run(self, fn, retry: bool = True):
        """fn(conn). A read is retried once on a fresh connection when the old one broke (server restart,
        idle drop); a write is not (it may have committed before the connection broke: the caller retries
        with an idempotency key)."""
        try:
            return fn(self._conn())
        except self._psycopg.OperationalError as err:
            conn = getattr(self._local, "conn", None)
            if not retry or conn is None or not (conn.closed or conn.broken):
                raise GalleryError(f"gallery database error: {_short(err)}") from None
            return fn(self._conn())

    def _setup(self, recognizer_sha256: str, create_index: bool) -> None:
        psycopg = self._psycopg
        conn = self._conn()
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
                installed = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'").fetchone()
                if not installed:
                    conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
                conn.execute(SCHEMA.format(dim=self.embedding_size))
                stored = dict(conn.execute("SELECT key, value FROM ppfr_meta").fetchall())
                column = conn.execute(
                    "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                    "WHERE attrelid = 'ppfr_templates'::regclass AND attname = 'embedding'"
                ).fetchone()[0]
                stored.setdefault("embedding_size", column.removeprefix("vector(").rstrip(")"))
                wanted = {"embedding_size": str(self.embedding_size), "recognizer_sha256": recognizer_sha256}
                check_meta(stored, wanted, "the PostgreSQL gallery")
                for key, value in wanted.items():
                    if value:
                        conn.execute(
                            "INSERT INTO ppfr_meta (key, value) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                            (key, value),
                        )
                if create_index:
                    self._create_index(conn)
        except psycopg.errors.FeatureNotSupported as err:
            raise GalleryError(f"pgvector is missing: {_short(err)}") from None
        except (psycopg.errors.UndefinedFile, psycopg.errors.InsufficientPrivilege) as err:
            raise GalleryError(
                "the PostgreSQL gallery needs the pgvector extension: install it and run "
                f"`CREATE EXTENSION vector;` in this database as a superuser ({_short(err)})"
            ) from None
        except psycopg.Error as err:
            raise GalleryError(f"cannot set up the gallery tables: {_short(err)}") from None

    def _create_index(self, conn) -> None:
        conn.execute(
            f"CREATE INDEX IF NOT EXISTS {HNSW_INDEX} ON ppfr_templates USING hnsw (embedding vector_ip_ops) "
            f"WITH (m = {self.hnsw['m']}, ef_construction = {self.hnsw['ef_construction']})"
        )

    def has_index(self) -> bool:
        return bool(self._run(lambda c: c.execute("SELECT to_regclass(%s)", (HNSW_INDEX,)).fetchone()[0]))

    # --- reads ---------------------------------------------------------------------------------------
    @property
    def subject_count(self) -> int:
        return int(self._run(lambda c: c.execute("SELECT count(*) FROM ppfr_subjects").fetchone()[0]))

    @property
    def template_count(self) -> int:
        return int(self._run(lambda c: c.execute("SELECT count(*) FROM ppfr_templates").fetchone()[0]))

    def has_subject(self, subject_id: str) -> bool:
        sql = "SELECT 1 FROM ppfr_subjects WHERE subject_id = %s"
        return self._run(lambda c: c.execute(sql, (subject_id,)).fetchone()) is not None

    def verify(self, subject_id: str, embedding) -> float | None:
        sql = "SELECT max(-(embedding <#> %s::vector)) FROM ppfr_templates WHERE subject_id = %s"
        probe = vector_text(unit(embedding))
        score = self._run(lambda c: c.execute(sql, (probe, subject_id)).fetchone()[0])
        return None if score is None else float(score)

    def _size(self) -> int:
        """Templates in the table, for choosing exact or HNSW search: the planner's estimate
        (pg_class.reltuples, kept by autovacuum/ANALYZE), refreshed at most every 5 s."""
        at, size = self._size_cache
        if time.monotonic() - at > 5.0:
            size = self._run(
                lambda c: c.execute(
                    "SELECT reltuples::bigint FROM pg_class WHERE oid = 'ppfr_templates'::regclass"
                ).fetchone()[0]
            )
            if size < 0:  # never analysed
                size = self.template_count
            self._size_cache = (time.monotonic(), int(size))
        return self._size_cache[1]

    def identify(self, embedding, top_k: int, exact: bool | None = None) -> list[Match]:
        """The top_k subjects by best template score. The query walks templates in score order and keeps
        the first top_k distinct subjects; exact=None chooses by the table size (exact_max)."""
        probe = vector_text(unit(embedding))
        if exact is None:
            exact = self._size() <= self.exact_max
        want = max(4 * top_k, 16)

        # One statement, one round trip. Exact: ordering by an expression the index cannot serve forces a
        # full scan. HNSW: ORDER BY <#> LIMIT through the index, with the connection's hnsw.ef_search (set
        # once per connection, raised when a query needs more rows).
        order = "(embedding <#> %s::vector) + 0" if exact else "embedding <#> %s::vector"
        sql = f"SELECT subject_id, -(embedding <#> %s::vector) FROM ppfr_templates ORDER BY {order} LIMIT %s"

        def query(conn, limit):
            ef = max(self.ef_search, limit)
            if not exact and getattr(self._local, "ef", None) != (conn, ef):
                # enable_seqscan off: the index is used whenever it exists, at any table size (the exact
                # query cannot use it and still scans; other queries use their B-trees)
                conn.execute(f"SET enable_seqscan = off; SET hnsw.ef_search = {ef}")
                self._local.ef = (conn, ef)
            return conn.execute(sql, (probe, probe, limit)).fetchall()

        while True:
            rows = self._run(lambda c, n=want: query(c, n))
            best: dict[str, float] = {}
            for subject_id, score in rows:
                if subject_id not in best:
                    best[subject_id] = float(score)
                    if len(best) == top_k:
                        break
            # fewer rows than asked: there are no more (exact) or the index found no more (HNSW, whose
            # candidate list is ef_search long: retry longer up to 1000, pgvector's limit)
            if len(best) >= top_k or len(rows) < want or want >= 1000:
                return [Match(s, v) for s, v in best.items()]
            want = min(1000, want * 4)

    def list_subjects(self, page_size: int, page_token: str = "") -> tuple[list[tuple[str, int]], str]:
        after, size = decode_page_token(page_token), check_page_size(page_size)
        sql = (
            "SELECT subject_id, template_count FROM ppfr_subjects WHERE subject_id > %s "
            "ORDER BY subject_id LIMIT %s"
        )
        rows = self._run(lambda c: c.execute(sql, ("" if after is None else after, size + 1)).fetchall())
        page = [(s, int(n)) for s, n in rows[:size]]
        return page, encode_page_token(page[-1][0]) if len(rows) > size else ""

    # --- writes (each one transaction, committed before it returns) ------------------------------------
    def enroll(self, subject_id: str, embedding, idempotency_key: str | None = None) -> Enrollment:
        vec = unit(embedding)
        if vec.shape != (self.embedding_size,):
            raise ValueError(f"embedding has shape {vec.shape}, expected ({self.embedding_size},)")
        text = vector_text(vec)
        UniqueViolation = self._psycopg.errors.UniqueViolation

        def existing(conn):
            return conn.execute(
                "SELECT t.template_id, t.create_time, s.template_count FROM ppfr_templates t "
                "JOIN ppfr_subjects s USING (subject_id) WHERE t.subject_id = %s AND t.idempotency_key = %s",
                (subject_id, idempotency_key),
            ).fetchone()

        def write(conn):
            if idempotency_key and (found := existing(conn)) is not None:
                return Enrollment(subject_id, int(found[0]), int(found[2]), float(found[1]))
            now = time.time()
            try:
                # One statement (one round trip, its own transaction): lock/upsert the subject's row first
                # (the template insert reads it), which serialises every write to this subject across
                # replicas, then insert the template.
                template_id, count = conn.execute(
                    "WITH s AS (INSERT INTO ppfr_subjects (subject_id, template_count) VALUES (%s, 1) "
                    "  ON CONFLICT (subject_id) DO UPDATE "
                    "  SET template_count = ppfr_subjects.template_count + 1 RETURNING template_count), "
                    "t AS (INSERT INTO ppfr_templates (subject_id, embedding, create_time, idempotency_key) "
                    "  SELECT %s, %s::vector, %s, %s FROM s RETURNING template_id) "
                    "SELECT t.template_id, s.template_count FROM t, s",
                    (subject_id, subject_id, text, now, idempotency_key or None),
                ).fetchone()
            except UniqueViolation:  # the same key committed meanwhile (a concurrent retry)
                found = existing(conn)
                return Enrollment(subject_id, int(found[0]), int(found[2]), float(found[1]))
            return Enrollment(subject_id, int(template_id), int(count), now)

        return self._run(write, retry=False)

    def delete(self, subject_id: str) -> int:
        def write(conn):
            with conn.transaction():
                locked = conn.execute(
                    "DELETE FROM ppfr_subjects WHERE subject_id = %s RETURNING template_count", (subject_id,)
                ).fetchone()
                if locked is None:
                    return 0
                return conn.execute(
                    "DELETE FROM ppfr_templates WHERE subject_id = %s", (subject_id,)
                ).rowcount

        return self._run(write, retry=False)

    def delete_template(self, template_id: int) -> str | None:
        def write(conn):
            owner = conn.execute(
                "SELECT subject_id FROM ppfr_templates WHERE template_id = %s", (int(template_id),)
            ).fetchone()
            if owner is None:
                return None
            with conn.transaction():  # lock order as in enroll/delete: subject row, then templates
                conn.execute("SELECT 1 FROM ppfr_subjects WHERE subject_id = %s FOR UPDATE", owner)
                gone = conn.execute(
                    "DELETE FROM ppfr_templates WHERE template_id = %s AND subject_id = %s",
                    (int(template_id), owner[0]),
                ).rowcount
                if not gone:
                    return None  # deleted meanwhile by another call
                conn.execute(
                    "UPDATE ppfr_subjects SET template_count = template_count - 1 WHERE subject_id = %s",
                    owner,
                )
                conn.execute("DELETE FROM ppfr_subjects WHERE subject_id = %s AND template_count <= 0", owner)
            return owner[0]

        return self._run(write, retry=False)

    # --- bulk load (benchmarks, migrations) ------------------------------------------------------------
    def bulk_load(self, subject_ids, embeddings: np.ndarray, rebuild_index: bool = True) -> dict:
        """Appends many templates with COPY (no idempotency keys), then fixes the subject counts. The HNSW
        index is dropped first and rebuilt after (much faster than maintaining it row by row) unless
        rebuild_index=False, which leaves the table without it. Returns the seconds each step took."""
        conn = self._conn()
        times = {}
        t0 = time.perf_counter()
        conn.execute(f"DROP INDEX IF EXISTS {HNSW_INDEX}")
        now = time.time()
        with conn.transaction():
            with conn.cursor().copy(
                "COPY ppfr_templates (subject_id, embedding, create_time) FROM STDIN"
            ) as copy:
                for s, v in zip(subject_ids, np.asarray(embeddings, np.float32)):
                    copy.write_row((s, vector_text(unit(v)), now))
            conn.execute(
                "INSERT INTO ppfr_subjects (subject_id, template_count) "
                "SELECT subject_id, count(*) FROM ppfr_templates GROUP BY subject_id "
                "ON CONFLICT (subject_id) DO UPDATE SET template_count = EXCLUDED.template_count"
            )
        conn.execute("ANALYZE ppfr_templates")
        times["load_s"] = time.perf_counter() - t0
        self._size_cache = (0.0, 0)
        if rebuild_index:
            times["index_build_s"] = self.build_index()
        return times

    def build_index(self, maintenance_work_mem: str = "2GB") -> float:
        """(Re)creates the HNSW index; returns the seconds it took."""
        conn = self._conn()
        t0 = time.perf_counter()
        with conn.transaction():
            conn.execute(f"SET LOCAL maintenance_work_mem = '{maintenance_work_mem}'")
            self._create_index(conn)
        return time.perf_counter() - t0

    def drop_index(self) -> None:
        self._conn().execute(f"DROP INDEX IF EXISTS {HNSW_INDEX}")

    def close(self) -> None:
        self._closed = True
        with self._all_lock:
            conns, self._all = self._all, []
        for conn in conns:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass


def _short(err) -> str:
    return str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
