"""The enrolled templates: an embedded SQLite database (WAL, synchronous=FULL, so an enrollment is on disk
before Enroll answers) and an in-memory matrix of L2-normalised templates for matching, kept in step.

A subject may hold several templates (re-enrolling adds one); its score against a probe is the best
(maximum) cosine similarity over its templates.

Writes go through one connection; the server runs them on a single dedicated thread, and replaces the
in-memory arrays only after the commit, so readers always see a consistent snapshot.
"""

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SCHEMA = """
CREATE TABLE IF NOT EXISTS templates (
    template_id INTEGER PRIMARY KEY AUTOINCREMENT,
    subject_id TEXT NOT NULL,
    embedding BLOB NOT NULL,
    create_time REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS templates_subject ON templates (subject_id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class GalleryError(RuntimeError):
    """A database that cannot be opened or was enrolled with another recognizer."""


@dataclass(frozen=True)
class Match:
    subject_id: str
    score: float


@dataclass(frozen=True)
class Enrollment:
    subject_id: str
    template_id: int
    template_count: int
    create_time: float


@dataclass(frozen=True)
class _Snapshot:
    """Immutable view used by matching: templates [T, D], the subject index of each row, subject names."""

    templates: np.ndarray
    owner: np.ndarray
    subjects: tuple[str, ...]
    template_ids: np.ndarray


class Gallery:
    def __init__(self, path, embedding_size: int, recognizer_sha256: str = ""):
        self.path = Path(path)
        self.embedding_size = int(embedding_size)
        self._lock = threading.Lock()
        try:
            if self.path.parent and not self.path.parent.exists():
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
        except (sqlite3.Error, OSError) as err:
            raise GalleryError(f"cannot open the gallery database {self.path}: {err}") from None
        self._check_meta(recognizer_sha256)
        self._load()

    # --- setup -----------------------------------------------------------------------------------
    def _check_meta(self, recognizer_sha256: str) -> None:
        meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        wanted = {"embedding_size": str(self.embedding_size), "recognizer_sha256": recognizer_sha256}
        for key, value in wanted.items():
            if key in meta and value and meta[key] != value:
                raise GalleryError(
                    f"{self.path} holds templates from another recognizer ({key} {meta[key][:16]} != "
                    f"{value[:16]}); use a new --db for this bundle"
                )
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            for key, value in wanted.items():
                if value:
                    self._db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def _load(self) -> None:
        rows = self._db.execute(
            "SELECT template_id, subject_id, embedding FROM templates ORDER BY template_id"
        ).fetchall()
        d = self.embedding_size
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        names = [r[1] for r in rows]
        mat = np.empty((len(rows), d), dtype=np.float32)
        for i, r in enumerate(rows):
            vec = np.frombuffer(r[2], dtype="<f4")
            if vec.size != d:
                raise GalleryError(f"{self.path}: template {r[0]} has {vec.size} values, expected {d}")
            mat[i] = vec
        self._snapshot = self._build(mat, names, ids)

    @staticmethod
    def _build(mat: np.ndarray, names: list[str], ids: np.ndarray) -> _Snapshot:
        subjects = tuple(dict.fromkeys(names))
        index = {s: i for i, s in enumerate(subjects)}
        owner = np.array([index[n] for n in names], dtype=np.int64)
        norms = np.linalg.norm(mat, axis=1, keepdims=True) if len(mat) else np.ones((0, 1), np.float32)
        mat = (mat / np.maximum(norms, 1e-12)).astype(np.float32)
        mat.setflags(write=False)
        return _Snapshot(mat, owner, subjects, ids)

    # --- reads (any thread; lock-free on the current snapshot) ----------------------------------------
    @property
    def subject_count(self) -> int:
        return len(self._snapshot.subjects)

    @property
    def template_count(self) -> int:
        return len(self._snapshot.owner)

    def has_subject(self, subject_id: str) -> bool:
        return subject_id in self._snapshot.subjects

    def verify(self, subject_id: str, embedding: np.ndarray) -> float | None:
        """Best cosine similarity over the subject's templates, or None for an unknown subject."""
        snap = self._snapshot
        if subject_id not in snap.subjects:
            return None
        rows = snap.templates[snap.owner == snap.subjects.index(subject_id)]
        return float(np.max(rows @ _unit(embedding)))

    def identify(self, embedding: np.ndarray, top_k: int) -> list[Match]:
        """The top_k subjects by best template score, best first."""
        snap = self._snapshot
        if not snap.subjects:
            return []
        scores = snap.templates @ _unit(embedding)
        best = np.full(len(snap.subjects), -np.inf, dtype=np.float32)
        np.maximum.at(best, snap.owner, scores)
        k = min(top_k, len(best))
        top = np.argpartition(-best, k - 1)[:k]
        top = top[np.argsort(-best[top], kind="stable")]
        return [Match(snap.subjects[i], float(best[i])) for i in top]

    # --- writes (serialised by the lock; durable before they return) ---------------------------------
    def enroll(self, subject_id: str, embedding: np.ndarray) -> Enrollment:
        vec = _unit(embedding)
        if vec.shape != (self.embedding_size,):
            raise ValueError(f"embedding has shape {vec.shape}, expected ({self.embedding_size},)")
        now = time.time()
        with self._lock:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                cur = self._db.execute(
                    "INSERT INTO templates (subject_id, embedding, create_time) VALUES (?, ?, ?)",
                    (subject_id, vec.astype("<f4").tobytes(), now),
                )
                template_id = int(cur.lastrowid)
            snap = self._snapshot
            names = [snap.subjects[i] for i in snap.owner] + [subject_id]
            mat = np.vstack([snap.templates, vec[None]])
            self._snapshot = self._build(mat, names, np.append(snap.template_ids, template_id))
            count = names.count(subject_id)
        return Enrollment(subject_id, template_id, count, now)

    def delete(self, subject_id: str) -> int:
        """Removes the subject's templates; returns how many there were (0 for an unknown subject)."""
        with self._lock:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                deleted = self._db.execute(
                    "DELETE FROM templates WHERE subject_id = ?", (subject_id,)
                ).rowcount
            if deleted:
                snap = self._snapshot
                keep = snap.owner != snap.subjects.index(subject_id)
                names = [snap.subjects[i] for i in snap.owner[keep]]
                self._snapshot = self._build(snap.templates[keep], names, snap.template_ids[keep])
        return deleted

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _unit(x: np.ndarray) -> np.ndarray:
    v = np.asarray(x, dtype=np.float32).reshape(-1)
    return v / max(float(np.linalg.norm(v)), 1e-12)
