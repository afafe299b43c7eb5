"""The gallery's data commands (templates are biometric data; docs/cloud.md, "Biometric data"):

    ppfr-cloud backup  --db DB --out FILE        a consistent copy of a live gallery
    ppfr-cloud restore --db DB --from FILE       into a gallery no server is using
    ppfr-cloud rotate-template-key --db DB [--old-key-file A] --new-key-file B   re-key templates in place
    ppfr-cloud audit   --db DB [--subject ID]    the append-only record of enrollments and deletions

SQLite: backup and restore use SQLite's online backup API (a live gallery copies consistently, its WAL
included; a plain `cp` does not), the key file `<db>.keys` travelling beside it. PostgreSQL: pg_dump /
pg_restore of the ppfr_* tables and a sealed gallery's sealed_* ones (custom format, mode 0600; the
password, if any, passed through the environment, never argv). rotate-template-key turns every stored
template t into Q_new Q_old^T t in one transaction (cloud/template_key.py): no photos needed; stop every
server first and start them with the new secret.
"""

import os
import shutil
import sqlite3
import subprocess
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np
from ppfr.cloud.auth import create_private_file
from ppfr.cloud.gallery import GalleryError, db_arg, is_url, open_sqlite, subject_hash
from ppfr.cloud.template_key import TemplateKeyError, load_secret

PG_TABLES = ("ppfr_*", "sealed_*")  # the plain gallery's (keys, audit too) and a sealed gallery's own


def add_data_commands(commands) -> None:
    b = commands.add_parser("backup", help="copy a live gallery consistently (SQLite backup API or pg_dump)")
    b.add_argument("--db", type=db_arg, required=True, help="the server's --db")
    b.add_argument("--out", type=Path, required=True, help="the backup file to write (mode 0600)")
    r = commands.add_parser("restore", help="restore a backup into a gallery no server is using")
    r.add_argument("--db", type=db_arg, required=True, help="the gallery to restore into")
    r.add_argument("--from", dest="source", type=Path, required=True, help="a file written by `backup`")
    r.add_argument("--force", action="store_true", help="replace an existing SQLite gallery")
    k = commands.add_parser("rotate-template-key", help="re-key every stored template to a new secret")
    k.add_argument("--db", type=db_arg, required=True, help="the gallery (stop its servers first)")
    k.add_argument("--old-key-file", type=Path, help="the secret the gallery holds now (none: plain)")
    k.add_argument("--new-key-file", type=Path, required=True, help="the new secret (>= 16 random bytes)")
    a = commands.add_parser("audit", help="print the audit log of enrollments and deletions")
    a.add_argument("--db", type=db_arg, required=True, help="the server's --db")
    a.add_argument("--subject", help="only the records of this subject id (matched by its keyed hash)")


# --- backup / restore ----------------------------------------------------------------------------------
def backup(args) -> int:
    if is_url(args.db):
        tables = [f"--table={pattern}" for pattern in PG_TABLES]
        create_private_file(args.out)  # pg_dump keeps the mode of the file it writes into: 0600
        _pg_tool("pg_dump", ["--format=custom", *tables, "--file", str(args.out)], args.db)
    else:
        _copy_gallery_file(Path(args.db), Path(args.out))
    print(f"backed up {args.db if not is_url(args.db) else 'the PostgreSQL gallery'} to {args.out}")
    return 0


def restore(args) -> int:
    if not Path(args.source).is_file():
        raise GalleryError(f"--from {args.source}: no such backup file")
    if is_url(args.db):
        _create_vector_extension(args.db)
        _pg_tool("pg_restore", ["--clean", "--if-exists", "--no-owner", str(args.source)], args.db)
    else:
        if Path(args.db).exists() and not args.force:
            raise GalleryError(f"--db {args.db} exists: stop its server and pass --force to replace it")
        _copy_gallery_file(Path(args.source), Path(args.db))
    print(f"restored {args.source} into {args.db if not is_url(args.db) else 'the PostgreSQL gallery'}")
    return 0


def _copy_gallery_file(source: Path, target: Path) -> None:
    """The gallery file and, beside it, its API-key file when there is one."""
    _sqlite_copy(source, target)
    keys = Path(f"{source}.keys")
    if keys.exists():
        _sqlite_copy(keys, Path(f"{target}.keys"))


def _sqlite_copy(source: Path, target: Path) -> None:
    """SQLite's online backup API: a consistent snapshot even while a server writes `source`."""
    create_private_file(target)
    try:
        with sqlite3.connect(f"file:{source}?mode=ro", uri=True) as src, sqlite3.connect(target) as dst:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode=WAL")
    except sqlite3.Error as err:
        raise GalleryError(f"cannot copy {source} to {target}: {err}") from None


def pg_binaries(name: str) -> list[str]:
    """pg_dump / pg_restore candidates: the PATH's, then the ones PyPI pgserver ships (pg_dump refuses a
    newer server than itself, so a too-old system copy falls through to the next)."""
    found = [shutil.which(name)]
    try:
        import pgserver

        found.append(str(Path(pgserver.__file__).parent / "pginstall" / "bin" / name))
    except ImportError:
        pass
    found = [f for f in found if f and Path(f).exists()]
    if not found:
        raise GalleryError(f"{name} not found: install the PostgreSQL client tools (or pip install pgserver)")
    return found


def _pg_tool(name: str, args: list[str], url: str) -> None:
    """Runs pg_dump/pg_restore on `url`; a password in the URL goes through $PGPASSWORD, never argv."""
    parts = urlsplit(url)
    env = dict(os.environ)
    if parts.password is not None:
        env["PGPASSWORD"] = parts.password
        url = urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", "@", 1)))
    for binary in pg_binaries(name):
        done = subprocess.run([binary, *args, "--dbname", url], env=env, capture_output=True, text=True)
        if done.returncode == 0:
            return
        if "version" not in done.stderr:  # mismatch with the server or the dump: try the next
            break
    lines = done.stderr.strip().splitlines()
    raise GalleryError(f"{name} failed: {lines[0] if lines else done.returncode}")


def _create_vector_extension(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")


# --- template secret rotation --------------------------------------------------------------------------
def _key_label(secret) -> str:
    return f"tk={secret.key_id[:12]}" if secret else "none"


def rotate_template_key(args) -> int:
    try:
        old = load_secret(args.old_key_file, environ={})
        new = load_secret(args.new_key_file, environ={})
    except TemplateKeyError as err:
        raise GalleryError(str(err)) from None
    rotate = _rotate_postgres if is_url(args.db) else _rotate_sqlite
    count = rotate(args.db, old, new)
    print(
        f"re-keyed {count} templates from {_key_label(old)} to {_key_label(new)}; start the servers with "
        f"--template-key-file {args.new_key_file}"
    )
    return 0


def _mixing(old, new, dim: int) -> np.ndarray:
    """M = Q_new Q_old^T (float64): t_new = M t_old for every template."""
    q_old = old.transform(dim)._q.astype(np.float64) if old else np.eye(dim)
    q_new = new.transform(dim)._q.astype(np.float64)
    return q_new @ q_old.T


def _check_label(stored: str | None, old) -> None:
    if (stored or "none") != _key_label(old):
        raise GalleryError(
            f"the gallery holds templates under {stored or 'none'}, not {_key_label(old)}: give the "
            "secret it was enrolled under as --old-key-file"
        )


def _rotate_sqlite(db, old, new) -> int:
    conn = open_sqlite(Path(db))
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        _check_label(meta.get("template_key"), old)
        dim = int(meta["embedding_size"])
        mix = _mixing(old, new, dim)
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            rows = conn.execute("SELECT template_id, embedding FROM templates").fetchall()
            for template_id, blob in rows:
                t = mix @ np.frombuffer(blob, "<f4").astype(np.float64)
                conn.execute(
                    "UPDATE templates SET embedding = ? WHERE template_id = ?",
                    (t.astype("<f4").tobytes(), template_id),
                )
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('template_key', ?)", (_key_label(new),)
            )
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the old templates' bytes leave the WAL too
        return len(rows)
    finally:
        conn.close()


def _rotate_postgres(url, old, new) -> int:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        conn.execute("UPDATE ppfr_log_head SET seq = seq + 1")  # the writers' lock: no enrollment meanwhile
        meta = dict(conn.execute("SELECT key, value FROM ppfr_meta").fetchall())
        _check_label(meta.get("template_key"), old)
        mix = _mixing(old, new, int(meta["embedding_size"]))
        rows = conn.execute("SELECT template_id, embedding::text FROM ppfr_templates").fetchall()
        for template_id, text in rows:
            t = mix @ np.asarray(text.strip("[]").split(","), np.float64)
            vector = "[" + ",".join(map(repr, t.astype(np.float32).tolist())) + "]"
            conn.execute(
                "UPDATE ppfr_templates SET embedding = %s::vector WHERE template_id = %s",
                (vector, template_id),
            )
        conn.execute("UPDATE ppfr_meta SET value = %s WHERE key = 'template_key'", (_key_label(new),))
        return len(rows)


# --- audit ---------------------------------------------------------------------------------------------
def audit(args) -> int:
    if is_url(args.db):
        import psycopg

        with psycopg.connect(args.db) as conn:
            key = conn.execute("SELECT value FROM ppfr_meta WHERE key = 'audit_key'").fetchone()
            rows = conn.execute(
                "SELECT time, key_id, action, subject_hash FROM ppfr_audit ORDER BY seq"
            ).fetchall()
    else:
        if not Path(args.db).exists():
            raise GalleryError(f"--db {args.db}: no such gallery")
        with sqlite3.connect(f"file:{args.db}?mode=ro", uri=True) as conn:
            key = conn.execute("SELECT value FROM meta WHERE key = 'audit_key'").fetchone()
            rows = conn.execute(
                "SELECT time, key_id, action, subject_hash FROM audit ORDER BY seq"
            ).fetchall()
    wanted = subject_hash(bytes.fromhex(key[0]), args.subject) if args.subject and key else None
    print(f"{'TIME (UTC)':<19}  {'KEY_ID':<12}  {'ACTION':<15}  SUBJECT (keyed hash)")
    for when, key_id, action, hashed in rows:
        if wanted is None or hashed == wanted:
            stamp = np.datetime_as_string(np.datetime64(int(when), "s"))
            print(f"{stamp.replace('T', ' '):<19}  {key_id or '-':<12}  {action:<15}  {hashed}")
    return 0


DATA_COMMANDS = {
    "backup": backup,
    "restore": restore,
    "rotate-template-key": rotate_template_key,
    "audit": audit,
}
