"""Inversion network: protected tensor [C,H,W] -> 112x112 RGB face.

Two parts, both learned:
- a linear *inverse stem*: a 1x1 conv from the C channels to 3*k*k values per position and a pixel
  shuffle by k = 112/H. A block DCT (any channel subset, scaled or permuted the same way every time) is
  linear in the pixels, so this is where a learned inverse DCT lives; for rgb (k=1) it is a colour map.
- a residual U-Net at the working resolution `res`, fed by a lossless pixel-unshuffle of the stem's
  image (112 -> res, 3*(112/res)^2 channels), one level per entry of `widths` (two 3x3 conv + BN + ReLU,
  2x2 max-pool down, transposed conv up, skips), whose output is pixel-shuffled back and added to the
  stem's image. It supplies what no linear map can: the dropped DC, undone normalisation, denoising.
The literature's network is a plain U-Net with widths 64..1024 at 112; ours is sized for a 2-core CPU.
"""

import torch
import torch.nn.functional as F
from torch import nn

SIZE = 112


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    def __init__(self, in_channels: int, in_size: int, widths=(32, 64, 128), res: int = 56):
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) < 2:
            raise ValueError(f"U-Net needs at least two levels, got widths {widths}")
        if SIZE % res or res % 2 ** (len(widths) - 1):
            raise ValueError(
                f"working resolution {res} must divide {SIZE} and be divisible by 2^{len(widths) - 1}"
            )
        self.k = SIZE // in_size if SIZE % in_size == 0 else 1  # else: resize to 112 first
        self.u = SIZE // res
        self.inp = nn.BatchNorm2d(in_channels)  # the protected tensors' scale differs per method
        self.stem = nn.Conv2d(in_channels, 3 * self.k**2, 1)
        cin = 3 * self.u**2
        self.down = nn.ModuleList()
        for w in widths:
            self.down.append(_block(cin, w))
            cin = w
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for w_hi, w_lo in zip(reversed(widths[:-1]), reversed(widths[1:])):
            self.up.append(nn.ConvTranspose2d(w_lo, w_hi, 2, stride=2))
            self.dec.append(_block(2 * w_hi, w_hi))
        self.head = nn.Conv2d(widths[0], 3 * self.u**2, 3, padding=1)
        nn.init.zeros_(self.head.weight)  # start as the linear inverse alone
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Protected [B,C,H,W] float -> face [B,3,112,112], ~[0,1] (clamp for display)."""
        x = self.inp(x.float())
        if self.k == 1 and x.shape[-1] != SIZE:
            x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
        image = F.pixel_shuffle(self.stem(x), self.k) + 0.5
        h = F.pixel_unshuffle(image, self.u)
        skips = []
        for i, block in enumerate(self.down):
            h = block(h if i == 0 else F.max_pool2d(h, 2))
            skips.append(h)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips[:-1])):
            h = dec(torch.cat([up(h), skip], dim=1))
        return image + F.pixel_shuffle(self.head(h), self.u)
