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

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .dlib_resnet import ChipWarp, DlibResNet, chip_grid, load_dlib_resnet, run_head

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


class ChannelScale(nn.Module):
    """x * (1 / rms per channel), measured once (PixelStem.fit). No centring: a channel that a query does
    not carry (PartialFace's routed layout) stays exactly zero."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("scale", torch.ones(channels))

    def forward(self, x):
        return x * self.scale[None, :, None, None]


class PixelStem(nn.Module):
    """C x S x S protected tensor -> a 3 x 112 x 112 face (0..255 scale) for the pretrained net's own
    first layers. The residual parts start at zero.

    S = 14 (one 8x8 block per position): each block's pixels come from its own channels by a linear map
    (for fixed frequencies that is an inverse DCT, so bdct starts as the teacher itself) plus a residual
    read from the block's neighbourhood (residual blocks on the block grid): what dropped channels,
    per-block normalisation or noise took away must be inferred from context.

    S = 112 (x8-upsampled input, one block per pixel, e.g. PartialFace as published): each pixel comes
    from its 3x3 neighbourhood by a linear map; there the coefficients kept are local second differences,
    so that map recovers edges but not the smooth shading, which a residual on the 14x14 grid of the
    linear image (pixel-unshuffled, near-global receptive field) supplies."""

    def __init__(self, in_channels: int, in_size: int, width: int, depth: int):
        super().__init__()
        self.block = 112 // in_size
        self.fine = self.block == 1
        out = 3 * self.block * self.block
        ctx = 3 * 8 * 8 if self.fine else in_channels
        self.norm = ChannelScale(in_channels) if self.fine else nn.BatchNorm2d(in_channels)
        self.linear = nn.Conv2d(in_channels, out, 3 if self.fine else 1, padding=1 if self.fine else 0)
        self.context = nn.Sequential(
            nn.Conv2d(ctx, width, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            *[ResBlock(width) for _ in range(depth)],
            nn.Conv2d(width, ctx if self.fine else out, 1),
        )
        nn.init.zeros_(self.context[-1].weight)
        nn.init.zeros_(self.context[-1].bias)

    @torch.no_grad()
    def fit(self, batches, pixels: int = 256) -> None:
        """Start from the best linear map: least squares on training faces. `batches()` yields (protected
        x, uint8 NHWC images) chunks and is read twice: input statistics, then the normal equations (on
        `pixels` fixed random positions per face where a map reads a 3x3 neighbourhood)."""
        n, s1, s2 = 0, 0.0, 0.0
        for x, _ in batches():
            x = x.double()
            n, s1, s2 = n + x[:, 0].numel(), s1 + x.sum((0, 2, 3)), s2 + x.pow(2).sum((0, 2, 3))
        if self.fine:
            self.norm.scale.copy_((s2 / n).clamp_min(1e-12).rsqrt())
        else:
            self.norm.running_mean.copy_(s1 / n)
            self.norm.running_var.copy_((s2 / n - (s1 / n) ** 2).clamp_min(0))
        self.norm.eval()
        gram = rhs = None
        keep = torch.randperm(112 * 112, generator=torch.Generator().manual_seed(0))[:pixels]
        for x, images in batches():
            xn = self.norm(x)
            image = (images.permute(0, 3, 1, 2).float() - 128.0) / 64.0
            if self.fine:  # F.unfold's layout, read at the kept pixels only (not the whole unfolded image)
                pad, ys, xs = F.pad(xn, (1, 1, 1, 1)), keep // 112, keep % 112
                a = torch.stack([pad[:, :, ys + dy, xs + dx] for dy in range(3) for dx in range(3)], 2)
                a = a.flatten(1, 2).permute(0, 2, 1).reshape(-1, self.linear.in_channels * 9)
                b = image.flatten(2)[:, :, keep].permute(0, 2, 1).reshape(-1, 3)
            else:
                a = xn.permute(0, 2, 3, 1).reshape(-1, xn.shape[1])
                target = F.pixel_unshuffle(image, self.block)
                b = target.permute(0, 2, 3, 1).reshape(-1, target.shape[1])
            a = torch.cat([a.double(), torch.ones_like(a[:, :1], dtype=torch.float64)], 1)
            gram = a.T @ a + (0 if gram is None else gram)
            rhs = a.T @ b.double() + (0 if rhs is None else rhs)
        eye = torch.eye(gram.shape[0], dtype=gram.dtype)
        w = torch.linalg.solve(gram + 1e-3 * eye, rhs).float()
        self.linear.weight.copy_(w[:-1].T.reshape(self.linear.weight.shape))
        self.linear.bias.copy_(w[-1])

    def forward(self, x):
        x = self.norm(x)
        if self.fine:
            y = self.linear(x)
            return 128.0 + 64.0 * (y + F.pixel_shuffle(self.context(F.pixel_unshuffle(y, 8)), 8))
        return 128.0 + 64.0 * F.pixel_shuffle(self.linear(x) + self.context(x), self.block)


class DlibFront(nn.Module):
    """A trainable copy of the pretrained layers before block `upto`, on a 112 crop: what a pixel stem's
    image goes through to reach the entry block. A copy, so the frozen trunk stays the teacher's."""

    def __init__(self, net: DlibResNet, upto: int):
        super().__init__()
        self.warp = ChipWarp()
        self.register_buffer("mean", net.mean.clone(), persistent=False)
        self.conv_in = copy.deepcopy(net.conv_in)
        self.blocks = copy.deepcopy(net.blocks[:upto])

    def forward(self, crop: torch.Tensor) -> torch.Tensor:
        return run_head(self.conv_in, self.blocks, self.mean, self.warp(crop))


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
        pixel_stem: bool = False,
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
            if pixel_stem:  # stem -> face image -> the pretrained layers before `entry` (fine-tuned)
                self.stem = nn.Sequential(
                    PixelStem(in_channels, in_size, width, depth), DlibFront(self.trunk, self.start)
                )
            else:
                self.stem = FrequencyStem(
                    in_channels, in_size, out_c, _entry_grid(self.start, in_size), width, depth, upscale
                )
        self.entry = entry

    def calibrate(self, batches) -> None:
        """Data-dependent initialisation before training: a pixel stem's linear map (PixelStem.fit)."""
        if isinstance(self.stem, nn.Sequential) and isinstance(self.stem[0], PixelStem):
            self.stem[0].fit(batches)

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
