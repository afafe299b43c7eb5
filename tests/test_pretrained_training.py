"""Training on the pretrained trunk: online teacher, unlabeled faces minus leaks, CFP, the shipped release."""

import json
import shutil

import numpy as np
import pytest
import torch
from helpers import DATA
from ppfr.train.augment import augment
from ppfr.train.data import load_cfp
from ppfr.train.leak_filter import filter_unlabeled
from ppfr.train.model import load_checkpoint, save_release
from ppfr.train.trainer import train

pytestmark = pytest.mark.slow  # real training on the pretrained trunk

LFW = {"name": "lfw", "pairs": str(DATA / "lfw" / "pairs.txt"), "root": str(DATA / "lfw" / "aligned112")}


def pretrained_cfg(method: str, steps: int = 2, **data) -> dict:
    return {
        "name": "p",
        "method": {"name": method},
        "model": {"backbone": "dlib", "embedding_size": 128, "entry": "conv64_1", "width": 16, "depth": 1},
        "head": {"weight": 0.0},
        "distill": {"weight": 1.0, "online": True, "feature_weight": 1.0},
        "data": {"max_images": 24, "eval": [dict(LFW, max_pairs=20)], **data},
        "train": {
            "batch_size": 8,
            "max_steps": steps,
            "threads": 1,
            "optimizer": "adamw",
            "lr": 1e-3,
            "trunk_lr_mult": 0.0,
            "augment": {"scale": 0.05, "rotate": 5, "shift": 2, "brightness": 0.2, "contrast": 0.2},
        },
        "eval": {"init": False, "batch_size": 32},
    }


def test_stem_trains_on_a_frozen_trunk_and_ships_small(tmp_path):
    ckpt = train(pretrained_cfg("ppfr_fd"), out_dir=tmp_path / "run", progress=False)
    _, _, rec, raw = load_checkpoint(ckpt)
    stem = {k: v for k, v in rec.state_dict().items() if "stem" in k}
    assert raw["state"]["step"] == 2 and stem
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    lfw = metrics["results"]["lfw"]["trained"]
    assert "single image" in lfw["view"] and 0 <= lfw["flip_sum"]["accuracy_mean"] <= 1
    # The release leaves the frozen pretrained trunk out (it comes from setup) and loads back exactly.
    out = save_release(ckpt, tmp_path / "release" / "checkpoint.pt")
    assert out.stat().st_size < ckpt.stat().st_size / 4
    _, _, rec2, raw2 = load_checkpoint(out)
    assert raw2["release"] and not any(k.startswith("backbone.trunk.") for k in raw2["recognizer"])
    x = torch.randn(2, 34, 14, 14)
    with torch.no_grad():
        torch.testing.assert_close(rec2.eval()(x), rec.eval()(x), rtol=2e-2, atol=2e-2)  # float16 stem


def test_augment_is_deterministic_and_stays_uint8(data_dir):
    from helpers import lfw_faces

    x = torch.from_numpy(lfw_faces(4))
    cfg = {"scale": 0.05, "rotate": 6, "shift": 3, "brightness": 0.2, "contrast": 0.2, "gray": 0.5}
    a = augment(x, torch.Generator().manual_seed(1), cfg)
    b = augment(x, torch.Generator().manual_seed(1), cfg)
    assert a.dtype == torch.uint8 and a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)
    assert torch.equal(augment(x, torch.Generator(), {}), x)


def test_leak_filter_drops_evaluation_faces_hidden_in_unlabeled_data(tmp_path, data_dir):
    folder = tmp_path / "unlabeled"
    folder.mkdir()
    for p in sorted((DATA / "utkface" / "aligned112").glob("*.jpg"))[:12]:
        shutil.copy(p, folder / p.name)
    first_pair = (DATA / "lfw" / "pairs.txt").read_text().splitlines()[1].split()
    leaked = DATA / "lfw" / "aligned112" / first_pair[0] / f"{first_pair[0]}_{int(first_pair[1]):04d}.jpg"
    shutil.copy(leaked, folder / "zz_leaked.jpg")
    # A small pairs.txt (2 folds x 10 same + 10 different pairs) keeps the test fast.
    lines = (DATA / "lfw" / "pairs.txt").read_text().splitlines()
    small = ["2\t10"] + lines[1:11] + lines[301:311] + lines[601:611] + lines[901:911]
    (tmp_path / "pairs.txt").write_text("\n".join(small) + "\n")
    spec = dict(LFW, pairs=str(tmp_path / "pairs.txt"))
    verdict = filter_unlabeled({"root": str(folder)}, [spec], tmp_path / "cache")
    assert "zz_leaked.jpg" in verdict["dropped"] and verdict["faces"] == 13
    assert 0.5 < verdict["threshold"] < 1 and len(verdict["keep"]) >= 10


def test_cfp_protocols(data_dir):
    fp = load_cfp("cfp_fp", DATA / "cfp", "FP", max_pairs=140)
    assert len(fp.same) == 140 and fp.same.sum() == 70 and set(np.unique(fp.folds)) == set(range(10))
    with pytest.raises(Exception, match="FF or FP"):
        load_cfp("x", DATA / "cfp", "PP")


def test_trunk_unfreezes_after_its_frozen_steps_and_then_ships(tmp_path, capsys):
    from ppfr.train.dlib_resnet import load_dlib_resnet

    cfg = pretrained_cfg("bdct", steps=2)
    cfg["train"] |= {"trunk_lr_mult": 0.1, "trunk_frozen_steps": 1, "stages": [1]}
    ckpt = train(cfg, out_dir=tmp_path, progress=False)
    assert "step 1: a new stage begins" in capsys.readouterr().out
    _, _, rec, _ = load_checkpoint(ckpt)
    pretrained = load_dlib_resnet().state_dict()
    trunk = {k.removeprefix("backbone.trunk."): v for k, v in rec.state_dict().items() if ".trunk." in k}
    assert any(not torch.equal(v, pretrained[k]) for k, v in trunk.items())  # step 2 moved it
    release = save_release(ckpt, tmp_path / "release.pt")
    assert any(k.startswith("backbone.trunk.") for k in torch.load(release, weights_only=False)["recognizer"])


def test_pixel_stem_starts_as_an_inverse_dct_and_trains_its_own_first_layers(tmp_path):
    """bdct keeps every frequency, so the pixel stem's least-squares start is an exact inverse DCT and
    the recognizer is the pretrained net itself before any step; training then moves the stem's copy of
    the first layers while the teacher's trunk stays as shipped."""
    from helpers import lfw_faces
    from ppfr.train.dlib_resnet import ChipWarp, load_dlib_resnet
    from ppfr.train.model import build_model

    cfg = pretrained_cfg("bdct")
    cfg["model"]["pixel_stem"] = True
    method, rec = build_model(cfg)
    faces = torch.from_numpy(lfw_faces(40))
    rec.calibrate(method, faces[:32])
    rec.eval()
    with torch.no_grad():
        ours = rec(method(faces[32:]))
        net = load_dlib_resnet().eval()
        theirs = net(ChipWarp()(faces[32:].permute(0, 3, 1, 2).float()))
    assert torch.nn.functional.cosine_similarity(ours, theirs).min() > 0.999

    cfg["train"] |= {"front_lr_mult": 0.1}
    _, _, trained, _ = load_checkpoint(train(cfg, out_dir=tmp_path, progress=False))
    front = trained.backbone.stem[1]
    assert not torch.equal(front.conv_in.conv.weight, net.conv_in.conv.weight)
    assert torch.equal(trained.backbone.trunk.conv_in.conv.weight, net.conv_in.conv.weight)


def test_pixel_stem_reads_x8_partialface_through_the_clients_layout():
    """PartialFace as published (x8 upsample: 27 x 112 x 112): the pixel stem works per pixel, and its
    least-squares start is fitted on tensors placed by the layout each client drew (the router is untrained
    then), so it explains part of the faces it was fitted on; a mis-wired fit would make things worse."""
    from helpers import lfw_faces
    from ppfr.train.model import build_model

    cfg = pretrained_cfg("partialface")
    cfg["method"] |= {"upsample": 8, "route": True}
    cfg["model"]["pixel_stem"] = True
    method, rec = build_model(cfg)
    faces = torch.from_numpy(lfw_faces(64))
    rec.calibrate(method, faces)
    stem = rec.backbone.stem[0].eval()
    with torch.no_grad():
        rand = method.sample_random(len(faces), torch.Generator().manual_seed(0))  # calibrate's draws
        rand, faces = {k: v[:16] for k, v in rand.items()}, faces[:16]  # 16 of the faces it was fitted on
        placed = rec.adapter.place_known(method(faces, **rand), rand)
        image = stem(placed)
        assert placed.shape == (16, 162, 112, 112) and image.shape == (16, 3, 112, 112)
        truth = faces.permute(0, 3, 1, 2).float()
        assert ((image - truth) ** 2).mean() < ((truth - truth.mean()) ** 2).mean()
        assert rec(method(faces[:2], **method.sample_random(2))).shape == (2, 128)
