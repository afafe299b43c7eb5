"""ppfr.data on the real shared data: the data root and its PPFR_DATA override (an installed edge finds its
detector there), LFW View-2 pairs and people, reading face crops with clear errors."""

import os
import subprocess
import sys

import numpy as np
import pytest
from ppfr import data


def test_ppfr_data_moves_the_data_models_and_the_edge_detector(tmp_path):
    code = (
        "from ppfr import data; from ppfr.edge.detect import DEFAULT_DETECTOR\n"
        "print(data.shared_root()); print(data.data_path('lfw')); print(DEFAULT_DETECTOR)"
    )
    env = {**os.environ, "PPFR_DATA": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    root, lfw, detector = out.stdout.split()
    assert root == str(tmp_path) and lfw == str(tmp_path / "data" / "lfw")
    assert detector == str(tmp_path / "models" / "yunet" / "face_detection_yunet_2023mar.onnx")
    with pytest.raises(data.DataError, match=r"need lfw/pairs.txt\); pass --data or set PPFR_DATA"):
        data.data_root(tmp_path)


def test_default_root_is_the_shared_folder_beside_the_checkout(data_dir, monkeypatch):
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    assert data.data_root() == data.data_path() == data_dir
    assert data.model_path("yunet").is_dir()


def test_lfw_pairs_keep_every_fold_and_both_kinds(data_dir):
    pairs, same, fold = data.lfw_pairs(data_dir)
    assert len(pairs) == 6000 and same.sum() == 3000 and np.bincount(fold).tolist() == [600] * 10
    assert pairs[0] == ("Abel_Pacheco/Abel_Pacheco_0001.jpg", "Abel_Pacheco/Abel_Pacheco_0004.jpg")
    few, few_same, few_fold = data.lfw_pairs(data_dir, limit=40)
    assert len(few) == 40 and few_same.sum() == 20 and np.bincount(few_fold).tolist() == [4] * 10
    assert data.lfw_pairs(data_dir, limit=10**6)[0] == pairs  # a limit above the total keeps each pair once
    full, folds = data.read_pairs(data_dir / "lfw" / "pairs.txt")
    assert [p[:2] for p in full] == pairs and [p[2] for p in full] == same.tolist()


def test_bad_pairs_files_are_one_line_errors(tmp_path):
    with pytest.raises(data.DataError, match="does not exist"):
        data.read_pairs(tmp_path / "none.txt")
    (tmp_path / "p.txt").write_text("1 1\nA 1 2\nA 1 B\n")
    with pytest.raises(data.DataError, match="bad pairs line"):
        data.read_pairs(tmp_path / "p.txt")
    (tmp_path / "p.txt").write_text("1 2\nA 1 2\nA 1 B 2\n")
    with pytest.raises(data.DataError, match="header promises 1x2x2 pairs, found 2"):
        data.read_pairs(tmp_path / "p.txt")


def test_people_faces_and_reading(data_dir):
    lfw = data_dir / "lfw" / "aligned112"
    people = data.lfw_people(lfw, 10)
    assert "George_W_Bush" in people and all(len(c) >= 10 for c in people.values())
    faces = data.lfw_faces(data_dir, 4)
    assert faces.shape == (4, 112, 112, 3) and faces.dtype == np.uint8
    first = (data_dir / "lfw" / "pairs_images.txt").read_text().split()[0]
    assert np.array_equal(faces[0], data.read_rgb(lfw / first))
    assert data.read_faces([]).shape == (0, 112, 112, 3)


def test_unreadable_or_unaligned_images_are_data_errors(tmp_path, data_dir):
    (tmp_path / "x.jpg").write_bytes(b"not an image")
    with pytest.raises(data.DataError, match="cannot read image"):
        data.read_rgb(tmp_path / "x.jpg")
    photo = next((data_dir / "lfw" / "raw_samples_250").glob("*.jpg"))
    with pytest.raises(data.DataError, match="faces must be aligned 112x112 crops"):
        data.read_rgb(photo)
    assert data.read_rgb(photo, size=None).ndim == 3


def test_a_bad_header_is_a_data_error(tmp_path):
    (tmp_path / "p.txt").write_text("ten 300\n")
    with pytest.raises(data.DataError, match="first line must be"):
        data.read_pairs(tmp_path / "p.txt")
