"""ppfr.bundle.tenant with real CKKS encryption (tenseal / Microsoft SEAL): keys, round trip, wrong keys,
encrypted scores against plaintext cosines on real face embeddings (dlib's, of CelebA faces), packed 1:N
blocks, and untrusted bytes fuzzed into one clean error."""

import numpy as np
import pytest
from helpers import DATA

tenant = pytest.importorskip("ppfr.bundle.tenant")
pytest.importorskip("tenseal")


@pytest.fixture(scope="module")
def keys():
    secret, public = tenant.keygen()
    return tenant.Tenant(secret, secret=True), tenant.Tenant(public), secret, public


@pytest.fixture(scope="module")
def faces():
    """48 unit dlib embeddings of real CelebA faces, 8 people x 6 photos, and their people."""
    z = np.load(DATA / "teacher" / "dlib_celeba.npz")
    people = np.array([p.split("/")[0] for p in z["paths"]])
    chosen = [p for p in dict.fromkeys(people) if (people == p).sum() >= 6][:8]
    rows = np.concatenate([np.flatnonzero(people == p)[:6] for p in chosen])
    emb = z["emb"][rows].astype(np.float64)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True), people[rows]


def test_keys_round_trip_and_fingerprint(keys, faces):
    edge, server, secret, public = keys
    assert edge.fingerprint == server.fingerprint and len(edge.fingerprint) == 64
    x = faces[0][0]
    data = edge.dump(edge.encrypt(x))
    back = edge.decrypt(server.load(data, level=0))
    assert np.abs(back - np.tile(x, tenant.SLOTS // tenant.DIM)).max() < 1e-6
    query = edge.dump(edge.encrypt(x, level=1))
    assert len(query) < len(data) < 400_000
    with pytest.raises(tenant.SealedError, match="level"):
        server.load(query, level=0)


def test_contexts_refused_in_the_wrong_role(keys):
    edge, server, secret, public = keys
    with pytest.raises(tenant.SealedError, match="SECRET"):
        tenant.Tenant(secret)
    with pytest.raises(tenant.SealedError, match="public tenant context"):
        tenant.Tenant(public, secret=True)
    with pytest.raises(tenant.SealedError, match="secret context"):
        server.decrypt(server.encrypt(np.zeros(tenant.DIM)))
    for bad in (b"", b"x" * 1000, public[: len(public) // 2]):
        with pytest.raises(tenant.SealedError):
            tenant.Tenant(bad)


def test_another_tenants_key_decrypts_to_garbage_and_is_refused(keys, faces):
    edge, server, _, _ = keys
    other = tenant.Tenant(tenant.keygen()[0], secret=True)
    assert other.fingerprint != edge.fingerprint
    ct = server.load(edge.dump(edge.encrypt(faces[0][0])))
    with pytest.raises(tenant.SealedError, match="not made for this tenant"):
        other.decrypt(ct)


def test_scores_match_plain_cosines_on_real_faces(keys, faces):
    edge, server, _, _ = keys
    emb, people = faces
    q = emb[1]
    query = server.load(edge.dump(edge.encrypt(q, level=1)), level=1)
    worst = 0.0
    for x in emb[::5]:
        t = server.load(edge.dump(edge.encrypt(x)))
        sealed_edge = edge.decrypt(server.dot(query, t))[0]
        sealed_gallery = edge.decrypt(server.dot_plain(t, q))[0]
        worst = max(worst, abs(sealed_edge - x @ q), abs(sealed_gallery - x @ q))
    assert worst <= 1e-4
    # pooled (the server's plain rule): cosine to the mean of a subject's templates = q.S / |S|
    same = [server.load(edge.dump(edge.encrypt(x))) for x in emb[people == people[0]][2:]]
    total = server.add(same)
    qs, ss = edge.decrypt(server.dot(query, total))[0], edge.decrypt(server.dot(total, total))[0]
    mean = emb[people == people[0]][2:].mean(0)
    assert abs(tenant.pooled(qs, ss) - mean @ q / np.linalg.norm(mean)) <= 1e-4


def test_packed_block_scores_every_slot(keys, faces):
    edge, server, _, _ = keys
    emb, _ = faces
    block = tenant.PackedBlock(server)
    slots = [0, 5, 127, 128, 1000, 4095]
    for slot, x in zip(slots, emb[:6]):
        block.put(slot, server.load(edge.dump(edge.encrypt(x))))
    q = emb[7]
    query = server.load(edge.dump(edge.encrypt(q, level=1)), level=1)
    for plain in (False, True):
        babies = tenant.query_babies(server, q if plain else query, plain=plain)
        got = edge.decrypt(server.load(server.dump(block.scores(babies, plain))))
        assert np.abs(got[slots] - emb[:6] @ q).max() <= 1e-4
        assert np.abs(np.delete(got, slots)).max() <= 1e-4  # empty slots score 0
    block.put(1000, server.load(edge.dump(edge.encrypt(emb[4]))), remove=True)
    got = edge.decrypt(block.scores(tenant.query_babies(server, query), False))
    assert abs(got[1000]) <= 1e-4 and abs(got[5] - emb[1] @ q) <= 1e-4


def test_untrusted_ciphertext_bytes_fail_cleanly(keys, faces):
    edge, server, _, public = keys
    good = edge.dump(edge.encrypt(faces[0][0]))
    rng = np.random.default_rng(0)
    bad = [b"", b"\x00", rng.bytes(4096), good[:100], good[: len(good) // 2], good[:-1], public[:200_000]]
    bad.append(b"x" * (tenant.MAX_CIPHERTEXT_BYTES + 1))
    # SEAL's header: a declared size beyond the bytes given (up to 2^62), and every compression mode byte
    bad += [good[:8] + size.to_bytes(8, "little") + good[16:] for size in (2**62, 2**31, len(good) + 1, 17)]
    bad += [good[:4] + bytes([mode]) + good[5:] for mode in (0, 2, 3, 255)]
    for i in range(40):  # flipped bytes anywhere (header included)
        b = bytearray(good)
        for pos in rng.integers(0, len(b), 1 + i % 4):
            b[pos] ^= int(rng.integers(1, 256))
        bad.append(bytes(b))
    refused = 0
    for data in bad:
        try:
            edge.decrypt(server.load(data))
        except tenant.SealedError as err:
            assert "\n" not in str(err)
            refused += 1
    assert refused >= 15  # the constructed ones; a flip deep in the compressed payload may still load
    with pytest.raises(tenant.SealedError):
        server.load("not bytes")
