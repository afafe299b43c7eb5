"""Sealed edge (issue 27) with real encryption: `ppfr-edge tenant keygen`, the secret context's file rules,
and the edge's recognizer (a real exported rgb bundle) -> ciphertexts -> the server's encrypted scores ->
the same pooled scores, decisions and ranking as the plain server (cloud/matrix.py) on real LFW faces."""

import json
import os

import numpy as np
import pytest
from helpers import lfw_faces

pytest.importorskip("tenseal")
from ppfr.bundle import tenant  # noqa: E402
from ppfr.cloud.matrix import TemplateMatrix  # noqa: E402
from ppfr.edge import cli  # noqa: E402
from ppfr.edge.errors import EdgeError  # noqa: E402
from ppfr.edge.sealed import SealedEdge, load_secret  # noqa: E402


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    out = tmp_path_factory.mktemp("tenant") / "keys"
    assert cli.main(["tenant", "keygen", "--out", str(out), "--json"]) == 0
    return out


def test_keygen_writes_a_private_secret_and_never_overwrites(keys, capsys):
    secret, public = keys / "tenant.secret", keys / "tenant.public"
    assert secret.stat().st_mode & 0o777 == 0o600
    assert tenant.Tenant(public.read_bytes()).fingerprint == load_secret(secret).fingerprint
    assert cli.main(["tenant", "keygen", "--out", str(keys), "--json"]) == 2
    doc = json.loads(capsys.readouterr().out)
    assert "never overwritten" in doc["error"]
    assert secret.read_bytes()[-64:].hex() not in json.dumps(doc)


def test_secret_readable_by_others_is_refused(keys, tmp_path):
    copy = tmp_path / "tenant.secret"
    copy.write_bytes((keys / "tenant.secret").read_bytes())
    os.chmod(copy, 0o644)
    with pytest.raises(EdgeError, match="chmod 600"):
        load_secret(copy)
    with pytest.raises(EdgeError, match="public tenant context"):
        os.chmod(copy, 0o600)
        copy.write_bytes((keys / "tenant.public").read_bytes())
        load_secret(copy)


def test_sealed_edge_matches_the_plain_server_on_real_faces(keys, small_bundle):
    edge = SealedEdge(small_bundle("rgb"), keys / "tenant.secret", threads=1)
    server = tenant.Tenant((keys / "tenant.public").read_bytes())
    faces = lfw_faces(12)
    emb = np.stack([edge.embed(f) for f in faces])
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-4)
    owners = ["a", "a", "a", "b", "c", "d", "e", "f"]  # a has 3 templates: pooled
    plain = TemplateMatrix(128)
    for i, s in enumerate(owners):
        plain.add(s, i + 1, emb[i].astype(np.float32))
    stored = [server.load(edge.seal(e, query=False), level=0) for e in emb[: len(owners)]]
    block = tenant.PackedBlock(server)
    for slot, ct in enumerate(stored):
        block.put(slot, ct)
    total_a = server.add(stored[:3])
    norm_a = server.dump(server.dot(total_a, total_a))
    for q in emb[8:]:
        query = server.load(edge.seal(q, query=True), level=1)
        score, match = edge.verify_result(server.dump(server.dot(query, total_a)), norm_a, 3)
        expect = plain.verify("a", q.astype(np.float32))
        assert abs(score - expect) <= 1e-4 and match == (expect >= edge.threshold_for(3))
        scores = server.dump(block.scores(tenant.query_babies(server, query), plain=False))
        names = owners + [""] * (tenant.SLOTS - len(owners))
        got = edge.identify_result([scores], [names], {"a": edge.tenant.decrypt_bytes(norm_a)[0]}, 3)
        want = plain.identify(q.astype(np.float32), 3, exact=True)
        assert [n for n, _, _ in got] == [n for n, _ in want]
        assert max(abs(s - w) for (_, s, _), (_, w) in zip(got, want)) <= 1e-4


def test_sealed_edge_refuses_a_protected_bundle(keys, small_bundle):
    with pytest.raises(EdgeError, match="rgb bundle"):
        SealedEdge(small_bundle("ppfr_fd"), keys / "tenant.secret")
