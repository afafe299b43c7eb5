"""Margin heads (insightface / TFace): ArcFace cos(theta + m) and CosFace cos(theta) - m, logits x s."""

import math

import torch
import torch.nn.functional as F
from torch import nn


class MarginHead(nn.Module):
    """Normalised classifier W [C, D]; subclasses put the margin on the target logit."""

    def __init__(self, embedding_size: int, num_classes: int, s: float = 64.0, m: float = 0.5):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_classes, embedding_size) * 0.01)
        self.s, self.m = float(s), float(m)

    def cosine(self, features: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(features, dim=1), F.normalize(self.weight, dim=1)).clamp(-1, 1)

    def margin(self, target_cos: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = self.cosine(features.float())
        target = cos.gather(1, labels[:, None])
        logits = cos.scatter(1, labels[:, None], self.margin(target))
        return logits * self.s


class ArcFace(MarginHead):
    def margin(self, c):
        # cos(theta + m) while theta + m < pi; beyond, the insightface fallback keeps it monotonic.
        sin = (1.0 - c * c).clamp_min(0).sqrt()
        shifted = c * math.cos(self.m) - sin * math.sin(self.m)
        return torch.where(c > math.cos(math.pi - self.m), shifted, c - self.m * math.sin(self.m))


class CosFace(MarginHead):
    def margin(self, c):
        return c - self.m


HEADS = {"arcface": ArcFace, "cosface": CosFace}


def build_head(type: str, embedding_size: int, num_classes: int, s: float = 64.0, m: float | None = None):
    if type not in HEADS:
        raise ValueError(f"unknown head {type!r}; choose one of {sorted(HEADS)}")
    if m is None:
        m = 0.5 if type == "arcface" else 0.35
    return HEADS[type](embedding_size, num_classes, s, m)
