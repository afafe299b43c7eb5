"""A leaner pixel stem (issue 26, item 5): `ppfr-train slim` distils the shipped recognizer's stem into a
narrower one (train/stem_distill.py); only the stem changes, the checkpoint rebuilds it from its config,
and a resumed distillation replays the straight one."""

import copy

import pytest
import torch
from helpers import REPO, lfw_faces
from ppfr.train.cli import main
from ppfr.train.data import load_face_folder
from ppfr.train.model import load_checkpoint
from ppfr.train.slim_cli import fit_to_teacher
from ppfr.train.stem_distill import CleanFaces, DlibTeacher, distill
from ppfr.train.student import PixelStem

PRETRAINED = REPO / "pretrained" / "dlib_ppfr_fd" / "checkpoint.pt"


@pytest.fixture(scope="module")
def shipped():
    torch.set_num_threads(2)
    config, method, recognizer, _ = load_checkpoint(PRETRAINED)
    return config, method, recognizer.eval()


@pytest.fixture(scope="module")
def faces(shipped):
    dc = shipped[0]["data"]
    return load_face_folder(dc["train"], dc["labels_csv"], dc["overlap_json"], dc["cache"], 64).images


def _slim(shipped, faces, width=16, depth=1):
    config, method, teacher = shipped
    torch.manual_seed(0)  # the residual blocks' initial weights
    stem = PixelStem(34, 14, width, depth)
    fit_to_teacher(stem, teacher, method, faces, {"seed": 0, "fit_images": 48, "place": "known"})
    student = copy.deepcopy(teacher)
    student.backbone.stem[0] = stem
    return student, stem


def _image_error(shipped, stem, faces) -> float:
    """Relative MSE of the stem's image against the shipped stem's, held-out LFW faces."""
    _, method, teacher = shipped
    x = torch.from_numpy(faces)
    rand = method.sample_random(len(x), torch.Generator().manual_seed(1))
    placed = teacher.adapter.place_known(method(x, **rand), rand)
    with torch.no_grad():
        want = teacher.backbone.stem[0](placed)
        return float((stem.eval()(placed) - want).pow(2).mean() / want.var())


def test_linear_start_and_distillation_approach_the_shipped_stem(shipped, faces):
    student, stem = _slim(shipped, faces)
    held_out = lfw_faces(16)
    fitted = _image_error(shipped, stem, held_out)
    assert fitted < 0.5  # the least-squares linear map alone already gives most of the image
    config, method, teacher = shipped
    opts = {"steps": 12, "batch_size": 8, "lr": 3e-3, "place": "known", "target": "stem", "log_every": 100}
    distill(teacher, method, student, method, faces, opts, stem.parameters(), log=lambda *a, **k: None)
    assert _image_error(shipped, stem, held_out) < fitted


def test_resumed_distillation_replays_the_straight_one(shipped, faces):
    config, method, teacher = shipped
    opts = {
        "steps": 4,
        "batch_size": 4,
        "place": "known",
        "target": "stem",
        "augment": config["train"]["augment"],
    }
    quiet = {"log": lambda *a, **k: None}
    straight, stem_a = _slim(shipped, faces)
    distill(teacher, method, straight, method, faces, opts, stem_a.parameters(), **quiet)

    halfway = {}
    resumed, stem_b = _slim(shipped, faces)

    def save(step, state):
        if step == 2:
            halfway.update(copy.deepcopy(state), step=step, stem=copy.deepcopy(stem_b.state_dict()))

    distill(
        teacher,
        method,
        resumed,
        method,
        faces,
        dict(opts, save_every=2),
        stem_b.parameters(),
        save=save,
        **quiet,
    )
    again, stem_c = _slim(shipped, faces)
    stem_c.load_state_dict(halfway["stem"])
    distill(teacher, method, again, method, faces, opts, stem_c.parameters(), resume=halfway, **quiet)
    for k, v in stem_a.state_dict().items():
        torch.testing.assert_close(stem_c.state_dict()[k], v, rtol=1e-4, atol=1e-5, msg=k)


def test_slim_command_changes_only_the_stem_and_its_config(shipped, tmp_path, capsys):
    out = tmp_path / "slim"
    argv = ["slim", "--width", "16", "--depth", "1", "--stem-steps", "2", "--entry-steps", "1"]
    argv += ["--batch-size", "4", "--entry-batch-size", "4", "--max-images", "32", "--fit-images", "32"]
    argv += ["--eval", "none", "--router-reader", "0"]
    assert main([*argv, "--threads", "2", "--out", str(out)]) == 0
    assert "distill step 1/1 embed" in capsys.readouterr().out
    config, method, slim, _ = load_checkpoint(out / "checkpoint.pt")
    assert (config["model"]["width"], config["model"]["depth"]) == (16, 1)
    stem = slim.backbone.stem[0]
    assert isinstance(stem, PixelStem) and len(stem.context) == 3 + 1 + 1  # conv, BN, ReLU, 1 block, conv
    source = shipped[2].state_dict()
    kept = {k: v for k, v in slim.state_dict().items() if not k.startswith("backbone.stem.0.")}
    assert kept.keys() == {k for k in source if not k.startswith("backbone.stem.0.")}
    for k, v in kept.items():  # router, dlib front (BN statistics too: frozen parts run in eval) and trunk
        assert torch.equal(v, source[k]), k
    emb = slim.eval().embed(method(torch.from_numpy(lfw_faces(4)), **method.sample_random(4)))
    assert emb.shape == (4, 128) and torch.isfinite(emb).all()
    assert not (out / "progress.pt").exists()


def test_lean_router_stage_changes_only_the_router(shipped, tmp_path, capsys):
    out = tmp_path / "lean"
    argv = ["slim", "--keep-stem", "--router-reader", "8", "--router-steps", "3", "--max-images", "32"]
    assert main([*argv, "--eval", "none", "--threads", "2", "--out", str(out)]) == 0
    assert "router (read+classify+compare) step 3/3" in capsys.readouterr().out
    config, method, lean, _ = load_checkpoint(out / "checkpoint.pt")
    assert config["method"]["router_reader"] == 8 and config["model"] == shipped[0]["model"]
    assert (
        lean.adapter.read[0].out_channels == 8 and len(lean.adapter.read) == 4
    )  # conv, ReLU, flatten, linear
    source = shipped[2].state_dict()
    for k, v in lean.state_dict().items():  # stem, dlib front and trunk as they were; the router learned
        if not k.startswith("adapter."):
            assert torch.equal(v, source[k]), k
    assert not torch.equal(
        lean.state_dict()["adapter.classify.1.weight"], source["adapter.classify.1.weight"]
    )
    emb = lean.eval().embed(method(torch.from_numpy(lfw_faces(4)), **method.sample_random(4)))
    assert emb.shape == (4, 128) and torch.isfinite(emb).all()


def test_fewer_blocks_layers_and_rounds_rebuild_from_the_config(shipped, tmp_path):
    """--keep-stem --depth N keeps the stem's first N residual blocks; --router-layers / --router-sinkhorn
    keep the router's first attention layers and set its rounds; every tool rebuilds that from the config."""
    out = tmp_path / "lean"
    argv = ["slim", "--keep-stem", "--depth", "0", "--router-layers", "1", "--router-sinkhorn", "2"]
    argv += ["--router-steps", "2", "--max-images", "32", "--eval", "none", "--threads", "2"]
    assert main([*argv, "--out", str(out)]) == 0
    config, method, lean, _ = load_checkpoint(out / "checkpoint.pt")
    assert config["model"]["depth"] == 0 and config["method"]["router_layers"] == 1
    assert config["method"]["router_sinkhorn"] == 2
    stem, router = lean.backbone.stem[0], lean.adapter
    assert len(stem.context) == 3 + 1 and len(router.compare) == 1 and router.sinkhorn == 2
    source = shipped[2].state_dict()  # the context's last 1x1 convolution moved up, unchanged
    last = len(shipped[2].backbone.stem[0].context) - 1
    assert torch.equal(stem.context[3].weight, source[f"backbone.stem.0.context.{last}.weight"])
    soft = router(method(torch.from_numpy(lfw_faces(2)), **method.sample_random(2)))
    assert soft.shape == (2, 34, 14, 14) and torch.isfinite(soft).all()


def test_dlib_as_the_teacher_moves_the_stem_towards_dlibs_descriptor(shipped, faces):
    """--dlib-steps: the stem (and nothing else) learns dlib's own descriptor of the clean face, centred,
    through the router as deployed; measured on the faces it learns from, one fixed draw."""
    config, method, teacher = shipped
    student, dlib = copy.deepcopy(teacher), DlibTeacher(config["model"]["entry"])
    x = torch.from_numpy(faces[:32])
    rand = method.sample_random(len(x), torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = dlib.forward_with_entry(x)[1]
    mean = want.mean(0)

    def gap() -> float:
        with torch.no_grad():
            got = student(method(x, **rand))  # unnormalised, as the loss compares it
        return float((1 - torch.nn.functional.cosine_similarity(got - mean, want - mean)).mean())

    before = gap()
    opts = {"steps": 10, "batch_size": 16, "lr": 1e-3, "feature_weight": 0.25, "freeze_bn": True}
    stem = student.backbone.stem[0]
    quiet = {"log": lambda *a, **k: None}
    distill(dlib, CleanFaces(method), student, method, faces[:32], opts, stem.parameters(), **quiet)
    assert gap() < before
    source = teacher.state_dict()
    for k, v in student.state_dict().items():
        if not k.startswith("backbone.stem.0."):
            assert torch.equal(v, source[k]), k


def test_slim_command_errors_are_one_line(tmp_path, capsys):
    assert main(["slim", "--width", "0"]) == 2
    assert main(["slim", "--keep-stem"]) == 2
    assert main(["slim", "--resume", "--out", str(tmp_path / "none"), "--eval", "none"]) == 2
    more = ["--keep-stem", "--router-layers", "9", "--max-images", "8", "--out", str(tmp_path / "more")]
    assert main(["slim", *more, "--eval", "none"]) == 2
    err = capsys.readouterr().err
    assert err.count("ppfr-train slim: error:") == 4 and "Traceback" not in err
    assert "--router-layers 9: the router has 2 attention layers" in err
    assert "--keep-stem leaves nothing to do" in err
    assert "--resume: no" in err
