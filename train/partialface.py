"""PartialFace (Mi et al., ICCV'23; docs/methods.md §4): YCbCr BDCT, prune the 10 lowest frequencies
of each plane, send one random subset ("rank") of 9 of the remaining 54, randomly permuted -> 27 ch.

Per image the client draws a subset index (of 6) and a permutation index (of 3); both are inputs.
"""

import itertools

import torch

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

    def __init__(self, upsample: int = 1, image_size: int = 112):
        super().__init__(image_size)
        self.frontend = FrequencyFrontEnd("ycbcr", upsample)
        self.upsample = upsample
        self.register_buffer("table", torch.tensor(channel_table()).reshape(len(SUBSETS) * 3, 27))
        self.register_buffer("combos", torch.tensor(COMBOS))

    def output_shape(self):
        s = self.frontend.spatial(self.image_size)
        return (27, s, s)

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
