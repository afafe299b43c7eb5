"""White-box variants: the attacker knows the method and its key (the training checkpoint), not the
client's per-query random draw.

- `TorchFrontend`: the method's torch module followed by its server adapter (PPFR-FD: the chain
  router that puts the per-query Shuffle2 back, or the paper's energy sort), so the inversion network
  sees a canonical channel order.
- `stem_images`: where the recognizer has a pixel stem (train/student.py), the face image it computes
  from each protected query on the way to its first layers: the server's model as a ready inversion.
- `rekeyed`: the same method with a different deployment key (PPFR-FD key renewal).
"""

import secrets
from pathlib import Path

import numpy as np
import torch


class TorchFrontend:
    def __init__(self, method, adapter=None):
        self.method = method.eval()
        self.adapter = adapter.eval() if adapter is not None else None

    @torch.no_grad()
    def protect(self, faces: np.ndarray, rng: np.random.Generator, batch: int = 64) -> np.ndarray:
        out = []
        for i in range(0, len(faces), batch):
            x = torch.from_numpy(np.ascontiguousarray(faces[i : i + batch]))
            gen = torch.Generator().manual_seed(int(rng.integers(0, 2**63 - 1)))
            p = self.method(x, **self.method.sample_random(len(x), gen))
            out.append(self.adapter(p) if self.adapter is not None else p)
        return torch.cat(out).float().numpy()


def checkpoint_path(bundle, runs_dir="runs") -> Path:
    run = bundle.manifest.training.run_name or bundle.name
    return Path(runs_dir) / run / "checkpoint.pt"


def whitebox_frontend(bundle, runs_dir="runs") -> TorchFrontend:
    from ppfr.train.model import load_checkpoint

    _, method, recognizer, _ = load_checkpoint(checkpoint_path(bundle, runs_dir))
    if method.name != bundle.method:
        raise ValueError(f"checkpoint method {method.name!r} does not match bundle method {bundle.method!r}")
    return TorchFrontend(method, recognizer.adapter)


@torch.no_grad()
def stem_images(bundle, faces: np.ndarray, rng: np.random.Generator, runs_dir="runs"):
    """(protected queries as the recognizer sees them, its pixel stem's uint8 NHWC images), or None when
    the bundle's recognizer has no pixel stem."""
    from ppfr.train.model import load_checkpoint
    from ppfr.train.student import PixelStem

    _, method, recognizer, _ = load_checkpoint(checkpoint_path(bundle, runs_dir))
    stem = next((m for m in recognizer.modules() if isinstance(m, PixelStem)), None)
    if stem is None:
        return None
    seen = TorchFrontend(method, recognizer.adapter).protect(faces, rng)
    stem.eval()
    images = [stem(torch.from_numpy(seen[i : i + 64])) for i in range(0, len(seen), 64)]
    out = torch.cat(images).clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    return seen, out.numpy()


def rekeyed(bundle, key: str | None = None) -> tuple[TorchFrontend, str]:
    """PPFR-FD with the bundle's constants and a new random key (checked to differ from the bundle's)."""
    from ppfr.train.methods import build_method

    params = bundle.params
    key = key or f"renewed-{secrets.token_hex(8)}"
    channels = [int(c) for c in params["channels"]] if "channels" in params else None
    extra = {"eps": float(params["eps"])} if "eps" in params else {}
    method = build_method(bundle.method, key=key, channels=channels, **extra)
    from ppfr.train.keys import key_id

    new_id = key_id(method.key_bytes)  # the manifest's key id (train/keys.py)
    if new_id == params.get("key_id"):
        raise ValueError("the renewed key equals the bundle's key")
    return TorchFrontend(method), new_id or ""
