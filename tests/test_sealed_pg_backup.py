"""`ppfr-cloud backup` / `restore` of a sealed PostgreSQL gallery (real pg_dump / pg_restore on a real
PostgreSQL from pgserver, real CKKS encryption, real CelebA face embeddings): the sealed_* tables travel with
the ppfr_* ones, so the restored gallery answers Verify and Identify with the same decrypted scores, lists
the same subjects and keeps its audit log."""

import os

import numpy as np
import pytest
from helpers import celeba_embeddings, decrypting_edge, new_tenant

pytest.importorskip("tenseal")
pytest.importorskip("psycopg")
from ppfr.cloud.cli import main as cloud_main  # noqa: E402
from ppfr.cloud.sealed_postgres import SealedPostgresGallery  # noqa: E402

pytestmark = pytest.mark.slow


def _answers(edge_tenant, g, queries) -> tuple[list, list]:
    """(decrypted Verify score of every subject for every query, Identify's ranking for every query)."""
    edge = decrypting_edge(edge_tenant)
    subjects = [s for s, _ in g.list_subjects(100)[0]]
    scores, ranked = [], []
    for q in queries:
        query = g.query(sealed=edge_tenant.dump(edge_tenant.encrypt(q, level=1)))
        scores.append([edge.verify_result(*g.verify(s, query))[0] for s in subjects])
        found = g.identify(query)
        norms = {s: edge_tenant.decrypt_bytes(n)[0] for s, n in found.norms.items()}
        ranked.append([n for n, _, _ in edge.identify_result(found.blocks, found.owners, norms, 3)])
    return scores, ranked


def test_backup_of_a_sealed_postgres_gallery_restores_its_templates(postgres, capsys, tmp_path):
    edge_tenant, public = new_tenant()
    emb = celeba_embeddings(3)  # 3 people x 3 photos
    source, target = postgres(), postgres()
    g = SealedPostgresGallery(source, public, "sealed-edge")
    ids = [
        g.enroll(f"p{i // 3}", g.template(sealed=edge_tenant.dump(edge_tenant.encrypt(emb[i]))))[0]
        for i in (0, 1, 3, 4, 6)
    ]
    g.delete_template(ids[1], actor="k-admin")  # a block snapshot and a change-log row to carry too
    want = _answers(edge_tenant, g, emb[[2, 5, 8]])
    listed = g.list_subjects(100)
    g.close()
    dump = tmp_path / "sealed.dump"
    assert cloud_main(["backup", "--db", source, "--out", str(dump)]) == 0
    assert cloud_main(["restore", "--db", target, "--from", str(dump)]) == 0
    assert os.stat(dump).st_mode & 0o077 == 0
    restored = SealedPostgresGallery(target, public, "sealed-edge")
    assert restored.list_subjects(100) == listed == ([("p0", 1), ("p1", 2), ("p2", 1)], "")
    got = _answers(edge_tenant, restored, emb[[2, 5, 8]])
    assert got[1] == want[1]
    assert np.abs(np.array(got[0]) - np.array(want[0])).max() <= 1e-4
    restored.close()
    capsys.readouterr()
    assert cloud_main(["audit", "--db", target]) == 0
    assert "delete_template" in capsys.readouterr().out
