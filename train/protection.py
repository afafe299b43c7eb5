"""The one interface every protection method implements.

A method is a torch module `forward(image_uint8_nhwc, **random_inputs) -> protected`. It declares the
random inputs it needs as `RandomInput`s and never draws randomness inside forward: training draws
them with torch (`sample_random`), the edge draws them from the OS CSPRNG using the same declaration
(it travels in the bundle manifest). That keeps the exported graph deterministic and testable.
"""

from dataclasses import dataclass, field

import torch
from torch import nn

# Distributions a random input may declare; the edge implements exactly these.
PERMUTATION = "permutation"  # int64 [n]: a uniformly random permutation of 0..n-1
UNIFORM_INT = "uniform_int"  # int64 scalar per image: uniform on [low, high)
LAPLACE = "laplace"  # float32: i.i.d. Laplace(loc=0, scale=1)


@dataclass(frozen=True)
class RandomInput:
    name: str
    shape: tuple[int, ...]  # per image, without the batch dimension
    dtype: str  # "int64" or "float32"
    distribution: str
    params: dict = field(default_factory=dict)

    def sample(self, batch: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """Training-time draw with torch (the edge uses the OS CSPRNG instead)."""
        if self.distribution == PERMUTATION:
            n = self.shape[0]
            keys = torch.rand(batch, n, generator=generator, device=device)
            return keys.argsort(dim=1)
        if self.distribution == UNIFORM_INT:
            low, high = self.params["low"], self.params["high"]
            return torch.randint(low, high, (batch, *self.shape), generator=generator, device=device)
        if self.distribution == LAPLACE:
            # Inverse CDF of Laplace(0, 1) from U(-1/2, 1/2); clamp keeps log finite.
            u = torch.rand(batch, *self.shape, generator=generator, device=device) - 0.5
            u = u.clamp(-0.5 + 1e-7, 0.5 - 1e-7)
            return -torch.sign(u) * torch.log1p(-2 * u.abs())
        raise ValueError(f"unknown distribution {self.distribution!r}")


class ProtectionMethod(nn.Module):
    """Base class: subclasses set `name`, build their layers and implement `forward`."""

    name = "base"

    def __init__(self, image_size: int = 112):
        super().__init__()
        self.image_size = image_size

    # --- what the method declares -------------------------------------------------------------
    def random_inputs(self) -> list[RandomInput]:
        return []

    def output_shape(self) -> tuple[int, int, int]:
        """Protected tensor shape per face (C, H, W)."""
        raise NotImplementedError

    def params(self) -> dict:
        """Plain-JSON description of the method's constants (goes into the bundle manifest)."""
        return {}

    def key_material(self) -> bytes:
        """Secret-ish deployment material folded into the bundle's frontend_id."""
        return b""

    # --- what training uses ---------------------------------------------------------------------
    def sample_random(
        self, batch: int, generator: torch.Generator | None = None, labels: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        device = self.device()
        return {r.name: r.sample(batch, generator, device) for r in self.random_inputs()}

    def calibrate(self, images: torch.Tensor) -> None:
        """Measure data statistics the method needs (DCTDP clip bounds) on uint8 training faces."""

    def server_adapter(self) -> nn.Module:
        """Server-side step that belongs to the method (runs inside the recognizer graph). One with an
        `aux_loss(random_inputs)` is trained with it too."""
        return nn.Identity()

    def server_shape(self) -> tuple[int, int, int]:
        """What the server adapter hands the backbone (the protected tensor itself by default)."""
        return self.output_shape()

    def extra_loss(self) -> torch.Tensor | None:
        """Method-specific training loss, added to the recognition loss (None when there is none)."""
        return None

    # --- helpers --------------------------------------------------------------------------------
    def payload_bytes(self, dtype: str = "float16") -> int:
        itemsize = {"float16": 2, "float32": 4}[dtype]
        c, h, w = self.output_shape()
        return c * h * w * itemsize

    def device(self) -> torch.device:
        for t in list(self.parameters()) + list(self.buffers()):
            return t.device
        return torch.device("cpu")


def gather_channels(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Per-image channel selection: x [B,C,H,W], index [B,K] -> [B,K,H,W] (ONNX GatherElements)."""
    b, _, h, w = x.shape
    return x.gather(1, index[:, :, None, None].expand(b, index.shape[1], h, w))
