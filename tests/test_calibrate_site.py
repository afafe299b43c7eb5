"""Thresholds from a site's own photos (issue 26, item 3): `ppfr-edge calibrate` detects and aligns raw
photos with the edge's pipeline, scores subjects with 1, 2 and 3+ templates pooled as the server does
(ppfr.bundle.calibration, the math export uses too), replaces the manifest atomically, and a real server
started on the bundle reports the new thresholds in ServerInfo. Plus the math itself, checked by brute
force, and the data export calibrates on (LFW without raw-pairs' test people)."""

import shutil

import cv2
import numpy as np
import pytest
from helpers import DATA, serving
from keys import keyed_channel, new_key
from ppfr.bundle import calibration, read_manifest
from ppfr.edge import calibrate as edge_calibrate
from ppfr.protos import verification_pb2 as pb
from ppfr.protos import verification_pb2_grpc as pb_grpc

RAW = DATA / "lfw" / "raw250"
SITE_PEOPLE = ("Andre_Agassi", "David_Beckham", "Hugo_Chavez", "Jennifer_Garner", "Tony_Blair", "Vicente_Fox")


def _site(folder, people=SITE_PEOPLE, photos: int = 4):
    """A site's enrollment folder of raw LFW photos (one sub-folder per person, files linked), plus a
    person whose one photo has no face; the last person has 7 photos, the first of them faceless."""
    blank = np.full((250, 250, 3), 128, np.uint8)
    for name in people:
        (folder / name).mkdir(parents=True)
        for photo in sorted((RAW / name).glob("*.jpg"))[: photos if name != people[-1] else 6]:
            (folder / name / photo.name).symlink_to(photo)
    cv2.imwrite(str(folder / people[-1] / f"{people[-1]}_0000.jpg"), blank)
    (folder / "Nobody").mkdir()
    cv2.imwrite(str(folder / "Nobody" / "blank.jpg"), blank)
    return folder


@pytest.mark.slow  # about 20 s: 27 raw photos detected and embedded twice, a real server
def test_edge_calibrate_sets_thresholds_from_raw_photos_and_the_server_reports_them(
    small_bundle, tmp_path, capsys
):
    bundle = tmp_path / "bundle"
    shutil.copytree(small_bundle("ppfr_fd"), bundle)
    before = read_manifest(bundle)
    site = _site(tmp_path / "site")
    args = [str(bundle), "--photos", str(site), "--far", "0.01", "--enrolled-photos", "1", "--draws", "2"]
    assert edge_calibrate.main([*args, "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert "skipped 2 of 27 photos (2 no face found)" in out  # the 7th photo of Vicente_Fox not looked at

    manifest = read_manifest(bundle)
    entries = {e.templates: e.threshold for e in manifest.thresholds_by_templates}
    assert sorted(entries) == [1, 2, 3] and all(t.false_accept_rate == 0.01 for t in entries.values())
    assert manifest.threshold == entries[1] and manifest.threshold.accuracy == before.threshold.accuracy
    assert entries[1].evaluation_set.startswith(f"site photos {site} (raw photos through the edge's")
    # 5 people x 4 photos and one with 5 (a faceless one skipped), 2 draws: k templates, then up to 2
    # probes, each against the 5 other subjects
    for k, (genuine, impostor) in {1: (24, 120), 2: (24, 120), 3: (14, 70)}.items():
        assert f"{genuine} genuine and {impostor} impostor attempts, 2 draw(s)" in entries[k].evaluation_set
        plus = "+" if k == 3 else ""
        line = f"subjects with {k}{plus} template(s): threshold {entries[k].cosine:.4f} at FAR 0.01"
        assert line in out
    assert "it is rough" in err  # 120 impostor attempts put 1.2 above a FAR 1e-2 threshold
    assert "25 faces of 7 people, 2 draws each" in out
    files = sorted(p.name for p in small_bundle("ppfr_fd").iterdir())
    assert sorted(p.name for p in bundle.iterdir()) == files  # no temporary file left behind

    db = tmp_path / "gallery.sqlite"
    with serving(bundle, tmp_path) as running:
        with keyed_channel(f"127.0.0.1:{running.port}", new_key(db)) as channel:
            info = pb_grpc.FaceVerificationStub(channel).GetServerInfo(pb.GetServerInfoRequest(), timeout=30)
    assert list(info.thresholds_by_templates) == pytest.approx([entries[k].cosine for k in (1, 2, 3)])
    assert info.false_accept_rate == pytest.approx(0.01)
    assert info.threshold == pytest.approx(entries[1].cosine)


def test_edge_calibrate_refuses_too_little_data_in_one_line(small_bundle, tmp_path, capsys):
    bundle = small_bundle("ppfr_fd")
    unchanged = (bundle / "manifest.json").read_bytes()
    site = _site(tmp_path / "site", SITE_PEOPLE[:3], photos=3)  # nobody has more than 3 photos
    for photos, far, expected in (
        (site, "0.01", "fewer than 2 people with more than 3 photo(s)"),
        (tmp_path / "none", "0.01", "not a folder"),
        (site, "1.5", "--far must be between 0 and 1"),
    ):
        assert edge_calibrate.main([str(bundle), "--photos", str(photos), "--far", far, "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expected in err and err.startswith("ppfr-edge calibrate: error:")
    assert (bundle / "manifest.json").read_bytes() == unchanged


def _brute_force(people, k, far):
    """The FAR point by explicit loops: subject = mean of the first k photos of draw d, probes = the next
    two photos (or the first two of people with fewer than k) of draw d+1, against every other subject."""
    genuine, impostor = [], []
    draws = people[0].shape[1]
    subjects = [(i, p) for i, p in enumerate(people) if len(p) >= k]
    for d in range(draws):
        for i, person in enumerate(people):
            start = k if len(person) >= k else 0
            for probe in person[start : start + 2, (d + 1) % draws]:
                for j, subject in subjects:
                    mean = subject[:k, d].mean(0)
                    score = probe @ mean / np.linalg.norm(mean)
                    (genuine if i == j else impostor).append(score)
    t = np.nextafter(np.quantile(np.float32(impostor), 1 - far), np.inf)
    return t, np.mean(np.array(genuine) >= t), len(genuine), len(impostor)


def test_pooled_point_matches_a_brute_force_count():
    rng = np.random.default_rng(0)
    people = []
    for n in (1, 2, 3, 4, 5, 5, 6, 2, 1, 4):  # people with fewer photos than k lend impostor probes
        x = rng.normal(size=(n, 3, 16)).astype(np.float32) + rng.normal(size=16).astype(np.float32)
        people.append(x / np.linalg.norm(x, axis=2, keepdims=True))
    for k in (1, 2, 3):
        e = calibration.pooled_point(people, k, 0.05)
        t, tar, genuine, impostor = _brute_force(people, k, 0.05)
        assert (e["genuine"], e["impostor"], e["draws"]) == (genuine, impostor, 3)
        assert e["cosine"] == pytest.approx(t, abs=1e-6) and e["tar"] == pytest.approx(tar)
    with pytest.raises(calibration.CalibrationError, match="fewer than 2 people with more than 6"):
        calibration.pooled_point(people, 6, 0.05)


def test_export_calibrates_on_lfw_without_the_raw_pairs_test_people():
    from ppfr.data import lfw_people
    from ppfr.export import evaluation

    held = evaluation.held_out_people(DATA)
    test_people = {
        name.split("/")[0]
        for line in (DATA / "lfw" / "raw250_pairs.tsv").read_text().splitlines()[1:]
        for name in line.split("\t")[:2]
    }
    assert test_people == held  # raw-pairs' photos are exactly View-2 folds 1-2
    used = {crops[0].parent.name for crops in evaluation.calibration_people(DATA)}
    lfw = DATA / "lfw" / "aligned112"
    assert used == set(lfw_people(lfw, 2)) - held  # nobody else is left out
    assert len(used) == 1358


def test_export_pooled_is_the_brute_force_point_on_lfw():
    """ppfr-export's calibration (export/evaluation.pooled) on real LFW crops with a crude but real
    descriptor (the face at 8x8, centred and normalised) is the brute-force FAR point of those people."""
    from ppfr.data import read_faces
    from ppfr.export import evaluation

    def embed(faces):
        x = faces.reshape(len(faces), 8, 14, 8, 14, 3).mean((2, 4)).reshape(len(faces), -1)
        x = x - x.mean(1, keepdims=True)
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    entry = evaluation.pooled(DATA, embed, 3, base={"accuracy": 0.5}, max_people=8)
    people = evaluation.calibration_people(DATA, 8, 5)
    emb = [np.stack([embed(read_faces(crops))] * evaluation.DRAWS, 1) for crops in people]
    t, tar, genuine, impostor = _brute_force(emb, 3, 1e-3)
    assert (entry["genuine"], entry["impostor"]) == (genuine, impostor) and entry["far"] == 1e-3
    assert entry["cosine"] == pytest.approx(t, abs=1e-6) and entry["tar"] == pytest.approx(tar)
    assert entry["accuracy"] == 0.5 and "enrolled from 3 photos" in entry["set"]
    assert "without the people of View-2 folds 1-2" in entry["set"]
