"""Distillation of one trained recognizer into another on protected training faces (no identity labels).

Teacher and student each see a face protected by their own method with the SAME random draws (PPFR-FD:
the same Shuffle2), so a student with a leaner stem (`ppfr-train slim`, train/slim_cli.py), or under
another key, learns to land where the teacher lands:
- at the entry activation, where the pretrained trunk is entered (`Recognizer.forward_with_entry`):
  MSE relative to the teacher activation's mean square, weighted by opts['feature_weight'];
- at the embedding: 1 - cos of both embeddings centred on the teacher's mean embedding (dlib descriptors
  share a large common component; see OnlineDistillLoss).
Only `params` learn. A module holding none of them stays in eval mode (frozen BatchNorm statistics,
no dropout), so the frozen parts compute exactly what they compute when deployed.

Channels reach each backbone as opts['place'] says: 'router' (the recognizer's own adapter, as
deployed: the student learns on what it will be given) or 'known' (placed by the client's draw,
`adapter.place_known`: what an adapter that is itself still learning should not decide).

opts['target'] 'stem' (pixel-stem recognizers) compares the stems' images instead, through the same
placement: no dlib layer runs, an order of magnitude cheaper per step, a first stage before 'entry'.

Every step's faces and draws come from a generator seeded by (seed, step), so a resumed run replays
the batches a straight run would have seen.
"""

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .augment import augment
from .student import OnlineDistillLoss, OnlineTeacher

DEFAULTS = {
    "seed": 0,
    "steps": 500,
    "batch_size": 32,
    "lr": 1e-3,
    "weight_decay": 5e-4,
    "augment": {},
    "flip": True,
    "place": "router",
    "target": "entry",
    "feature_weight": 1.0,
    "mean_images": 512,
    "log_every": 25,
    "save_every": 100,
    "freeze_bn": False,
}


def step_faces(images: np.ndarray, step: int, opts: dict) -> tuple[torch.Tensor, torch.Generator]:
    """(uint8 NHWC faces, generator for the draws) of one step: picked, flipped, augmented."""
    gen = torch.Generator().manual_seed(opts["seed"] * 1_000_003 + step)
    idx = torch.randint(0, len(images), (opts["batch_size"],), generator=gen).sort().values.numpy()
    faces = torch.from_numpy(np.array(images[idx]))  # a copy: the face cache is read-only
    if opts["flip"]:
        flip = torch.rand(len(faces), generator=gen) < 0.5
        faces = torch.where(flip[:, None, None, None], faces.flip(2), faces)
    return augment(faces, gen, opts["augment"]), gen


def placed(recognizer, x: torch.Tensor, rand: dict, place: str) -> torch.Tensor:
    """The protected tensor with its channels placed as `place` says."""
    if place == "known":
        return recognizer.adapter.place_known(x, rand)
    if place == "router":
        return recognizer.adapter(x)
    raise ValueError(f"place must be 'router' or 'known', got {place!r}")


def outputs(recognizer, x: torch.Tensor, rand: dict, opts: dict) -> tuple:
    """target 'entry': (entry activation, unnormalised embedding); target 'stem': (the pixel stem's
    image, None): the cheap first stage, the 150x150 dlib layers are not run."""
    x = placed(recognizer, x, rand, opts["place"])
    if opts["target"] == "stem":
        return recognizer.backbone.stem[0](x), None
    if opts["target"] == "entry":
        return recognizer.backbone.forward_with_entry(x)
    raise ValueError(f"target must be 'entry' or 'stem', got {opts['target']!r}")


def stem_loss(s_image, _s_emb, t_image, _t_emb, _mean) -> dict[str, torch.Tensor]:
    """MSE of the stem's image relative to the teacher image's variance."""
    return {"stem": F.mse_loss(s_image, t_image) / t_image.var().clamp_min(1e-6)}


class DlibTeacher(nn.Module):
    """dlib itself on the clean face as a teacher in a recognizer's shape (`adapter`, `backbone`,
    `forward_with_entry`): its activation before the student's entry block and its descriptor. The
    default's own training distilled from dlib; a student of a distilled student inherits both
    approximations (docs/results.md, "The conv64_1 stem, continued"). Its method is `CleanFaces`."""

    def __init__(self, entry: str):
        super().__init__()
        self.adapter, self.dlib = _AsIs(), OnlineTeacher(entry)

    @property
    def backbone(self):
        return self

    def forward_with_entry(self, faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.dlib(faces)


class _AsIs(nn.Module):
    """The teacher's placement: clean faces have no channels to place."""

    def forward(self, x):
        return x

    def place_known(self, x, _rand):
        return x


class CleanFaces:
    """The teacher's "method" beside DlibTeacher: the face as it is (the student's draws pass through)."""

    def __init__(self, method):
        self.sample_random = method.sample_random

    def __call__(self, faces: torch.Tensor, **_rand) -> torch.Tensor:
        return faces


def set_modes(model: nn.Module, params: list[torch.Tensor], freeze_bn: bool) -> None:
    """Train mode only for modules that hold a trained parameter (BatchNorm too unless freeze_bn)."""
    ids = {id(p) for p in params}
    model.eval()
    for m in model.modules():
        if any(id(p) in ids for p in m.parameters(recurse=False)):
            m.train(not (freeze_bn and isinstance(m, nn.modules.batchnorm._BatchNorm)))


@torch.no_grad()
def teacher_mean(teacher, method, images: np.ndarray, opts: dict, chunk: int = 64) -> torch.Tensor:
    """The teacher's mean embedding over the first opts['mean_images'] faces as they are."""
    n = min(len(images), opts["mean_images"])
    gen = torch.Generator().manual_seed(opts["seed"])
    embs = []
    for i in range(0, n, chunk):
        faces = torch.from_numpy(np.array(images[i : min(n, i + chunk)]))
        rand = method.sample_random(len(faces), gen)
        embs.append(outputs(teacher, method(faces, **rand), rand, opts)[1])
    return torch.cat(embs).mean(0)


def _optimizer(params, opts: dict, resume: dict | None):
    opt = torch.optim.AdamW(params, lr=opts["lr"], weight_decay=opts["weight_decay"])
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=opts["lr"], total_steps=max(opts["steps"], 1), pct_start=0.05
    )
    if resume:
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
    return opt, sched


def _losses(teacher, teacher_method, student, student_method, images, step, opts, loss_fn, mean):
    faces, gen = step_faces(images, step, opts)
    rand = student_method.sample_random(len(faces), gen)
    with torch.no_grad():
        t_entry, t_emb = outputs(teacher, teacher_method(faces, **rand), rand, opts)
        x = student_method(faces, **rand)
    s_entry, s_emb = outputs(student, x, rand, opts)
    return loss_fn(s_entry, s_emb, t_entry, t_emb, mean)


def distill(
    teacher, teacher_method, student, student_method, images, opts, params, log=print, save=None, resume=None
) -> dict:
    """Trains `params` (of `student`) for opts['steps'] steps (DEFAULTS for what opts may hold) on uint8
    NHWC `images`. save(step, {'optimizer', 'scheduler'}), if given, is called every opts['save_every']
    steps and at the end; resume (such a dict plus 'step') continues a run. Returns the last running
    losses (embed, feature, total), the steps done and the seconds spent."""
    opts = DEFAULTS | opts
    params = list(params)
    teacher.eval().requires_grad_(False)
    student.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    set_modes(student, params, opts["freeze_bn"])
    stem = opts["target"] == "stem"
    mean = None if stem else teacher_mean(teacher, teacher_method, images, opts)
    opt, sched = _optimizer(params, opts, resume)
    loss_fn = stem_loss if stem else OnlineDistillLoss(opts["feature_weight"])
    avg, t0 = {}, time.time()
    first = resume["step"] if resume else 0
    for step in range(first, opts["steps"]):
        parts = _losses(teacher, teacher_method, student, student_method, images, step, opts, loss_fn, mean)
        loss = sum(parts.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        for k, v in (parts | {"total": loss}).items():
            avg[k] = 0.9 * avg.get(k, v.item()) + 0.1 * v.item()
        done = step + 1
        if done % opts["log_every"] == 0 or done == opts["steps"]:
            terms = " ".join(f"{k} {v:.4f}" for k, v in avg.items())
            rate = (time.time() - t0) / (done - first)
            log(f"distill step {done}/{opts['steps']} {terms} ({rate:.2f} s/step)", flush=True)
        if save and (done % opts["save_every"] == 0 or done == opts["steps"]):
            save(done, {"optimizer": opt.state_dict(), "scheduler": sched.state_dict()})
    student.eval().requires_grad_(False)
    return {"loss": avg, "steps": opts["steps"], "seconds": round(time.time() - t0, 1)}
