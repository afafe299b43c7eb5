"""Recognizers built on the pretrained dlib ResNet, and the online teacher that trains them.

`DlibTrunk` is the backbone of every method's recognizer when `model.backbone: dlib`:
- `entry: chip` (rgb): the 112 crop is warped to dlib's 150 chip inside the graph and the whole
  pretrained net runs on it: the rgb baseline is dlib itself.
- `entry: <block>` (protected tensors, C x 14 x 14): a learned `FrequencyStem` maps the tensor to the
  activation the pretrained net has just before that block (e.g. conv64_1: 64 x 17 x 17), and the
  pretrained layers from there on (`trunk`) finish the job. The stem works on the 14x14 block grid and
  then resamples to the trunk's grid with the fixed 112-crop -> chip geometry (one GridSample), so it
  only has to learn *what* the features are, not where they sit.

`OnlineTeacher` runs the frozen pretrained net on the same augmented clean faces the student sees
protected: it gives the target activation at the entry block and the target embedding. No labels are
needed, so unlabeled faces (UTKFace) count as training data.
"""

import torch
import torch.nn.functional as F
from torch import nn

from .dlib_resnet import ChipWarp, DlibResNet, chip_grid, load_dlib_resnet

ENTRY_CHIP = "chip"


def _entry_grid(index: int, in_size: int) -> torch.Tensor:
    """Where the trunk's map before block `index` samples the 14x14 block grid, in chip pixels:
    conv 7/2 and max-pool 3/2 put position p at 4p+5; each strided block doubles the step (8q+9, ...)."""
    from .dlib_resnet import BLOCKS

    step, offset, size = 4, 5, 35
    for _, _, stride in BLOCKS[:index]:
        if stride == 2:
            step, offset, size = 2 * step, offset + step, (size - 3) // 2 + 1
    return chip_grid(size, in_size, points=[offset + step * q for q in range(size)])


class ResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c, c, 3, 1, 1, bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 3, 1, 1, bias=False),
            nn.BatchNorm2d(c),
        )

    def forward(self, x):
        return F.relu(x + self.body(x))


class FrequencyStem(nn.Module):
    """C x S x S protected tensor -> the trunk's activation before its entry block."""

    def __init__(
        self, in_channels: int, in_size: int, out_channels: int, grid: torch.Tensor, width, depth, upscale=1
    ):
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels)  # DCT channels differ in scale by orders of magnitude
        self.inp = nn.Sequential(
            nn.Conv2d(in_channels, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.blocks = nn.Sequential(*[ResBlock(width) for _ in range(depth)])
        # upscale > 1: sub-pixel convolution to a finer grid than the 8x8 blocks, so detail inside a block
        # reaches the trunk's grid as space rather than squeezed through bilinear resampling.
        fine = width // upscale if upscale > 1 else width
        self.up = (
            nn.Sequential(
                nn.Conv2d(width, fine * upscale * upscale, 1, bias=False),
                nn.PixelShuffle(upscale),
                nn.BatchNorm2d(fine),
                nn.ReLU(),
                ResBlock(fine),
            )
            if upscale > 1
            else nn.Identity()
        )
        self.out = nn.Sequential(
            nn.Conv2d(fine, fine, 3, 1, 1, bias=False),
            nn.BatchNorm2d(fine),
            nn.ReLU(),
            nn.Conv2d(fine, out_channels, 1),
        )
        self.register_buffer("grid", grid, persistent=False)

    def forward(self, x):
        x = self.up(self.blocks(self.inp(self.norm(x))))
        x = F.grid_sample(x, self.grid.expand(x.shape[0], -1, -1, -1), align_corners=False)
        return F.relu(self.out(x))  # the trunk's activations are post-ReLU


class DlibTrunk(nn.Module):
    def __init__(
        self,
        in_channels: int,
        in_size: int,
        embedding_size: int = 128,
        entry: str = "conv64_1",
        width: int = 128,
        depth: int = 4,
        upscale: int = 1,
        pretrained: bool = True,
        **_ignored,
    ):
        super().__init__()
        if embedding_size != 128:
            raise ValueError("the dlib backbone's embedding is 128-d: set model.embedding_size: 128")
        self.trunk = load_dlib_resnet() if pretrained else DlibResNet()
        if entry == ENTRY_CHIP:
            if (in_channels, in_size) != (3, 112):
                raise ValueError("entry 'chip' takes the rgb method's 3x112x112 faces")
            self.start, self.stem = 0, ChipWarp()
        else:
            self.start = DlibResNet.block_index(entry)
            out_c = DlibResNet.in_channels(self.start)
            self.stem = FrequencyStem(
                in_channels, in_size, out_c, _entry_grid(self.start, in_size), width, depth, upscale
            )
        self.entry = entry

    def forward_with_entry(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(activation entering the pretrained layers, unnormalised 128-d embedding)."""
        if self.entry == ENTRY_CHIP:
            h = self.trunk.head(self.stem((x + 1.0) * 127.5), 0)  # rgb method gives [-1, 1]
        else:
            h = self.stem(x)
        return h, self.trunk.tail(h, self.start)

    def forward(self, x):
        return self.forward_with_entry(x)[1]


class OnlineTeacher(nn.Module):
    """The frozen pretrained net on clean faces: (activation before block `entry`, embedding)."""

    def __init__(self, entry: str):
        super().__init__()
        self.net = load_dlib_resnet().requires_grad_(False)
        self.warp = ChipWarp()
        self.start = 0 if entry == ENTRY_CHIP else DlibResNet.block_index(entry)
        self.register_buffer("mean", torch.zeros(128))

    def train(self, mode: bool = True):
        return super().train(False)  # always frozen, whatever the student does

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        chip = self.warp(images.permute(0, 3, 1, 2).float())
        h = self.net.head(chip, self.start)
        return h, self.net.tail(h, self.start)

    @torch.no_grad()
    def set_mean(self, images: torch.Tensor, batch: int = 128) -> None:
        """dlib descriptors share a large common component; targets are centred on it (see distill.py)."""
        embs = [self(images[i : i + batch])[1] for i in range(0, len(images), batch)]
        self.mean.copy_(torch.cat(embs).mean(0))


class OnlineDistillLoss(nn.Module):
    """Embedding: 1 - cos of the centred student and teacher embeddings. Features: MSE at the entry
    block relative to the teacher activation's mean square, weighted by `feature_weight`."""

    def __init__(self, feature_weight: float):
        super().__init__()
        self.feature_weight = feature_weight

    def forward(self, s_entry, s_emb, t_entry, t_emb, mean) -> dict[str, torch.Tensor]:
        out = {"embed": (1 - F.cosine_similarity(s_emb - mean, t_emb - mean, dim=1)).mean()}
        if self.feature_weight > 0 and s_entry.shape == t_entry.shape:
            mse = F.mse_loss(s_entry, t_entry) / t_entry.pow(2).mean().clamp_min(1e-6)
            out["feature"] = self.feature_weight * mse
        return out
