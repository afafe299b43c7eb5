"""The unprotected baselines every result is compared with: raw pixels and the plain block DCT."""

import torch

from .frequency import FrequencyFrontEnd, to_float_nchw
from .protection import ProtectionMethod


class RGB(ProtectionMethod):
    """No protection: the face itself scaled to [-1, 1]. For comparison only, never a deployment."""

    name = "rgb"

    def output_shape(self):
        return (3, self.image_size, self.image_size)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return to_float_nchw(image) / 127.5 - 1.0


class BDCT(ProtectionMethod):
    """Block DCT with every channel kept (FR-FD): a change of basis, no protection at all."""

    name = "bdct"

    def __init__(self, color: str = "ycbcr", upsample: int = 1, image_size: int = 112):
        super().__init__(image_size)
        self.frontend = FrequencyFrontEnd(color, upsample)
        self.color, self.upsample = color, upsample

    def output_shape(self):
        s = self.frontend.spatial(self.image_size)
        return (self.frontend.planes * 64, s, s)

    def params(self):
        return {"color": self.color, "upsample": self.upsample}

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.frontend(image)
