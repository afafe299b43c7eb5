"""Inversion network: a U-Net from the protected tensor back to the 112x112 RGB face.

The protected tensor (C x H x W, any H) is resized to the working resolution `res`, passed through a
U-Net with one level per entry of `widths` (each level two 3x3 conv + BN + ReLU, 2x2 max-pool down,
transposed conv up, skip connections); a 3x3 conv + pixel shuffle turns the last feature map into the
112x112 RGB face (no costly bilinear upsampling of wide feature maps).
The literature's full-size network is widths 64..1024 at res 112; the CPU default is much smaller.
"""

import torch
import torch.nn.functional as F
from torch import nn

FULL_WIDTHS = (64, 128, 256, 512, 1024)


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
    def __init__(self, in_channels: int, widths=(16, 32, 64), res: int = 28, out_size: int = 112):
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) < 2:
            raise ValueError(f"U-Net needs at least two levels, got widths {widths}")
        if res % 2 ** (len(widths) - 1):
            raise ValueError(f"working resolution {res} must be divisible by 2^{len(widths) - 1}")
        self.res, self.out_size = res, out_size
        self.inp = nn.BatchNorm2d(in_channels)  # the protected tensors' scale differs per method
        self.down = nn.ModuleList()
        cin = in_channels
        for w in widths:
            self.down.append(_block(cin, w))
            cin = w
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for w_hi, w_lo in zip(reversed(widths[:-1]), reversed(widths[1:])):
            self.up.append(nn.ConvTranspose2d(w_lo, w_hi, 2, stride=2))
            self.dec.append(_block(2 * w_hi, w_hi))
        if out_size % res:
            raise ValueError(f"output size {out_size} must be a multiple of the working resolution {res}")
        self.scale = out_size // res
        self.head = nn.Conv2d(widths[0], 3 * self.scale**2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Protected [B,C,H,W] float -> face [B,3,112,112] in [0,1]."""
        x = self.inp(x.float())
        if x.shape[-1] != self.res or x.shape[-2] != self.res:
            x = F.interpolate(x, size=(self.res, self.res), mode="bilinear", align_corners=False)
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips[:-1])):
            x = dec(torch.cat([up(x), skip], dim=1))
        return torch.sigmoid(F.pixel_shuffle(self.head(x), self.scale))
