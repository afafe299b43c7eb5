"""Backbones: shapes for every stem/size, clear errors, and a dynamo ONNX export with a dynamic batch."""

import numpy as np
import pytest
import torch
from ppfr.train.backbones import _strides, build_backbone


@pytest.mark.parametrize(
    "kw",
    [
        dict(in_channels=34, in_size=14, stem="direct"),
        dict(in_channels=34, in_size=14, stem="direct", full_res_steps=1),
        dict(in_channels=34, in_size=14, stem="upsample"),
        dict(in_channels=3, in_size=112),
        dict(in_channels=189, in_size=14, backbone="ir18"),
        dict(in_channels=27, in_size=14, backbone="irse18", stem="upsample"),
    ],
)
def test_shapes(kw):
    torch.manual_seed(0)
    small = (
        {"width": 0.25, "blocks": (1, 1, 1, 1)}
        if kw.get("backbone", "mobilefacenet") == "mobilefacenet"
        else {}
    )
    net = build_backbone(embedding_size=64, **kw, **small).eval()
    x = torch.randn(2, kw["in_channels"], kw["in_size"], kw["in_size"])
    assert net(x).shape == (2, 64)


def test_stride_plans():
    assert _strides(112, "direct", 4) == (112, [2, 2, 2, 2])
    assert _strides(14, "direct", 4) == (14, [1, 1, 1, 2])  # no early downsampling
    assert _strides(14, "direct", 4, full_res_steps=1) == (14, [1, 2, 1, 1])
    assert _strides(14, "upsample", 4) == (112, [2, 2, 2, 2])


def test_bad_backbones_fail_clearly():
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone(3, 112, backbone="resnet9000")
    with pytest.raises(ValueError, match="unsupported"):
        build_backbone(3, 100)
    with pytest.raises(ValueError, match="IR depth"):
        build_backbone(3, 112, backbone="ir77")


@pytest.mark.slow
def test_dynamo_onnx_export_dynamic_batch(tmp_path):
    from ppfr.bundle import session

    torch.manual_seed(0)
    net = build_backbone(34, 14, embedding_size=32, width=0.25, blocks=(1, 1, 1, 1), stem="upsample").eval()
    x = torch.randn(2, 34, 14, 14)
    path = tmp_path / "b.onnx"
    batch = torch.export.Dim("batch", min=1, max=1024)
    torch.onnx.export(net, (x,), str(path), dynamo=True, external_data=False, dynamic_shapes=({0: batch},))
    sess = session(path)
    for n in (1, 5):
        xi = torch.randn(n, 34, 14, 14)
        got = sess.run(None, {sess.get_inputs()[0].name: xi.numpy()})[0]
        np.testing.assert_allclose(got, net(xi).detach().numpy(), rtol=1e-3, atol=1e-3)
