"""Sealed templates over the real gRPC server (issue 27): `ppfr-cloud serve --sealed sealed-edge
--tenant-context FILE` on loopback with API keys; the edge's rgb recognizer + encryption (ppfr.edge.sealed)
on real LFW faces; Enroll / Verify / Identify / DeleteTemplate / DeleteSubject / ListSubjects /
GetServerInfo; decisions equal the plain rule's; bad ciphertexts and faces are INVALID_ARGUMENT; a
verify key cannot Identify; a plain server refuses the sealed gallery and a sealed one another tenant."""

import grpc
import numpy as np
import pytest
from helpers import lfw_faces
from keys import keyed_channel, new_key

pytest.importorskip("tenseal")
from ppfr.bundle import tenant  # noqa: E402
from ppfr.cloud.sealed import GalleryModeError  # noqa: E402
from ppfr.cloud.server import ServerConfig, ServerThread  # noqa: E402
from ppfr.edge.cli import main as edge_main  # noqa: E402
from ppfr.edge.sealed import SealedEdge  # noqa: E402
from ppfr.protos import verification_pb2 as pb  # noqa: E402
from ppfr.protos import verification_pb2_grpc  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory, small_bundle):
    root = tmp_path_factory.mktemp("sealed")
    assert edge_main(["tenant", "keygen", "--out", str(root / "keys"), "--json"]) == 0
    bundle = small_bundle("rgb")
    edge = SealedEdge(bundle, root / "keys" / "tenant.secret", threads=1)
    emb = np.stack([edge.embed(f) for f in lfw_faces(6)])
    return root, bundle, edge, emb


def _config(root, bundle, **kw):
    return ServerConfig(
        bundle=bundle,
        db=root / "g.sqlite",
        port=0,
        max_batch=1,
        threads=1,
        sealed="sealed-edge",
        tenant_context=root / "keys" / "tenant.public",
        **kw,
    )


def test_sealed_edge_over_grpc(setup):
    root, bundle, edge, emb = setup
    admin = new_key(root / "g.sqlite")
    verifier = new_key(root / "g.sqlite", scopes="verify")
    with ServerThread(_config(root, bundle)) as server:
        with keyed_channel(server.address, admin) as channel:
            stub = verification_pb2_grpc.FaceVerificationStub(channel)
            info = stub.GetServerInfo(pb.GetServerInfoRequest())
            assert (
                info.gallery_mode == "sealed-edge" and info.tenant_context_sha256 == edge.tenant.fingerprint
            )

            def sealed(i, query):
                return pb.SealedEmbedding(ciphertext=edge.seal(emb[i], query=query))

            ids = [
                stub.Enroll(pb.EnrollRequest(subject_id="ann", sealed=sealed(i, False))).template_id
                for i in (0, 1)
            ]
            stub.Enroll(pb.EnrollRequest(subject_id="bob", sealed=sealed(2, False)))
            again = stub.Enroll(
                pb.EnrollRequest(subject_id="bob", sealed=sealed(2, False), idempotency_key="k1")
            )
            assert (
                stub.Enroll(
                    pb.EnrollRequest(subject_id="bob", sealed=sealed(2, False), idempotency_key="k1")
                ).template_id
                == again.template_id
            )
            r = stub.Verify(pb.VerifyRequest(subject_id="ann", sealed=sealed(3, True)))
            score, match = edge.verify_result(r.sealed_score, r.sealed_norm or None)
            mean = emb[:2].mean(0)
            assert abs(score - mean @ emb[3] / np.linalg.norm(mean)) <= 1e-4 and not r.match and r.score == 0
            r = stub.Verify(pb.VerifyRequest(subject_id="nobody", sealed=sealed(3, True)))
            assert edge.verify_result(r.sealed_score, None) == (pytest.approx(0, abs=1e-4), False)
            found = stub.Identify(pb.IdentifyRequest(sealed=sealed(2, True), top_k=2))
            norms = {s: edge.tenant.decrypt_bytes(n)[0] for s, n in found.sealed_norms.items()}
            blocks = [b.ciphertext for b in found.sealed_blocks]
            got = edge.identify_result(blocks, [list(b.slot_subjects) for b in found.sealed_blocks], norms, 2)
            assert got[0][0] == "bob" and abs(got[0][1] - 1.0) <= 1e-4
            for bad in (b"", b"x" * 100, edge.seal(emb[0], query=False)):  # the last: wrong level
                with pytest.raises(grpc.RpcError) as err:
                    stub.Verify(pb.VerifyRequest(subject_id="ann", sealed=pb.SealedEmbedding(ciphertext=bad)))
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            with pytest.raises(grpc.RpcError) as err:
                stub.Verify(pb.VerifyRequest(subject_id="ann", face=pb.ProtectedFace(data=b"\0")))
            assert (
                err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "sealed-edge" in err.value.details()
            )
            assert stub.DeleteTemplate(pb.DeleteTemplateRequest(template_id=ids[0])).subject_id == "ann"
            listed = stub.ListSubjects(pb.ListSubjectsRequest(page_size=1))
            assert [s.subject_id for s in listed.subjects] == ["ann"] and listed.next_page_token
            assert stub.DeleteSubject(pb.DeleteSubjectRequest(subject_id="bob")).deleted_template_count == 2
        with keyed_channel(server.address, verifier) as channel:
            stub = verification_pb2_grpc.FaceVerificationStub(channel)
            with pytest.raises(grpc.RpcError) as err:
                stub.Identify(pb.IdentifyRequest(sealed=sealed(2, True)))
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_mode_and_tenant_refusals(setup):
    root, bundle, edge, emb = setup
    with pytest.raises(GalleryModeError, match="--sealed sealed-edge"):
        ServerThread(ServerConfig(bundle=bundle, db=root / "g.sqlite", port=0, max_batch=1)).start()
    other = root / "other.public"
    other.write_bytes(tenant.keygen()[1])
    config = _config(root, bundle)
    config.tenant_context = other
    with pytest.raises(GalleryModeError, match="under tenant context"):
        ServerThread(config).start()


def test_edge_cli_sealed_over_grpc(setup, monkeypatch, capsys, tmp_path):
    import json

    from helpers import DATA

    root, bundle, edge, emb = setup
    config = _config(root, bundle)
    config.db = tmp_path / "cli.sqlite"
    monkeypatch.setenv("PPFR_API_KEY", new_key(config.db))
    names = (DATA / "lfw" / "pairs_images.txt").read_text().split()[:2]
    photos = [str(DATA / "lfw" / "aligned112" / n) for n in names]
    secret = str(root / "keys" / "tenant.secret")
    with ServerThread(config) as server:
        common = ["--server", server.address, "--bundle", str(bundle), "--aligned", "--tenant-secret", secret]
        for argv in (["enroll", "--id", "ann", photos[0]], ["verify", "--id", "ann", *photos]):
            capsys.readouterr()
            assert edge_main([*common, "--json", *argv]) == 0
        items = json.loads(capsys.readouterr().out)["results"]
    assert items[0]["match"] is True and abs(items[0]["score"] - 1.0) <= 1e-4
    assert items[1]["score"] < 1.0 and 200_000 < items[0]["payload_bytes"] < 400_000


def test_sealed_gallery_mode_keeps_no_plaintext(setup, tmp_path, caplog):
    """Sealed gallery: the edge sends the protected face, the server embeds and encrypts it at once; its
    gallery files and its log hold none of the embedding's values (float16/32/64, or printed)."""
    import logging

    from helpers import Protector

    root, bundle, edge, emb = setup
    config = _config(root, bundle)
    config.db, config.sealed = tmp_path / "sg.sqlite", "sealed-gallery"
    key = new_key(config.db)
    protect = Protector(bundle)
    faces = lfw_faces(3)
    caplog.set_level(logging.DEBUG, logger="ppfr")
    with ServerThread(config) as server, keyed_channel(server.address, key) as channel:
        stub = verification_pb2_grpc.FaceVerificationStub(channel)
        for f in faces[:2]:
            stub.Enroll(pb.EnrollRequest(subject_id="ann", face=protect(f)))
        r = stub.Verify(pb.VerifyRequest(subject_id="ann", face=protect(faces[2])))
        with pytest.raises(grpc.RpcError) as err:
            stub.Verify(pb.VerifyRequest(subject_id="ann", sealed=pb.SealedEmbedding(ciphertext=b"x")))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    score, _ = edge.verify_result(r.sealed_score, r.sealed_norm or None)
    mean = emb[:2].mean(0)
    assert abs(score - mean @ emb[2] / np.linalg.norm(mean)) <= 1e-3  # the server's embeddings, rgb: no draws
    stored = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("sg.sqlite"))
    logs = caplog.text
    for x in emb[:3]:
        for dtype in (np.float16, np.float32, np.float64):
            assert x[:3].astype(dtype).tobytes() not in stored
        assert f"{x[0]:.4f}" not in logs and f"{x[1]:.4f}" not in logs


def test_sealed_deletes_are_audited_under_the_callers_key(setup, tmp_path, capsys):
    """As in plain mode, every sealed Enroll and delete lands in the audit log (`ppfr-cloud audit`) under
    the key id of the caller: an enroll key's DeleteTemplate by it, an admin's DeleteSubject by the admin."""
    from ppfr.cloud.cli import main as cloud_main

    root, bundle, edge, emb = setup
    config = _config(root, bundle)
    config.db = tmp_path / "audit.sqlite"
    enroller, admin = new_key(config.db, scopes="enroll", name="enroller"), new_key(config.db, name="admin")
    face = pb.SealedEmbedding(ciphertext=edge.seal(emb[0], query=False))
    with ServerThread(config) as server:
        with keyed_channel(server.address, enroller) as channel:
            stub = verification_pb2_grpc.FaceVerificationStub(channel)
            made = stub.Enroll(pb.EnrollRequest(subject_id="ann", sealed=face))
            stub.Enroll(pb.EnrollRequest(subject_id="bob", sealed=face))
            stub.DeleteTemplate(pb.DeleteTemplateRequest(template_id=made.template_id))
        with keyed_channel(server.address, admin) as channel:
            stub = verification_pb2_grpc.FaceVerificationStub(channel)
            assert stub.DeleteSubject(pb.DeleteSubjectRequest(subject_id="bob")).deleted_template_count == 1
    capsys.readouterr()
    assert cloud_main(["audit", "--db", str(config.db), "--subject", "bob"]) == 0
    by_bob = [line.split()[2:4] for line in capsys.readouterr().out.splitlines()[1:]]
    assert cloud_main(["audit", "--db", str(config.db)]) == 0
    rows = [line.split()[2:4] for line in capsys.readouterr().out.splitlines()[1:]]
    e, a = enroller.split("_")[1], admin.split("_")[1]
    assert rows == [[e, "enroll"], [e, "enroll"], [e, "delete_template"], [a, "delete_subject"]]
    assert by_bob == [[e, "enroll"], [a, "delete_subject"]]
