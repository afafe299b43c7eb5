"""Small real bundles for tests: a tiny MobileFaceNet per method, exported through the real exporter
(onnx.checker + ONNX Runtime vs PyTorch parity on real faces), untrained or briefly trained.

    from bundles import make_bundle
    path = make_bundle(tmp_path / "b", method="ppfr_fd", train_steps=0)   # seconds per method

The threshold is computed on a few LFW pairs through the exported graphs (`eval_pairs`), so it is
real but rough; tests that need a meaningful threshold should train (`train_steps`).
"""

from pathlib import Path

import torch
from helpers import DATA
from ppfr.data import lfw_faces
from ppfr.export.bundle import ExportResult, export_model

SMALL_MODEL = {"backbone": "mobilefacenet", "embedding_size": 128, "blocks": [1, 1, 1, 1]}


def small_config(method: str, name: str | None = None, **method_params) -> dict:
    return {
        "name": name or f"small_{method}",
        "method": {"name": method, **method_params},
        "model": dict(SMALL_MODEL),
    }


def make_bundle(out_dir, method: str = "ppfr_fd", train_steps: int = 0, **kw) -> Path:
    """Build (or briefly train) a small model and export it to `out_dir`; returns the bundle path."""
    return export_small(out_dir, method, train_steps, **kw).bundle


def export_small(
    out_dir,
    method: str = "ppfr_fd",
    train_steps: int = 0,
    dtype: str = "float16",
    eval_pairs: int = 40,
    seed: int = 0,
    config: dict | None = None,
    **method_params,
) -> ExportResult:
    """make_bundle, returning the ExportResult (manifest and measured parity figures)."""
    from ppfr.train.model import build_model, load_checkpoint

    out_dir = Path(out_dir)
    config = config or small_config(method, **method_params)
    torch.manual_seed(seed)
    ckpt, checkpoint = None, None
    if train_steps > 0:
        try:
            from ppfr.train.trainer import train
        except ImportError as err:
            raise RuntimeError(f"train_steps={train_steps} needs ppfr.train.trainer: {err}") from err
        quick = {
            "train": {
                "max_steps": train_steps,
                "batch_size": 32,
                "calibrate_images": 256,
                "log_every": 10**6,
            },
            "data": {"max_images": 512, "eval": [], "cache": str(out_dir.parent / ".ppfr-cache")},
            "eval": {"init": False},
        }
        config = {**config, **{k: {**config.get(k, {}), **v} for k, v in quick.items()}}
        checkpoint = Path(train(config, out_dir.parent / f"{out_dir.name}_run", progress=False))
        config, m, recognizer, ckpt = load_checkpoint(checkpoint)
    else:
        m, recognizer = build_model(config)
        if m.name == "dctdp":
            m.calibrate(torch.from_numpy(lfw_faces(DATA, 32)))
    return export_model(
        config,
        m,
        recognizer,
        out_dir,
        ckpt=ckpt,
        checkpoint=checkpoint,
        dtype=dtype,
        data=DATA,
        eval_pairs=eval_pairs,
        seed=seed,
    )
