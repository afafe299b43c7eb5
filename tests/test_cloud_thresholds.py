"""Thresholds that fit the subject (issue 26, item 3): the bundle carries FAR 1e-3 thresholds for subjects
with 1, 2 and 3+ templates, the real server holds each subject to the one of its template count (Verify and
Identify) and reports them in ServerInfo; a bundle without them keeps its one threshold for everyone."""

import shutil

import pytest
import torch
from helpers import Protector, lfw_faces
from keys import keyed_channel, new_key
from ppfr.bundle import read_manifest, write_manifest
from ppfr.bundle.thresholds import ThresholdError, Thresholds
from ppfr.cloud.server import ServerConfig, ServerThread
from ppfr.protos import manifest_pb2
from ppfr.protos import verification_pb2 as pb
from ppfr.protos import verification_pb2_grpc as pb_grpc


@pytest.fixture(scope="module")
def pooled_bundle(tmp_path_factory):
    """A small real bundle exported as the CLI does by default (--enrolled-photos 3): per-count thresholds."""
    from bundles import small_config
    from ppfr.export.bundle import export_model
    from ppfr.train.model import build_model

    torch.manual_seed(0)
    method, recognizer = build_model(small_config("ppfr_fd"))
    out = tmp_path_factory.mktemp("pooled") / "bundle"
    return export_model(
        small_config("ppfr_fd"), method, recognizer, out, eval_pairs=40, enrolled_photos=3
    ).bundle


def test_export_writes_a_threshold_per_template_count_and_far(pooled_bundle, small_bundle):
    manifest = read_manifest(pooled_bundle)
    entries = [(e.templates, e.threshold.false_accept_rate) for e in manifest.thresholds_by_templates]
    assert entries == [(k, far) for far in (1e-3, 1e-2, 1e-4) for k in (1, 2, 3)]
    assert all("pooled" in e.threshold.evaluation_set for e in manifest.thresholds_by_templates)
    at = {
        (e.templates, e.threshold.false_accept_rate): e.threshold.cosine
        for e in manifest.thresholds_by_templates
    }
    assert at[(3, 1e-4)] >= at[(3, 1e-3)] >= at[(3, 1e-2)]  # a lower FAR, a higher bar
    assert manifest.threshold.cosine == at[(3, 1e-3)]  # --enrolled-photos 3: the 3+ entry
    assert manifest.detector.path == "detector.onnx" and len(manifest.detector.sha256) == 64
    # --enrolled-photos 1 (the test bundles): one single-pair threshold for every subject, as before
    assert not read_manifest(small_bundle("ppfr_fd")).thresholds_by_templates


def test_thresholds_pick_by_count_and_fall_back_to_the_one_threshold():
    m = manifest_pb2.BundleManifest(
        threshold=manifest_pb2.VerificationThreshold(cosine=0.5, false_accept_rate=1e-3)
    )
    assert Thresholds.from_manifest(m).for_count(1) == 0.5 and Thresholds.from_manifest(m).for_count(7) == 0.5
    for k, cosine in ((1, 0.3), (2, 0.4), (3, 0.6)):
        entry = manifest_pb2.VerificationThreshold(cosine=cosine, false_accept_rate=1e-4)
        m.thresholds_by_templates.add(templates=k, threshold=entry)
    assert Thresholds.from_manifest(m).cosines == (0.5,)  # none at the manifest threshold's FAR
    t = Thresholds.from_manifest(m, far=1e-4)
    assert [t.for_count(n) for n in (0, 1, 2, 3, 9)] == [0.3, 0.3, 0.4, 0.6, 0.6] and t.far == 1e-4
    with pytest.raises(ThresholdError, match="has thresholds at FAR 0.0001"):
        Thresholds.from_manifest(m, far=1e-5)


@pytest.fixture(scope="module")
def bundle(pooled_bundle, tmp_path_factory):
    """The small bundle with thresholds no score can reach for one template and any score reaches for 2+."""
    path = tmp_path_factory.mktemp("thresholds") / "bundle"
    shutil.copytree(pooled_bundle, path)
    manifest = read_manifest(path)
    for entry in manifest.thresholds_by_templates:
        if entry.threshold.false_accept_rate == 1e-3:
            entry.threshold.cosine = 1.5 if entry.templates == 1 else -1.5
    write_manifest(manifest, path)
    return path


def test_server_holds_each_subject_to_its_template_counts_threshold(bundle, tmp_path):
    db = tmp_path / "gallery.sqlite"
    key = new_key(db)
    protect = Protector(bundle)
    faces = lfw_faces(3)
    with ServerThread(ServerConfig(bundle=bundle, db=db, port=0, max_batch=4, max_delay_ms=1)) as running:
        with keyed_channel(f"127.0.0.1:{running.port}", key) as channel:
            stub = pb_grpc.FaceVerificationStub(channel)
            stub.Enroll(pb.EnrollRequest(subject_id="one", face=protect(faces[0])), timeout=30)
            for face in faces[:2]:
                stub.Enroll(pb.EnrollRequest(subject_id="two", face=protect(face)), timeout=30)
            one = stub.Verify(pb.VerifyRequest(subject_id="one", face=protect(faces[0])), timeout=30)
            two = stub.Verify(pb.VerifyRequest(subject_id="two", face=protect(faces[0])), timeout=30)
            assert not one.match and one.threshold == pytest.approx(1.5)
            assert two.match and two.threshold == pytest.approx(-1.5)
            found = stub.Identify(pb.IdentifyRequest(face=protect(faces[0]), top_k=5), timeout=30)
            assert [c.subject_id for c in found.candidates] == ["two"]
            info = stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=30)
            assert list(info.thresholds_by_templates) == pytest.approx([1.5, -1.5, -1.5])
            assert info.false_accept_rate == pytest.approx(1e-3)


def test_serve_far_picks_another_calibration_and_refuses_one_the_bundle_lacks(bundle, tmp_path, capsys):
    from ppfr.cloud import cli

    db = tmp_path / "gallery.sqlite"
    config = ServerConfig(bundle=bundle, db=db, port=0, far=1e-2)
    with ServerThread(config) as running:
        with keyed_channel(f"127.0.0.1:{running.port}", new_key(db)) as channel:
            info = pb_grpc.FaceVerificationStub(channel).GetServerInfo(pb.GetServerInfoRequest(), timeout=30)
    want = [
        e.threshold.cosine
        for e in read_manifest(bundle).thresholds_by_templates
        if e.threshold.false_accept_rate == 1e-2
    ]
    assert list(info.thresholds_by_templates) == pytest.approx(
        want
    ) and info.false_accept_rate == pytest.approx(1e-2)
    args = [
        "serve",
        "--bundle",
        str(bundle),
        "--db",
        str(tmp_path / "g2.sqlite"),
        "--port",
        "0",
        "--far",
        "1e-5",
    ]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--far 1e-05" in err and "ppfr-export calibrate" in err
