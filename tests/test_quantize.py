"""INT8 recognizer (export/quantize.py): ONNX Runtime static quantization of a real small bundle,
calibrated on CelebA faces protected by the bundle's own front-end; embeddings close to fp32 on real LFW
faces, recorded in the manifest, served with `ppfr-cloud serve --precision int8`."""

import hashlib
import json
import shutil

import pytest
from helpers import lfw_faces
from keys import keyed_channel, new_key
from ppfr.bundle import Bundle, Seeded, data_type, read_manifest
from ppfr.cloud.runtime import RuntimeUnavailable, create_runtime
from ppfr.cloud.server import ServerConfig, ServerThread
from ppfr.export import quantize
from ppfr.protos import verification_pb2, verification_pb2_grpc


@pytest.fixture(scope="module")
def bundles(small_bundle, tmp_path_factory):
    """(fp32-only bundle, the same bundle with an INT8 recognizer), copies of the shared small bundle."""
    root = tmp_path_factory.mktemp("quantize")
    plain = shutil.copytree(small_bundle("ppfr_fd"), root / "plain")
    int8 = shutil.copytree(plain, root / "int8")
    quantize.quantize(int8, faces=64, log=lambda *a: None)
    return plain, int8


@pytest.mark.slow
def test_manifest_records_the_int8_model(bundles):
    plain, int8 = bundles
    m = read_manifest(int8)
    q = m.recognizer_int8
    data = (int8 / quantize.INT8_MODEL).read_bytes()
    assert q.model.path == quantize.INT8_MODEL
    assert q.model.sha256 == hashlib.sha256(data).hexdigest() and q.model.size_bytes == len(data)
    assert q.source_sha256 == m.recognizer.sha256 == read_manifest(plain).recognizer.sha256
    assert q.format == "QDQ" and q.weight_type == "QInt8" and q.calibrate_method == "MinMax"
    assert q.calibration_faces == 64 and q.calibration_set.endswith("celeba/aligned112")
    assert len(data) < 0.5 * (int8 / "recognizer.onnx").stat().st_size  # int8 weights
    assert not read_manifest(plain).HasField("recognizer_int8")


@pytest.mark.slow
def test_int8_embeddings_stay_close_to_fp32_on_real_faces(bundles):
    _, int8 = bundles
    x = Bundle(int8).protect(lfw_faces(24, start=100), Seeded(1))
    fp = create_runtime("onnxruntime", int8, threads=1)
    q8 = create_runtime("onnxruntime", int8, threads=1, precision="int8")
    try:
        assert q8.name == "onnxruntime-int8"
        cos = (fp.embed(x) * q8.embed(x)).sum(1)
    finally:
        fp.close()
        q8.close()
    assert cos.mean() > 0.99 and cos.min() > 0.97, cos


@pytest.mark.slow
def test_server_serves_int8(bundles, tmp_path):
    _, int8 = bundles
    m = read_manifest(int8)
    faces = lfw_faces(2, start=0)
    b = Bundle(int8)
    rng = Seeded(2)

    def face(i):
        out = b.protect(faces[i : i + 1], rng)
        return verification_pb2.ProtectedFace(
            data=out.tobytes(),
            shape=list(out.shape),
            data_type=data_type(out.dtype),
            frontend_id=m.frontend_id,
        )

    db = tmp_path / "g.sqlite"
    with ServerThread(ServerConfig(bundle=int8, db=db, port=0, precision="int8")) as running:
        with keyed_channel(running.address, new_key(db)) as channel:
            stub = verification_pb2_grpc.FaceVerificationStub(channel)
            assert stub.GetServerInfo(verification_pb2.GetServerInfoRequest()).runtime == "onnxruntime-int8"
            stub.Enroll(verification_pb2.EnrollRequest(subject_id="a", face=face(0)), timeout=30)
            reply = stub.Verify(verification_pb2.VerifyRequest(subject_id="a", face=face(0)), timeout=30)
            assert reply.score > 0.9


@pytest.mark.slow
def test_clear_errors_without_an_int8_model(bundles, tmp_path, capsys):
    from ppfr.cloud.cli import main

    plain, int8 = bundles
    with pytest.raises(RuntimeUnavailable, match="no INT8 recognizer.*ppfr.export.quantize"):
        create_runtime("auto", plain, precision="int8")
    with pytest.raises(RuntimeUnavailable, match="ONNX Runtime"):
        create_runtime("tensorrt", int8, precision="int8")
    code = main(
        ["serve", "--bundle", str(plain), "--db", str(tmp_path / "g.sqlite"), "--port", "0"]
        + ["--precision", "int8"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "no INT8 recognizer" in err and "Traceback" not in err
    # an INT8 model made from another recognizer.onnx (the bundle was re-exported since) is refused
    stale = shutil.copytree(int8, tmp_path / "stale")
    doc = json.loads((stale / "manifest.json").read_text())
    doc["recognizerInt8"]["sourceSha256"] = "0" * 64
    (stale / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(RuntimeUnavailable, match="another recognizer.onnx"):
        create_runtime("onnxruntime", stale, precision="int8")


def test_quantize_cli_errors(tmp_path, capsys):
    assert quantize.main(["--bundle", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "manifest.json" in err and "Traceback" not in err
