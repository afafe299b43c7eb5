"""The sealed gallery on PostgreSQL (issue 27; docs/cloud.md, "Sealed templates"), for several replicas on
one database: `ppfr-cloud serve --db postgresql://... --sealed MODE --tenant-context FILE`.

Same rules as the SQLite store (cloud/sealed.py): ciphertexts as bytea, mode + tenant fingerprint recorded
and another refused, owners and idempotency keys, the pooled |S|^2 stored encrypted per subject. Verify
reads the subject's ciphertexts from the database (always current). Identify runs over packed blocks that
each replica holds in memory and brings up to date from a change log before every Identify:

- every write takes one advisory lock to its commit, so writes of all replicas are serialised and the
  log numbers (`sealed_changes.seq`) follow commit order: a reader that applied everything up to N needs
  only `seq > N`;
- an added template is put into the block by each replica (15 rotations + 128 products);
- a removed one cannot be subtracted by a replica that never held its ciphertext after the row is gone,
  so the deleting replica writes the block's new state (a snapshot, `sealed_block_seq` = the log number it
  reflects) in the same transaction; other replicas reload that block's snapshot and put in again only
  the templates added to it after the snapshot's number;
- snapshots of changed blocks are also written every FLUSH_EVERY applied enrolls and at close, so an open
  reads them and puts in only the templates added after them.
"""

import secrets
import threading

from ppfr.bundle import tenant
from ppfr.cloud.gallery import AuditLog, GalleryError, GalleryUnavailable, SubjectTaken
from ppfr.cloud.gallery_postgres import AUDIT_SCHEMA, SCHEMA_LOCK

from .sealed import FLUSH_EVERY, GalleryModeError, SealedGallery, SealedIdentify

SCHEMA = """
CREATE TABLE IF NOT EXISTS sealed_meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS sealed_templates (
    template_id bigint PRIMARY KEY, subject_id text COLLATE "C" NOT NULL, ciphertext bytea NOT NULL,
    slot integer NOT NULL UNIQUE, seq bigint NOT NULL, owner text, idem text);
CREATE INDEX IF NOT EXISTS sealed_by_subject ON sealed_templates (subject_id);
CREATE UNIQUE INDEX IF NOT EXISTS sealed_idem ON sealed_templates (subject_id, idem) WHERE idem IS NOT NULL;
CREATE TABLE IF NOT EXISTS sealed_norms (subject_id text COLLATE "C" PRIMARY KEY, ciphertext bytea NOT NULL);
CREATE TABLE IF NOT EXISTS sealed_changes (
    seq bigint PRIMARY KEY, template_id bigint NOT NULL, slot integer NOT NULL, added boolean NOT NULL);
CREATE TABLE IF NOT EXISTS sealed_blocks (
    block integer NOT NULL, k integer NOT NULL, ciphertext bytea NOT NULL, PRIMARY KEY (block, k));
CREATE TABLE IF NOT EXISTS sealed_block_seq (block integer PRIMARY KEY, seq bigint NOT NULL);
"""
WRITE_LOCK = 0x70706673  # advisory lock held by every write to its commit (and by the schema setup)
NEXT_SEQ = "SELECT COALESCE(max(seq), 0) + 1 FROM sealed_changes"
FREE_SLOT = (
    "SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM sealed_templates WHERE slot = 0) THEN 0 ELSE "
    "(SELECT min(a.slot) + 1 FROM sealed_templates a "
    " WHERE NOT EXISTS (SELECT 1 FROM sealed_templates b WHERE b.slot = a.slot + 1)) END"
)
CHANGES = (
    "SELECT c.seq, c.added, c.slot, t.subject_id, t.ciphertext FROM sealed_changes c "
    "LEFT JOIN sealed_templates t ON c.added AND t.template_id = c.template_id "
    "WHERE c.seq > %s ORDER BY c.seq"
)


def _psycopg():
    try:
        import psycopg
    except ImportError:
        raise GalleryError(
            "a postgresql:// gallery needs psycopg: pip install 'ppfr[cloud]' (psycopg[binary])"
        ) from None
    return psycopg


def sealed_meta(url: str) -> dict:
    """The mode and tenant recorded in a PostgreSQL gallery ({} for a plain one)."""
    psycopg = _psycopg()
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=2) as conn:
            if conn.execute("SELECT to_regclass('sealed_meta')").fetchone()[0] is None:
                return {}
            return dict(conn.execute("SELECT key, value FROM sealed_meta").fetchall())
    except psycopg.Error as err:
        raise GalleryUnavailable(f"cannot read the gallery database: {_short(err)}") from None


class SealedPostgresGallery(SealedGallery):
    def __init__(self, url: str, public_context: bytes, mode: str):
        if mode not in ("sealed-gallery", "sealed-edge"):
            raise GalleryModeError(f"unknown sealed mode {mode!r}")
        self._pg = _psycopg()
        self.url, self.mode = url, mode
        self.tenant = tenant.Tenant(public_context)
        self._local = threading.local()
        self._all: list = []
        self.lock = threading.Lock()  # the in-memory blocks: one thread changes or scores them at a time
        self.blocks: list[tenant.PackedBlock] = []
        self.owner_of_slot: dict[int, str] = {}
        self.snap_seq: dict[int, int] = {}  # block -> the log number its saved snapshot reflects
        self.dirty: set[int] = set()  # blocks changed here since their snapshot
        self.applied_since_save = 0
        self._seq = 0  # log entries applied up to here
        self._run(self._setup)
        with self.lock:
            self._run(self._load)

    # --- connections --------------------------------------------------------------------------------
    def _conn(self):
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.broken:
            try:
                conn = self._pg.connect(self.url, autocommit=True, connect_timeout=2)
            except self._pg.Error as err:
                raise GalleryUnavailable(f"cannot connect to the gallery database: {_short(err)}") from None
            self._local.conn = conn
            self._all.append(conn)
        return conn

    def _run(self, fn, *args):
        try:
            return fn(self._conn(), *args)
        except (self._pg.OperationalError, self._pg.InterfaceError) as err:
            raise GalleryUnavailable(f"gallery database error: {_short(err)}") from None

    def _setup(self, conn) -> None:
        """The tables (the audit log's under the plain gallery's schema lock: replicas of both kinds may
        start together), then mode + tenant fingerprint recorded (new gallery) or checked (one line)."""
        want = {"mode": self.mode, "tenant": self.tenant.fingerprint}
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
            conn.execute(SCHEMA + AUDIT_SCHEMA)
            self._audit = AuditLog(conn, postgres=True)
            have = dict(conn.execute("SELECT key, value FROM sealed_meta").fetchall())
            if not have:
                for item in want.items():
                    conn.execute("INSERT INTO sealed_meta VALUES (%s, %s)", item)
                return
        if have != want:
            raise GalleryModeError(
                f"the PostgreSQL gallery is {have.get('mode')} under tenant context "
                f"{have.get('tenant', '?')[:12]}, but the server was started {self.mode} with tenant "
                f"context {self.tenant.fingerprint[:12]}"
            )

    # --- the in-memory blocks -------------------------------------------------------------------------
    def _load(self, conn) -> None:
        """Snapshots, then the templates added after each block's snapshot, from one consistent view."""
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            self._seq = conn.execute("SELECT COALESCE(max(seq), 0) FROM sealed_changes").fetchone()[0]
            for (b,) in conn.execute("SELECT block FROM sealed_block_seq").fetchall():
                self._read_snapshot(conn, b)
            rows = conn.execute(
                "SELECT t.slot, t.subject_id, CASE WHEN t.seq > COALESCE(s.seq, 0) THEN t.ciphertext END "
                "FROM sealed_templates t LEFT JOIN sealed_block_seq s ON s.block = t.slot / %s",
                (tenant.SLOTS,),
            )
            for slot, subject, data in rows:
                self.owner_of_slot[slot] = subject
                if data is not None:
                    self._put(slot, data)

    def _read_snapshot(self, conn, b: int) -> None:
        self._block(b * tenant.SLOTS)
        block = self.blocks[b] = tenant.PackedBlock(self.tenant)
        q = "SELECT k, ciphertext FROM sealed_blocks WHERE block = %s"
        for k, data in conn.execute(q, (b,)):
            block.diags[k] = self.tenant.load(bytes(data), level=1)
        row = conn.execute("SELECT seq FROM sealed_block_seq WHERE block = %s", (b,)).fetchone()
        self.snap_seq[b] = row[0] if row else 0
        self.dirty.discard(b)

    def _put(self, slot: int, data) -> None:
        self._block(slot).put(slot % tenant.SLOTS, self.tenant.load(bytes(data), level=0))
        self.dirty.add(slot // tenant.SLOTS)
        self.applied_since_save += 1

    def _apply(self, conn) -> None:
        """The log entries after self._seq (caller: self.lock, and a transaction that sees them all)."""
        rows = conn.execute(CHANGES, (self._seq,)).fetchall()
        if not rows:
            return
        reload = {slot // tenant.SLOTS for _, added, slot, _, _ in rows if not added}
        for b in reload:
            self._read_snapshot(conn, b)
        for seq, added, slot, subject, data in rows:
            if not added:
                self.owner_of_slot.pop(slot, None)
                continue
            if subject is not None:  # None: removed by a later entry (its block is in `reload`)
                self.owner_of_slot[slot] = subject
            b = slot // tenant.SLOTS
            if data is not None and not (b in reload and seq <= self.snap_seq[b]):
                self._put(slot, data)
        self._seq = rows[-1][0]

    def _refresh(self, conn) -> None:
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            self._apply(conn)

    def _write_snapshot(self, conn, b: int, seq: int) -> None:
        conn.execute("DELETE FROM sealed_blocks WHERE block = %s", (b,))  # an emptied block has no diags
        for k, d in enumerate(self.blocks[b].diags):
            if d is not None:
                conn.execute("INSERT INTO sealed_blocks VALUES (%s, %s, %s)", (b, k, self.tenant.dump(d)))
        conn.execute(
            "INSERT INTO sealed_block_seq VALUES (%s, %s) "
            "ON CONFLICT (block) DO UPDATE SET seq = EXCLUDED.seq",
            (b, seq),
        )

    def save(self, blocks=None) -> None:
        """Snapshots of the blocks changed here, at the current log number (under the write lock)."""
        with self.lock:
            self._run(self._save)

    def _save(self, conn) -> None:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
            self._apply(conn)
            for b in sorted(self.dirty):
                self._write_snapshot(conn, b, self._seq)
                self.snap_seq[b] = self._seq
        self.dirty.clear()
        self.applied_since_save = 0

    # --- gallery calls --------------------------------------------------------------------------------
    def enroll(self, subject_id: str, ct, idem=None, owner=None, exclusive=False) -> tuple[int, int]:
        """As SealedGallery.enroll; the row and its log entry in one transaction (replicas put it into
        their blocks at their next Identify)."""
        return self._run(self._enroll, subject_id, self.tenant.dump(ct), idem, owner, exclusive)

    def _enroll(self, conn, subject_id, data, idem, owner, exclusive) -> tuple[int, int]:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
            if idem:
                q = "SELECT template_id FROM sealed_templates WHERE subject_id = %s AND idem = %s"
                found = conn.execute(q, (subject_id, idem)).fetchone()
                if found:
                    return found[0], self._count(conn, subject_id)
            if exclusive:
                q = (
                    "SELECT 1 FROM sealed_templates "
                    "WHERE subject_id = %s AND owner IS DISTINCT FROM %s LIMIT 1"
                )
                if conn.execute(q, (subject_id, owner)).fetchone():
                    raise SubjectTaken(subject_id)
            seq = conn.execute(NEXT_SEQ).fetchone()[0]
            slot = conn.execute(FREE_SLOT).fetchone()[0]
            template_id = secrets.randbits(63)
            conn.execute(
                "INSERT INTO sealed_templates VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (template_id, subject_id, data, slot, seq, owner, idem or None),
            )
            conn.execute("INSERT INTO sealed_changes VALUES (%s, %s, %s, true)", (seq, template_id, slot))
            self._renorm(conn, subject_id)
            self._audit.record(conn, "enroll", subject_id, owner)
            return template_id, self._count(conn, subject_id)

    def _renorm(self, conn, subject_id: str) -> None:
        rows = self._rows_in(conn, subject_id)
        conn.execute("DELETE FROM sealed_norms WHERE subject_id = %s", (subject_id,))
        if len(rows) > 1:
            total = self.tenant.add(rows)
            norm = self.tenant.dump(self.tenant.dot(total, total))
            conn.execute("INSERT INTO sealed_norms VALUES (%s, %s)", (subject_id, norm))

    def _rows_in(self, conn, subject_id: str) -> list:
        q = "SELECT ciphertext FROM sealed_templates WHERE subject_id = %s"
        return [self.tenant.load(bytes(d), level=0) for (d,) in conn.execute(q, (subject_id,))]

    def _rows(self, subject_id: str) -> list:
        return self._run(self._rows_in, subject_id)

    def _fetch(self, sql: str, args=()) -> list:
        return self._run(lambda c: c.execute(sql.replace("?", "%s"), args).fetchall())

    @staticmethod
    def _count(conn, subject_id: str) -> int:
        q = "SELECT COUNT(*) FROM sealed_templates WHERE subject_id = %s"
        return conn.execute(q, (subject_id,)).fetchone()[0]

    def identify(self, query) -> SealedIdentify:
        with self.lock:
            self._run(self._refresh)
            if self.applied_since_save >= FLUSH_EVERY:
                self._run(self._save)
            return SealedGallery.identify(self, query)

    def _remove(self, template_id: int, owner, record) -> str | None:
        """As SealedGallery._remove; the block's new state is saved with the row's removal (other replicas
        reload it)."""
        with self.lock:
            return self._run(self._delete, template_id, owner, record)

    def _delete(self, conn, template_id: int, owner, record) -> str | None:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
            q = "SELECT subject_id, ciphertext, slot, owner FROM sealed_templates WHERE template_id = %s"
            row = conn.execute(q, (template_id,)).fetchone()
            if row is None or (owner is not None and row[3] != owner):
                return None
            self._apply(conn)  # this block up to date before the removal: its snapshot is exact
            subject_id, data, slot, _ = row
            b, seq = slot // tenant.SLOTS, conn.execute(NEXT_SEQ).fetchone()[0]
            undo = self._take_out(slot, self.tenant.load(bytes(data), level=0))
            try:
                conn.execute("DELETE FROM sealed_templates WHERE template_id = %s", (template_id,))
                conn.execute(
                    "INSERT INTO sealed_changes VALUES (%s, %s, %s, false)", (seq, template_id, slot)
                )
                self._renorm(conn, subject_id)
                self._write_snapshot(conn, b, seq)
                if record:
                    self._audit.record(conn, record[0], subject_id, record[1])
            except BaseException:
                undo()  # the block as it was (the transaction rolls back)
                raise
        self._seq, self.snap_seq[b] = seq, seq
        self.owner_of_slot.pop(slot, None)
        self.dirty.discard(b)
        return subject_id

    def close(self) -> None:
        try:
            if self.dirty:
                self.save()
        except GalleryError:
            pass  # the next open puts those templates in again
        for conn in self._all:
            conn.close()


def _short(err) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:200]
