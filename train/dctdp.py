"""DCTDP (Ji et al., ECCV'22; docs/methods.md §3): YCbCr BDCT, drop DC of each plane (189 channels),
clip each coefficient to a bound measured on training data, add Laplace noise with learnable
per-coefficient privacy budgets.

Budget: eps_i = softmax(rho)_i * epsilon * N over all N coefficients, so sum_i eps_i = epsilon * N
(the configured total; `epsilon` is the mean per-coefficient budget as in the paper's tables).
Scale: b_i = Delta_c / eps_i, where Delta_c = 2 * B_c is the sensitivity of a coefficient of channel c
clipped to [-B_c, B_c] and B_c is a quantile of |coefficient| on training faces (`calibrate`).

Deliberate deviations from the reference code: noise is a per-image input (never shared by a batch),
rho / clip bounds are saved with the model, sensitivity is a measured statistic instead of 1, and the
learnable mean shift (`locs`) is off by default because it breaks the zero-mean privacy argument.
"""

import torch
from torch import nn

from .frequency import FrequencyFrontEnd
from .protection import LAPLACE, ProtectionMethod, RandomInput


class DCTDP(ProtectionMethod):
    name = "dctdp"

    def __init__(
        self,
        epsilon: float = 4.0,
        upsample: int = 1,
        clip_quantile: float = 0.99,
        learn_mean: bool = False,
        image_size: int = 112,
    ):
        super().__init__(image_size)
        self.frontend = FrequencyFrontEnd("ycbcr", upsample)
        self.epsilon, self.upsample, self.clip_quantile = float(epsilon), upsample, clip_quantile
        s = self.frontend.spatial(image_size)
        self.register_buffer("ac", torch.tensor([p * 64 + k for p in range(3) for k in range(1, 64)]))
        self.rhos = nn.Parameter(torch.zeros(189, s, s))
        self.locs = nn.Parameter(torch.zeros(189, s, s)) if learn_mean else None
        # Clip bound per channel; NaN until calibrate() has measured it on training faces.
        self.register_buffer("clip_bound", torch.full((189,), float("nan")))

    def output_shape(self):
        return tuple(self.rhos.shape)

    def random_inputs(self):
        return [RandomInput("noise", self.output_shape(), "float32", LAPLACE, {"loc": 0.0, "scale": 1.0})]

    def params(self):
        return {
            "color": "ycbcr",
            "upsample": self.upsample,
            "epsilon_mean": self.epsilon,
            "epsilon_total": self.total_epsilon,
            "clip_quantile": self.clip_quantile,
            "sensitivity": "2 * clip_bound per channel (L1 sensitivity of a clipped coefficient)",
            "learn_mean": self.locs is not None,
        }

    @property
    def num_coefficients(self) -> int:
        return self.rhos.numel()

    @property
    def total_epsilon(self) -> float:
        return self.epsilon * self.num_coefficients

    def coefficients(self, image: torch.Tensor) -> torch.Tensor:
        """AC coefficients before clipping and noise: [B, 189, S, S]."""
        return self.frontend(image)[:, self.ac]

    @torch.no_grad()
    def calibrate(self, images: torch.Tensor) -> None:
        """Measure the clip bound B_c = quantile(|coef|) of each channel on training faces."""
        coef = self.coefficients(images.to(self.device())).abs()
        per_channel = coef.transpose(0, 1).reshape(189, -1)
        self.clip_bound.copy_(torch.quantile(per_channel, self.clip_quantile, dim=1))

    def budgets(self) -> torch.Tensor:
        """Per-coefficient privacy budget eps_i; sums to epsilon * N."""
        return torch.softmax(self.rhos.flatten(), dim=0).view_as(self.rhos) * self.total_epsilon

    def sensitivity(self) -> torch.Tensor:
        return 2.0 * self.clip_bound

    def noise_scale(self) -> torch.Tensor:
        """Laplace scale b_i = Delta / eps_i, shape [189, S, S]."""
        return self.sensitivity()[:, None, None] / self.budgets()

    def forward(self, image: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        # The check is data-dependent, so it runs eagerly only; export checks calibration up front.
        if not torch.compiler.is_exporting() and torch.isnan(self.clip_bound).any():
            raise RuntimeError("DCTDP clip bounds are not calibrated: call calibrate(training_faces) first")
        bound = self.clip_bound[None, :, None, None]
        x = torch.maximum(torch.minimum(self.coefficients(image), bound), -bound)
        x = x + self.noise_scale() * noise
        return x if self.locs is None else x + self.locs
