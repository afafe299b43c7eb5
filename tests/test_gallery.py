"""The gallery contract, on every backend: real SQLite files and a real PostgreSQL + pgvector server (from
pgserver, started once per session). The same tests run against both."""

import os
import stat

import numpy as np
import pytest
from ppfr.cloud.gallery import GalleryError, SqliteGallery, open_gallery

D = 8


def unit(rng, d=D):
    v = rng.standard_normal(d).astype(np.float32)
    return v / np.linalg.norm(v)


@pytest.fixture(params=["sqlite", "postgres"])
def db(request, tmp_path):
    """A fresh gallery location of each backend."""
    if request.param == "postgres":
        return request.getfixturevalue("postgres")()
    return tmp_path / "g.sqlite"


def test_enroll_verify_identify_delete_and_reopen(db):
    rng = np.random.default_rng(0)
    a, b, c = unit(rng), unit(rng), unit(rng)
    g = open_gallery(db, D, "rec1")
    first = g.enroll("alice", a)
    assert first.template_count == 1 and first.create_time > 0
    assert g.enroll("alice", c).template_count == 2  # re-enrolling adds a template
    g.enroll("bob", b)
    assert (g.subject_count, g.template_count) == (2, 3)
    pooled = (a + c) / np.linalg.norm(a + c)  # the subject's score: cosine to the mean of its templates
    assert g.verify("alice", c) == pytest.approx(float(pooled @ c), abs=1e-5)
    assert g.verify("alice", pooled) == pytest.approx(1.0, abs=1e-5)
    assert g.verify("bob", b) == pytest.approx(1.0, abs=1e-5)  # one template scores as itself
    assert g.verify("nobody", a) is None and not g.has_subject("nobody") and g.has_subject("bob")
    top = g.identify(b, top_k=5)
    assert [m.subject_id for m in top] == ["bob", "alice"] and top[0].score == pytest.approx(1.0, abs=1e-5)
    assert top[1].score == pytest.approx(float(pooled @ b), abs=1e-5)
    assert len(g.identify(b, top_k=1)) == 1
    g.close()

    g = open_gallery(db, D, "rec1")  # durable: a fresh process sees the same templates
    assert (g.subject_count, g.template_count) == (2, 3)
    assert g.delete("alice") == 2 and g.delete("alice") == 0
    assert not g.has_subject("alice") and g.verify("alice", a) is None
    assert [m.subject_id for m in g.identify(a, 5)] == ["bob"]
    g.close()
    g = open_gallery(db, D, "rec1")
    assert (g.subject_count, g.template_count) == (1, 1)
    g.close()


def test_idempotent_enroll_returns_the_first_enrollment_and_writes_nothing(db):
    rng = np.random.default_rng(1)
    g = open_gallery(db, D, "rec1")
    first = g.enroll("carol", unit(rng), idempotency_key="k-1")
    again = g.enroll("carol", unit(rng), idempotency_key="k-1")
    assert (again.template_id, again.template_count, again.create_time) == (
        first.template_id,
        1,
        pytest.approx(first.create_time),
    )
    assert g.template_count == 1
    other = g.enroll("carol", unit(rng), idempotency_key="k-2")
    assert other.template_id != first.template_id and other.template_count == 2
    dave = g.enroll("dave", unit(rng), idempotency_key="k-1")  # keys are per subject
    assert dave.template_id not in (first.template_id, other.template_id)
    plain = [g.enroll("carol", unit(rng)) for _ in range(2)]  # no key: every call adds one
    assert plain[1].template_count == 4
    g.close()
    g = open_gallery(db, D, "rec1")  # the key survives a restart
    assert g.enroll("carol", unit(rng), idempotency_key="k-1").template_id == first.template_id
    assert g.template_count == 5
    g.close()


def test_delete_template_and_list_subjects(db):
    rng = np.random.default_rng(2)
    g = open_gallery(db, D, "rec1")
    kept_vec, bad_vec = unit(rng), unit(rng)
    kept = g.enroll("erin", kept_vec)
    bad = g.enroll("erin", bad_vec)
    assert g.delete_template(bad.template_id) == "erin"
    assert g.delete_template(bad.template_id) is None and g.delete_template(10**9) is None
    assert g.verify("erin", bad_vec) == pytest.approx(float(kept_vec @ bad_vec), abs=1e-5)
    assert g.delete_template(kept.template_id) == "erin"  # the last template: the subject is gone
    assert not g.has_subject("erin") and g.subject_count == 0 and g.identify(kept_vec, 3) == []

    names = [f"s{i:02d}" for i in range(7)]
    for i, name in enumerate(names):
        for _ in range(1 + i % 3):
            g.enroll(name, unit(rng))
    listed, token, pages = [], "", 0
    while True:
        page, token = g.list_subjects(3, token)
        assert len(page) <= 3
        listed += page
        pages += 1
        if not token:
            break
    assert listed == [(n, 1 + i % 3) for i, n in enumerate(names)] and pages == 3
    assert g.list_subjects(7) == ([(n, 1 + i % 3) for i, n in enumerate(names)], "")
    for bad_token in ("garbage!", "czE6"[:-1] + "x"):
        with pytest.raises(ValueError):
            g.list_subjects(3, bad_token)
    with pytest.raises(ValueError):
        g.list_subjects(0)
    g.close()


def test_refuses_a_database_of_another_recognizer(db):
    open_gallery(db, D, "rec1").close()
    with pytest.raises(GalleryError, match="another recognizer"):
        open_gallery(db, D, "rec2")
    with pytest.raises(GalleryError, match="another recognizer"):
        open_gallery(db, 16, "rec1")


def test_refuses_a_template_secret_other_than_the_one_it_was_enrolled_under(db):
    """A gallery enrolled before secrets were recorded counts as enrolled without one ("none")."""
    g = open_gallery(db, D, "rec1")
    g.enroll("alice", unit(np.random.default_rng(7)))
    g.close()
    with pytest.raises(
        GalleryError, match="enrolled under template secret none and this server runs with tk=a"
    ):
        open_gallery(db, D, "rec1", template_key="tk=a")
    open_gallery(db, D, "rec1", template_key="none").close()  # recorded now
    with pytest.raises(GalleryError, match="template secret none"):
        open_gallery(db, D, "rec1", template_key="tk=b")


def test_identify_ranks_subjects_by_their_pooled_score_like_brute_force(db):
    """Many subjects, several templates each, deletes in between: identify equals a brute-force answer."""
    rng = np.random.default_rng(3)
    g = open_gallery(db, D, "rec1")
    vecs = {}
    for i in range(60):
        for _ in range(1 + i % 3):
            v = unit(rng)
            g.enroll(f"p{i}", v)
            vecs.setdefault(f"p{i}", []).append(v)
    for i in range(0, 60, 7):
        g.delete(f"p{i}")
        vecs.pop(f"p{i}")
    probe = unit(rng)
    pooled = {s: np.mean(vs, 0) / np.linalg.norm(np.mean(vs, 0)) for s, vs in vecs.items()}
    best = sorted(((float(c @ probe), s) for s, c in pooled.items()), reverse=True)[:10]
    got = g.identify(probe, 10)
    assert [m.subject_id for m in got] == [s for _, s in best]
    assert [m.score for m in got] == pytest.approx([v for v, _ in best], abs=1e-5)
    g.close()


def test_a_new_sqlite_gallery_is_private(tmp_path):
    db = tmp_path / "new" / "g.sqlite"
    g = SqliteGallery(db, D)
    g.enroll("x", np.ones(D, np.float32))
    for path in (db, db.with_name("g.sqlite-wal")):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
    g.close()


def test_open_gallery_refuses_other_urls(tmp_path):
    with pytest.raises(GalleryError, match="not supported"):
        open_gallery("mysql://x/y", D)


def test_the_compressed_index_answers_beyond_exact_max_and_skips_deleted_subjects(db):
    """exact_max=0: every identify goes through the compressed index (cloud/ann.py, on both backends). On a
    few hundred templates its candidates, reranked exactly, hold the true best subjects for probes near an
    enrolled template."""
    rng = np.random.default_rng(4)
    g = open_gallery(db, 16, "rec1", exact_max=0, ann_options={"candidates": 64})
    vecs = {f"p{i:03d}": unit(rng, 16) for i in range(300)}
    for name, v in vecs.items():
        g.enroll(name, v)
    gone = [f"p{i:03d}" for i in range(0, 300, 10)]
    for name in gone:
        assert g.delete(name) == 1
    assert g.template_count == 270  # (PostgreSQL: applies the log, which attaches the index)
    assert g._matrix.ann is not None and g._matrix.ann.wait_caught_up(30)
    for name in ["p005", "p123", "p299", "p010", "p200"]:
        probe = vecs[name] + rng.standard_normal(16).astype(np.float32) * 0.15
        probe /= np.linalg.norm(probe)
        live = {s: float(v @ probe) for s, v in vecs.items() if s not in gone}
        truth = sorted(live, key=live.get, reverse=True)[:5]
        got = g.identify(probe, 5)
        assert [m.subject_id for m in got] == truth
        assert [m.score for m in got] == pytest.approx([live[s] for s in truth], abs=1e-5)
        exact = g.identify(probe, 5, exact=True)
        assert [(m.subject_id, pytest.approx(m.score, abs=1e-5)) for m in exact] == [
            (m.subject_id, m.score) for m in got
        ]
    g.close()


def test_postgres_replicas_follow_each_others_writes_through_the_change_log(postgres):
    """Two gallery instances (two replicas) on one database: each read applies the other's committed writes
    first, in log order (a template added and removed before the other replica reads never shows there), and
    a third replica started later loads the same state."""
    url = postgres()
    rng = np.random.default_rng(6)
    a, b = open_gallery(url, D, "rec1"), open_gallery(url, D, "rec1")
    va, vb = unit(rng), unit(rng)
    a.enroll("ann", va)
    assert b.verify("ann", va) == pytest.approx(1.0, abs=1e-5)
    t = a.enroll("ben", vb).template_id
    assert a.delete_template(t) == "ben"
    assert not b.has_subject("ben") and [m.subject_id for m in b.identify(vb, 5)] == ["ann"]
    b.enroll("cy", vb)
    assert b.delete("ann") == 1
    assert a.verify("ann", va) is None and [m.subject_id for m in a.identify(vb, 5)] == ["cy"]
    c = open_gallery(url, D, "rec1")
    assert (c.subject_count, c.template_count) == (1, 1) and c.verify("cy", vb) == pytest.approx(
        1.0, abs=1e-5
    )
    assert (a.subject_count, b.subject_count) == (1, 1)
    for g in (a, b, c):
        g.close()


def test_postgres_replicas_writing_one_subject_at_once_stay_consistent(postgres):
    """Two gallery instances (two replicas' connections) and eight threads: concurrent retries of one
    idempotency key store one template; concurrent enrolls and template deletes leave every subject's count
    equal to its templates."""
    from concurrent.futures import ThreadPoolExecutor

    url = postgres()
    a, b = open_gallery(url, D, "rec1"), open_gallery(url, D, "rec1")
    rng = np.random.default_rng(6)
    vec = unit(rng)
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda i: (a, b)[i % 2].enroll("same", vec, idempotency_key="once"), range(16)))
    assert len({e.template_id for e in got}) == 1 and a.template_count == 1
    vecs = [unit(rng) for _ in range(40)]
    with ThreadPoolExecutor(8) as pool:
        made = list(pool.map(lambda i: (a, b)[i % 2].enroll(f"c{i % 4}", vecs[i]), range(40)))
        list(pool.map(lambda e: (b, a)[e.template_id % 2].delete_template(e.template_id), made[::3]))
    listed = dict(a.list_subjects(100)[0])
    counts = dict(
        a._conn().execute("SELECT subject_id, count(*) FROM ppfr_templates GROUP BY subject_id").fetchall()
    )
    assert listed == counts and sum(counts.values()) == 1 + 40 - len(made[::3])
    a.close(), b.close()
