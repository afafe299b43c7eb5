"""The shared gallery: PostgreSQL with the pgvector extension, for several server replicas.

PostgreSQL is the store of record and the channel between replicas; every replica answers reads from its own
in-process template matrix (cloud/matrix.py, the same as the SQLite gallery's, with the same compressed index
beyond `exact_max` templates, cloud/ann.py). Every write also appends to a change log (`ppfr_changes`:
template added or removed, numbered by `ppfr_log_head`), and every read first applies the log entries it has
not seen: one indexed query, one round trip.

Consistency: a write (enroll, delete) is committed (WAL flushed: synchronous_commit stays on) before it
returns, and a read applies every log entry committed before the read began, so any replica's next request
sees it: enroll on A, verify on B; delete on B, NOT_FOUND on A. Log numbers follow commit order because every
write takes the row lock on `ppfr_log_head` first and holds it to its commit: writes from all replicas are
serialised (about 1 ms each), the price of a log that a reader can follow with `seq > last`. The same lock
keeps concurrent enrolls, idempotent retries and deletes of one subject from interleaving badly.

Why not search in PostgreSQL: pgvector's HNSW index was measured here first, at 1M templates: 17 ms per
insert (the target is 5) and recall@1 0.85 at ef_search 800, 92 ms per search (docs/cloud.md). Each replica
holds the templates in memory instead (512 MB per million 128-d templates, plus 16 MB of codes).

Connections: one per thread that uses the gallery (the server's gallery threads), opened on first use,
reopened after a failure. A database that cannot be reached raises GalleryUnavailable (the server answers
UNAVAILABLE and reports NOT_SERVING until `ping()` succeeds again).

Deletion: DELETE leaves the row's bytes in the table's pages until VACUUM reuses them and in the WAL
segments until they are recycled; docs/cloud.md ("Deletion that erases") says what an operator runs.
"""

import functools
import threading
import time

import numpy as np
from ppfr.cloud.gallery import (
    EXACT_MAX,
    AuditLog,
    Enrollment,
    GalleryError,
    GalleryUnavailable,
    MatrixGallery,
    SubjectTaken,
    check_meta,
    check_page_size,
    decode_page_token,
    encode_page_token,
    meta_wanted,
    new_template_id,
    unit,
    unit_rows,
)

# The gallery's settings and its audit log; sealed stores (cloud/sealed_postgres.py) keep them here too.
AUDIT_SCHEMA = """
CREATE TABLE IF NOT EXISTS ppfr_meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS ppfr_audit (
    seq bigserial PRIMARY KEY,
    time double precision NOT NULL,
    key_id text,
    action text NOT NULL,
    subject_hash text NOT NULL
);
CREATE OR REPLACE RULE ppfr_audit_no_update AS ON UPDATE TO ppfr_audit DO INSTEAD NOTHING;
CREATE OR REPLACE RULE ppfr_audit_no_delete AS ON DELETE TO ppfr_audit DO INSTEAD NOTHING;
"""
SCHEMA = """
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
ALTER TABLE ppfr_templates ADD COLUMN IF NOT EXISTS key_id text;
CREATE INDEX IF NOT EXISTS ppfr_templates_subject ON ppfr_templates (subject_id);
CREATE UNIQUE INDEX IF NOT EXISTS ppfr_templates_idempotency ON ppfr_templates (subject_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS ppfr_log_head (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    seq bigint NOT NULL
);
INSERT INTO ppfr_log_head (one, seq) VALUES (true, 0) ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS ppfr_changes (
    seq bigint NOT NULL,
    template_id bigint NOT NULL,
    added boolean NOT NULL,
    PRIMARY KEY (seq, template_id)
);
"""
OLD_HNSW_INDEX = "ppfr_templates_hnsw"  # made by earlier versions; dropped (it made every insert slow)
SCHEMA_LOCK = 0x70706672  # advisory lock: replicas starting together create the schema once
NEXT_SEQ = "UPDATE ppfr_log_head SET seq = seq + 1 RETURNING seq"  # every write's first statement
# One enrollment: the subject's count, the template, its change-log entry, in one statement.
ENROLL = (
    "WITH s AS (INSERT INTO ppfr_subjects (subject_id, template_count) VALUES (%s, 1) "
    "  ON CONFLICT (subject_id) DO UPDATE "
    "  SET template_count = ppfr_subjects.template_count + 1 RETURNING template_count), "
    "t AS (INSERT INTO ppfr_templates "
    "  (template_id, subject_id, embedding, create_time, idempotency_key, key_id) "
    "  SELECT %s, %s, %s::vector, %s, %s, %s FROM s RETURNING template_id), "
    "c AS (INSERT INTO ppfr_changes (seq, template_id, added) "
    "  SELECT %s, template_id, true FROM t) "
    "SELECT t.template_id, s.template_count FROM t, s"
)
CONNECT_TIMEOUT_S = 2  # a database that does not answer is reported unavailable within the health check's 2 s


def vector_text(vec: np.ndarray) -> str:
    """pgvector's text form, '[x,y,...]' (float32 values print exactly through repr of their float)."""
    return "[" + ",".join(map(repr, np.asarray(vec, np.float32).tolist())) + "]"


class PostgresGallery(MatrixGallery):
    backend = "postgres"

    def __init__(
        self,
        url: str,
        embedding_size: int,
        recognizer_sha256: str = "",
        exact_max: int = EXACT_MAX,
        ann_options: dict | None = None,
        template_key: str = "",
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
        self._local = threading.local()
        self._all: list = []
        self._all_lock = threading.Lock()
        self._closed = False
        self._vector_oid = None
        self._sync_lock = threading.Lock()  # one thread applies the log at a time (the matrix's one writer)
        self._seq = 0  # log entries applied up to here
        self._synced_at = -1.0  # monotonic time the last applied log query was sent
        self._setup(meta_wanted(self.embedding_size, recognizer_sha256, template_key))
        self._init_matrix(exact_max, ann_options)
        self._load()
        self._maybe_attach_ann()

    # --- connections -------------------------------------------------------------------------------
    def _connect(self):
        try:
            conn = self._psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
            if self._vector_oid is not None:
                conn.adapters.register_loader(self._vector_oid, _vector_loader(self._psycopg))
        except self._psycopg.Error as err:
            raise GalleryUnavailable(f"cannot connect to the gallery database: {_short(err)}") from None
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
        lost = (self._psycopg.OperationalError, self._psycopg.InterfaceError)  # the connection, not the query
        try:
            return fn(self._conn())
        except lost as err:
            conn = getattr(self._local, "conn", None)
            if not retry or conn is None or not (conn.closed or conn.broken):
                raise GalleryUnavailable(f"gallery database error: {_short(err)}") from None
            try:
                return fn(self._conn())
            except lost as again:
                raise GalleryUnavailable(f"gallery database error: {_short(again)}") from None

    def ping(self) -> None:
        self._run(lambda c: c.execute("SELECT 1").fetchone())

    def _setup(self, wanted: dict) -> None:
        psycopg = self._psycopg
        conn = self._conn()
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
                installed = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'").fetchone()
                if not installed:
                    conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
                conn.execute(AUDIT_SCHEMA + SCHEMA.format(dim=self.embedding_size))
                conn.execute(f"DROP INDEX IF EXISTS {OLD_HNSW_INDEX}")
                stored = dict(conn.execute("SELECT key, value FROM ppfr_meta").fetchall())
                column = conn.execute(
                    "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                    "WHERE attrelid = 'ppfr_templates'::regclass AND attname = 'embedding'"
                ).fetchone()[0]
                stored.setdefault("embedding_size", column.removeprefix("vector(").rstrip(")"))
                has_templates = conn.execute("SELECT 1 FROM ppfr_templates LIMIT 1").fetchone() is not None
                check_meta(stored, wanted, "the PostgreSQL gallery", has_templates)
                for key, value in wanted.items():
                    if value:
                        conn.execute(
                            "INSERT INTO ppfr_meta (key, value) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                            (key, value),
                        )
                self._audit = AuditLog(conn, postgres=True)
                self._vector_oid = conn.execute("SELECT 'vector'::regtype::oid").fetchone()[0]
        except psycopg.errors.FeatureNotSupported as err:
            raise GalleryError(f"pgvector is missing: {_short(err)}") from None
        except (psycopg.errors.UndefinedFile, psycopg.errors.InsufficientPrivilege) as err:
            raise GalleryError(
                "the PostgreSQL gallery needs the pgvector extension: install it and run "
                f"`CREATE EXTENSION vector;` in this database as a superuser ({_short(err)})"
            ) from None
        except psycopg.Error as err:
            raise GalleryError(f"cannot set up the gallery tables: {_short(err)}") from None
        conn.adapters.register_loader(self._vector_oid, _vector_loader(psycopg))

    # --- the in-process copy -------------------------------------------------------------------------
    def _load(self, chunk: int = 50_000) -> None:
        """Every template and the log position they reflect, from one snapshot."""
        conn = self._conn()
        with self._sync_lock, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            self._seq = int(conn.execute("SELECT seq FROM ppfr_log_head").fetchone()[0])
            with conn.cursor(name="ppfr_load", binary=True) as cur:
                cur.itersize = chunk
                cur.execute(
                    "SELECT template_id, subject_id, embedding FROM ppfr_templates ORDER BY template_id"
                )
                while rows := cur.fetchmany(chunk):
                    self._add_rows(rows)

    def _add_rows(self, rows) -> None:
        known = self._matrix._row_of
        rows = [r for r in rows if r[1] is not None and int(r[0]) not in known]
        if rows:
            ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
            self._matrix.add_many([r[1] for r in rows], ids, unit_rows(np.stack([r[2] for r in rows])))

    def _refresh(self) -> None:
        """Applies the log entries committed before this call began. A query sent after that moment sees
        them all, so a caller that waited for another thread's newer query needs none of its own."""
        began = time.monotonic()
        with self._sync_lock:
            if self._synced_at >= began:
                return
            sent = time.monotonic()
            rows = self._run(
                lambda c: (
                    c.cursor(binary=True)
                    .execute(
                        "SELECT c.seq, c.added, c.template_id, t.subject_id, t.embedding FROM ppfr_changes c "
                        "LEFT JOIN ppfr_templates t ON c.added AND t.template_id = c.template_id "
                        "WHERE c.seq > %s ORDER BY c.seq, c.template_id",
                        (self._seq,),
                    )
                    .fetchall()
                )
            )
            adds = []
            for _seq, added, template_id, subject_id, embedding in rows:
                if added:
                    adds.append((template_id, subject_id, embedding))
                    continue
                self._add_rows(adds)  # in log order: a template removed after it was added stays removed
                adds = []
                self._matrix.remove_template(template_id)
            self._add_rows(adds)
            if rows:
                self._seq = int(rows[-1][0])
                self._maybe_attach_ann()
            self._synced_at = sent

    # --- reads that PostgreSQL answers -----------------------------------------------------------------
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
    def enroll(
        self,
        subject_id: str,
        embedding,
        idempotency_key: str | None = None,
        owner: str | None = None,
        exclusive: bool = False,
    ) -> Enrollment:
        """As SqliteGallery.enroll (owner, exclusive: cloud/gallery.py)."""
        vec = unit(embedding)
        if vec.shape != (self.embedding_size,):
            raise ValueError(f"embedding has shape {vec.shape}, expected ({self.embedding_size},)")
        text = vector_text(vec)
        UniqueViolation = self._psycopg.errors.UniqueViolation

        def write(conn):
            if exclusive and _owned_by_other(conn, subject_id, owner):
                raise SubjectTaken(subject_id)
            if idempotency_key and (found := _existing(conn, subject_id, idempotency_key)) is not None:
                return found
            now = time.time()
            try:
                with conn.transaction():
                    seq = conn.execute(NEXT_SEQ).fetchone()[0]
                    if exclusive and _owned_by_other(conn, subject_id, owner):  # under the write lock
                        raise SubjectTaken(subject_id)
                    row = (subject_id, new_template_id(), subject_id, text, now, idempotency_key, owner, seq)
                    template_id, count = conn.execute(ENROLL, row).fetchone()
                    self._audit.record(conn, "enroll", subject_id, owner)
            except UniqueViolation:  # the same key committed meanwhile (a concurrent retry)
                return _existing(conn, subject_id, idempotency_key)
            return Enrollment(subject_id, int(template_id), int(count), now)

        return self._run(write, retry=False)

    def delete(self, subject_id: str, actor: str | None = None) -> int:
        def write(conn):
            with conn.transaction():
                seq = conn.execute(NEXT_SEQ).fetchone()[0]
                if (
                    conn.execute("DELETE FROM ppfr_subjects WHERE subject_id = %s", (subject_id,)).rowcount
                    == 0
                ):
                    return 0
                self._audit.record(conn, "delete_subject", subject_id, actor)
                return conn.execute(
                    "WITH t AS (DELETE FROM ppfr_templates WHERE subject_id = %s RETURNING template_id) "
                    "INSERT INTO ppfr_changes (seq, template_id, added) SELECT %s, template_id, false FROM t",
                    (subject_id, seq),
                ).rowcount

        return self._run(write, retry=False)

    def delete_template(
        self, template_id: int, owner: str | None = None, actor: str | None = None
    ) -> str | None:
        key_id = owner

        def write(conn):
            with conn.transaction():
                seq = conn.execute(NEXT_SEQ).fetchone()[0]
                owner = conn.execute(
                    "DELETE FROM ppfr_templates WHERE template_id = %s AND (%s::text IS NULL OR key_id = %s) "
                    "RETURNING subject_id",
                    (int(template_id), key_id, key_id),
                ).fetchone()
                if owner is None:
                    return None
                conn.execute(
                    "INSERT INTO ppfr_changes (seq, template_id, added) VALUES (%s, %s, false)",
                    (seq, int(template_id)),
                )
                conn.execute(
                    "UPDATE ppfr_subjects SET template_count = template_count - 1 WHERE subject_id = %s",
                    owner,
                )
                conn.execute("DELETE FROM ppfr_subjects WHERE subject_id = %s AND template_count <= 0", owner)
                self._audit.record(conn, "delete_template", owner[0], actor or key_id)
            return owner[0]

        return self._run(write, retry=False)

    # --- bulk load (benchmarks, migrations) ------------------------------------------------------------
    def bulk_load(self, subject_ids, embeddings: np.ndarray) -> dict:
        """Appends many templates with COPY (no idempotency keys) in one transaction, logged under one log
        number, then fixes the subject counts. Returns the seconds it took."""
        conn = self._conn()
        t0 = time.perf_counter()
        now = time.time()
        with conn.transaction():
            seq = conn.execute(NEXT_SEQ).fetchone()[0]
            ids = [new_template_id() for _ in range(len(embeddings))]
            with conn.cursor().copy(
                "COPY ppfr_templates (template_id, subject_id, embedding, create_time) FROM STDIN"
            ) as copy:
                for t, s, v in zip(ids, subject_ids, np.asarray(embeddings, np.float32)):
                    copy.write_row((t, s, vector_text(unit(v)), now))
            conn.execute(
                "INSERT INTO ppfr_changes (seq, template_id, added) SELECT %s, unnest(%s::bigint[]), true",
                (seq, ids),
            )
            conn.execute(
                "INSERT INTO ppfr_subjects (subject_id, template_count) "
                "SELECT subject_id, count(*) FROM ppfr_templates GROUP BY subject_id "
                "ON CONFLICT (subject_id) DO UPDATE SET template_count = EXCLUDED.template_count"
            )
        conn.execute("ANALYZE ppfr_templates")
        return {"load_s": time.perf_counter() - t0}

    def close(self) -> None:
        self._closed = True
        self._stop_ann()
        with self._all_lock:
            conns, self._all = self._all, []
        for conn in conns:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass


def _existing(conn, subject_id: str, idempotency_key: str) -> Enrollment | None:
    found = conn.execute(
        "SELECT t.template_id, t.create_time, s.template_count FROM ppfr_templates t "
        "JOIN ppfr_subjects s USING (subject_id) WHERE t.subject_id = %s AND t.idempotency_key = %s",
        (subject_id, idempotency_key),
    ).fetchone()
    return None if found is None else Enrollment(subject_id, int(found[0]), int(found[2]), float(found[1]))


def _owned_by_other(conn, subject_id: str, owner: str | None) -> bool:
    return (
        conn.execute(
            "SELECT 1 FROM ppfr_templates WHERE subject_id = %s AND key_id IS DISTINCT FROM %s LIMIT 1",
            (subject_id, owner),
        ).fetchone()
        is not None
    )


@functools.cache
def _vector_loader(psycopg):
    """pgvector's binary form (uint16 dim, uint16 unused, dim big-endian float32) as a numpy array."""

    class VectorLoader(psycopg.adapt.Loader):
        format = psycopg.pq.Format.BINARY

        def load(self, data):
            return np.frombuffer(bytes(data), ">f4", offset=4).astype(np.float32)

    return VectorLoader


def _short(err) -> str:
    return str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
