"""Biometric data and configuration (issue 25, items 4 and 7), on real SQLite files and a real PostgreSQL
(pgserver): deletion erases the template's bytes from every file of a SQLite gallery, an append-only audit
log records who enrolled and deleted whom, backup of a live gallery restores to the same decisions (SQLite
backup API, pg_dump), the template secret rotates in place, json logs; `serve` settings from flags, TOML and
the environment give the same ServerConfig, and no password reaches `ps`."""

import json
import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from ppfr.cloud.cli import build_parser, main, serve_config
from ppfr.cloud.gallery import SqliteGallery, open_gallery, unit
from ppfr.cloud.template_key import load_secret

DIM = 128


def vectors(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def gallery_files(db):
    return [p for p in db.parent.iterdir() if p.name.startswith(db.name)]


def test_delete_leaves_no_byte_of_the_template_in_any_file(tmp_path):
    db = tmp_path / "g.sqlite"
    g = SqliteGallery(db, DIM)
    vecs = vectors(6)
    enrolled = [g.enroll(f"s{i}", v) for i, v in enumerate(vecs)]
    g.delete("s1")
    g.delete_template(enrolled[4].template_id)
    kept = unit(vecs[0]).astype("<f4").tobytes()
    for gone in (1, 4):
        blob = unit(vecs[gone]).astype("<f4").tobytes()
        for path in gallery_files(db):
            data = path.read_bytes()
            assert blob[:32] not in data and blob[-32:] not in data, (gone, path.name)
    assert any(kept in p.read_bytes() for p in gallery_files(db))  # the search does find what is there
    g.close()


def test_the_audit_log_records_enrollments_and_deletions_and_is_append_only(tmp_path, capsys):
    db = tmp_path / "g.sqlite"
    g = SqliteGallery(db, DIM)
    vecs = vectors(2)
    g.enroll("alice", vecs[0], owner="k-enroll")
    t = g.enroll("bob", vecs[1], owner="k-enroll")
    g.delete_template(t.template_id, actor="k-admin")
    g.delete("alice", actor="k-admin")
    g.close()
    assert main(["audit", "--db", str(db), "--subject", "alice"]) == 0
    out = capsys.readouterr().out
    assert "enroll" in out and "delete_subject" in out and "k-admin" in out and "alice" not in out
    assert "delete_template" not in out  # bob's record, not alice's
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM audit").fetchone()[0] == 4
        for sql in ("UPDATE audit SET key_id = 'x'", "DELETE FROM audit"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                conn.execute(sql)


def enroll_while(g, stop, prefix):
    vecs, i = vectors(400, seed=7), 0
    while not stop.is_set() and i < len(vecs):
        g.enroll(f"{prefix}{i}", vecs[i])
        i += 1


def decisions(g, probes, threshold=0.5):
    return {
        s: [bool((g.verify(s, p) or -1) >= threshold) for p in probes] for s, _ in g.list_subjects(1000)[0]
    }


def test_backup_of_a_live_sqlite_gallery_restores_identical_decisions(tmp_path, capsys):
    db = tmp_path / "g.sqlite"
    g = SqliteGallery(db, DIM)
    stop = threading.Event()
    writer = threading.Thread(target=enroll_while, args=(g, stop, "s"))
    writer.start()
    time.sleep(0.3)
    assert main(["backup", "--db", str(db), "--out", str(tmp_path / "b.sqlite")]) == 0  # under load
    stop.set()
    writer.join()
    assert main(["restore", "--db", str(tmp_path / "r.sqlite"), "--from", str(tmp_path / "b.sqlite")]) == 0
    restored = SqliteGallery(tmp_path / "r.sqlite", DIM)
    probes = vectors(400, seed=7)[:50] + 0.3 * vectors(50, seed=8)
    got = decisions(restored, probes)
    assert 0 < len(got) <= g.subject_count
    want = decisions(g, probes)
    assert all(want[s] == d for s, d in got.items())
    assert (tmp_path / "b.sqlite").stat().st_mode & 0o077 == 0
    assert main(["restore", "--db", str(db), "--from", str(tmp_path / "b.sqlite")]) == 2  # exists: --force
    g.close()
    restored.close()


def test_pg_dump_backup_restores_into_another_database(postgres, capsys):
    source, target = postgres(), postgres()
    g = open_gallery(source, DIM)
    vecs = vectors(20)
    for i, v in enumerate(vecs):
        g.enroll(f"p{i}", v)
    backup = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"ppfr-pgdump-{os.getpid()}.dump")
    try:
        assert main(["backup", "--db", source, "--out", backup]) == 0
        assert main(["restore", "--db", target, "--from", backup]) == 0
    finally:
        if os.path.exists(backup):
            os.unlink(backup)
    restored = open_gallery(target, DIM)
    assert decisions(restored, vecs) == decisions(g, vecs)
    assert restored.template_count == 20
    g.close()
    restored.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_template_secret_rotates_in_place(backend, request, tmp_path, capsys):
    db = str(tmp_path / "g.sqlite") if backend == "sqlite" else request.getfixturevalue("postgres")()
    (tmp_path / "a.key").write_bytes(os.urandom(32))
    (tmp_path / "b.key").write_bytes(os.urandom(32))
    old, new = (load_secret(tmp_path / f"{n}.key", environ={}).transform(DIM) for n in ("a", "b"))
    vecs = vectors(5)
    g = open_gallery(db, DIM, template_key=f"tk={old.key_id[:12]}")
    for i, v in enumerate(vecs):
        g.enroll(f"s{i}", old.apply(v))
    before = [g.verify(f"s{i}", old.apply(vecs[i] + 0.1)) for i in range(5)]
    g.close()
    args = ["rotate-template-key", "--db", db, "--new-key-file", str(tmp_path / "b.key")]
    assert main(args) == 2  # the gallery's secret is needed
    assert main([*args, "--old-key-file", str(tmp_path / "a.key")]) == 0
    with pytest.raises(Exception, match="template secret"):
        open_gallery(db, DIM, template_key=f"tk={old.key_id[:12]}")
    g = open_gallery(db, DIM, template_key=f"tk={new.key_id[:12]}")
    after = [g.verify(f"s{i}", new.apply(vecs[i] + 0.1)) for i in range(5)]
    assert np.allclose(before, after, atol=1e-5)
    g.close()


def test_json_log_lines():
    import io

    from ppfr.cloud.logs import JsonFormatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("ppfr.cloud.json-test")
    logger.addHandler(handler)
    try:
        logger.warning("a %s line", "json")
    finally:
        logger.removeHandler(handler)
    entry = json.loads(stream.getvalue().strip())
    assert entry["message"] == "a json line" and entry["level"] == "WARNING" and entry["time"].endswith("Z")


def test_flags_toml_and_environment_give_the_same_config(tmp_path):
    settings = {"bundle": tmp_path / "b", "db": tmp_path / "g.sqlite", "port": 6000, "max_batch": 16}
    settings |= {"insecure_no_auth": True, "grace_s": 12.5, "log_format": "json", "verify_scores": True}
    flags = ["serve"]
    for name, value in settings.items():
        flags += [f"--{name.replace('_', '-')}"] + ([] if value is True else [str(value)])
    toml = tmp_path / "c.toml"
    toml.write_text(
        "\n".join(
            f"{k} = {json.dumps(v if not hasattr(v, 'parts') else str(v))}" for k, v in settings.items()
        )
    )
    env = {f"PPFR_CLOUD_{k.upper()}": str(v) for k, v in settings.items()}
    parse = build_parser().parse_args
    from_flags = serve_config(parse(flags), environ={})
    assert from_flags == serve_config(parse(["serve", "--config", str(toml)]), environ={})
    assert from_flags == serve_config(parse(["serve"]), environ=env)
    assert from_flags.max_batch == 16 and from_flags.max_delay_ms == 2.0  # the rest: ServerConfig's defaults
    assert serve_config(parse(["serve", "--port", "7"]), environ=env).port == 7  # flags win
    with pytest.raises(SystemExit):
        main(["serve", "--config", str(toml), "--max-batch", "x"])


def test_bad_settings_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "c.toml").write_text('bundel = "x"\n')
    assert main(["serve", "--config", str(tmp_path / "c.toml")]) == 2
    assert "unknown setting 'bundel'" in capsys.readouterr().err
    assert main(["serve", "--bundle", "x"]) == 2
    assert "no db" in capsys.readouterr().err


def test_no_password_in_ps_for_a_postgresql_server_set_up_by_toml(small_bundle, postgres, tmp_path):
    url = postgres().replace("postgres:@", "postgres:Pw-do-not-show-9f3@")
    config = tmp_path / "server.toml"
    config.write_text(
        f'bundle = "{small_bundle("ppfr_fd")}"\ndb = "{url}"\nport = 0\ninsecure_no_auth = true\n'
    )
    config.chmod(0o600)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ppfr.cloud.cli", "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        for line in proc.stdout:
            if "ppfr-cloud serving" in line:
                break
        ps = subprocess.run(["ps", "-eo", "args", "-ww"], capture_output=True, text=True).stdout
        assert str(config) in ps and "Pw-do-not-show-9f3" not in ps
        assert "Pw-do-not-show" not in line and "***" in line  # the log shows the URL without it
    finally:
        proc.terminate()
        proc.wait(timeout=60)
