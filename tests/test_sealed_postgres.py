"""Sealed galleries on PostgreSQL (issue 27; cloud/sealed_postgres.py) with real encryption and a real
PostgreSQL (pgserver): two replicas on one database see each other's enrollments and deletions in Identify
(packed blocks brought up to date from the change log and the deleting replica's block snapshots), Verify
and Identify decrypt to the plain server's pooled scores on real face embeddings, a reopen reads the
snapshots, the audit log records who deleted, and a plain server refuses the sealed database (another mode
or tenant: test_sealed_gallery.py); then two `ppfr-cloud serve --sealed sealed-edge` replicas over real gRPC
with API keys."""

import numpy as np
import pytest
from helpers import celeba_embeddings, decrypting_edge, lfw_faces, new_tenant

pytest.importorskip("tenseal")
pytest.importorskip("psycopg")
from ppfr.cloud.matrix import TemplateMatrix  # noqa: E402
from ppfr.cloud.sealed import GalleryModeError, check_plain_gallery  # noqa: E402
from ppfr.cloud.sealed_postgres import SealedPostgresGallery  # noqa: E402

pytestmark = pytest.mark.slow


def _ranked(edge_tenant, g, q, k=3):
    found = g.identify(g.query(sealed=edge_tenant.dump(edge_tenant.encrypt(q, level=1))))
    norms = {s: edge_tenant.decrypt_bytes(n)[0] for s, n in found.norms.items()}
    return decrypting_edge(edge_tenant).identify_result(found.blocks, found.owners, norms, k)


def test_two_replicas_share_a_sealed_postgres_gallery(postgres, capsys):
    from ppfr.cloud.cli import main as cloud_main

    edge_tenant, public = new_tenant()
    emb = celeba_embeddings(3)  # 9 unit dlib embeddings of real CelebA faces (3 people x 3 photos)
    url = postgres()
    a, b = (
        SealedPostgresGallery(url, public, "sealed-edge"),
        SealedPostgresGallery(url, public, "sealed-edge"),
    )
    plain = TemplateMatrix(128)

    def enroll(g, subject, i, **kw):
        plain.add(subject, i + 1, emb[i].astype(np.float32))
        return g.enroll(subject, g.template(sealed=edge_tenant.dump(edge_tenant.encrypt(emb[i]))), **kw)

    ann0, _ = enroll(a, "ann", 0, idem="k1")
    again = b.template(sealed=edge_tenant.dump(edge_tenant.encrypt(emb[0])))
    assert b.enroll("ann", again, idem="k1") == (ann0, 1)  # a retry on the other replica: the first one
    enroll(b, "ann", 1)
    enroll(a, "bob", 3)
    enroll(b, "cat", 6)
    page, token = a.list_subjects(2)
    assert page == [("ann", 2), ("bob", 1)] and b.list_subjects(2, token) == ([("cat", 1)], "")
    assert b.fresh_sizes() == (3, 4)
    for g in (a, b):  # each replica's blocks hold the other's enrollments
        got = _ranked(edge_tenant, g, emb[2])
        want = plain.identify(emb[2].astype(np.float32), 3, exact=True)
        assert [n for n, _, _ in got] == [n for n, _ in want]
        assert max(abs(s - w) for (_, s, _), (_, w) in zip(got, want)) <= 1e-4
        score, _ = decrypting_edge(edge_tenant).verify_result(
            *g.verify("ann", g.query(sealed=edge_tenant.dump(edge_tenant.encrypt(emb[2], level=1))))
        )
        assert abs(score - plain.verify("ann", emb[2].astype(np.float32))) <= 1e-4
    assert b.delete_template(ann0, actor="k-admin") == "ann"  # B removes a template A put into its block
    plain.remove_template(1)
    enroll(b, "dan", 7)  # added after B's snapshot of the block: A reloads it, then puts this one in
    got = {n: s for n, s, _ in _ranked(edge_tenant, a, emb[0], 4)}
    want = dict(plain.identify(emb[0].astype(np.float32), 4, exact=True))
    assert got.keys() == want.keys() and max(abs(got[n] - want[n]) for n in got) <= 1e-4
    assert a.delete("bob", actor="k-admin") == 1
    assert b.list_subjects(9) == ([("ann", 1), ("cat", 1), ("dan", 1)], "")
    capsys.readouterr()
    assert cloud_main(["audit", "--db", url]) == 0  # one log with the plain gallery's, by key id
    audit = [line.split()[2:4] for line in capsys.readouterr().out.splitlines()[1:]]
    assert audit == [["-", "enroll"]] * 4 + [["k-admin", "delete_template"], ["-", "enroll"]] + [
        ["k-admin", "delete_subject"]
    ]
    a.close()
    b.close()
    c = SealedPostgresGallery(url, public, "sealed-edge")  # snapshots read back, nothing put in again
    assert c.applied_since_save == 0
    got = [n for n, _, _ in _ranked(edge_tenant, c, emb[8])]
    assert got == ["cat", "dan", "ann"]
    c.close()
    with pytest.raises(GalleryModeError, match="--sealed sealed-edge"):
        check_plain_gallery(url)
    check_plain_gallery(postgres())  # an empty database is no sealed gallery


def test_two_sealed_edge_replicas_over_grpc(small_bundle, postgres, tmp_path):
    """Two `ppfr-cloud serve --sealed sealed-edge` processes on one PostgreSQL, API keys in a shared key
    file: enroll on A (with an idempotent retry on B), Verify and Identify on B; delete on B, gone on A;
    a verify-only key cannot Identify; bad ciphertexts are INVALID_ARGUMENT; a plain server refuses."""
    import grpc
    from keys import keyed_channel
    from ppfr.cloud.auth import KeyStore, parse_scopes
    from ppfr.cloud.local import LocalServer, LocalServerError
    from ppfr.edge.cli import main as edge_main
    from ppfr.edge.sealed import SealedEdge
    from ppfr.protos import verification_pb2 as pb
    from ppfr.protos import verification_pb2_grpc as pb_grpc

    assert edge_main(["tenant", "keygen", "--out", str(tmp_path / "keys"), "--json"]) == 0
    bundle, url, key_file = small_bundle("rgb"), postgres(), tmp_path / "api.keys"
    edge = SealedEdge(bundle, tmp_path / "keys" / "tenant.secret", threads=1)
    emb = np.stack([edge.embed(f) for f in lfw_faces(4)])
    store = KeyStore(key_file, create=True)
    admin = store.create("admin", parse_scopes("verify,enroll,admin"), 0)[1]
    verifier = store.create("verifier", parse_scopes("verify"), 0)[1]
    store.close()
    sealed = ["--sealed", "sealed-edge", "--tenant-context", str(tmp_path / "keys" / "tenant.public")]
    common = dict(db=url, keys=key_file, api_key=admin, workdir=tmp_path, extra_args=sealed)
    with LocalServer(bundle, **common) as a, LocalServer(bundle, **common) as b:
        with keyed_channel(a.address, admin) as ca, keyed_channel(b.address, admin) as cb:
            sa, sb = pb_grpc.FaceVerificationStub(ca), pb_grpc.FaceVerificationStub(cb)

            def ct(i, query=False):
                return pb.SealedEmbedding(ciphertext=edge.seal(emb[i], query=query))

            first = sa.Enroll(pb.EnrollRequest(subject_id="ann", sealed=ct(0), idempotency_key="k1"))
            again = sb.Enroll(pb.EnrollRequest(subject_id="ann", sealed=ct(0), idempotency_key="k1"))
            assert again.template_id == first.template_id and again.template_count == 1
            sa.Enroll(pb.EnrollRequest(subject_id="bob", sealed=ct(1)))
            r = sb.Verify(pb.VerifyRequest(subject_id="ann", sealed=ct(0, True)))
            assert edge.verify_result(r.sealed_score, r.sealed_norm or None) == (
                pytest.approx(1, abs=1e-4),
                True,
            )
            found = sb.Identify(pb.IdentifyRequest(sealed=ct(1, True), top_k=2))
            owners = [list(x.slot_subjects) for x in found.sealed_blocks]
            got = edge.identify_result([x.ciphertext for x in found.sealed_blocks], owners, {}, 2)
            assert got[0][0] == "bob" and abs(got[0][1] - 1) <= 1e-4
            assert (
                sb.DeleteTemplate(pb.DeleteTemplateRequest(template_id=first.template_id)).subject_id == "ann"
            )
            listed = sa.ListSubjects(pb.ListSubjectsRequest(page_size=10))
            assert [(s.subject_id, s.template_count) for s in listed.subjects] == [("bob", 1)]
            found = sa.Identify(pb.IdentifyRequest(sealed=ct(0, True), top_k=2))
            assert {n for x in found.sealed_blocks for n in x.slot_subjects} == {"", "bob"}
            info = sb.GetServerInfo(pb.GetServerInfoRequest())
            assert info.gallery_mode == "sealed-edge" and info.template_count == 1
            with pytest.raises(grpc.RpcError) as err:
                sa.Verify(pb.VerifyRequest(subject_id="bob", sealed=pb.SealedEmbedding(ciphertext=b"x" * 99)))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with keyed_channel(b.address, verifier) as channel:
            with pytest.raises(grpc.RpcError) as err:
                pb_grpc.FaceVerificationStub(channel).Identify(pb.IdentifyRequest(sealed=ct(1, True)))
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    plain = LocalServer(bundle, db=url, keys=key_file, api_key=admin, workdir=tmp_path, timeout_s=30)
    with pytest.raises(LocalServerError, match="--sealed sealed-edge"):
        plain.start()
