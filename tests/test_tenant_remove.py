"""PackedBlock.put(remove=True) on a block's last template (real CKKS keys, real dlib embeddings of CelebA
faces): SEAL refuses the exact zeros the subtraction leaves ("result ciphertext is transparent"), so the
block itself goes back to empty, and every caller (sealed SQLite and PostgreSQL galleries) is safe."""

import numpy as np
import pytest
from helpers import DATA

tenant = pytest.importorskip("ppfr.bundle.tenant")
pytest.importorskip("tenseal")


@pytest.fixture(scope="module")
def keys():
    secret, public = tenant.keygen()
    return tenant.Tenant(secret, secret=True), tenant.Tenant(public)


@pytest.fixture(scope="module")
def emb():
    """Three unit dlib embeddings of real CelebA faces."""
    x = np.load(DATA / "teacher" / "dlib_celeba.npz")["emb"][:3].astype(np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_removing_the_last_templates_empties_the_block(keys, emb):
    edge, server = keys

    a, b = (server.load(edge.dump(edge.encrypt(x))) for x in emb[:2])  # removed as stored: the same bytes
    block = tenant.PackedBlock(server)
    block.put(3, a)
    block.put(9, b)
    block.put(3, a, remove=True)  # another template is left: a plain subtraction
    assert all(d is not None for d in block.diags)
    block.put(9, b, remove=True)  # the last one: exact zeros, once "transparent"
    assert all(d is None for d in block.diags)
    with pytest.raises(tenant.SealedError, match="empty packed block"):
        block.scores(tenant.query_babies(server, emb[2], plain=True), True)
    block.put(9, b)  # an emptied block takes templates again (an undone removal)
    got = edge.decrypt(block.scores(tenant.query_babies(server, emb[2], plain=True), True))
    assert abs(got[9] - emb[1] @ emb[2]) <= 1e-4 and np.abs(np.delete(got, 9)).max() <= 1e-4
