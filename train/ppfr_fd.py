"""PPFR-FD (Wang et al., AAAI'22; docs/methods.md §0): gray BDCT, 36 zigzag channels, drop DC,
keyed Shuffle1, self-normalise, channel mix, random Shuffle2, self-normalise -> 34x14x14.

The server undoes Shuffle2 inside the recognizer graph: by sorting channels by energy (`EnergySort`, the
paper's way), or with `route: true` by a learned `ChainRouter` that puts each channel back in its place.
"""

import hashlib
import hmac
import math

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
        route: bool = False,
        router_reader: int = 0,
        router_layers: int = 2,
        router_sinkhorn: int = 10,
    ):
        super().__init__(image_size)
        self.frontend = FrequencyFrontEnd("gray", 1)
        self.route = bool(route)
        # server side only: ChainRouter's per-map reader, attention layers and Sinkhorn rounds
        self.router = {"reader": router_reader, "layers": router_layers, "sinkhorn": router_sinkhorn}
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
            "route": self.route,
            "shuffle1_kdf": "fisher-yates over HMAC-SHA256(key, 'ppfr-fd/shuffle1' || ctr32)",
            "key_id": hashlib.sha256(self.key_bytes).hexdigest()[:16],
        }

    def key_material(self) -> bytes:
        return self.key_bytes + bytes(self.keep.to(torch.int64).tolist())

    def extra_loss(self):
        return self.weighting.penalty() if self.analysis else None

    def server_adapter(self):
        if self.analysis:
            return nn.Identity()
        return ChainRouter(self.mixed_channels, **self.router) if self.route else EnergySort()

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


class ChainRouter(nn.Module):
    """Server side, `route: true`: puts the received channels back in chain order M_0..M_33, undoing
    Shuffle2. After self-normalisation the energies of the mixed channels are too alike for a sort (the
    energy sort puts the same channel in the same place for about 40% of faces). Two things give a
    channel away: its spatial pattern (each is a mix of two DCT frequencies of a face), and its neighbours,
    since M_j and M_{j+1} share E_{j+1} and so correlate. A small CNN reads each channel's 14x14 map, two
    attention layers over the channels (biased by their correlation) compare them, and Sinkhorn turns the
    logits [received, chain position] into a soft permutation: the graph stays differentiable and
    exportable (matmuls, logsumexp). Trained with `aux_loss`: cross-entropy against the draw."""

    def __init__(
        self,
        channels: int,
        size: int = 14,
        dim: int = 128,
        heads: int = 4,
        sinkhorn: int = 10,
        reader: int = 0,
        layers: int = 2,
    ):
        """reader: 0, the per-map CNN trained with the router (two 32-wide convolutions); N > 0, a lean one
        (one stride-2 convolution N wide, a third of the router's time), trained on its own afterwards
        (`ppfr-train slim --router-reader N`; docs/results.md, "The lean router"). layers: attention
        layers; sinkhorn: rounds (at batch 1 each layer or round is op overhead, not arithmetic)."""
        super().__init__()
        self.sinkhorn = sinkhorn
        half = (size + 1) // 2
        if reader:
            convs = [nn.Conv2d(1, reader, 3, stride=2, padding=1), nn.ReLU()]
        else:
            reader = 32
            convs = [
                nn.Conv2d(1, 32, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(32, 32, 3, stride=2, padding=1),
                nn.ReLU(),
            ]
        self.read = nn.Sequential(*convs, nn.Flatten(), nn.Linear(reader * half * half, dim))
        self.compare = nn.ModuleList([CorrelationAttention(dim, heads) for _ in range(layers)])
        self.classify = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, channels))
        self.logits = None  # the last forward's, for aux_loss

    @staticmethod
    def correlation(x: torch.Tensor) -> torch.Tensor:
        """[B, C, C]: the correlation of every two channels' maps."""
        flat = x.float().flatten(2)
        flat = flat - flat.mean(2, keepdim=True)
        flat = flat / (flat.norm(dim=2, keepdim=True) + 1e-6)
        return flat @ flat.transpose(1, 2)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, dim]: each channel's map read on its own (so a channel permutation permutes them)."""
        b, c, h, w = x.shape
        return self.read(x.float().reshape(b * c, 1, h, w)).reshape(b, c, -1)

    def chain_logits(self, tokens: torch.Tensor, corr: torch.Tensor) -> torch.Tensor:
        """[B, received, chain position] from the channels' tokens and correlations."""
        for layer in self.compare:
            tokens = layer(tokens, corr)
        return self.classify(tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.logits = self.chain_logits(self.tokens(x), self.correlation(x))
        log_p = self.logits
        for _ in range(self.sinkhorn):  # rows and columns of a permutation each sum to one
            log_p = log_p - log_p.logsumexp(2, keepdim=True)
            log_p = log_p - log_p.logsumexp(1, keepdim=True)
        return torch.einsum("bkj,bkhw->bjhw", log_p.exp().to(x.dtype), x)

    def place_known(self, x: torch.Tensor, rand: dict) -> torch.Tensor:
        """x in chain order by the permutation the client drew (no classifier): what the router learns."""
        return gather_channels(x, torch.argsort(rand["shuffle2"].to(x.device), dim=1))

    def aux_loss(self, rand: dict) -> torch.Tensor:
        target = rand["shuffle2"].to(self.logits.device)  # received channel k holds M_{shuffle2[k]}
        return F.cross_entropy(self.logits.reshape(-1, self.logits.shape[2]), target.reshape(-1))


class CorrelationAttention(nn.Module):
    """Pre-norm self-attention over channels (plus MLP); each head adds its own multiple of the channels'
    correlation to the attention logits, so a channel can look at the ones it correlates with."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.corr_scale = nn.Parameter(torch.full((heads,), 3.0))
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))

    def forward(self, t: torch.Tensor, corr: torch.Tensor) -> torch.Tensor:
        b, c, d = t.shape
        q, k, v = self.qkv(self.norm1(t)).reshape(b, c, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        logits = (
            q @ k.transpose(2, 3) / math.sqrt(d // self.heads)
            + self.corr_scale[:, None, None] * corr[:, None]
        )
        t = t + self.out((logits.softmax(3) @ v).transpose(1, 2).reshape(b, c, d))
        return t + self.mlp(self.norm2(t))
