"""PartialFace (Mi et al., ICCV'23; docs/methods.md §4): YCbCr BDCT, prune the 10 lowest frequencies
of each plane, send one random subset ("rank") of 9 of the remaining 54, randomly permuted -> 27 ch.

Per image the client draws a subset index (of 6) and a permutation index (of 3); both are inputs.

`route: true` gives the server a `LayoutRouter`: the query does not say which of the 18 layouts it has,
so the router reads it off the channel energies and puts every frequency in its own channel of a fixed
162-channel layout (zeros for the frequencies not sent). Without it the recognizer's first layer sees the
same channel carry a different frequency from one query to the next.
"""

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from .frequency import FrequencyFrontEnd
from .protection import UNIFORM_INT, ProtectionMethod, RandomInput, gather_channels

PRUNED = (0, 1, 2, 3, 8, 9, 10, 16, 17, 24)  # all (u, v) with u + v <= 3
KEPT = tuple(sorted(set(range(64)) - set(PRUNED)))  # 54 per plane, ascending k (not set order)
SUBSETS = (
    (1, 24, 28, 12, 32, 45, 47, 40, 52),
    (35, 39, 44, 42, 10, 4, 37, 31, 53),
    (0, 50, 19, 6, 22, 51, 49, 23, 21),
    (38, 8, 25, 13, 17, 30, 7, 33, 9),
    (26, 29, 16, 2, 43, 14, 5, 11, 48),
    (36, 41, 46, 34, 15, 27, 18, 20, 3),
)
PERMUTATIONS = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8),
    (7, 3, 0, 6, 5, 4, 1, 2, 8),
    (4, 8, 6, 0, 2, 5, 3, 7, 1),
)
COMBOS = tuple(itertools.combinations(range(6), 3))  # 20 lexicographic 3-of-6 combos, by label mod 20


def channel_table() -> list[list[list[int]]]:
    """table[subset][perm] = the 27 BDCT channels (plane*64 + k) sent, in wire order [Y9, Cb9, Cr9].

    Within each plane group, output position t takes the subset's element at position P[t].
    """
    return [
        [[plane * 64 + KEPT[SUBSETS[r][p[t]]] for plane in range(3) for t in range(9)] for p in PERMUTATIONS]
        for r in range(len(SUBSETS))
    ]


class PartialFace(ProtectionMethod):
    name = "partialface"

    def __init__(self, upsample: int = 1, image_size: int = 112, route: bool = False):
        super().__init__(image_size)
        self.frontend = FrequencyFrontEnd("ycbcr", upsample)
        self.upsample = upsample
        self.route = bool(route)
        self.register_buffer("table", torch.tensor(channel_table()).reshape(len(SUBSETS) * 3, 27))
        self.register_buffer("combos", torch.tensor(COMBOS))

    def output_shape(self):
        s = self.frontend.spatial(self.image_size)
        return (27, s, s)

    def server_adapter(self):
        return LayoutRouter(self.table) if self.route else nn.Identity()

    def server_shape(self):
        c, h, w = self.output_shape()
        return (len(LayoutRouter.canonical(self.table)), h, w) if self.route else (c, h, w)

    def random_inputs(self):
        return [
            RandomInput("subset", (), "int64", UNIFORM_INT, {"low": 0, "high": len(SUBSETS)}),
            RandomInput("permutation", (), "int64", UNIFORM_INT, {"low": 0, "high": len(PERMUTATIONS)}),
        ]

    def params(self):
        return {
            "color": "ycbcr",
            "upsample": self.upsample,
            "pruned": list(PRUNED),
            "subsets": [list(s) for s in SUBSETS],
            "permutations": [list(p) for p in PERMUTATIONS],
            "route": self.route,
        }

    def sample_random(self, batch, generator=None, labels=None):
        """Training draw: identity y may only use the 3 subsets of combo y mod 20 (reference)."""
        draws = super().sample_random(batch, generator)
        if labels is not None:
            pick = torch.randint(0, 3, (batch,), generator=generator, device=self.device())
            draws["subset"] = self.combos[labels.to(self.device()) % len(COMBOS), pick]
        return draws

    def forward(self, image: torch.Tensor, subset: torch.Tensor, permutation: torch.Tensor) -> torch.Tensor:
        index = self.table[subset * len(PERMUTATIONS) + permutation]
        return gather_channels(self.frontend(image), index)


class LayoutRouter(nn.Module):
    """Server side: [B, 27, S, S] in one of the 18 (subset, permutation) layouts -> [B, 162, S, S] in one
    fixed layout. A small classifier reads the layout off the per-channel log energies (frequencies differ
    in energy by orders of magnitude, so the energy profile says which frequency sits where); its
    probabilities weight the 18 fixed scatterings, so the graph stays differentiable and exportable
    (two einsums). Trained with `aux_loss`: cross-entropy against the layout the client drew."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        canon = self.canonical(table)
        where = {c: i for i, c in enumerate(canon)}
        k, c = table.shape
        scatter = torch.zeros(k, len(canon), c)
        for layout in range(k):
            for d in range(c):
                scatter[layout, where[int(table[layout, d])], d] = 1.0
        self.register_buffer("scatter", scatter)
        self.classify = nn.Sequential(nn.Linear(2 * c, 256), nn.ReLU(), nn.Linear(256, k))
        self.logits = None  # the last forward's, for aux_loss

    @staticmethod
    def canonical(table: torch.Tensor) -> list[int]:
        return sorted({int(v) for v in table.flatten()})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        energy = x.float().pow(2).mean((2, 3)).clamp_min(1e-8).log()
        profile = torch.cat([energy, energy - energy.mean(1, keepdim=True)], 1)  # absolute and relative
        self.logits = self.classify(profile)
        return self.place(x, self.logits.softmax(1))

    def place(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """The 18 scatterings of x into the fixed layout, weighted by weights [B, 18]."""
        mix = torch.einsum("bk,kmc->bmc", weights, self.scatter)
        return torch.einsum("bmc,bchw->bmhw", mix, x)

    @staticmethod
    def layout(rand: dict) -> torch.Tensor:
        return rand["subset"] * len(PERMUTATIONS) + rand["permutation"]

    def place_known(self, x: torch.Tensor, rand: dict) -> torch.Tensor:
        """x placed by the layout the client drew (no classifier): what the router learns to do."""
        return self.place(x, F.one_hot(self.layout(rand).to(x.device), len(self.scatter)).to(x.dtype))

    def aux_loss(self, rand: dict) -> torch.Tensor:
        return F.cross_entropy(self.logits, self.layout(rand).to(self.logits.device))
