"""The sealed gallery (issue 27; docs/cloud.md, "Sealed templates"): templates at rest are CKKS ciphertexts
under the tenant's key; the server holds only the tenant's public evaluation context (`ppfr-cloud serve
--tenant-context FILE`) and answers with encrypted scores that only the tenant's edge can decrypt.

Modes (recorded in the gallery with the tenant context's fingerprint; another mode or tenant is refused
with one line, as a template secret is):
  sealed-gallery  the server embeds the protected tensor as today, encrypts the embedding at once and keeps
                  only the ciphertext; a Verify/Identify query is the plaintext embedding (never stored);
  sealed-edge     the edge sends an encrypted embedding (ppfr.edge.sealed); the server never sees one.

SQLite file (WAL, synchronous=FULL, secure_delete), one writer (a lock). A subject's pooled score travels as
encrypted q.S and |S|^2 (S = the sum of its templates; ppfr.bundle.tenant.pooled): |S|^2 is computed when
its templates change and stored as a ciphertext. 1:N runs over packed blocks (4096 templates each), saved
beside the templates every FLUSH_EVERY enrolls, at every delete and at close; templates enrolled after the
last save are put in again at open (15 rotations + 128 products each). The in-process plaintext index
(cloud/matrix.py, cloud/ann.py) is never used.
"""

import secrets
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ppfr.bundle import tenant
from ppfr.cloud.gallery import (
    AUDIT_SCHEMA,
    AuditLog,
    GalleryError,
    SubjectTaken,
    check_page_size,
    decode_page_token,
    encode_page_token,
)

MODES = ("sealed-gallery", "sealed-edge")


class GalleryModeError(GalleryError):
    """The gallery was made in another mode or under another tenant's context."""


@dataclass
class SealedIdentify:
    blocks: list  # ciphertext bytes: scores of slots 0..4095 of each block
    owners: list  # owners[b][s]: the subject of slot s of block b, "" when free
    norms: dict  # subject -> ciphertext bytes of |S|^2, for the subjects with several templates


_SCHEMA = """
CREATE TABLE IF NOT EXISTS sealed_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sealed_templates (
    template_id INTEGER PRIMARY KEY, subject_id TEXT NOT NULL, ciphertext BLOB NOT NULL,
    slot INTEGER NOT NULL UNIQUE, packed INTEGER NOT NULL DEFAULT 0, owner TEXT, idem TEXT);
CREATE INDEX IF NOT EXISTS sealed_by_subject ON sealed_templates (subject_id);
CREATE TABLE IF NOT EXISTS sealed_norms (subject_id TEXT PRIMARY KEY, ciphertext BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS sealed_blocks (
    block INTEGER NOT NULL, k INTEGER NOT NULL, ciphertext BLOB NOT NULL, PRIMARY KEY (block, k));
"""
FLUSH_EVERY = 64  # enrolls between two saves of the packed blocks (a save writes 128 x 262 KB per block)


class SealedGallery:
    def __init__(self, path, public_context: bytes, mode: str):
        if mode not in MODES:
            raise GalleryModeError(f"unknown sealed mode {mode!r} (one of {', '.join(MODES)})")
        self.tenant = tenant.Tenant(public_context)
        self.mode = mode
        self.db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "secure_delete=ON"):
            self.db.execute(f"PRAGMA {pragma}")
        self.db.executescript(_SCHEMA + AUDIT_SCHEMA)
        self._claim(path)
        self._audit = AuditLog(self.db)
        self.lock = threading.Lock()
        self.blocks: list[tenant.PackedBlock] = []
        self.owner_of_slot: dict[int, str] = {}
        self.unsaved: set[int] = set()  # blocks holding templates not yet in sealed_blocks
        self.enrolled_since_save = 0
        self._load_blocks()

    def _load_blocks(self) -> None:
        """The saved packed blocks, then the templates enrolled after the last save put in again
        (15 rotations + 128 products each; a save makes the next open fast)."""
        for block, k, data in self.db.execute("SELECT block, k, ciphertext FROM sealed_blocks"):
            self._block(block * tenant.SLOTS).diags[k] = self.tenant.load(data, level=1)
        rows = self.db.execute("SELECT slot, subject_id, ciphertext, packed FROM sealed_templates")
        for slot, subject, data, packed in rows.fetchall():
            self.owner_of_slot[slot] = subject
            if not packed:
                self._block(slot).put(slot % tenant.SLOTS, self.tenant.load(data, level=0))
                self.unsaved.add(slot // tenant.SLOTS)

    def save(self, blocks=None) -> None:
        """Writes the packed blocks (all unsaved ones by default) and marks their templates packed, in one
        transaction: a crash leaves either the old blocks + unpacked rows or the new ones."""
        blocks = sorted(self.unsaved if blocks is None else blocks)
        self.db.execute("BEGIN IMMEDIATE")
        for b in blocks:
            self._write_block(b)
        self.db.execute("COMMIT")
        self.unsaved -= set(blocks)

    def _write_block(self, b: int) -> None:
        self.db.execute("DELETE FROM sealed_blocks WHERE block = ?", (b,))  # an emptied block has no diags
        for k, d in enumerate(self.blocks[b].diags):
            if d is not None:
                self.db.execute("INSERT INTO sealed_blocks VALUES (?, ?, ?)", (b, k, self.tenant.dump(d)))
        lo, hi = b * tenant.SLOTS, (b + 1) * tenant.SLOTS
        self.db.execute("UPDATE sealed_templates SET packed = 1 WHERE slot >= ? AND slot < ?", (lo, hi))

    def _claim(self, path) -> None:
        """Records mode + tenant fingerprint in a new gallery; refuses a gallery made otherwise."""
        want = {"mode": self.mode, "tenant": self.tenant.fingerprint}
        have = dict(self.db.execute("SELECT key, value FROM sealed_meta"))
        if not have:
            self.db.executemany("INSERT INTO sealed_meta VALUES (?, ?)", want.items())
            return
        if have != want:
            raise GalleryModeError(
                f"gallery {path} is {have.get('mode')} under tenant context {have.get('tenant', '?')[:12]}, "
                f"but the server was started {self.mode} with tenant context {self.tenant.fingerprint[:12]}"
            )

    def _block(self, slot: int) -> tenant.PackedBlock:
        while len(self.blocks) <= slot // tenant.SLOTS:
            self.blocks.append(tenant.PackedBlock(self.tenant))
        return self.blocks[slot // tenant.SLOTS]

    # --- what a request carries -> ciphertexts ------------------------------------------------------
    def template(self, sealed: bytes | None = None, embedding=None):
        """The template to store: the edge's ciphertext (sealed edge) or the embedding encrypted now
        (sealed gallery; the plaintext is dropped by the caller). SealedError on bad bytes."""
        if self.mode == "sealed-edge":
            return self.tenant.load(self._sent(sealed), level=0)
        return self.tenant.encrypt(self._sent(embedding))

    def query(self, sealed: bytes | None = None, embedding=None):
        """A query: the edge's level-1 ciphertext (sealed edge) or the plain embedding (sealed gallery)."""
        if self.mode == "sealed-edge":
            return self.tenant.load(self._sent(sealed), level=1)
        return np.asarray(self._sent(embedding), np.float64)

    def _sent(self, value):
        """What this mode takes (the ciphertext or the embedding), or SealedError when it was not sent."""
        if value is None:
            what = "the encrypted embedding" if self.mode == "sealed-edge" else "the protected face"
            raise tenant.SealedError(f"this gallery is {self.mode}: send {what}")
        return value

    # --- gallery calls ------------------------------------------------------------------------------
    def enroll(self, subject_id: str, ct, idem=None, owner=None, exclusive=False) -> tuple[int, int]:
        """Stores one template ciphertext; (template id, the subject's template count). A repeated
        idempotency key for the subject returns the first enrollment; `exclusive` (non-admin keys): a
        subject holding another owner's templates is SubjectTaken (the plain gallery's rules)."""
        with self.lock:
            if idem:
                q = "SELECT template_id FROM sealed_templates WHERE subject_id = ? AND idem = ?"
                found = self.db.execute(q, (subject_id, idem)).fetchone()
                if found:
                    return found[0], self.templates_of(subject_id)
            if exclusive:
                q = "SELECT 1 FROM sealed_templates WHERE subject_id = ? AND owner IS NOT ? LIMIT 1"
                if self.db.execute(q, (subject_id, owner)).fetchone():
                    raise SubjectTaken(subject_id)
            used = {s for (s,) in self.db.execute("SELECT slot FROM sealed_templates")}
            slot = next(i for i in range(len(used) + 1) if i not in used)
            template_id = secrets.randbits(63)
            self.db.execute("BEGIN IMMEDIATE")
            try:
                self.db.execute(
                    "INSERT INTO sealed_templates VALUES (?, ?, ?, ?, 0, ?, ?)",
                    (template_id, subject_id, self.tenant.dump(ct), slot, owner, idem or None),
                )
                self._renorm(subject_id)
                self._audit.record(self.db, "enroll", subject_id, owner)
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self._block(slot).put(slot % tenant.SLOTS, ct)
            self.owner_of_slot[slot] = subject_id
            self.unsaved.add(slot // tenant.SLOTS)
            self.enrolled_since_save += 1
            if self.enrolled_since_save >= FLUSH_EVERY:
                self.save()
                self.enrolled_since_save = 0
            return template_id, self.templates_of(subject_id)

    def _rows(self, subject_id: str) -> list:
        q = "SELECT ciphertext FROM sealed_templates WHERE subject_id = ?"
        return [self.tenant.load(d, level=0) for (d,) in self.db.execute(q, (subject_id,))]

    def _renorm(self, subject_id: str) -> None:
        """Stores the encrypted |S|^2 of a subject with several templates (none with one: it is 1)."""
        rows = self._rows(subject_id)
        self.db.execute("DELETE FROM sealed_norms WHERE subject_id = ?", (subject_id,))
        if len(rows) > 1:
            total = self.tenant.add(rows)
            norm = self.tenant.dump(self.tenant.dot(total, total))
            self.db.execute("INSERT INTO sealed_norms VALUES (?, ?)", (subject_id, norm))

    def _fetch(self, sql: str, args=()) -> list:
        """The rows of one read (`?` placeholders: the PostgreSQL store runs the same statements)."""
        return self.db.execute(sql, args).fetchall()

    def _norm(self, subject_id: str) -> bytes | None:
        found = self._fetch("SELECT ciphertext FROM sealed_norms WHERE subject_id = ?", (subject_id,))
        return bytes(found[0][0]) if found else None

    def verify(self, subject_id: str, query) -> tuple[bytes, bytes | None] | None:
        """(encrypted q.S, encrypted |S|^2 or None for one template), None for an unknown subject."""
        rows = self._rows(subject_id)
        if not rows:
            return None
        total = self.tenant.add(rows)
        if isinstance(query, np.ndarray):
            score = self.tenant.dot_plain(total, query)
        else:
            score = self.tenant.dot(query, total)
        return self.tenant.dump(score), self._norm(subject_id)

    def identify(self, query) -> SealedIdentify:
        plain = isinstance(query, np.ndarray)
        babies = tenant.query_babies(self.tenant, query, plain=plain)
        blocks, owners = [], []
        for b, block in enumerate(self.blocks):
            names = [self.owner_of_slot.get(b * tenant.SLOTS + s, "") for s in range(tenant.SLOTS)]
            if any(names):
                blocks.append(self.tenant.dump(block.scores(babies, plain)))
                owners.append(names)
        return SealedIdentify(blocks, owners, self._norms())

    def _norms(self) -> dict:
        return {s: bytes(d) for s, d in self._fetch("SELECT subject_id, ciphertext FROM sealed_norms")}

    def delete(self, subject_id: str, actor: str | None = None) -> int:
        """Removes the subject's templates (0 for an unknown subject), one transaction each (each rewrites
        its block); the audit record, by `actor`, goes with the first removal."""
        deleted = 0
        for t in self._template_ids(subject_id):
            record = None if deleted else ("delete_subject", actor)
            deleted += self._remove(t, None, record) is not None
        return deleted

    def delete_template(self, template_id: int, owner=None, actor=None) -> str | None:
        """Removes one template (with `owner`: only one that owner enrolled); its subject, or None.
        actor: the key recorded in the audit log (default owner)."""
        return self._remove(int(template_id), owner, ("delete_template", actor or owner))

    def _template_ids(self, subject_id: str) -> list[int]:
        q = "SELECT template_id FROM sealed_templates WHERE subject_id = ?"
        return [t for (t,) in self._fetch(q, (subject_id,))]

    def _remove(self, template_id: int, owner, record) -> str | None:
        """One template out, with the audit record (action, key id) when there is one."""
        with self.lock:
            q = "SELECT subject_id, ciphertext, slot, owner FROM sealed_templates WHERE template_id = ?"
            row = self.db.execute(q, (template_id,)).fetchone()
            if row is None or (owner is not None and row[3] != owner):
                return None
            subject_id, data, slot, _ = row
            # out of the block first, then the row and the block's saved copy go together: no saved
            # block ever holds a template whose row is gone
            undo = self._take_out(slot, self.tenant.load(data, level=0))
            self.db.execute("BEGIN IMMEDIATE")
            try:
                self.db.execute("DELETE FROM sealed_templates WHERE template_id = ?", (template_id,))
                self._renorm(subject_id)
                self._write_block(slot // tenant.SLOTS)
                if record:
                    self._audit.record(self.db, record[0], subject_id, record[1])
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                undo()
                raise
            self.owner_of_slot.pop(slot, None)
            self.unsaved.discard(slot // tenant.SLOTS)
            return subject_id

    def _take_out(self, slot: int, ct):
        """Takes a template out of its packed block (the block's last one leaves it empty: PackedBlock.put);
        returns what puts it back."""
        block, s = self._block(slot), slot % tenant.SLOTS
        block.put(s, ct, remove=True)
        return lambda: block.put(s, ct)

    def templates_of(self, subject_id: str) -> int:
        return self._fetch("SELECT COUNT(*) FROM sealed_templates WHERE subject_id = ?", (subject_id,))[0][0]

    def list_subjects(self, page_size: int, page_token: str = "") -> tuple[list[tuple[str, int]], str]:
        """As the plain gallery's: (subject_id, template_count) by subject_id, and the next page's token."""
        after, size = decode_page_token(page_token), check_page_size(page_size)
        rows = self._fetch(
            "SELECT subject_id, COUNT(*) FROM sealed_templates WHERE subject_id > ? "
            "GROUP BY subject_id ORDER BY subject_id LIMIT ?",
            ("" if after is None else after, size + 1),
        )
        page = [(s, int(n)) for s, n in rows[:size]]
        return page, encode_page_token(page[-1][0]) if len(rows) > size else ""

    def fresh_sizes(self) -> tuple[int, int]:
        """(subjects, templates), as GetServerInfo reports them."""
        subjects, templates = self._fetch(
            "SELECT COUNT(DISTINCT subject_id), COUNT(*) FROM sealed_templates"
        )[0]
        return int(subjects), int(templates)

    def close(self) -> None:
        self.save()
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.db.close()


def check_plain_gallery(db) -> None:
    """A plain server refuses a SQLite gallery that holds sealed templates (one line)."""
    import contextlib

    if not isinstance(db, str | bytes) and not hasattr(db, "__fspath__"):
        return
    if str(db).startswith(("postgresql://", "postgres://")):
        from .sealed_postgres import sealed_meta

        _refuse_sealed(db, sealed_meta(str(db)))
        return
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            have = dict(con.execute("SELECT key, value FROM sealed_meta"))
    except sqlite3.Error:  # no such file or table: not a sealed gallery
        return
    _refuse_sealed(db, have)


def _refuse_sealed(db, have: dict) -> None:
    if have:
        where = "the PostgreSQL gallery" if "://" in str(db) else f"gallery {db}"
        raise GalleryModeError(
            f"{where} is {have.get('mode')} (sealed templates): start the server with "
            f"--sealed {have.get('mode')} --tenant-context FILE"
        )


def open_sealed(config) -> SealedGallery:
    """The sealed store of `ppfr-cloud serve --sealed MODE --tenant-context FILE`: a SQLite file, or
    PostgreSQL for replicas (cloud/sealed_postgres.py)."""
    if not config.tenant_context:
        raise GalleryModeError(
            f"--sealed {config.sealed} needs --tenant-context FILE (ppfr-edge tenant keygen)"
        )
    try:
        public = Path(config.tenant_context).read_bytes()
        if str(config.db).startswith(("postgresql://", "postgres://")):
            from .sealed_postgres import SealedPostgresGallery

            return SealedPostgresGallery(str(config.db), public, config.sealed)
        return SealedGallery(config.db, public, config.sealed)
    except OSError as err:
        raise GalleryModeError(
            f"cannot read --tenant-context {config.tenant_context}: {err.strerror}"
        ) from None
    except tenant.SealedError as err:
        raise GalleryModeError(f"--tenant-context {config.tenant_context}: {err}") from None
