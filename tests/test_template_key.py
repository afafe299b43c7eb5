"""Renewable templates (issue 15, item 5): the keyed orthogonal transform, and the real server that applies
it before storage and matching and refuses a gallery enrolled under another template secret."""

import json
import logging

import numpy as np
import pytest
from helpers import Protector
from keys import keyed_channel, new_key
from ppfr.cloud import cli as cloud_cli
from ppfr.cloud.gallery import GalleryError
from ppfr.cloud.server import ServerConfig, ServerThread
from ppfr.cloud.template_key import (
    ENV_VAR,
    TemplateKeyError,
    TemplateTransform,
    load_secret,
    orthogonal_matrix,
    template_key_id,
)
from ppfr.protos import verification_pb2, verification_pb2_grpc

SECRET_A, SECRET_B = b"a" * 16 + b"-template-secret", b"b" * 16 + b"-template-secret"


@pytest.fixture(autouse=True)
def no_env_secret(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)


def test_transform_is_orthogonal_keyed_and_pinned():
    q = orthogonal_matrix(SECRET_A, 128)
    np.testing.assert_allclose(q.T @ q, np.eye(128), atol=1e-12)
    np.testing.assert_array_equal(q, orthogonal_matrix(SECRET_A, 128))  # a pure function of the secret
    assert np.abs(q - orthogonal_matrix(SECRET_B, 128)).max() > 0.1
    # known answer: stored galleries depend on this derivation never changing silently
    np.testing.assert_allclose(
        orthogonal_matrix(b"0" * 32, 4)[0], [0.28746524, 0.61725307, 0.02306415, 0.73200439], atol=1e-8
    )
    assert template_key_id(b"0" * 32) == "94dfeb987d405756"


def test_same_secret_keeps_every_cosine_two_secrets_decorrelate():
    rng = np.random.default_rng(0)
    e = rng.normal(size=(500, 128)).astype(np.float32)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    a, b = TemplateTransform(SECRET_A, 128), TemplateTransform(SECRET_B, 128)
    ta, tb = a.apply(e), b.apply(e)
    np.testing.assert_allclose(ta @ ta.T, e @ e.T, atol=1e-5)  # cosine preserved exactly (float32 rounding)
    np.testing.assert_allclose(np.linalg.norm(ta, axis=1), 1.0, atol=1e-5)
    same_face = np.sum(ta * tb, axis=1)  # one embedding under two secrets
    assert abs(same_face.mean()) < 0.02 and same_face.std() < 2 / np.sqrt(128)
    np.testing.assert_allclose(a.apply(e[0]), ta[0], atol=1e-6)  # one vector or a batch
    with pytest.raises(ValueError, match="embedding size"):
        a.apply(np.zeros(64))


def test_secret_sources(tmp_path):
    path = tmp_path / "t.key"
    path.write_bytes(SECRET_A + b"\n")
    src = load_secret(path, environ={})
    assert src.key_id == template_key_id(SECRET_A) and SECRET_A.decode() not in repr(src)
    assert SECRET_A.decode() not in repr(src.transform(8)) and src.key_id in str(src.transform(8))
    assert load_secret(None, environ={ENV_VAR: SECRET_B.decode()}).key_id == template_key_id(SECRET_B)
    assert load_secret(None, environ={}) is None
    with pytest.raises(TemplateKeyError, match="one way only"):
        load_secret(path, environ={ENV_VAR: SECRET_B.decode()})
    with pytest.raises(TemplateKeyError, match="at least 16"):
        load_secret(None, environ={ENV_VAR: "short"})
    with pytest.raises(TemplateKeyError, match="cannot read"):
        load_secret(tmp_path / "missing", environ={})


@pytest.fixture(scope="module")
def bundle(small_bundle):
    return small_bundle("ppfr_fd")


def _config(bundle, db, secret):
    src = load_secret(None, environ={ENV_VAR: secret.decode()}) if secret else None
    return ServerConfig(bundle=bundle, db=db, port=0, template_secret=src)


def test_server_stores_transformed_templates_and_refuses_another_secret(bundle, tmp_path, caplog):
    from helpers import lfw_faces

    protect = Protector(bundle)
    face = lfw_faces(1, start=10)[0]
    db = tmp_path / "gallery.sqlite"
    key = new_key(db)
    caplog.set_level(logging.INFO, logger="ppfr.cloud")
    with ServerThread(_config(bundle, db, SECRET_A)) as server:
        with keyed_channel(server.address, key) as channel:
            stub = verification_pb2_grpc.FaceVerificationStub(channel)
            stub.Enroll(verification_pb2.EnrollRequest(subject_id="alice", face=protect(face)), timeout=30)
            reply = stub.Verify(verification_pb2.VerifyRequest(subject_id="alice", face=protect(face)))
            assert reply.match
        # what the gallery holds is Q e, not e: the plain embedding of the same query does not match it
        import onnxruntime as ort

        m = protect.manifest
        rec = ort.InferenceSession(str(bundle / m.recognizer.path), providers=["CPUExecutionProvider"])
        p = protect(face)
        tensor = np.frombuffer(p.data, dtype=np.float16).reshape(p.shape)
        e = rec.run(None, {m.protected_tensor.name: tensor})[0][0]
        gallery = server.running.gallery
        q = TemplateTransform(SECRET_A, m.embedding_size)
        assert gallery.verify("alice", q.apply(e)) >= reply.threshold
        assert gallery.verify("alice", e) < reply.threshold
    assert template_key_id(SECRET_A) in caplog.text and SECRET_A.decode() not in caplog.text

    for wrong in (SECRET_B, None):
        with pytest.raises(GalleryError) as err:
            ServerThread(_config(bundle, db, wrong)).start()
        message = str(err.value)
        assert f"template secret tk={template_key_id(SECRET_A)[:12]}" in message
        assert SECRET_A.decode() not in message
    with ServerThread(_config(bundle, db, SECRET_A)) as server:  # the right secret still works
        with keyed_channel(server.address, key) as channel:
            stub = verification_pb2_grpc.FaceVerificationStub(channel)
            assert stub.Verify(verification_pb2.VerifyRequest(subject_id="alice", face=protect(face))).match


def test_serve_command_refuses_the_wrong_secret_with_one_line(bundle, tmp_path, capsys, monkeypatch):
    db = tmp_path / "g.sqlite"
    a, b = tmp_path / "a.key", tmp_path / "b.key"
    a.write_bytes(SECRET_A)
    b.write_bytes(SECRET_B)
    ServerThread(_config(bundle, db, SECRET_A)).start().stop()  # the gallery is now bound to secret A
    args = ["serve", "--bundle", str(bundle), "--db", str(db), "--port", "0", "--insecure-no-auth"]
    assert cloud_cli.main([*args, "--template-key-file", str(b)]) == 2
    err = capsys.readouterr().err
    assert "ppfr-cloud: error:" in err and "template secret" in err and "Traceback" not in err
    assert SECRET_B.decode() not in err
    monkeypatch.setenv(ENV_VAR, SECRET_A.decode())
    assert cloud_cli.main([*args, "--template-key-file", str(a)]) == 2
    assert "one way only" in capsys.readouterr().err


def test_template_linkage_runs_end_to_end_at_a_tiny_setting(bundle, tmp_path):
    """python -m ppfr.attack.template_linkage on two small bundles under two PPFR-FD keys, 40 LFW pairs."""
    from bundles import export_small
    from helpers import DATA
    from ppfr.attack import template_linkage

    other = export_small(tmp_path / "other", "ppfr_fd", eval_pairs=20, key="another-key-for-the-test").bundle
    out = tmp_path / "out"
    args = ["--bundle", str(bundle), "--other", str(other), "--out", str(out), "--pairs", "40"]
    assert template_linkage.main([*args, "--secrets", "2", "--data", str(DATA)]) == 0
    res = json.loads((out / "template_linkage.json").read_text())
    assert res["pairs"] == {"total": 40, "mated": 20, "nonmated": 20} and res["same_recognizer"]
    assert res["bundle_ids"]["frontend_id"] != res["other_ids"]["frontend_id"]
    ren = res["renewable"]
    assert ren["same_secret_max_abs_score_change"] < 1e-5  # an orthogonal transform keeps every cosine
    same = ren["same_secret"]["verification"]["accuracy_mean"]["mean"]
    assert same == pytest.approx(res["plain_same_key"]["verification"]["accuracy_mean"])
    assert 0 <= ren["two_secrets"]["other_photo"]["dsys_kde"]["mean"] <= 1
    assert "alignment attack" in (out / "template_linkage.md").read_text()
