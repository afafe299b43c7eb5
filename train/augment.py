"""Photometric and geometric jitter of aligned uint8 faces, applied before protection.

The student sees the protected view and the online teacher the clean view of the same jittered face,
so every step brings new targets (a cache of teacher embeddings would only know the original and its
flip). Small similarity jitter stands in for alignment noise from a real detector; brightness and
contrast for cameras and light. Deterministic given the torch generator, so resume replays batches.
"""

import math

import torch
import torch.nn.functional as F

DEFAULT = {"scale": 0.0, "rotate": 0.0, "shift": 0.0, "brightness": 0.0, "contrast": 0.0, "gray": 0.0}


def augment(images: torch.Tensor, gen: torch.Generator, cfg: dict) -> torch.Tensor:
    """uint8 NHWC -> uint8 NHWC. cfg: scale (fraction), rotate (degrees), shift (pixels), brightness
    and contrast (fractions), gray (probability); 0 turns a part off."""
    c = DEFAULT | (cfg or {})
    if not any(c.values()):
        return images
    n, h, w, _ = images.shape

    def u(lo=-1.0, hi=1.0):
        return lo + (hi - lo) * torch.rand(n, generator=gen)

    x = images.permute(0, 3, 1, 2).float()
    if c["scale"] or c["rotate"] or c["shift"]:
        s = 1.0 + c["scale"] * u()
        a = c["rotate"] * math.pi / 180 * u()
        tx, ty = c["shift"] * u() * 2 / w, c["shift"] * u() * 2 / h
        theta = torch.stack(
            [
                torch.stack([torch.cos(a) / s, -torch.sin(a) / s, tx], 1),
                torch.stack([torch.sin(a) / s, torch.cos(a) / s, ty], 1),
            ],
            1,
        )
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if c["contrast"]:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * (1 + c["contrast"] * u())[:, None, None, None] + mean
    if c["brightness"]:
        x = x * (1 + c["brightness"] * u())[:, None, None, None]
    if c["gray"]:
        g = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        pick = (torch.rand(n, generator=gen) < c["gray"])[:, None, None, None]
        x = torch.where(pick, g.expand_as(x), x)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
