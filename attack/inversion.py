"""Train the inversion U-Net (L1) on attacker faces and reconstruct victims from protected tensors.

`frontend` is anything with `protect(faces_uint8_nhwc, rng) -> float32 [N,C,H,W]`: the bundle's
frontend.onnx (what the server sees; energy-sorted when it shuffles channels per query) or the white-box
torch variant. Each training step protects a fresh batch, so the network sees new randomness for every
query, as a server collecting traffic would.
"""

import time

import numpy as np
import torch
from tqdm import tqdm

from .unet import UNet


def to_unit(faces: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [0, 1]."""
    return torch.from_numpy(faces).permute(0, 3, 1, 2).float().div_(255.0)


def train_inversion(frontend, faces: np.ndarray, cfg, seed: int = 0, desc: str = "inversion"):
    """Returns (trained U-Net in eval mode, info dict)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    probe = frontend.protect(faces[:2], rng)
    net = UNet(probe.shape[1], probe.shape[-1], cfg.widths, cfg.res)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(cfg.steps, 1))
    net.train()
    t0, losses = time.time(), []
    bar = tqdm(range(cfg.steps), desc=desc, leave=False)
    for _ in bar:
        idx = rng.integers(0, len(faces), cfg.batch)
        batch = faces[idx]
        if rng.random() < 0.5:  # flip in pixel space, before protection
            batch = np.ascontiguousarray(batch[:, :, ::-1])
        x = torch.from_numpy(frontend.protect(batch, rng))
        loss = (net(x) - to_unit(batch)).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(l1=f"{np.mean(losses[-20:]):.4f}")
    net.eval()
    info = {
        "steps": cfg.steps,
        "batch": cfg.batch,
        "widths": list(cfg.widths),
        "res": cfg.res,
        "params": sum(p.numel() for p in net.parameters()),
        "final_train_l1": float(np.mean(losses[-20:])) if losses else None,
        "train_seconds": round(time.time() - t0, 1),
    }
    return net, info


@torch.no_grad()
def reconstruct(net, protected: np.ndarray, batch: int = 64) -> np.ndarray:
    """Protected tensors -> uint8 RGB NHWC faces."""
    out = [net(torch.from_numpy(protected[i : i + batch])) for i in range(0, len(protected), batch)]
    faces = torch.cat(out).clamp(0, 1).mul(255).round().byte().permute(0, 2, 3, 1)
    return np.ascontiguousarray(faces.numpy())
