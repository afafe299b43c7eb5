"""Edge building blocks on real photos: detection, alignment to the ArcFace template, the preview, and
the dependency rule (no torch in ppfr.edge). The randomness has its own file, test_bundle_randomness.py."""

import json
import subprocess
import sys

import numpy as np
import pytest
from helpers import DATA, MODELS, REPO
from ppfr.edge.align import ARCFACE_TEMPLATE, align, estimate_transform, transform_points
from ppfr.edge.detect import Detector, Face, pick_face, prominence
from ppfr.edge.errors import ImageError
from ppfr.edge.image import read_bgr
from ppfr.edge.preview import channel_grid, preview

LFW_RAW = DATA / "lfw" / "raw_samples_250"
CELEBA_RAW = DATA / "celeba" / "raw_samples"
MULTI_FACE = "000093.jpg"  # CelebA in-the-wild photo with two faces


@pytest.fixture(scope="module")
def detector():
    return Detector(MODELS / "yunet" / "face_detection_yunet_2023mar.onnx")


@pytest.fixture(scope="module")
def raw_photos():
    photos = sorted(LFW_RAW.glob("*.jpg")) + sorted(CELEBA_RAW.glob("*.jpg"))
    assert len(photos) >= 10, f"expected the raw sample photos in {LFW_RAW} and {CELEBA_RAW}"
    return photos


def test_import_edge_does_not_import_torch():
    modules = ["ppfr.edge"] + [f"ppfr.edge.{p.stem}" for p in sorted((REPO / "edge").glob("*.py"))]
    code = (
        f"import importlib, sys\nfor m in {[m for m in modules if not m.endswith('__init__')]!r}:\n"
        "    importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'torch' or m.startswith(('ppfr.train', "
        "'ppfr.export')))\nprint(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_detector_finds_the_landmarks_of_the_data(detector):
    """Our detections on the LFW originals equal YuNet's recorded ones for the data set."""
    recorded = json.loads((DATA / "lfw" / "yunet_detections_on_deepfunneled250.json").read_text())
    for photo in sorted(LFW_RAW.glob("*.jpg")):
        face, _ = pick_face(detector.detect(read_bgr(photo)), photo.name)
        person = photo.stem.rsplit("_", 1)[0]
        expected = np.array(recorded[f"{person}/{photo.name}"][4:14]).reshape(5, 2)
        assert np.abs(face.landmarks - expected).max() < 0.5, photo.name


def test_alignment_puts_landmarks_on_the_template(detector, raw_photos):
    """Detect on real photos, align, and map the detected landmarks with the same transform: they land
    within 3 px of the ArcFace template (mean over the 5 points and the faces; eyes and mouth closest)."""
    errors = []
    for photo in raw_photos:
        face, _ = pick_face(detector.detect(read_bgr(photo)), photo.name)
        crop, matrix = align(read_bgr(photo), face.landmarks)
        assert crop.shape == (112, 112, 3)
        errors.append(np.linalg.norm(transform_points(matrix, face.landmarks) - ARCFACE_TEMPLATE, axis=1))
    errors = np.array(errors)  # faces x 5 points, in px of the 112x112 crop
    assert errors.mean() <= 3.0, errors.mean(axis=1)
    assert np.median(errors) <= 3.0
    assert errors[:, :2].mean() <= 3.0  # eyes
    assert errors.max() < 12.0  # nothing mirrored, swapped or scaled wrong


@pytest.mark.slow
def test_alignment_on_every_lfw_detection():
    """The same check on YuNet's landmarks for all 13,233 LFW originals (recorded in the data set)."""
    recorded = json.loads((DATA / "lfw" / "yunet_detections_on_deepfunneled250.json").read_text())
    landmarks = np.array([row[4:14] for row in recorded.values()]).reshape(-1, 5, 2)
    errors = np.stack(
        [
            np.linalg.norm(transform_points(estimate_transform(lm), lm) - ARCFACE_TEMPLATE, axis=1)
            for lm in landmarks
        ]
    )
    assert len(errors) == 13233
    assert errors.mean() <= 3.0
    assert np.median(errors.mean(axis=1)) <= 3.0


def test_crops_match_the_training_data_alignment(detector):
    """Raw LFW photo -> our crop equals the data set's aligned112 crop up to JPEG noise, so the edge feeds
    the model faces aligned exactly as in training and evaluation."""
    for photo in sorted(LFW_RAW.glob("*.jpg")):
        bgr = read_bgr(photo)
        crop, _ = align(bgr, pick_face(detector.detect(bgr), photo.name)[0].landmarks)
        person = photo.stem.rsplit("_", 1)[0]
        reference = read_bgr(DATA / "lfw" / "aligned112" / person / photo.name)
        assert np.abs(crop.astype(int) - reference).mean() < 4.0, photo.name


def test_no_face_is_an_error_several_faces_a_warning_or_with_strict_an_error(detector):
    gradient = np.broadcast_to(np.linspace(0, 255, 320, dtype=np.uint8)[None, :, None], (240, 320, 3)).copy()
    for strict in (False, True):
        with pytest.raises(ImageError, match="no face"):
            pick_face(detector.detect(gradient), "gradient.png", strict)
    faces = detector.detect(read_bgr(CELEBA_RAW / MULTI_FACE))
    face, warning = pick_face(faces, MULTI_FACE)
    assert len(faces) == 2 and face is faces[0] and face.prominence > faces[1].prominence
    assert "2 faces found" in warning and "most prominent" in warning and "--strict" in warning
    with pytest.raises(ImageError, match="2 faces found.*--strict refuses"):
        pick_face(faces, MULTI_FACE, strict=True)
    single = detector.detect(read_bgr(LFW_RAW / "Abel_Pacheco_0001.jpg"))
    assert len(single) == 1 and pick_face(single, "abel", strict=True) == (single[0], None)


# LFW originals with a second face where the largest face is not the person the photo is of (a bigger,
# cut-off face at the border): the prominent face is, as the data set's recorded detection says.
LARGEST_IS_WRONG = [
    "Charles_Schumer/Charles_Schumer_0002.jpg",
    "Laura_Morante/Laura_Morante_0001.jpg",
    "Maria_Luisa_Mendonca/Maria_Luisa_Mendonca_0001.jpg",
    "Silvio_Berlusconi/Silvio_Berlusconi_0030.jpg",
]


def test_the_prominent_face_is_the_person_the_photo_is_of(detector):
    recorded = json.loads((DATA / "lfw" / "yunet_detections_on_deepfunneled250.json").read_text())
    for name in LARGEST_IS_WRONG:
        faces = detector.detect(read_bgr(DATA / "lfw" / "raw250" / name))
        face, warning = pick_face(faces, name)
        assert len(faces) >= 2 and warning
        assert np.abs(face.landmarks - np.array(recorded[name][4:14]).reshape(5, 2)).max() < 0.5, name
        assert max(f.area for f in faces) > face.area  # the largest alone would be wrong here


def test_prominence_is_size_times_score_times_nearness_to_the_centre():
    centre = [75, 75, 100, 100]  # a 100x100 face centred in a 250x250 photo
    assert prominence(centre, 0.9, 250, 250) == pytest.approx(100 * 100 * 0.9)
    assert prominence([0, 0, 10, 10], 1.0, 250, 250) < prominence([120, 120, 10, 10], 1.0, 250, 250)
    assert prominence([0, 0, 0, 0], 1.0, 250, 250) == 0.0
    assert prominence(centre, 0.45, 250, 250) == pytest.approx(prominence(centre, 0.9, 250, 250) / 2)
    # Twice the side beats a face at the centre unless it is more than 3/4 of the way to a corner.
    small = prominence([115, 115, 20, 20], 0.9, 250, 250)
    assert prominence([150, 150, 40, 40], 0.9, 250, 250) > small  # d ~ 0.36
    assert prominence([210, 210, 40, 40], 0.9, 250, 250) < small  # d ~ 0.84
    # Distances are relative to each axis: the same place in a portrait and a landscape photo.
    assert prominence([0, 0, 10, 20], 1.0, 100, 200) == pytest.approx(
        prominence([0, 0, 20, 10], 1.0, 200, 100)
    )


def test_pick_face_keeps_the_detectors_order():
    faces = [Face(np.array([0, 0, 9, 9.0]), np.zeros((5, 2)), 0.9, p) for p in (30.0, 20.0, 10.0)]
    face, warning = pick_face(faces, "x.jpg")
    assert face is faces[0] and warning.startswith("x.jpg: 3 faces found")


def test_preview_shows_the_face_beside_every_channel():
    tensor = np.random.default_rng(0).normal(size=(1, 34, 14, 14)).astype(np.float32)
    grid = channel_grid(tensor)
    assert grid.dtype == np.uint8 and grid.ndim == 2
    assert grid.shape[0] * grid.shape[1] >= 34 * (14 * 4) ** 2
    face = np.zeros((112, 112, 3), np.uint8)
    image = preview(face, tensor, "ppfr_fd")
    assert image.shape[2] == 3 and image.shape[1] > 112 + grid.shape[1]
