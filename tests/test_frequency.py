"""The block-DCT core is exact: checked against scipy on real faces."""

import numpy as np
import pytest
import scipy.fft
import torch
from helpers import lfw_faces
from ppfr.train.frequency import (
    BlockDCT,
    BlockIDCT,
    ColorConvert,
    FrequencyFrontEnd,
    UpsampledBlockDCT,
    channel_index,
    to_float_nchw,
    upsample,
    zigzag_order,
)


def gray(faces: np.ndarray) -> torch.Tensor:
    return ColorConvert("gray")(to_float_nchw(torch.from_numpy(faces))).double().float()


def test_block_dct_matches_scipy_per_block(faces):
    x = gray(faces[:8])  # [8, 1, 112, 112], values 0..255
    ours = BlockDCT()(x).numpy()  # [8, 64, 14, 14]
    blocks = x.numpy()[:, 0].reshape(8, 14, 8, 14, 8).transpose(0, 1, 3, 2, 4)  # [n, by, bx, 8, 8]
    ref = scipy.fft.dctn(blocks.astype(np.float64), type=2, norm="ortho", axes=(-2, -1))
    ref = ref.reshape(8, 14, 14, 64).transpose(0, 3, 1, 2)  # channel k = 8u + v
    rel = np.abs(ours - ref).max() / np.abs(ref).max()
    assert rel < 1e-5, rel


def test_inverse_is_exact(faces):
    x = ColorConvert("ycbcr")(to_float_nchw(torch.from_numpy(faces)))
    back = BlockIDCT()(BlockDCT()(x))
    assert torch.allclose(back, x, atol=1e-4 * x.abs().max().item()), (back - x).abs().max()


def test_upsample_matches_reference_align_corners(faces):
    x = to_float_nchw(torch.from_numpy(faces[:2]))
    y = upsample(x, 8)
    assert y.shape == (2, 3, 896, 896)
    # align_corners=True keeps the corner pixels exactly.
    assert torch.equal(y[..., 0, 0], x[..., 0, 0]) and torch.allclose(y[..., -1, -1], x[..., -1, -1])
    fe = FrequencyFrontEnd("ycbcr", 8)
    assert fe(torch.from_numpy(faces[:1])).shape == (1, 192, 112, 112)


@pytest.mark.slow
def test_x8_front_end_is_the_reference_path_without_the_x8_image(faces):
    """UpsampledBlockDCT = BlockDCT(upsample(x, 8)) (the reference's order of operations), and in float32
    it keeps the small high-frequency coefficients that PartialFace sends to ~1e-6 of their scale."""
    x = ColorConvert("ycbcr")(to_float_nchw(torch.from_numpy(faces[:2])))
    ref = BlockDCT().double()(upsample(x.double(), 8))
    ours = UpsampledBlockDCT()
    assert torch.allclose(ours.double()(x.double()), ref, rtol=0, atol=1e-6 * ref.abs().max().item())
    high = [p * 64 + k for p in range(3) for k in range(64) if sum(divmod(k, 8)) > 3]  # what may be sent
    err = (UpsampledBlockDCT()(x).double() - ref)[:, high].abs().max() / ref[:, high].abs().max()
    assert err < 1e-5, err


def test_ycbcr_matches_jpeg_matrix():
    rgb = torch.tensor([[[[255.0]], [[0.0]], [[0.0]]]])  # pure red
    y, cb, cr = ColorConvert("ycbcr")(rgb).flatten().tolist()
    assert y == pytest.approx(0.299 * 255 - 128, abs=1e-3)
    assert cb == pytest.approx(-0.168736 * 255, abs=1e-3)  # 128 - 0.1687 R, minus 128
    assert cr == pytest.approx(0.5 * 255, abs=1e-3)


def test_channel_helpers():
    assert channel_index(0, 1) == 1 and channel_index(1, 0) == 8 and channel_index(7, 7) == 63
    zz = zigzag_order()
    assert zz[:10] == [0, 1, 8, 16, 9, 2, 3, 10, 17, 24]
    assert sorted(zz) == list(range(64)) and zz[-1] == 63


def test_dc_holds_most_energy_of_gray_faces(capsys):
    """PPFR-FD's claim: the DC channel holds > 90% of the squared-coefficient energy."""
    faces = lfw_faces(300)
    coef = BlockDCT()(gray(faces)).double()  # gray 0..255, no -128 shift
    squared = (coef**2).sum(dim=(0, 2, 3))
    absolute = coef.abs().mean(dim=(0, 2, 3))
    share_sq = (squared[0] / squared.sum()).item()
    share_abs = (absolute[0] / absolute.sum()).item()
    with capsys.disabled():
        print(
            f"\nDC share on 300 LFW faces: squared energy {share_sq:.1%}, mean |coefficient| {share_abs:.1%}"
        )
    assert share_sq > 0.90
    assert share_abs < share_sq
