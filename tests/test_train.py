"""Training: a few real steps of every method, checkpoint/resume round trip, analysis mode, errors, DDP."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from helpers import DATA
from ppfr.train.cli import main as train_cli
from ppfr.train.model import load_checkpoint
from ppfr.train.trainer import train

pytestmark = pytest.mark.slow  # real training runs (every method, resume, DDP)

LFW = {"name": "lfw", "pairs": str(DATA / "lfw" / "pairs.txt"), "root": str(DATA / "lfw" / "aligned112")}


def tiny(method: dict, steps: int = 2, eval_pairs: int = 0, **over) -> dict:
    """Real CelebA faces, a tiny MobileFaceNet, margin + distillation: seconds per run on 2 cores."""
    cfg = {
        "name": "t",
        "seed": 0,
        "method": method,
        "model": {"backbone": "mobilefacenet", "embedding_size": 32, "width": 0.25, "blocks": [1, 1, 1, 1]},
        "head": {"type": "arcface", "s": 32.0, "m": 0.5, "weight": 1.0},
        "distill": {"weight": 1.0},
        "data": {"max_images": 48, "eval": [dict(LFW, max_pairs=eval_pairs)] if eval_pairs else []},
        "train": {"batch_size": 8, "max_steps": steps, "threads": 1, "lr": 0.05},
        "eval": {"init": bool(eval_pairs), "batch_size": 64},
    }
    for k, v in over.items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) else v
    return cfg


@pytest.mark.parametrize("name", ["rgb", "bdct", "ppfr_fd", "dctdp", "partialface"])
def test_every_method_trains(name, tmp_path):
    ckpt = train(tiny({"name": name}), out_dir=tmp_path, progress=False)
    config, method, rec, raw = load_checkpoint(ckpt)
    assert raw["state"]["step"] == 2 and raw["head"] is not None and raw["distill"] is not None
    torch.manual_seed(0)  # same seed -> the network at initialisation; training must have moved it
    from ppfr.train.model import build_model

    _, rec0 = build_model(config)
    moved = [
        k
        for k, v in rec.state_dict().items()
        if v.is_floating_point() and not torch.equal(v, rec0.state_dict()[k])
    ]
    assert moved
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["method"] == name and metrics["payload_bytes_float16"] == method.payload_bytes()


def test_metrics_roc_and_init_comparison(tmp_path, capsys):
    train(tiny({"name": "ppfr_fd"}, eval_pairs=40), out_dir=tmp_path, progress=False)
    assert "step 2/2 " in capsys.readouterr().out  # without a bar, log files still see progress
    m = json.loads((tmp_path / "metrics.json").read_text())
    lfw = m["results"]["lfw"]
    for part in ("trained", "init"):
        r = lfw[part]
        assert r["num_pairs"] == 40 and r["seed"] == 0 and len(r["fold_accuracies"]) == 10
        assert 0 <= r["accuracy_mean"] <= 1 and -1 <= r["threshold_at_far_1e-03"] <= 1
    assert lfw["delta_accuracy"] == pytest.approx(
        lfw["trained"]["accuracy_mean"] - lfw["init"]["accuracy_mean"]
    )
    assert (tmp_path / "roc.png").stat().st_size > 1000
    from ppfr.train.report import main as report_cli

    assert report_cli([str(tmp_path), "--baseline", "ppfr_fd", "--plot", str(tmp_path / "r.png")]) == 0
    row = capsys.readouterr().out.splitlines()[2]
    assert row.startswith("| ppfr_fd | t | 2 |") and "+0.00" in row
    assert (tmp_path / "r.png").stat().st_size > 1000
    assert report_cli([str(tmp_path / "nothing")]) == 2
    # ppfr-eval on the saved checkpoint reproduces the trained numbers (same pairs, same eval seed).
    from ppfr.train.evaluate import main as eval_cli

    out = tmp_path / "eval.json"
    args = ["--checkpoint", str(tmp_path / "checkpoint.pt"), "--pairs", LFW["pairs"], "--root", LFW["root"]]
    assert eval_cli([*args, "--max-pairs", "40", "--name", "lfw", "--out", str(out)]) == 0
    again = json.loads(out.read_text())["lfw"]
    assert again["accuracy_mean"] == pytest.approx(lfw["trained"]["accuracy_mean"])
    thr = lfw["trained"]["threshold_at_far_1e-03"]
    assert again["threshold_at_far_1e-03"] == pytest.approx(thr, abs=1e-5)


def test_resume_round_trip_with_dctdp_parameters(tmp_path):
    # Constant LR: a 2-step run is then exactly the first half of the 4-step one (cosine depends on total).
    cfg = tiny({"name": "dctdp", "epsilon": 4.0}, steps=4, train={"method_lr": 0.05, "schedule": "constant"})
    full = train(cfg, out_dir=tmp_path / "full", progress=False)
    half = train(dict(cfg, train={**cfg["train"], "max_steps": 2}), out_dir=tmp_path / "half", progress=False)
    resumed = train(cfg, out_dir=tmp_path / "resumed", resume=half, progress=False)
    _, m_full, r_full, ck_full = load_checkpoint(full)
    _, m_half, _, _ = load_checkpoint(half)
    _, m_res, r_res, ck_res = load_checkpoint(resumed)
    # The protection parameters travel: learned budgets moved off zero and the calibrated clip bound is set.
    assert m_half.rhos.abs().max() > 0 and torch.isfinite(m_half.clip_bound).all()
    assert ck_res["state"]["step"] == 4
    # Data order and random inputs derive from (seed, step): 2 + 2 steps equals 4 steps in one go.
    torch.testing.assert_close(m_res.rhos, m_full.rhos, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(m_res.clip_bound, m_full.clip_bound)
    for k, v in r_full.state_dict().items():
        torch.testing.assert_close(r_res.state_dict()[k], v, rtol=1e-3, atol=1e-4)


def test_ppfr_fd_analysis_mode_writes_channel_scores(tmp_path):
    train(
        tiny({"name": "ppfr_fd", "analysis": True}, steps=3, train={"method_lr": 0.5}),
        out_dir=tmp_path,
        progress=False,
    )
    scores = json.loads((tmp_path / "channel_scores.json").read_text())
    assert scores["gamma"] == 0.3 and len(scores["channels"]) == 36
    assert scores["channels"][0]["channel"] == 0  # DC included in the analysis network
    w = np.array([c["weight"] for c in scores["channels"]])
    assert (w < 1).all() and w.std() > 0  # the energy penalty moved the weights, unevenly
    assert (tmp_path / "channel_scores.png").stat().st_size > 1000
    assert "| 0 | (0,0) |" in (tmp_path / "channel_scores.md").read_text()


def test_cli_reports_user_mistakes_without_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(dict(tiny({"name": "rgb"}), train={"max_stepz": 3})))
    assert train_cli(["--config", str(bad)]) == 2
    assert "unknown config key 'train.max_stepz'" in capsys.readouterr().err
    bad.write_text(yaml.safe_dump(dict(tiny({"name": "rgb"}), data={"train": str(tmp_path / "nope")})))
    assert train_cli(["--config", str(bad)]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad.write_text(yaml.safe_dump(tiny({"name": "nomethod"})))
    assert train_cli(["--config", str(bad)]) == 2
    assert "unknown protection method" in capsys.readouterr().err
    assert train_cli(["--config", str(tmp_path / "missing.yaml")]) == 2


def test_ddp_two_processes_gloo(tmp_path):
    cfg = tmp_path / "ddp.yaml"
    cfg.write_text(yaml.safe_dump(tiny({"name": "dctdp"}, steps=2)))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29517",
        "-m",
        "ppfr.train.cli",
        "--config",
        str(cfg),
        "--out",
        str(tmp_path / "out"),
        "--no-progress",
    ]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    _, method, _, raw = load_checkpoint(tmp_path / "out" / "checkpoint.pt")
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert m["train"]["processes"] == 2 and m["train"]["batch_size_global"] == 16
    assert raw["state"]["step"] == 2 and method.rhos.abs().max() > 0  # budgets synced and trained


def test_teacher_tool_reproduces_cached_dlib_embeddings(data_dir, tmp_path):
    pytest.importorskip("dlib")
    from ppfr.train.distill import compute_teacher

    src = data_dir / "celeba" / "aligned112"
    ident = sorted(p for p in src.iterdir() if p.is_dir())[0]
    (tmp_path / ident.name).mkdir()
    files = sorted(ident.glob("*.jpg"))[:2]
    for f in files:
        (tmp_path / ident.name / f.name).symlink_to(f)
    out = compute_teacher(tmp_path, tmp_path / "t.npz", progress=False)
    mine = np.load(out)
    ref = np.load(data_dir / "teacher" / "dlib_celeba.npz")
    rows = [list(ref["paths"]).index(str(p)) for p in mine["paths"]]
    np.testing.assert_allclose(mine["emb"].astype(float), ref["emb"][rows].astype(float), atol=2e-3)
    np.testing.assert_allclose(mine["emb_flip"].astype(float), ref["emb_flip"][rows].astype(float), atol=2e-3)


def test_every_shipped_config_builds():
    from pathlib import Path

    from ppfr.train.backbones import build_backbone
    from ppfr.train.config import full_config, load_config
    from ppfr.train.methods import build_method

    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    names = {p.stem for p in configs}
    for m in ("rgb", "bdct", "ppfr_fd", "dctdp", "partialface"):
        assert {f"small_{m}", f"paper_{m}"} <= names
    small = {}
    for p in configs:
        cfg = full_config(load_config(p))
        method = build_method(**cfg["method"])
        c, h, _ = method.output_shape()
        with torch.device("meta"):  # shapes only: IR-50 weights need not be allocated
            net = build_backbone(in_channels=c, in_size=h, pretrained=False, **cfg["model"])
        if cfg["model"]["backbone"] == "dlib" and cfg["model"]["entry"] == "chip":
            assert c == 3  # rgb: the pretrained net itself, through the chip warp
            continue
        stem = net.stem if cfg["model"]["backbone"] == "dlib" else net  # a learned stem into the trunk
        first = next(m for m in stem.modules() if isinstance(m, torch.nn.Conv2d))
        assert first.in_channels == c  # the stem adapts to the method's channel count
        if p.stem.startswith("small_"):  # one shared recipe: only the method differs
            small[p.stem] = {k: v for k, v in cfg.items() if k not in ("name", "method")}
    assert all(v == small["small_ppfr_fd"] for v in small.values())
