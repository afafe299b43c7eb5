"""Recognizer backbones: IR-18/34/50/100 (optionally IR-SE) and MobileFaceNet, [N,C,H,W] -> [N,D].

The stem takes the method's channel count (3 for RGB, 34 for PPFR-FD, 189 for DCTDP, ...). Both
families end on a 7x7 map, so an input of side S needs log2(S/7) stride-2 steps. For the 14x14 BDCT
inputs there are two stems (`stem`):
- "upsample": resize to 112 inside the model, then the unchanged 112 network (PPFR-FD paper);
- "direct": no early downsampling: the first stride-2 steps become stride 1 (much cheaper on CPU).
Only ops the dynamo ONNX exporter handles with a dynamic batch (Conv, BN, PReLU, Resize to a fixed size).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

FINAL_SIZE = 7
IR_UNITS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3)}


def _strides(in_size: int, stem: str, points: int, full_res_steps=None) -> tuple[int, list[int]]:
    """(size the network body sees, stride of each of its `points` downsampling steps).

    `full_res_steps`: how many of the steps keep stride 1 before the stride-2 ones (default: as many as
    the size allows, i.e. downsample last). For 14x14 inputs 1 gives [1, 2, 1, 1]: the stem and first
    stage at 14x14, the rest at 7x7 (~4x cheaper on CPU than [1, 1, 1, 2]). 112 inputs have no choice.
    """
    if stem not in ("direct", "upsample"):
        raise ValueError(f"unknown stem {stem!r}; choose 'direct' or 'upsample'")
    size = 112 if stem == "upsample" else in_size
    n_down = math.log2(size / FINAL_SIZE) if size >= FINAL_SIZE else -1
    if n_down != int(n_down) or not 0 <= n_down <= points:
        raise ValueError(f"input size {size} unsupported: need 7 * 2^k with k <= {points} (e.g. 14, 56, 112)")
    n_down = int(n_down)
    keep = points - n_down if full_res_steps is None else min(int(full_res_steps), points - n_down)
    return size, [1] * keep + [2] * n_down + [1] * (points - n_down - keep)


def _init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class Resize(nn.Module):
    """14 -> 112 (paper's choice), fixed output size so the exported Resize has no dynamic shape."""

    def __init__(self, size: int, mode: str = "bilinear"):
        super().__init__()
        self.size, self.mode = size, mode

    def forward(self, x):
        if self.mode == "nearest":
            return F.interpolate(x, size=(self.size, self.size), mode="nearest")
        return F.interpolate(x, size=(self.size, self.size), mode=self.mode, align_corners=False)


# --- IR / IR-SE (face.evoLVe / TFace model_irse) --------------------------------------------------
class SEModule(nn.Module):
    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)
        nn.init.xavier_uniform_(self.fc1.weight)

    def forward(self, x):
        w = x.mean(dim=(2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(w))))


class BasicBlockIR(nn.Module):
    def __init__(self, in_c: int, out_c: int, stride: int, se: bool):
        super().__init__()
        layers = [
            nn.BatchNorm2d(in_c),
            nn.Conv2d(in_c, out_c, 3, 1, 1, bias=False),
            nn.BatchNorm2d(out_c),
            nn.PReLU(out_c),
            nn.Conv2d(out_c, out_c, 3, stride, 1, bias=False),
            nn.BatchNorm2d(out_c),
        ]
        if se:
            layers.append(SEModule(out_c))
        self.res = nn.Sequential(*layers)
        if in_c == out_c:
            self.shortcut = nn.MaxPool2d(1, stride) if stride > 1 else nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_c, out_c, 1, stride, bias=False), nn.BatchNorm2d(out_c)
            )

    def forward(self, x):
        return self.res(x) + self.shortcut(x)


class IResNet(nn.Module):
    def __init__(
        self,
        in_channels: int,
        in_size: int,
        depth: int = 50,
        se: bool = False,
        embedding_size: int = 512,
        stem: str = "direct",
        dropout: float = 0.4,
        upsample_mode: str = "bilinear",
        full_res_steps: int | None = None,
    ):
        super().__init__()
        if depth not in IR_UNITS:
            raise ValueError(f"IR depth {depth} unsupported; choose one of {sorted(IR_UNITS)}")
        size, strides = _strides(in_size, stem, 4, full_res_steps)
        self.resize = Resize(size, upsample_mode) if size != in_size else nn.Identity()
        self.input_layer = nn.Sequential(
            nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64)
        )
        blocks, in_c = [], 64
        for out_c, units, stride in zip((64, 128, 256, 512), IR_UNITS[depth], strides):
            for i in range(units):
                blocks.append(BasicBlockIR(in_c, out_c, stride if i == 0 else 1, se))
                in_c = out_c
        self.body = nn.Sequential(*blocks)
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(512),
            nn.Dropout(dropout),
            nn.Flatten(),
            nn.Linear(512 * FINAL_SIZE * FINAL_SIZE, embedding_size),
            nn.BatchNorm1d(embedding_size, affine=False),
        )
        _init(self)

    def forward(self, x):
        return self.output_layer(self.body(self.input_layer(self.resize(x))))


# --- MobileFaceNet (insightface arcface_torch/backbones/mobilefacenet.py) ------------------------
class ConvBlock(nn.Sequential):
    def __init__(self, in_c, out_c, kernel=1, stride=1, padding=0, groups=1, act=True):
        layers = [
            nn.Conv2d(in_c, out_c, kernel, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_c),
        ]
        if act:
            layers.append(nn.PReLU(out_c))
        super().__init__(*layers)


class DepthWise(nn.Module):
    def __init__(self, in_c, out_c, stride, groups, residual=False):
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(
            ConvBlock(in_c, groups),
            ConvBlock(groups, groups, 3, stride, 1, groups=groups),
            ConvBlock(groups, out_c, act=False),
        )

    def forward(self, x):
        y = self.layers(x)
        return x + y if self.residual else y


class MobileFaceNet(nn.Module):
    def __init__(
        self,
        in_channels: int,
        in_size: int,
        embedding_size: int = 512,
        stem: str = "direct",
        width: float = 1,
        blocks: tuple[int, ...] = (1, 4, 6, 2),
        upsample_mode: str = "bilinear",
        full_res_steps: int | None = None,
    ):
        super().__init__()
        size, s = _strides(in_size, stem, 4, full_res_steps)
        self.resize = Resize(size, upsample_mode) if size != in_size else nn.Identity()
        c1, c2 = int(64 * width), int(128 * width)
        layers = [ConvBlock(in_channels, c1, 3, s[0], 1)]
        if blocks[0] == 1:
            layers.append(ConvBlock(c1, c1, 3, 1, 1, groups=c1))
        else:
            layers += [DepthWise(c1, c1, 1, 2 * c1, residual=True) for _ in range(blocks[0])]
        layers.append(DepthWise(c1, c1, s[1], 2 * c1))
        layers += [DepthWise(c1, c1, 1, 2 * c1, residual=True) for _ in range(blocks[1])]
        layers.append(DepthWise(c1, c2, s[2], 4 * c1))
        layers += [DepthWise(c2, c2, 1, 2 * c2, residual=True) for _ in range(blocks[2])]
        layers.append(DepthWise(c2, c2, s[3], 4 * c2))
        layers += [DepthWise(c2, c2, 1, 2 * c2, residual=True) for _ in range(blocks[3])]
        layers.append(ConvBlock(c2, 512))
        self.layers = nn.Sequential(*layers)
        # GDC: a 7x7 depthwise conv pools the final map with a learned spatial weighting.
        self.features = nn.Sequential(
            ConvBlock(512, 512, FINAL_SIZE, 1, 0, groups=512, act=False),
            nn.Flatten(),
            nn.Linear(512, embedding_size, bias=False),
            nn.BatchNorm1d(embedding_size),
        )
        _init(self)

    def forward(self, x):
        return self.features(self.layers(self.resize(x)))


def build_backbone(
    in_channels: int,
    in_size: int,
    backbone: str = "mobilefacenet",
    embedding_size: int = 512,
    stem: str = "direct",
    **kw,
) -> nn.Module:
    """Backbone by name: dlib (pretrained, see student.py), mobilefacenet, ir18, ir34, ir50, ir100, irse50
    (SE variants: irse<depth>).

    kw: `width`, `blocks` (MobileFaceNet), `dropout` (IR), `upsample_mode` (bilinear|nearest),
    `full_res_steps` (see _strides).
    """
    name = backbone.lower().replace("-", "").replace("_", "")
    if name == "dlib":  # the pretrained dlib ResNet as trunk (student.py)
        from .student import DlibTrunk

        return DlibTrunk(in_channels, in_size, embedding_size, **kw)
    kw.pop("pretrained", None)
    try:
        if name == "mobilefacenet":
            return MobileFaceNet(in_channels, in_size, embedding_size, stem, **kw)
        if name.startswith("irse") or name.startswith("ir"):
            se = name.startswith("irse")
            depth = int(name[4:] if se else name[2:])
            return IResNet(in_channels, in_size, depth, se, embedding_size, stem, **kw)
    except TypeError as err:
        raise ValueError(f"bad parameters for backbone {backbone!r}: {err}") from None
    except ValueError as err:
        if "invalid literal" not in str(err):
            raise
    raise ValueError(f"unknown backbone {backbone!r}; choose mobilefacenet, ir18, ir34, ir50, ir100, irse50")
