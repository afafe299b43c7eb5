"""The PyTorch port of dlib's ResNet against dlib itself, the chip warp, and the student built on it."""

import numpy as np
import pytest
import torch
from helpers import lfw_faces
from ppfr.train.dlib_resnet import (
    CHIP_AFFINE,
    ChipWarp,
    DlibResNet,
    PretrainedError,
    dlib_descriptors,
    embed_crops,
    load_dlib_resnet,
    weights_dir,
)
from ppfr.train.student import DlibTrunk, OnlineTeacher


@pytest.fixture(scope="module")
def net():
    return load_dlib_resnet()


def test_port_matches_dlib_on_real_faces(net, data_dir):
    faces = lfw_faces(6, start=100)
    ours, ref = embed_crops(net, faces), dlib_descriptors(faces)
    cos = np.sum(ours * ref, 1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > 0.999, cos
    assert np.allclose(np.linalg.norm(ours, axis=1), np.linalg.norm(ref, axis=1), rtol=0.01)


def test_chip_warp_matches_opencv(data_dir):
    import cv2

    faces = lfw_faces(2)
    ours = ChipWarp()(torch.from_numpy(faces).permute(0, 3, 1, 2).float()).permute(0, 2, 3, 1).numpy()
    ref = np.stack(
        [cv2.warpAffine(f, np.array(CHIP_AFFINE), (150, 150), flags=cv2.INTER_LINEAR) for f in faces]
    )
    assert np.abs(ours - ref).mean() < 0.5  # OpenCV rounds its interpolation weights to 1/32


def test_missing_weights_say_what_to_do(tmp_path):
    with pytest.raises(PretrainedError, match="make setup"):
        weights_dir(tmp_path)


@pytest.mark.parametrize("entry", ["conv64_1", "conv128_down"])
def test_student_stem_lands_where_the_teacher_is(entry):
    trunk = DlibTrunk(34, 14, entry=entry, width=16, depth=1, pretrained=False)
    teacher = OnlineTeacher(entry)
    s_entry, emb = trunk.forward_with_entry(torch.randn(2, 34, 14, 14))
    t_entry, t_emb = teacher(torch.zeros(2, 112, 112, 3, dtype=torch.uint8))
    assert s_entry.shape == t_entry.shape and emb.shape == t_emb.shape == (2, 128)


def test_rgb_entry_is_dlib_itself(net, data_dir):
    trunk = DlibTrunk(3, 112, entry="chip")
    faces = lfw_faces(2)
    x = torch.from_numpy(faces).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # the rgb method's output
    with torch.no_grad():
        assert torch.allclose(trunk(x), torch.from_numpy(embed_crops(net, faces)), atol=1e-4)


def test_block_names_are_checked():
    with pytest.raises(ValueError, match="unknown dlib block"):
        DlibResNet.block_index("conv999")
