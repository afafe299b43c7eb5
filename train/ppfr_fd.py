"""PPFR-FD (Wang et al., AAAI'22; docs/methods.md §0): gray BDCT, 36 zigzag channels, drop DC,
keyed Shuffle1, self-normalise, channel mix, random Shuffle2, self-normalise -> 34x14x14.

The server undoes Shuffle2 by sorting channels by energy (`EnergySort`, part of the recognizer graph).
"""

import hashlib
import hmac

import torch
import torch.nn.functional as F
from torch import nn

from .frequency import FrequencyFrontEnd, zigzag_order
from .protection import PERMUTATION, ProtectionMethod, RandomInput, gather_channels

SHUFFLE1_LABEL = b"ppfr-fd/shuffle1"


def keyed_permutation(key: bytes, n: int, label: bytes = SHUFFLE1_LABEL) -> list[int]:
    """The KDF behind Shuffle1, stated so any implementation can reproduce it.

    A byte stream HMAC-SHA256(key, label || counter_be32) for counter = 0, 1, ... drives a
    Fisher-Yates shuffle of range(n) (i from n-1 down to 1, swap with j uniform on [0, i]); each j
    takes the next big-endian 32-bit word w and is accepted when w < floor(2^32 / (i+1)) * (i+1)
    (rejection sampling: no modulo bias), j = w mod (i+1).
    """
    if not key:
        raise ValueError("PPFR-FD needs a non-empty key for Shuffle1")

    def words():
        counter = 0
        while True:
            block = hmac.new(key, label + counter.to_bytes(4, "big"), hashlib.sha256).digest()
            for off in range(0, len(block), 4):
                yield int.from_bytes(block[off : off + 4], "big")
            counter += 1

    stream = words()
    perm = list(range(n))
    for i in range(n - 1, 0, -1):
        m = i + 1
        limit = (2**32 // m) * m
        w = next(stream)
        while w >= limit:
            w = next(stream)
        j = w % m
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def self_normalise(x: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """(E - mu) / (sigma + eps) with mu, sigma taken across channels at each spatial position.

    eps = 1 (one grey level of a 0..255 image): in a flat block every AC coefficient is rounding
    noise (sigma ~ 1e-7), and a tiny eps would blow that noise up to O(1) values that differ between
    runtimes (ORT vs PyTorch) and carry no face information anyway.
    """
    mu = x.mean(dim=1, keepdim=True)
    sigma = ((x - mu) ** 2).mean(dim=1, keepdim=True).sqrt()
    return (x - mu) / (sigma + eps)


class ChannelWeighting(nn.Module):
    """The paper's analysis network front: a_i = sigmoid(x_i) per channel and the energy penalty
    L_pri = sum_i ReLU(a_i - gamma) * p_i, p_i = mean |coefficient| of channel i (paper eq. 1).

    a_i starts at sigmoid(init_logit) ~ 0.99 ("a_i = 1 at start"; exactly 1 would have zero gradient).
    p_i is measured on the current batch and detached: it weighs the penalty, it is not trained.
    """

    def __init__(self, channels: int, gamma: float = 0.3, lam: float = 1.0, init_logit: float = 4.6):
        super().__init__()
        self.logits = nn.Parameter(torch.full((channels,), init_logit))
        self.gamma, self.lam = gamma, lam
        self._energy = None

    def weights(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._energy = x.detach().abs().mean(dim=(0, 2, 3))
        return x * self.weights()[None, :, None, None]

    def penalty(self) -> torch.Tensor:
        if self._energy is None:
            return self.logits.new_zeros(())
        return self.lam * (F.relu(self.weights() - self.gamma) * self._energy).sum()


class PPFRFD(ProtectionMethod):
    name = "ppfr_fd"

    def __init__(
        self,
        key: str = "ppfr-demo-key",
        num_channels: int = 36,
        channels: list[int] | None = None,
        eps: float = 1.0,
        analysis: bool = False,
        gamma: float = 0.3,
        lam: float = 1.0,
        image_size: int = 112,
    ):
        super().__init__(image_size)
        self.frontend = FrequencyFrontEnd("gray", 1)
        chosen = list(channels) if channels is not None else zigzag_order()[:num_channels]
        self.selected = chosen
        self.eps = eps
        self.analysis = analysis
        self.key_bytes = key.encode() if isinstance(key, str) else bytes(key)
        if analysis:
            # Analysis network (paper Fig. 2a): every selected channel, DC included, weighted by a_i.
            self.register_buffer("keep", torch.tensor(chosen), persistent=False)
            self.weighting = ChannelWeighting(len(chosen), gamma, lam)
        else:
            kept = [k for k in chosen if k != 0]  # drop DC
            perm1 = keyed_permutation(self.key_bytes, len(kept))
            # Shuffle1 folded into the channel pick: one constant index, baked into the graph.
            self.register_buffer("keep", torch.tensor([kept[i] for i in perm1]))

    @property
    def mixed_channels(self) -> int:
        return len(self.keep) - 1

    def output_shape(self):
        s = self.frontend.spatial(self.image_size)
        c = len(self.keep) if self.analysis else self.mixed_channels
        return (c, s, s)

    def random_inputs(self):
        if self.analysis:
            return []
        n = self.mixed_channels
        return [RandomInput("shuffle2", (n,), "int64", PERMUTATION, {"n": n})]

    def params(self):
        return {
            "color": "gray",
            "upsample": 1,
            "channels": self.selected,
            "drop_dc": True,
            "analysis": self.analysis,
            "shuffle1_kdf": "fisher-yates over HMAC-SHA256(key, 'ppfr-fd/shuffle1' || ctr32)",
            "key_id": hashlib.sha256(self.key_bytes).hexdigest()[:16],
        }

    def key_material(self) -> bytes:
        return self.key_bytes + bytes(self.keep.to(torch.int64).tolist())

    def extra_loss(self):
        return self.weighting.penalty() if self.analysis else None

    def server_adapter(self):
        return nn.Identity() if self.analysis else EnergySort()

    def forward(self, image: torch.Tensor, shuffle2: torch.Tensor | None = None) -> torch.Tensor:
        x = self.frontend(image)[:, self.keep]
        if self.analysis:
            return self.weighting(x)
        x = self_normalise(x, self.eps)
        x = 0.5 * (x[:, :-1] + x[:, 1:])  # channel mix M_j = (E_j + E_{j+1}) / 2
        x = gather_channels(x, shuffle2)
        return self_normalise(x, self.eps)


class EnergySort(nn.Module):
    """Server side: order channels by energy (mean |x|, descending), undoing Shuffle2."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        energy = x.abs().mean(dim=(2, 3))
        order = torch.topk(energy, k=x.shape[1], dim=1).indices
        return gather_channels(x, order)
