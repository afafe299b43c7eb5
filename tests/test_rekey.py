"""Re-keying (issue 26, item 1): `ppfr-train rekey` adapts the shipped PPFR-FD recognizer to a deployment's
own key, and `ppfr-train --key-file` trains under one; the key is in no argv, log, checkpoint config,
metrics.json or manifest (only its id), and a checkpoint adapted to a key is refused without it."""

import base64
import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import DATA, REPO, lfw_faces
from ppfr.bundle import read_manifest
from ppfr.train import evaluate, keys
from ppfr.train.methods import build_method
from ppfr.train.model import load_checkpoint
from ppfr.train.rekey import chain_order, fit_translation, fold_translation
from ppfr.train.student import FrequencyStem, PixelStem
from ppfr.train.trainer import train

PRETRAINED = REPO / "pretrained" / "dlib_ppfr_fd" / "checkpoint.pt"
LFW = {"name": "lfw", "pairs": str(DATA / "lfw" / "pairs.txt"), "root": str(DATA / "lfw" / "aligned112")}


@pytest.fixture(autouse=True)
def no_env_key(monkeypatch):
    monkeypatch.delenv(keys.ENV_VAR, raising=False)


def _secret(tmp_path) -> tuple[bytes, object]:
    key = base64.b64encode(os.urandom(32))
    path = tmp_path / "method.key"
    path.write_bytes(key + b"\n")
    path.chmod(0o600)
    return key, path


def _nowhere(key: bytes, *blobs: bytes) -> None:
    """Neither the key nor the Shuffle1 order it gives appears in any of the blobs."""
    order = str(build_method("ppfr_fd", key=key).keep.tolist()).encode()
    for blob in blobs:
        assert key not in blob and key.decode().encode("utf-16-le") not in blob
        assert order not in blob


@torch.no_grad()
@pytest.mark.parametrize("kind", ["pixel", "frequency"])
def test_folded_translation_is_the_translation(kind):
    torch.manual_seed(0)
    if kind == "pixel":
        stem = PixelStem(34, 14, 16, 1)
        norms, last = (stem.norm, stem.context[1]), stem.context[-1]
    else:  # into the trunk at conv64_1: 64 x 17 x 17
        stem = FrequencyStem(34, 14, 64, torch.rand(1, 17, 17, 2) * 2 - 1, 16, 1)
        norms, last = (stem.norm, stem.inp[1]), stem.out[-1]
    for bn in norms:
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_()
    torch.nn.init.normal_(last.weight, std=0.1)
    stem.eval()
    a, c = torch.eye(34) + 0.2 * torch.randn(34, 34), 0.1 * torch.randn(34)
    x = torch.randn(2, 34, 14, 14)
    want = stem(torch.einsum("ij,bjhw->bihw", a, x) + c[None, :, None, None])
    fold_translation(stem, a, c)
    torch.testing.assert_close(stem(x), want, rtol=1e-4, atol=1e-3)


@torch.no_grad()
def test_translation_recovers_the_training_keys_channels():
    """A new key's chain of mixes carries the same 35 frequencies: a linear map gets the old chain back."""
    faces = torch.from_numpy(lfw_faces(24))
    old, new = build_method("ppfr_fd", key="ppfr-demo-key"), build_method("ppfr_fd", key=os.urandom(32))
    a, c = fit_translation(old, new, faces[:16])
    x_new, x_old = chain_order(new, faces[16:]), chain_order(old, faces[16:])
    pred = torch.einsum("ij,bjhw->bihw", a, x_new) + c[None, :, None, None]
    var = (x_old - x_old.mean((0, 2, 3), keepdim=True)).pow(2).sum()
    r2, r2_as_is = (1 - (y - x_old).pow(2).sum() / var for y in (pred, x_new))
    assert r2 > 0.9 > 0.5 > r2_as_is  # held-out faces


def _cli(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ppfr.train.cli", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        env={**os.environ, **(env or {})},
        timeout=600,
    )


def test_rekey_keeps_the_key_out_of_argv_logs_checkpoint_and_manifest(tmp_path, capsys, monkeypatch):
    key, path = _secret(tmp_path)
    out = tmp_path / "rekeyed"
    argv = ["rekey", "--key-file", path, "--out", out, "--steps", "2", "--fit-images", "32", "--threads", "2"]
    argv += ["--read-steps", "2", "--entry-steps", "2", "--views", "1", "--max-images", "64"]
    run = _cli(*argv)
    assert run.returncode == 0, run.stderr.decode()
    assert keys.key_id(key) in run.stdout.decode()
    ckpt = out / "checkpoint.pt"
    config, method, _, raw = load_checkpoint(ckpt)
    assert keys.sealed_key_id(config["method"]) == keys.key_id(key) == keys.trained_key_id(config["method"])
    assert method.keep.tolist() != build_method("ppfr_fd", key=key).keep.tolist()  # the marker's order
    _nowhere(key, " ".join(map(str, argv)).encode(), run.stdout, run.stderr, ckpt.read_bytes())
    _nowhere(key, (out / "rekey.json").read_bytes(), json.dumps(raw["config"], default=str).encode())

    # evaluation needs the key; with it, the method is the key's again (ppfr-eval's main, in this process)
    pairs = ["--checkpoint", str(ckpt), "--max-pairs", "20", "--out", str(tmp_path / "eval.json")]
    monkeypatch.delenv(keys.ENV_VAR, raising=False)
    assert evaluate.main(pairs) == 2 and keys.key_id(key) in capsys.readouterr().err
    other, other_path = _secret(tmp_path / "..")
    assert evaluate.main([*pairs, "--key-file", str(other_path)]) == 2
    assert "adapted to method key id" in capsys.readouterr().err
    monkeypatch.setenv(keys.ENV_VAR, key.decode())
    assert evaluate.main(pairs) == 0
    ok = capsys.readouterr()
    _nowhere(key, ok.out.encode(), ok.err.encode(), (tmp_path / "eval.json").read_bytes())
    monkeypatch.delenv(keys.ENV_VAR)

    # the bundle exported from it: the key id, never the key
    bundle = tmp_path / "bundle"
    export = [sys.executable, "-m", "ppfr.export.cli", "--checkpoint", ckpt, "--out", bundle]
    export += ["--key-file", path, "--eval-pairs", "20", "--enrolled-photos", "1", "--parity-faces", "2"]
    export.append("--accept-degraded")  # 2 router steps: not adapted yet, written anyway
    done = subprocess.run(list(map(str, export)), cwd=REPO, capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr.decode()
    manifest = (bundle / "manifest.json").read_bytes()
    assert keys.key_id(key).encode() in manifest
    _nowhere(key, manifest, done.stdout, done.stderr, (bundle / "recognizer.onnx").read_bytes())
    # its figures are measured on the exported graphs under this key, none copied from the training run
    threshold = read_manifest(bundle).threshold
    assert "exported graphs" in threshold.evaluation_set and "training" not in threshold.evaluation_set
    assert f"accuracy {threshold.accuracy:.2%}" in done.stdout.decode()


def test_key_is_never_an_argument():
    run = _cli("--config", "configs/small_ppfr_fd.yaml", "--set", "method.key=something-secret-123")
    assert run.returncode == 2 and b"never given in argv" in run.stderr
    rekey = _cli("rekey", "--steps", "1")
    assert (
        rekey.returncode == 2 and keys.ENV_VAR.encode() in rekey.stderr and b"Traceback" not in rekey.stderr
    )
    negative = _cli("rekey", "--entry-steps", "-1")
    assert negative.returncode == 2 and negative.stderr.count(b"\n") == 1
    assert b"steps must be" in negative.stderr


def test_training_under_a_key_writes_its_id_only_and_resumes(tmp_path, monkeypatch, capsys):
    from ppfr.train.cli import deployment_key

    key = base64.b64encode(os.urandom(32))
    monkeypatch.setenv(keys.ENV_VAR, key.decode())
    method = {"name": "ppfr_fd", "key": deployment_key(None).key}
    cfg = {
        "name": "t",
        "method": method,
        "model": {"backbone": "mobilefacenet", "embedding_size": 32, "width": 0.25, "blocks": [1, 1, 1, 1]},
        "head": {"type": "arcface", "weight": 1.0},
        "data": {"max_images": 48, "eval": [dict(LFW, max_pairs=20)]},
        "train": {"batch_size": 8, "max_steps": 2, "threads": 1, "lr": 0.05},
        "eval": {"init": False, "batch_size": 64},
    }
    ckpt = train(cfg, out_dir=tmp_path / "a", progress=False)
    printed = capsys.readouterr()
    config, _, _, raw = load_checkpoint(ckpt)
    assert keys.sealed_key_id(config["method"]) == keys.key_id(key)
    metrics = (tmp_path / "a" / "metrics.json").read_bytes()
    _nowhere(key, ckpt.read_bytes(), metrics, printed.out.encode(), printed.err.encode())
    assert keys.key_id(key).encode() in metrics

    # resuming under the key continues with the key's Shuffle1, not the marker's
    from ppfr.train import trainer

    seen = []
    step = trainer.train_step
    monkeypatch.setattr(
        trainer, "train_step", lambda s, b: seen.append(s.module.method.keep.tolist()) or step(s, b)
    )
    again = train({**cfg, "train": {**cfg["train"], "max_steps": 3}}, out_dir=tmp_path / "b", resume=ckpt)
    assert seen == [build_method("ppfr_fd", key=key).keep.tolist()]
    assert keys.sealed_key_id(load_checkpoint(again)[0]["method"]) == keys.key_id(key)
    with pytest.raises(keys.KeyPolicyError, match="adapted to method key id"):
        keys.unseal(config, load_checkpoint(again)[1], b"another key of enough bytes")


@torch.no_grad()
def test_router_is_permutation_equivariant():
    """What lets `rekey` train on the chain order alone: permuting the channels permutes the logits."""
    from ppfr.train.ppfr_fd import ChainRouter

    torch.manual_seed(0)
    router = ChainRouter(34).eval()
    x, perm = torch.randn(2, 34, 14, 14), torch.stack([torch.randperm(34) for _ in range(2)])
    router(x)
    want = router.logits.gather(1, perm[:, :, None].expand(-1, -1, 34))
    router(x.gather(1, perm[:, :, None, None].expand(-1, -1, 14, 14)))
    torch.testing.assert_close(router.logits, want, rtol=1e-4, atol=1e-4)


def test_router_adaptation_trains_the_reader_too():
    """adapt_router's two stages: comparison layers on tokens read once, then the per-map reader as well;
    the shipped router's placement under a fresh key rises from chance on the faces it learns from."""
    from ppfr.train.rekey import adapt_router, placed, router_inputs

    torch.manual_seed(0)
    faces, method, router = lfw_faces(16), build_method("ppfr_fd", key=os.urandom(32)), _shipped_router()
    opts = {"seed": 0, "augment": {}, "views": 1, "batch_size": 8, "weight_decay": 0.0, "log_every": 100}
    opts |= {"router": "compare", "lr": 3e-3, "steps": 30, "read_steps": 10, "read_lr": 1e-3}
    opts["read_lr_mult"] = 0.3
    maps, corr = router_inputs(router, method, faces, 1, opts)
    before, read = placed(router, maps, corr), [p.clone() for p in router.read.parameters()]
    adapt_router(router, method, faces, opts, log=lambda *a, **k: None)
    assert placed(router, maps, corr) > max(0.2, 3 * before)
    assert all(not torch.equal(a, b) for a, b in zip(read, router.read.parameters()))


def _shipped_router():
    return load_checkpoint(PRETRAINED)[2].adapter


def test_stem_stage_brings_the_translated_model_towards_the_source():
    """refine_stem: after the translation, the stem learns (through the recognizer's router, as deployed)
    to give under the new key the embeddings the source gives under its own key, on the same faces and
    Shuffle2 draws; nothing but the stem changes."""
    import copy

    from ppfr.train.rekey import refine_stem

    config, old, source, _ = load_checkpoint(PRETRAINED)
    _, new = keys.rekey(config, old, os.urandom(32))
    faces, student = lfw_faces(48), copy.deepcopy(source.eval())
    a, c = fit_translation(old, new, torch.from_numpy(faces[:32]))
    fold_translation(student.backbone.stem[0], a, c)
    held = torch.from_numpy(faces[32:])

    @torch.no_grad()
    def agreement() -> float:
        rand = new.sample_random(len(held), torch.Generator().manual_seed(5))
        return (
            torch.nn.functional.cosine_similarity(
                student.embed(new(held, **rand)), source.embed(old(held, **rand))
            )
            .mean()
            .item()
        )

    before, trunk = agreement(), copy.deepcopy(student.backbone.trunk.state_dict())
    opts = {"seed": 0, "entry_steps": 12, "entry_lr": 5e-4, "augment": {}}
    refine_stem(source, old, student, new, faces[:32], opts, log=lambda *a, **k: None)
    assert agreement() > before
    assert all(torch.equal(v, student.backbone.trunk.state_dict()[k]) for k, v in trunk.items())
