"""cloud/sealed.py with real encryption: a sealed gallery (both modes) stores only ciphertexts (the file is
searched for the embeddings' float values), answers Verify and Identify with encrypted scores that the
tenant decrypts to the plain server's pooled scores and ranking (cloud/matrix.py) on real face embeddings,
deletes (the last template of a block too), reopens (blocks rebuilt), and refuses another tenant or mode
with one line (SQLite and PostgreSQL)."""

import numpy as np
import pytest
from helpers import celeba_embeddings, decrypting_edge, new_tenant

pytest.importorskip("tenseal")
from ppfr.bundle import tenant  # noqa: E402
from ppfr.cloud.matrix import TemplateMatrix  # noqa: E402
from ppfr.cloud.sealed import GalleryModeError, SealedGallery  # noqa: E402


@pytest.fixture(scope="module")
def keys():
    return new_tenant()


@pytest.fixture(scope="module")
def emb():
    """12 unit dlib embeddings of real CelebA faces (4 people x 3 photos)."""
    return celeba_embeddings(4)


def test_sealed_edge_gallery_matches_plain_and_stores_no_plaintext(keys, emb, tmp_path):
    edge_tenant, public = keys
    path = tmp_path / "g.sqlite"
    g = SealedGallery(path, public, "sealed-edge")
    plain = TemplateMatrix(128)
    owners = {0: "ann", 1: "ann", 3: "bob", 6: "cat", 9: "dan"}  # photo -> subject; ann pooled over two
    for i, s in owners.items():
        g.enroll(s, g.template(sealed=edge_tenant.dump(edge_tenant.encrypt(emb[i]))))
        plain.add(s, i + 1, emb[i].astype(np.float32))
    assert g.list_subjects(10) == ([("ann", 2), ("bob", 1), ("cat", 1), ("dan", 1)], "")
    edge = decrypting_edge(edge_tenant)
    probes = emb[[2, 5, 11]]
    for q in probes:
        query = g.query(sealed=edge_tenant.dump(edge_tenant.encrypt(q, level=1)))
        score, _ = edge.verify_result(*g.verify("ann", query))
        assert abs(score - plain.verify("ann", q.astype(np.float32))) <= 1e-4
        found = g.identify(query)
        norms = {s: edge_tenant.decrypt_bytes(n)[0] for s, n in found.norms.items()}
        got = edge.identify_result(found.blocks, found.owners, norms, 3)
        want = plain.identify(q.astype(np.float32), 3, exact=True)
        assert [n for n, _, _ in got] == [n for n, _ in want]
    assert g.verify("nobody", query) is None
    g.close()
    stored = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    for x in emb:
        for dtype in (np.float32, np.float64, np.float16):
            assert x[:4].astype(dtype).tobytes() not in stored


def test_reopen_and_delete(keys, emb, tmp_path):
    edge_tenant, public = keys
    path = tmp_path / "g.sqlite"
    g = SealedGallery(path, public, "sealed-edge")
    ids = [g.enroll("ann", g.template(sealed=edge_tenant.dump(edge_tenant.encrypt(x))))[0] for x in emb[:2]]
    g.enroll("bob", g.template(sealed=edge_tenant.dump(edge_tenant.encrypt(emb[3]))))
    g.db.close()  # a crash: the packed blocks were never saved
    g = SealedGallery(path, public, "sealed-edge")  # templates put in again from their ciphertexts
    assert g.unsaved == {0}
    g.close()  # saves the blocks
    g = SealedGallery(path, public, "sealed-edge")  # blocks read back, nothing put in again
    assert not g.unsaved
    query = g.query(sealed=edge_tenant.dump(edge_tenant.encrypt(emb[1], level=1)))
    scores = edge_tenant.decrypt_bytes(g.identify(query).blocks[0])
    assert np.abs(scores[:3] - emb[[0, 1, 3]] @ emb[1]).max() <= 1e-4
    assert g.delete_template(ids[0]) == "ann"
    score, _ = decrypting_edge(edge_tenant).verify_result(*g.verify("ann", query))
    assert abs(score - 1.0) <= 1e-4  # ann is now the probe's own photo alone
    scores = edge_tenant.decrypt_bytes(g.identify(query).blocks[0])
    assert abs(scores[0]) <= 1e-4  # the deleted template's slot scores nothing
    assert g.delete("bob") == 1 and g.list_subjects(10) == ([("ann", 1)], "")
    with pytest.raises(tenant.SealedError):
        g.template(sealed=b"\x00" * 100)
    with pytest.raises(tenant.SealedError, match="level"):
        g.query(sealed=edge_tenant.dump(edge_tenant.encrypt(emb[0])))
    assert g.delete("ann") == 1 and g.identify(query).blocks == []  # its block's last template: emptied
    g.enroll("eve", g.template(sealed=edge_tenant.dump(edge_tenant.encrypt(emb[1]))))
    g.close()
    g = SealedGallery(path, public, "sealed-edge")  # the emptied block's old saved copy is gone
    assert abs(edge_tenant.decrypt_bytes(g.identify(query).blocks[0])[0] - 1.0) <= 1e-4
    g.close()


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.slow)])
def test_another_tenant_or_mode_is_refused_with_one_line(keys, backend, tmp_path, request):
    _, public = keys
    if backend == "postgres":
        pytest.importorskip("psycopg")
        from ppfr.cloud.sealed_postgres import SealedPostgresGallery as Store

        where = request.getfixturevalue("postgres")()
    else:
        Store, where = SealedGallery, tmp_path / "g.sqlite"
    Store(where, public, "sealed-edge").close()
    with pytest.raises(GalleryModeError, match="sealed-edge under tenant context") as err:
        Store(where, tenant.keygen()[1], "sealed-edge")
    assert "\n" not in str(err.value)
    with pytest.raises(GalleryModeError, match="started sealed-gallery"):
        Store(where, public, "sealed-gallery")


def test_sealed_gallery_mode_encrypts_on_arrival(keys, emb, tmp_path):
    edge_tenant, public = keys
    g = SealedGallery(tmp_path / "g.sqlite", public, "sealed-gallery")
    for x in emb[:3]:
        g.enroll("ann", g.template(embedding=x))
    with pytest.raises(tenant.SealedError, match="sealed-gallery"):
        g.template(sealed=edge_tenant.dump(edge_tenant.encrypt(emb[0])))
    q = emb[4]
    score, _ = decrypting_edge(edge_tenant).verify_result(*g.verify("ann", g.query(embedding=q)))
    mean = emb[:3].mean(0)
    assert abs(score - mean @ q / np.linalg.norm(mean)) <= 1e-4
    g.close()
