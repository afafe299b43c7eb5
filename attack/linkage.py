"""Linkage attack: a small CNN maps the protected tensor straight to a judge's embedding.

Trained on attacker faces (targets: the judge's embeddings of those faces) with cosine loss; on victims
its output is compared with the judge's embedding of another photo of the same person.
"""

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm


class EmbeddingRegressor(nn.Module):
    def __init__(self, in_channels: int, dim: int, width: int = 64, res: int = 28):
        super().__init__()
        self.res = res
        w = width

        def conv(cin, cout, stride):
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
            )

        self.net = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            conv(in_channels, w, 1),
            conv(w, w, 2),
            conv(w, 2 * w, 1),
            conv(2 * w, 2 * w, 2),
            conv(2 * w, 4 * w, 2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4 * w, dim),
        )

    def forward(self, x):
        x = x.float()
        if x.shape[-1] != self.res:
            x = F.interpolate(x, size=(self.res, self.res), mode="bilinear", align_corners=False)
        return F.normalize(self.net(x), dim=1)


def train_linkage(frontend, faces, targets, steps: int, batch: int, lr: float, seed: int = 0, desc="linkage"):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed + 1)
    probe = frontend.protect(faces[:2], rng)
    net = EmbeddingRegressor(probe.shape[1], targets.shape[1])
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1))
    t0, losses = time.time(), []
    net.train()
    bar = tqdm(range(steps), desc=desc, leave=False)
    tgt = torch.from_numpy(targets)
    for _ in bar:
        idx = rng.integers(0, len(faces), batch)
        x = torch.from_numpy(frontend.protect(faces[idx], rng))
        loss = (1 - (net(x) * tgt[idx]).sum(1)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(cos=f"{1 - np.mean(losses[-20:]):.3f}")
    net.eval()
    info = {"steps": steps, "final_train_cos": 1 - float(np.mean(losses[-20:])) if losses else None}
    info["train_seconds"] = round(time.time() - t0, 1)
    return net, info


@torch.no_grad()
def predict(net, protected: np.ndarray, batch: int = 128) -> np.ndarray:
    out = [net(torch.from_numpy(protected[i : i + batch])) for i in range(0, len(protected), batch)]
    return torch.cat(out).numpy().astype(np.float32)
