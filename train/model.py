"""The trained system as two modules, and the checkpoint that holds both.

- the protection method (client side): uint8 face + random inputs -> protected tensor;
- the `Recognizer` (server side): protected tensor -> L2-normalised embedding, with the method's
  server adapter (PPFR-FD: the chain router or the energy sort) inside, so the cloud runs one graph
  per bundle.

Config layout (YAML, see configs/): {name, method: {name, ...params}, model: {backbone, ...}, data,
train, eval}. A checkpoint is a dict {config, method, recognizer, head, optimizer, state}, each
module entry a state_dict, so every trained parameter (DCTDP budgets included) travels together.
"""

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .methods import build_method
from .protection import ProtectionMethod


class Recognizer(nn.Module):
    def __init__(self, adapter: nn.Module, backbone: nn.Module):
        super().__init__()
        self.adapter = adapter
        self.backbone = backbone

    def forward(self, protected: torch.Tensor) -> torch.Tensor:
        """Unnormalised embedding features (training heads normalise themselves)."""
        return self.backbone(self.adapter(protected))

    def forward_with_entry(self, protected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(activation where a pretrained trunk is entered, features): backbones with a stem (dlib)."""
        return self.backbone.forward_with_entry(self.adapter(protected))

    @torch.no_grad()
    def calibrate(self, method, images: torch.Tensor, seed: int = 0, chunk: int = 64) -> None:
        """Data-dependent initialisation of the backbone (if it has one) from training faces, protected in
        chunks (the same draws on every pass). An adapter that learns the layout (PartialFace's router) is
        untrained here, so the tensors are placed by the layout the client drew."""
        if not hasattr(self.backbone, "calibrate"):
            return

        known = getattr(self.adapter, "place_known", None)

        def batches():
            gen = torch.Generator(device=images.device).manual_seed(seed)
            for i in range(0, len(images), chunk):
                part = images[i : i + chunk]
                rand = method.sample_random(len(part), gen)
                x = method(part, **rand)
                yield (known(x, rand) if known else self.adapter(x)).float(), part

        self.backbone.calibrate(batches)

    def embed(self, protected: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.forward(protected), dim=1)


def build_model(config: dict, pretrained: bool = True) -> tuple[ProtectionMethod, Recognizer]:
    """Method and recognizer from a config dict (untrained, but with pretrained layers where the backbone
    has them; pretrained=False skips loading those when a checkpoint will overwrite them anyway)."""
    from .backbones import build_backbone

    method_cfg = dict(config["method"])
    method = build_method(method_cfg.pop("name"), **method_cfg)
    c, h, _ = method.server_shape()
    backbone = build_backbone(in_channels=c, in_size=h, pretrained=pretrained, **config.get("model", {}))
    return method, Recognizer(method.server_adapter(), backbone)


def save_checkpoint(path, config, method, recognizer, head=None, optimizer=None, state=None) -> None:
    """A method under a deployment key is written sealed (keys.seal): its key id, never the key."""
    from .keys import seal

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config, method_state = seal(config, method)
    ckpt = {
        "config": config,
        "method": method_state,
        "recognizer": recognizer.state_dict(),
        "head": head.state_dict() if head is not None else None,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "state": state or {},
    }
    tmp = path.with_suffix(".tmp")
    torch.save(ckpt, tmp)
    tmp.replace(path)  # atomic: a crash mid-save never leaves a torn checkpoint


def load_checkpoint(path, map_location="cpu") -> tuple[dict, ProtectionMethod, Recognizer, dict]:
    """(config, method, recognizer, raw checkpoint dict) with every trained parameter restored."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; train one first (make train)")
    ckpt = torch.load(path, map_location=map_location, weights_only=False)
    release = bool(ckpt.get("release"))  # frozen pretrained layers left out: they come from setup
    method, recognizer = build_model(ckpt["config"], pretrained=release)
    method.load_state_dict(ckpt["method"])
    missing, unexpected = recognizer.load_state_dict(ckpt["recognizer"], strict=not release)
    if unexpected or any(FROZEN_TRUNK not in k for k in missing):
        raise RuntimeError(
            f"{path} does not fit its config: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    return ckpt["config"], method, recognizer, ckpt


FROZEN_TRUNK = "backbone.trunk."


def save_release(checkpoint, out) -> Path:
    """The small file a project ships as its pretrained default: config, method state and the trained
    recognizer parameters in float16 (BN statistics stay float32: raw DCT variances overflow float16).
    A trunk that training kept frozen (train.trunk_lr_mult 0) is left out; loading takes it from the
    registry package that `make setup` fetched. No optimizer state, no training history."""
    ck = torch.load(checkpoint, map_location="cpu", weights_only=False)
    tc = ck["config"].get("train", {})
    steps = ck.get("state", {}).get("step", 0)
    frozen = tc.get("trunk_lr_mult", 1.0) == 0 or tc.get("trunk_frozen_steps", 0) >= steps
    params = {n for n, _ in build_model(ck["config"], pretrained=False)[1].named_parameters()}
    rec = {}
    for k, v in ck["recognizer"].items():
        if frozen and k.startswith(FROZEN_TRUNK):
            continue
        rec[k] = v.half() if k in params and v.is_floating_point() else v
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: ck["state"][k] for k in ("step", "train_seconds", "total_steps") if k in ck.get("state", {})}
    torch.save(
        {"config": ck["config"], "method": ck["method"], "recognizer": rec, "state": state, "release": True},
        out,
    )
    return out
