"""The enrolled templates, behind one small interface with two backends (docs/cloud.md, "Gallery"):

* `SqliteGallery` (the default, `--db FILE`): an embedded SQLite file (WAL, synchronous=FULL, so an
  enrollment is on disk before Enroll answers) and an in-process matrix of L2-normalised templates kept in
  step (cloud/matrix.py: append + tombstone, O(1) per write). One server process owns the file.
* `PostgresGallery` (`--db postgresql://...`, cloud/gallery_postgres.py): PostgreSQL with pgvector, shared
  by several server replicas. Each replica keeps the same in-process matrix, brought up to date from the
  database's change log at the start of every request, so a write on one replica is seen by every replica
  on its next request.

`open_gallery(db, embedding_size, recognizer_sha256, template_key=...)` picks the backend from `db`. A
gallery records the recognizer and the template secret's id (cloud/template_key.py; "none" without one)
its templates were made with, and refuses to be opened with others.

A subject may hold several templates (re-enrolling adds one); its score against a probe is the cosine to
the mean of its templates (template pooling: docs/cloud.md, "Matching and score aggregation"). On both
backends 1:N search runs in process: exact (BLAS) up to `exact_max` templates, beyond it a compressed scan
with an exact rerank (cloud/ann.py); the measured recall is in docs/cloud.md.

Template ids are random 63-bit numbers (not a sequence an enroll key could sweep), and every template
records the API key id that enrolled it (its owner): `owner=` on enroll and delete_template limits a call
to the subjects and templates that key enrolled (docs/cloud.md, "Scope matrix").

Contract shared by both backends:
    enroll(subject_id, embedding, idempotency_key=None, owner=None) -> Enrollment   (a repeated key returns
        the first; with owner, SubjectTaken when another key's templates hold the subject)
    verify(subject_id, embedding) -> float | None;  identify(embedding, top_k) -> [Match]
    delete(subject_id, actor=None) -> int;  delete_template(template_id, owner=None, actor=None) -> subject_id
        | None (actor: the key id the audit log records)
    list_subjects(page_size, page_token="") -> ([(subject_id, template_count)], next_page_token)
    has_subject, subject_count, template_count, sizes() (no database round trip), ping(), close()
The sealed stores (cloud/sealed.py) take the same deletes, list_subjects and fresh_sizes, and write the same
audit log (AuditLog).
"""

import base64
import hashlib
import hmac
import os
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ppfr.cloud.matrix import TemplateMatrix

# Up to `exact_max` templates 1:N search is exact; beyond it the compressed index answers, reranking
# `ANN_CANDIDATES` rows exactly. From the measurements in docs/cloud.md ("Gallery: SQLite or PostgreSQL, at
# scale"): exact search costs 0.3 ms at 10k, 2.8 ms at 100k and 53 ms at 1M on one core, where the
# compressed index answers in about 1 ms with recall@1 1.000 on genuine probes.
EXACT_MAX = 100_000
ANN_CANDIDATES = 256

SCHEMA = """
CREATE TABLE IF NOT EXISTS templates (
    template_id INTEGER PRIMARY KEY AUTOINCREMENT,
    subject_id TEXT NOT NULL,
    embedding BLOB NOT NULL,
    create_time REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS templates_subject ON templates (subject_id);
"""
# The gallery's settings and its audit log; sealed stores (cloud/sealed.py) keep them in the same tables.
AUDIT_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    key_id TEXT,
    action TEXT NOT NULL,
    subject_hash TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""


class GalleryError(RuntimeError):
    """A database that cannot be opened or was enrolled with another recognizer."""


class GalleryUnavailable(GalleryError):
    """The database cannot be reached now (down, restarting, network): calls may succeed later."""


class SubjectTaken(PermissionError):
    """An owner-limited enroll into a subject whose templates another key enrolled."""


def subject_hash(audit_key: bytes, subject_id: str) -> str:
    """The audit log's name for a subject: a keyed hash (HMAC-SHA256 under the gallery's own audit key,
    128 bits), so erasing a subject leaves no readable id behind, yet `ppfr-cloud audit --subject ID` finds
    its records."""
    return hmac.new(audit_key, subject_id.encode(), hashlib.sha256).hexdigest()[:32]


class AuditLog:
    """The append-only record of who (the API key id) enrolled or deleted which subject (a keyed hash):
    `ppfr-cloud audit` (docs/cloud.md, "Audit log"). Every store, plain or sealed, on SQLite or PostgreSQL,
    writes it in the transaction of the change it records."""

    def __init__(self, conn, postgres: bool = False):
        """The gallery's audit key, made at its first open (conn: the store's connection, tables made)."""
        p, prefix = ("%s", "ppfr_") if postgres else ("?", "")
        conn.execute(
            f"INSERT INTO {prefix}meta (key, value) VALUES ({p}, {p}) ON CONFLICT DO NOTHING",
            ("audit_key", secrets.token_hex(32)),
        )
        row = conn.execute(f"SELECT value FROM {prefix}meta WHERE key = 'audit_key'").fetchone()
        self.key = bytes.fromhex(row[0])
        self._insert = (
            f"INSERT INTO {prefix}audit (time, key_id, action, subject_hash) VALUES ({p}, {p}, {p}, {p})"
        )

    def record(self, conn, action: str, subject_id: str, key_id: str | None) -> None:
        conn.execute(self._insert, (time.time(), key_id, action, subject_hash(self.key, subject_id)))


def new_template_id() -> int:
    """A random positive 63-bit id: knowing one id tells nothing about the others."""
    return secrets.randbits(63) or 1


@dataclass(frozen=True)
class Match:
    subject_id: str
    score: float


@dataclass(frozen=True)
class Enrollment:
    subject_id: str
    template_id: int
    template_count: int  # the subject's templates now (for a repeated idempotency key: at the retry)
    create_time: float


def is_url(db) -> bool:
    return "://" in str(db)


def open_gallery(db, embedding_size: int, recognizer_sha256: str = "", **options):
    """`postgresql://...` (or `postgres://...`) opens the shared PostgreSQL gallery; anything else is a
    SQLite file."""
    text = str(db)
    if text.startswith(("postgresql://", "postgres://")):
        from ppfr.cloud.gallery_postgres import PostgresGallery

        return PostgresGallery(text, embedding_size, recognizer_sha256, **options)
    if is_url(text):
        raise GalleryError(f"--db {text.split('://')[0]}://... is not supported: use a file or postgresql://")
    return SqliteGallery(db, embedding_size, recognizer_sha256, **options)


def unit(x) -> np.ndarray:
    v = np.asarray(x, dtype=np.float32).reshape(-1)
    return v / max(float(np.linalg.norm(v)), 1e-12)


def unit_rows(mat) -> np.ndarray:
    """Each row of a [n, d] matrix L2-normalised, float32."""
    mat = np.asarray(mat, dtype=np.float32)
    return mat / np.maximum(np.linalg.norm(mat, axis=1, keepdims=True), 1e-12)


def encode_page_token(last_subject: str) -> str:
    return base64.urlsafe_b64encode(b"s1:" + last_subject.encode()).decode().rstrip("=")


def decode_page_token(token: str) -> str | None:
    """The last subject id of the previous page, or None for the first page; ValueError for a token this
    code did not write."""
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        if not raw.startswith(b"s1:"):
            raise ValueError
        return raw[3:].decode()
    except (ValueError, UnicodeDecodeError):
        raise ValueError("not a page token of this gallery") from None


def check_page_size(page_size: int) -> int:
    if int(page_size) < 1:
        raise ValueError(f"page_size must be >= 1, got {page_size}")
    return int(page_size)


def meta_wanted(embedding_size: int, recognizer_sha256: str, template_key: str) -> dict:
    """What a gallery records about the templates it holds; an empty value is not checked (library use)."""
    return {
        "embedding_size": str(embedding_size),
        "recognizer_sha256": recognizer_sha256,
        "template_key": template_key,
    }


def check_meta(stored: dict, wanted: dict, where, has_templates: bool) -> None:
    if has_templates:  # enrolled before template secrets were recorded: without one
        stored = {"template_key": "none", **stored}
    for key, value in wanted.items():
        if key not in stored or not value or stored[key] == value:
            continue
        if key == "template_key":
            raise GalleryError(
                f"{where} was enrolled under template secret {stored[key]} and this server runs with "
                f"{value}: start it with the gallery's template secret (--template-key-file), or enroll "
                "into a new --db"
            )
        raise GalleryError(
            f"{where} holds templates from another recognizer ({key} {stored[key][:16]} != "
            f"{value[:16]}); use a new --db for this bundle"
        )


class MatrixGallery:
    """What both backends share: the in-process template matrix (cloud/matrix.py) that answers every read,
    and the compressed index attached to it beyond `exact_max` templates. `_refresh()` brings the matrix
    up to date before a read (nothing to do for SQLite, whose process makes every write; the change log
    for PostgreSQL)."""

    def _init_matrix(self, exact_max: int, ann_options: dict | None) -> None:
        self.exact_max = int(exact_max)
        self._ann_options = dict(ann_options or {})
        self._matrix = TemplateMatrix(self.embedding_size)

    def _refresh(self) -> None:
        pass

    def _maybe_attach_ann(self) -> None:
        """Starts the compressed index once the gallery holds more than exact_max templates (built in the
        background; until it has caught up, the rows it lacks are searched exactly)."""
        if self._matrix.ann is None and self._matrix.rows > self.exact_max:
            from ppfr.cloud.ann import CompressedIndex

            CompressedIndex(self._matrix, **{"candidates": ANN_CANDIDATES, **self._ann_options}).start()

    def _stop_ann(self) -> None:
        if self._matrix.ann is not None:
            self._matrix.ann.stop()

    # --- reads (any thread; lock-free on the matrix) ---------------------------------------------------
    @property
    def subject_count(self) -> int:
        self._refresh()
        return self._matrix.subject_count

    @property
    def template_count(self) -> int:
        self._refresh()
        return self._matrix.template_count

    def has_subject(self, subject_id: str) -> bool:
        self._refresh()
        return self._matrix.has_subject(subject_id)

    def sizes(self) -> tuple[int, int]:
        """(subjects, templates) as this process last saw them, without a database round trip (metrics)."""
        return self._matrix.subject_count, self._matrix.template_count

    def fresh_sizes(self) -> tuple[int, int]:
        """(subjects, templates) including every write committed before the call (GetServerInfo)."""
        self._refresh()
        return self.sizes()

    def ping(self) -> None:
        """Raises GalleryUnavailable when the database cannot be reached (nothing to reach for SQLite)."""

    def verify(self, subject_id: str, embedding: np.ndarray) -> float | None:
        """Cosine similarity to the mean of the subject's templates, or None for an unknown subject."""
        self._refresh()
        return self._matrix.verify(subject_id, unit(embedding))

    def templates_of(self, subject_id: str) -> int:
        """How many templates the subject has (0: none); picks its threshold (ppfr.bundle.thresholds)."""
        self._refresh()
        return self._matrix.templates_of(subject_id)

    def identify(self, embedding: np.ndarray, top_k: int, exact: bool = False) -> list[Match]:
        """The top_k subjects by pooled score, best first (`exact` bypasses the compressed index)."""
        self._refresh()
        return [Match(s, v) for s, v in self._matrix.identify(unit(embedding), top_k, exact=exact)]


def open_sqlite(path) -> sqlite3.Connection:
    """The gallery file with its schema (older files get the later columns). secure_delete overwrites a
    deleted template's bytes in the file; the WAL checkpoint after every delete removes its older copies."""
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA secure_delete=ON")
    db.executescript(SCHEMA + AUDIT_SCHEMA)
    columns = {r[1] for r in db.execute("PRAGMA table_info(templates)")}
    if "idempotency_key" not in columns:  # a gallery written before idempotent Enroll
        db.execute("ALTER TABLE templates ADD COLUMN idempotency_key TEXT")
    if "key_id" not in columns:  # a gallery written before templates recorded their owner
        db.execute("ALTER TABLE templates ADD COLUMN key_id TEXT")
    db.execute(
        "CREATE UNIQUE INDEX IF NOT EXISTS templates_idempotency ON templates "
        "(subject_id, idempotency_key) WHERE idempotency_key IS NOT NULL"
    )
    return db


class SqliteGallery(MatrixGallery):
    """Consistency: one process. Writes are serialised (one lock, one connection) and durable before they
    return; reads are lock-free on the in-process matrix and see every write that returned before they
    started. Another process writing the same file is not seen until a restart: do not share the file."""

    backend = "sqlite"

    def __init__(
        self,
        path,
        embedding_size: int,
        recognizer_sha256: str = "",
        exact_max: int = EXACT_MAX,
        ann_options: dict | None = None,
        template_key: str = "",
    ):
        self.path = Path(path)
        self.embedding_size = int(embedding_size)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not self.path.exists():  # templates are biometric data: owner-only from the start
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
            self._db = open_sqlite(self.path)
            for suffix in ("-wal", "-shm"):
                side = self.path.with_name(self.path.name + suffix)
                if side.exists() and side.stat().st_mode & 0o077:
                    os.chmod(side, 0o600)
        except (sqlite3.Error, OSError) as err:
            raise GalleryError(f"cannot open the gallery database {self.path}: {err}") from None
        self._check_meta(meta_wanted(self.embedding_size, recognizer_sha256, template_key))
        self._init_matrix(exact_max, ann_options)
        self._load()
        self._maybe_attach_ann()

    # --- setup -----------------------------------------------------------------------------------
    def _check_meta(self, wanted: dict) -> None:
        stored = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        has_templates = self._db.execute("SELECT 1 FROM templates LIMIT 1").fetchone() is not None
        check_meta(stored, wanted, self.path, has_templates)
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            for key, value in wanted.items():
                if value:
                    self._db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, value))
        self._audit = AuditLog(self._db)

    def _load(self, chunk: int = 20_000) -> None:
        d = self.embedding_size
        cur = self._db.execute(
            "SELECT template_id, subject_id, embedding FROM templates ORDER BY template_id"
        )
        while rows := cur.fetchmany(chunk):
            bad = next((r for r in rows if len(r[2]) != 4 * d), None)
            if bad is not None:
                raise GalleryError(
                    f"{self.path}: template {bad[0]} has {len(bad[2]) // 4} values, expected {d}"
                )
            mat = np.frombuffer(b"".join(r[2] for r in rows), dtype="<f4").reshape(len(rows), d)
            ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
            self._matrix.add_many([r[1] for r in rows], ids, unit_rows(mat))

    def list_subjects(self, page_size: int, page_token: str = "") -> tuple[list[tuple[str, int]], str]:
        """(subject_id, template_count) ordered by subject_id; the token to pass for the next page ("" at
        the end). ValueError for a bad token or page size."""
        after, size = decode_page_token(page_token), check_page_size(page_size)
        with self._lock:
            rows = self._db.execute(
                "SELECT subject_id, count(*) FROM templates WHERE subject_id > ? "
                "GROUP BY subject_id ORDER BY subject_id LIMIT ?",
                ("" if after is None else after, size + 1),
            ).fetchall()
        page = [(s, int(n)) for s, n in rows[:size]]
        return page, encode_page_token(page[-1][0]) if len(rows) > size else ""

    # --- writes (serialised by the lock; durable before they return) ---------------------------------
    def _checked(self, embedding) -> np.ndarray:
        vec = unit(embedding)
        if vec.shape != (self.embedding_size,):
            raise ValueError(f"embedding has shape {vec.shape}, expected ({self.embedding_size},)")
        return vec

    def enroll(
        self,
        subject_id: str,
        embedding: np.ndarray,
        idempotency_key: str | None = None,
        owner: str | None = None,
        exclusive: bool = False,
    ) -> Enrollment:
        """Adds a template recorded as `owner`'s; `exclusive`: SubjectTaken when the subject holds a
        template of another owner (checked before the idempotency key, so a retry reveals nothing)."""
        vec = self._checked(embedding)
        now = time.time()
        with self._lock:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                if (
                    exclusive
                    and self._db.execute(
                        "SELECT 1 FROM templates WHERE subject_id = ? AND key_id IS NOT ? LIMIT 1",
                        (subject_id, owner),
                    ).fetchone()
                ):
                    raise SubjectTaken(subject_id)
                if idempotency_key and (found := self._existing(subject_id, idempotency_key)):
                    return found
                template_id = new_template_id()
                self._db.execute(
                    "INSERT INTO templates (template_id, subject_id, embedding, create_time, "
                    "idempotency_key, key_id) VALUES (?, ?, ?, ?, ?, ?)",
                    (template_id, subject_id, vec.astype("<f4").tobytes(), now, idempotency_key, owner),
                )
                self._audit.record(self._db, "enroll", subject_id, owner)
            self._matrix.add(subject_id, template_id, vec)
            count = self._matrix.templates_of(subject_id)
            self._maybe_attach_ann()
        return Enrollment(subject_id, template_id, count, now)

    def _existing(self, subject_id: str, idempotency_key: str) -> Enrollment | None:
        row = self._db.execute(
            "SELECT template_id, create_time FROM templates WHERE subject_id = ? AND idempotency_key = ?",
            (subject_id, idempotency_key),
        ).fetchone()
        if row is None:
            return None
        return Enrollment(subject_id, int(row[0]), self._matrix.templates_of(subject_id), float(row[1]))

    def _erase(self) -> None:
        """Copies the WAL into the file and truncates it: with secure_delete, no file of the gallery holds
        the deleted rows' bytes any more (docs/cloud.md, "Deletion that erases")."""
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def delete(self, subject_id: str, actor: str | None = None) -> int:
        """Removes the subject's templates; returns how many there were (0 for an unknown subject)."""
        with self._lock:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                deleted = self._db.execute(
                    "DELETE FROM templates WHERE subject_id = ?", (subject_id,)
                ).rowcount
                if deleted:
                    self._audit.record(self._db, "delete_subject", subject_id, actor)
            self._matrix.remove_subject(subject_id)
            if deleted:
                self._erase()
        return deleted

    def delete_template(
        self, template_id: int, owner: str | None = None, actor: str | None = None
    ) -> str | None:
        """Removes one template (with owner: only one that owner enrolled); returns its subject id, or None
        when there is no such template. actor: the key recorded in the audit log (default owner)."""
        with self._lock:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                row = self._db.execute(
                    "DELETE FROM templates WHERE template_id = ? AND (? IS NULL OR key_id = ?) "
                    "RETURNING subject_id",
                    (int(template_id), owner, owner),
                ).fetchone()
                if row is not None:
                    self._audit.record(self._db, "delete_template", row[0], actor or owner)
            if row is None:
                return None
            self._matrix.remove_template(template_id)
            self._erase()
        return row[0]

    def bulk_load(self, subject_ids, embeddings: np.ndarray, chunk: int = 50_000) -> dict:
        """Appends many templates (no idempotency keys) in one transaction per chunk (benchmarks,
        migrations). Returns the seconds it took."""
        t0 = time.perf_counter()
        embeddings = np.asarray(embeddings, np.float32)
        now = time.time()
        with self._lock:
            for start in range(0, len(embeddings), chunk):
                vecs = embeddings[start : start + chunk]
                vecs = unit_rows(vecs)
                names = list(subject_ids[start : start + chunk])
                with self._db:
                    self._db.execute("BEGIN IMMEDIATE")
                    ids = np.fromiter((new_template_id() for _ in names), np.int64, len(names))
                    blobs = (v.astype("<f4").tobytes() for v in vecs)
                    self._db.executemany(
                        "INSERT INTO templates (template_id, subject_id, embedding, create_time) "
                        "VALUES (?, ?, ?, ?)",
                        zip(ids.tolist(), names, blobs, [now] * len(names)),
                    )
                self._matrix.add_many(names, ids, vecs)
            self._maybe_attach_ann()
        return {"load_s": time.perf_counter() - t0}

    def close(self) -> None:
        with self._lock:
            self._stop_ann()
            self._db.close()


Gallery = SqliteGallery  # the name older code imports


def db_label(db) -> str:
    """`db` for logs: a URL without its password."""
    text = str(db)
    if not is_url(text):
        return text
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(text)
    if parts.password is None:
        return text
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def db_arg(text: str):
    """--db: a database URL stays a string (a Path would fold its '//'); anything else is a file path."""
    return text if is_url(text) else Path(text)
