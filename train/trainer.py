"""The one training loop for every protection method (single process, or DDP under torchrun).

A method contributes its front-end (forward), its random inputs (`sample_random`, labels passed so
PartialFace can restrict subsets per identity) and, where it has one, `extra_loss()` (PPFR-FD analysis
penalty). Losses: a margin head (ArcFace/CosFace) and/or distillation from a teacher embedding.
Every trained parameter (backbone, head, distillation projection, the method's learnable parts) goes
into the checkpoint with the config and the step, so `resume` continues the same run exactly.

Read in this order: the losses (`TrainStep`, `build_losses`), the optimizers (`build_optimizers`), the
`Schedule` (stages, trunk freezing, learning rate), `Batches` (step -> batch), `train_step` (one step:
the public piece a benchmark times), evaluation and saving, then `train`, the loop that ties them up.
"""

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .augment import augment
from .config import ConfigError, full_config, load_config  # noqa: F401 (load_config: attack/data.py)
from .data import FaceFolder, load_eval_set, load_face_folder, load_unlabeled, resolve
from .distill import DistillLoss, load_teacher
from .evaluate import evaluate_pairs, format_row, plot_roc
from .heads import build_head
from .model import build_model, save_checkpoint


# --- distributed -----------------------------------------------------------------------------------
def _dist_setup(cfg) -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    want = cfg["train"]["device"]
    cuda = torch.cuda.is_available() and want in ("auto", "cuda")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
        threads = cfg["train"]["threads"] or max(1, (os.cpu_count() or 1) // world)
        torch.set_num_threads(threads)
    return rank, world, device


def _barrier(world):
    if world > 1:
        dist.barrier()


# --- data ------------------------------------------------------------------------------------------
def load_training_faces(dc: dict, log) -> FaceFolder:
    """The labeled faces plus every unlabeled folder (data.unlabeled)."""
    data = load_face_folder(dc["train"], dc["labels_csv"], dc["overlap_json"], dc["cache"], dc["max_images"])
    return _with_unlabeled(data, dc, log) if dc["unlabeled"] else data


def _with_unlabeled(data: FaceFolder, dc: dict, log) -> FaceFolder:
    """The labeled faces plus every unlabeled folder, each face its own class, minus the faces the leak
    filter finds too close to an evaluation image."""
    from .leak_filter import filter_unlabeled

    images, labels, paths, classes = [data.images], [data.labels], list(data.paths), list(data.classes)
    for spec in dc["unlabeled"]:
        verdict = filter_unlabeled(spec, dc["eval"], dc["cache"], dc["leak_far"])
        imgs, files = load_unlabeled(spec["root"], dc["cache"], spec.get("max_images"))
        keep = np.isin(np.array(files), np.array(verdict["keep"]))
        log(
            f"{spec['root']}: {len(files)} faces, dropped {verdict['dropped_count']} near-matches of "
            f"{verdict['eval_images']} evaluation images (teacher cosine > {verdict['threshold']:.3f}, "
            f"impostor FAR {verdict['far']:g})"
        )
        kept = [f for f, k in zip(files, keep) if k]
        images.append(np.asarray(imgs)[keep])
        labels.append(len(classes) + np.arange(len(kept)))
        paths += [f"{Path(spec['root']).name}/{f}" for f in kept]
        classes += [f"{Path(spec['root']).name}/{f}" for f in kept]
    return FaceFolder(np.concatenate(images), np.concatenate(labels), paths, classes)


def calibration_faces(data: FaceFolder, cfg: dict) -> torch.Tensor:
    """A fixed sample of training faces for data statistics (DCTDP clip bounds, a pixel stem's start,
    the online teacher's mean)."""
    n = len(data.labels)
    pick = np.random.default_rng(cfg["seed"]).choice(
        n, min(n, cfg["train"]["calibrate_images"]), replace=False
    )
    return torch.as_tensor(np.ascontiguousarray(data.images[np.sort(pick)]))


# --- losses ----------------------------------------------------------------------------------------
class TrainStep(nn.Module):
    """Everything with trainable parameters in one module, so DDP syncs all of their gradients; its
    forward gives the weighted losses of a batch."""

    def __init__(self, method, recognizer, head, distill, head_w: float, distill_w: float, online=None):
        super().__init__()
        self.method, self.recognizer, self.head, self.distill = method, recognizer, head, distill
        self.head_w, self.distill_w, self.online = head_w, distill_w, online

    def forward(self, images, labels, teacher, rand: dict) -> dict:
        protected = self.method(images, **rand)
        losses = {}
        if self.online is not None:  # targets from the pretrained net on the same clean faces
            s_entry, feats = self.recognizer.forward_with_entry(protected)
            t_entry, t_emb = self.online(images)
            parts = self.distill(s_entry, feats, t_entry, t_emb, self.online.mean)
            losses |= {k: self.distill_w * v for k, v in parts.items()}
        else:
            feats = self.recognizer(protected)
        if self.head is not None:
            losses["margin"] = self.head_w * F.cross_entropy(self.head(feats, labels), labels)
        if self.distill is not None and self.online is None:
            losses["distill"] = self.distill_w * self.distill(feats, teacher)
        extra = self.method.extra_loss()
        if extra is not None:
            losses["method"] = extra
        if hasattr(self.recognizer.adapter, "aux_loss"):  # a server step that learns from the draws
            losses["route"] = self.recognizer.adapter.aux_loss(rand)
        return losses


def build_losses(cfg, method, recognizer, data: FaceFolder, calib: torch.Tensor):
    """(TrainStep, cached teacher embeddings or None): the margin head and the distillation the config
    weighs above 0, the latter from the pretrained net online or from cached (embedding, flipped
    embedding) rows in data.paths order."""
    emb_dim = cfg["model"].get("embedding_size", 512)
    head = distill = online = teacher = None
    if cfg["head"]["weight"] > 0:
        hc = {k: v for k, v in cfg["head"].items() if k != "weight"}
        try:
            head = build_head(embedding_size=emb_dim, num_classes=data.num_classes, **hc)
        except (ValueError, TypeError) as err:
            raise ConfigError(f"head: {err}") from None
    dc = cfg["distill"]
    if dc["weight"] > 0 and dc["online"]:
        from .student import OnlineDistillLoss, OnlineTeacher

        online = OnlineTeacher(cfg["model"].get("entry", "conv64_1"))
        online.set_mean(calib)
        distill = OnlineDistillLoss(dc["feature_weight"])
    elif dc["weight"] > 0:
        teacher = load_teacher(dc["teacher"], data.paths, dc["center"])
        distill = DistillLoss(emb_dim, teacher[0].shape[1])
    return TrainStep(method, recognizer, head, distill, cfg["head"]["weight"], dc["weight"], online), teacher


# --- optimizers ------------------------------------------------------------------------------------
def _is_trunk(name: str) -> bool:
    return ".backbone.trunk." in name


def _front_ids(module: nn.Module) -> set[int]:
    """Parameters of a pixel stem's copy of the pretrained first layers (student.DlibFront)."""
    from .student import DlibFront

    return {id(p) for m in module.modules() if isinstance(m, DlibFront) for p in m.parameters()}


def _trainable(name: str, p, tc: dict) -> bool:
    """Parameters the optimizer holds: a pretrained trunk joins unless trunk_lr_mult is 0 (even while
    trunk_frozen_steps keeps it still: frozen parameters get no gradient, and the optimizer skips them)."""
    return p.requires_grad or (_is_trunk(name) and tc["trunk_lr_mult"] > 0)


def freeze_trunk(module: nn.Module, frozen: bool) -> None:
    """A frozen trunk computes no weight gradients at all (cheaper steps); input gradients still flow."""
    for name, p in module.named_parameters():
        if _is_trunk(name):
            p.requires_grad_(not frozen)


def _param_groups(module: TrainStep, skip: set[int], tc: dict) -> list[dict]:
    """One group per learning-rate factor (pretrained layers learn at a fraction of lr), each split into
    weights (with weight decay) and BN, PReLU, biases, scales (without)."""
    rest = [(n, p) for n, p in module.named_parameters() if _trainable(n, p, tc) and id(p) not in skip]
    front = _front_ids(module)

    def lr_mult(name, p) -> float:
        if _is_trunk(name):
            return tc["trunk_lr_mult"]
        return tc["front_lr_mult"] if id(p) in front else 1.0

    groups = []
    for mult in sorted({lr_mult(n, p) for n, p in rest}):
        sel = [p for n, p in rest if lr_mult(n, p) == mult]
        lr = tc["lr"] * mult
        groups += [
            {"params": [p for p in sel if p.ndim > 1], "weight_decay": tc["weight_decay"], "lr": lr},
            {"params": [p for p in sel if p.ndim <= 1], "weight_decay": 0.0, "lr": lr},
        ]
    return [g for g in groups if g["params"]]


def build_optimizers(module: TrainStep, tc: dict) -> list[torch.optim.Optimizer]:
    """The main optimizer (train.optimizer) and, for a method with learnable parts, its own (reference
    DCTDP trains its noise module with Adam). Every group remembers its base_lr for the schedule."""
    method_params = [p for p in module.method.parameters() if p.requires_grad]
    groups = _param_groups(module, {id(p) for p in method_params}, tc)
    if tc["optimizer"] == "sgd":
        opts = [torch.optim.SGD(groups, lr=tc["lr"], momentum=tc["momentum"], nesterov=True)]
    else:
        opts = [torch.optim.AdamW(groups, lr=tc["lr"])]
    if method_params:
        mlr = tc["method_lr"] if tc["method_lr"] is not None else tc["lr"]
        cls = torch.optim.Adam if tc["method_optimizer"] == "adam" else torch.optim.SGD
        opts.append(cls(method_params, lr=mlr))
    for o in opts:
        for g in o.param_groups:
            g["base_lr"] = g["lr"]
    return opts


# --- schedule --------------------------------------------------------------------------------------
@dataclass
class Schedule:
    """Stages and learning rate over `total` steps. A stage boundary (train.stages) starts a fresh
    optimizer; within a stage the rate warms up, then decays (cosine, step at epoch milestones, or
    constant) towards the next boundary (max_steps after the last). A pretrained trunk stays frozen for
    trunk_frozen_steps (throughout at trunk_lr_mult 0)."""

    tc: dict
    total: int
    steps_per_epoch: int

    def trunk_frozen(self, step: int) -> bool:
        return self.tc["trunk_lr_mult"] == 0 or step < self.tc["trunk_frozen_steps"]

    def stage_begins(self, step: int) -> bool:
        return step > 0 and step in self.tc["stages"]

    def lr_factor(self, step: int) -> float:
        tc = self.tc
        horizon = min([b for b in tc["stages"] if b > step] + [self.total])
        warm = tc["warmup_steps"] or 0
        if step < warm:
            return (step + 1) / warm
        if tc["schedule"] == "step":
            epoch = step / self.steps_per_epoch
            return tc["gamma"] ** sum(epoch >= m for m in tc["milestones"])
        if tc["schedule"] == "cosine":
            t = (step - warm) / max(1, horizon - warm)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
        return 1.0  # constant


def total_steps(tc: dict, steps_per_epoch: int) -> int:
    return int(tc["epochs"] * steps_per_epoch) if tc["epochs"] else int(tc["max_steps"])


# --- batches ---------------------------------------------------------------------------------------
class Batches:
    """The batch of a step, from (seed, step) alone: data order, flips, augmentation and the method's
    random inputs, so a resumed run sees the same batches. Each process takes its own slice."""

    def __init__(self, data: FaceFolder, method, cfg: dict, teacher, rank: int, world: int, device):
        self.data, self.method, self.teacher, self.device = data, method, teacher, device
        self.seed, self.tc, self.rank, self.world = cfg["seed"], cfg["train"], rank, world
        self.size = self.tc["batch_size"]
        self.steps_per_epoch = max(1, len(data.labels) // (self.size * world))

    def __call__(self, step: int) -> dict:
        epoch, within = divmod(step, self.steps_per_epoch)
        order = torch.Generator().manual_seed(self.seed * 100003 + epoch)
        perm = torch.randperm(len(self.data.labels), generator=order)
        slot = within * self.world + self.rank
        idx = np.sort(perm[slot * self.size : (slot + 1) * self.size].numpy())
        gen = torch.Generator().manual_seed(self.seed * 7919 + step * self.world + self.rank)
        images = torch.as_tensor(np.ascontiguousarray(self.data.images[idx]))
        labels = torch.as_tensor(self.data.labels[idx])
        if self.tc["flip"]:
            flip = torch.rand(len(idx), generator=gen) < 0.5
        else:
            flip = torch.zeros(len(idx), dtype=torch.bool)
        images = torch.where(flip[:, None, None, None], images.flip(2), images)  # pixel-space flip
        images = augment(images, gen, self.tc["augment"])
        target = None
        if self.teacher is not None:
            emb, emb_flip = (torch.as_tensor(t[idx]) for t in self.teacher)
            target = torch.where(flip[:, None], emb_flip, emb).to(self.device)
        rand = self.method.sample_random(len(idx), gen, labels)
        return {
            "images": images.to(self.device),
            "labels": labels.to(self.device),
            "teacher": target,
            "rand": {k: v.to(self.device) for k, v in rand.items()},
        }


# --- the step --------------------------------------------------------------------------------------
@dataclass
class TrainState:
    """What a step changes: the module holding every trained parameter, its optimizers and the run's
    progress (the checkpoint's `state`: step, train_seconds, history, ...)."""

    module: TrainStep
    optimizers: list
    schedule: Schedule
    progress: dict = field(
        default_factory=lambda: {"step": 0, "history": [], "init": None, "train_seconds": 0.0}
    )
    model: nn.Module | None = None  # the module under DistributedDataParallel; None: the module itself
    amp: bool = False  # bfloat16 autocast (CUDA)
    log: Callable[..., None] = print  # a no-op on every rank but 0


def _apply_schedule(state: TrainState) -> None:
    step, schedule = state.progress["step"], state.schedule
    freeze_trunk(state.module, schedule.trunk_frozen(step))
    if schedule.stage_begins(step) and state.progress.get("stage_start") != step:
        state.optimizers = build_optimizers(state.module, schedule.tc)
        state.progress["stage_start"] = step
        state.log(f"step {step}: a new stage begins (fresh optimizer)")
    factor = schedule.lr_factor(step)
    for o in state.optimizers:
        for g in o.param_groups:
            g["lr"] = g["base_lr"] * factor


def train_step(state: TrainState, batch: dict) -> dict[str, torch.Tensor]:
    """Step progress["step"] of the run: the schedule's stage, trunk freezing and learning rate, the
    losses of `batch` (Batches' dict, on the device), one backward pass and every optimizer's step.
    Returns the losses; progress["step"] moves on by one."""
    _apply_schedule(state)
    model = state.model or state.module
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=state.amp):
        losses = model(batch["images"], batch["labels"], batch["teacher"], batch["rand"])
    loss = sum(losses.values())
    if not torch.isfinite(loss):
        raise RuntimeError(f"loss is {loss.item()} at step {state.progress['step']}; lower train.lr")
    for o in state.optimizers:
        o.zero_grad(set_to_none=True)
    loss.backward()
    for o in state.optimizers:
        o.step()
    state.progress["step"] += 1
    return losses


# --- evaluation and saving -------------------------------------------------------------------------
def evaluate_sets(method, recognizer, sets, ec: dict) -> tuple[dict, dict]:
    """({set: metrics}, {set: pair scores}) on every evaluation set, with the eval seed's draws."""
    metrics, scores = {}, {}
    for ps in sets:
        metrics[ps.name], scores[ps.name] = evaluate_pairs(
            method, recognizer, ps, ec["seed"], ec["batch_size"]
        )
    return metrics, scores


def _evaluate_at_init(state: TrainState, sets, ec: dict) -> None:
    """The untrained model's numbers, kept in progress so metrics.json can compare (once per run)."""
    if not (ec["init"] and state.progress["init"] is None and sets):
        return
    t0 = time.time()
    m = state.module
    state.progress["init"], scores = evaluate_sets(m.method, m.recognizer, sets, ec)
    state.progress["init_scores"] = {k: v.tolist() for k, v in scores.items()}
    for k, metrics in state.progress["init"].items():
        state.log(format_row(f"{k} at init", metrics) + f"  ({time.time() - t0:.0f}s)")


def save_run(path: Path, cfg: dict, state: TrainState) -> None:
    """model.save_checkpoint's file plus every optimizer's state and the distillation projection (its one
    optimizer slot holds a list here), so resume continues exactly."""
    m = state.module
    progress = dict(state.progress, total_steps=state.schedule.total)
    save_checkpoint(path, cfg, m.method, m.recognizer, head=m.head, state=progress)
    ck = torch.load(path, map_location="cpu", weights_only=False)
    ck["optimizer"] = [o.state_dict() for o in state.optimizers]
    ck["distill"] = m.distill.state_dict() if m.distill is not None else None
    torch.save(ck, path)


def _resume(path, state: TrainState, device) -> None:
    from .keys import method_key_bytes, unseal

    ck = torch.load(resolve(path), map_location=device, weights_only=False)
    m = state.module
    key = method_key_bytes(m.method)
    m.method.load_state_dict(ck["method"])
    if key is not None:  # a sealed checkpoint holds the marker's Shuffle1 order: back to the run's key's
        m.method.load_state_dict(unseal(ck["config"], m.method, key)[1].state_dict())
    m.recognizer.load_state_dict(ck["recognizer"])
    if m.head is not None and ck.get("head"):
        m.head.load_state_dict(ck["head"])
    if m.distill is not None and ck.get("distill"):
        m.distill.load_state_dict(ck["distill"])
    state.progress.update(ck.get("state", {}))
    if state.progress["step"] not in state.schedule.tc["stages"]:  # a new stage starts a fresh optimizer
        for o, s in zip(state.optimizers, ck.get("optimizer") or []):
            o.load_state_dict(s)
    state.log(f"resumed from {path} at step {state.progress['step']}")


# --- the loop --------------------------------------------------------------------------------------
class _Meter:
    """Running averages of the losses: on the bar, or as plain lines for log files (no bar)."""

    def __init__(self, bar, every: int, plain: bool, log):
        self.bar, self.every, self.plain, self.log, self.avg = bar, every, plain, log, {}

    def update(self, losses: dict, state: TrainState) -> None:
        for k, v in losses.items():
            self.avg[k] = 0.9 * self.avg.get(k, v.item()) + 0.1 * v.item()
        self.bar.update(1)
        step, total = state.progress["step"], state.schedule.total
        if step % self.every and step != total:
            return
        lr = state.optimizers[0].param_groups[0]["lr"]
        stats = {k: f"{v:.3f}" for k, v in self.avg.items()} | {"lr": f"{lr:.3g}"}
        self.bar.set_postfix(stats)
        if self.plain:
            took = state.progress["train_seconds"] / step
            line = " ".join(f"{k} {v}" for k, v in stats.items())
            self.log(f"step {step}/{total} {line} ({took:.2f} s/step)", flush=True)


@dataclass
class _Run:
    """Where a run reports, evaluates and saves."""

    cfg: dict
    ckpt: Path
    rank: int
    world: int
    sets: list
    bar: bool


def _out_of_time(state: TrainState, tc: dict) -> bool:
    """train.max_minutes reached: the run ends at this step."""
    if not tc["max_minutes"] or state.progress["train_seconds"] <= 60 * tc["max_minutes"]:
        return False
    state.log(f"\nstopping at step {state.progress['step']}: train.max_minutes={tc['max_minutes']} reached")
    state.schedule.total = state.progress["step"]
    return True


def _between_steps(run: _Run, state: TrainState, bar) -> None:
    """Evaluation and checkpoints every so many steps (not after the last: train does those)."""
    tc, step = run.cfg["train"], state.progress["step"]
    last = _out_of_time(state, tc) or step == state.schedule.total
    if tc["eval_every"] and step % tc["eval_every"] == 0 and not last and run.rank == 0:
        m, _ = evaluate_sets(state.module.method, state.module.recognizer, run.sets, run.cfg["eval"])
        state.progress["history"].append({"step": step, **{k: v["accuracy_mean"] for k, v in m.items()}})
        bar.write(" | ".join(format_row(f"step {step} {k}", v) for k, v in m.items()))
        state.module.train()
    if tc["save_every"] and step % tc["save_every"] == 0 and not last and run.rank == 0:
        save_run(run.ckpt, run.cfg, state)
    if run.world > 1 and tc["max_minutes"]:  # every rank must stop at the same step
        t = torch.tensor([state.schedule.total])
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        state.schedule.total = int(t)


def _loop(run: _Run, state: TrainState, batches: Batches) -> None:
    from tqdm import tqdm

    progress = state.progress
    show = run.bar and run.rank == 0
    bar = tqdm(
        total=state.schedule.total,
        initial=progress["step"],
        desc=run.cfg["name"],
        disable=not show,
        dynamic_ncols=True,
    )
    meter = _Meter(bar, run.cfg["train"]["log_every"], plain=not run.bar, log=state.log)
    t_start, t_prev = time.time(), progress["train_seconds"]
    state.module.train()
    while progress["step"] < state.schedule.total:
        losses = train_step(state, batches(progress["step"]))
        progress["train_seconds"] = t_prev + time.time() - t_start
        meter.update(losses, state)
        _between_steps(run, state, bar)
    bar.close()
    progress["total_steps"] = state.schedule.total


def _build_model(cfg: dict):
    try:
        return build_model(cfg)
    except (ValueError, TypeError) as err:
        raise ConfigError(str(err)) from None


def train(config: dict, out_dir=None, resume=None, progress: bool = True) -> Path:
    """Train per `config` (see config.py); returns the checkpoint path (out_dir/checkpoint.pt)."""
    cfg = full_config(config)
    tc, dc = cfg["train"], cfg["data"]
    rank, world, device = _dist_setup(cfg)
    out = Path(out_dir) if out_dir is not None else resolve("runs") / cfg["name"]
    log = print if rank == 0 else (lambda *a, **k: None)
    torch.manual_seed(cfg["seed"])
    np.random.seed(cfg["seed"])
    method, recognizer = _build_model(cfg)
    data = load_training_faces(dc, log)
    calib = calibration_faces(data, cfg)
    module, teacher = build_losses(cfg, method, recognizer, data, calib)
    n_params = sum(p.numel() for p in recognizer.parameters()) / 1e6
    log(
        f"[{cfg['name']}] {len(data.labels)} faces, {data.num_classes} identities; method "
        f"{cfg['method']['name']} -> {method.output_shape()}, {n_params:.2f}M params"
    )
    method.calibrate(calib)  # data statistics the method needs (DCTDP clip bounds)
    if not resume:  # a resumed run loads these parameters from its checkpoint
        recognizer.calibrate(method, calib, cfg["seed"])  # e.g. a pixel stem's linear start
    module = module.to(device)
    batches = Batches(data, method, cfg, teacher, rank, world, device)
    schedule = Schedule(tc, total_steps(tc, batches.steps_per_epoch), batches.steps_per_epoch)
    amp = tc["amp"] and device.type == "cuda"
    state = TrainState(module, build_optimizers(module, tc), schedule, amp=amp, log=log)
    if resume:
        _resume(resume, state, device)
    sets = [load_eval_set(s, dc["cache"]) for s in dc["eval"]] if rank == 0 else []
    _evaluate_at_init(state, sets, cfg["eval"])
    _barrier(world)
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        state.model = nn.parallel.DistributedDataParallel(module, device_ids=ids)
    run = _Run(cfg, out / "checkpoint.pt", rank, world, sets, progress)
    _loop(run, state, batches)
    if rank == 0:
        save_run(run.ckpt, cfg, state)
        write_results(cfg, out, state, sets, data, world)
    _barrier(world)
    return run.ckpt


# --- results ---------------------------------------------------------------------------------------
def _compare_with_init(trained: dict, scores: dict, progress: dict, sets, ec: dict) -> tuple[dict, dict]:
    """({set: trained, init, delta_accuracy}, ROC curves), each comparison printed."""
    results, curves = {}, {}
    for name, m in trained.items():
        same = next(s.same for s in sets if s.name == name)
        entry = {"trained": m}
        if progress.get("init") and name in progress["init"]:
            entry["init"] = progress["init"][name]
            entry["delta_accuracy"] = m["accuracy_mean"] - entry["init"]["accuracy_mean"]
            curves[f"{name} init"] = (np.array(progress["init_scores"][name]), same)
        curves[f"{name} trained"] = (scores[name], same)
        results[name] = entry
        print(format_row(f"{name} trained", m))
        if "init" in entry:
            print(format_row(f"{name} at init", entry["init"]))
            print(
                f"{name}: trained beats init by {100 * entry['delta_accuracy']:+.2f} points "
                f"(10-fold accuracy, eval seed {ec['seed']})"
            )
    return results, curves


def write_results(cfg: dict, out: Path, state: TrainState, sets, data: FaceFolder, world: int) -> dict:
    """metrics.json (the trained numbers beside the untrained ones), roc.png and, for an analysis run,
    the channel scores."""
    from .keys import seal

    ec, progress, method = cfg["eval"], state.progress, state.module.method
    t0 = time.time()
    trained, scores = evaluate_sets(method, state.module.recognizer, sets, ec)
    results, curves = _compare_with_init(trained, scores, progress, sets, ec)
    metrics = {
        "name": cfg["name"],
        "method": cfg["method"]["name"],
        "backbone": cfg["model"].get("backbone"),
        "protected_shape": list(method.output_shape()),
        "payload_bytes_float16": method.payload_bytes("float16"),
        "payload_bytes_float32": method.payload_bytes("float32"),
        "eval_seed": ec["seed"],
        "train": {
            "steps": progress["step"],
            "seconds": round(progress["train_seconds"], 1),
            "faces": len(data.labels),
            "identities": data.num_classes,
            "processes": world,
            "batch_size_global": cfg["train"]["batch_size"] * world,
            "distill_weight": cfg["distill"]["weight"],
            "head": cfg["head"]["type"] if cfg["head"]["weight"] > 0 else None,
        },
        "eval_seconds": round(time.time() - t0, 1),
        "results": results,
        "history": progress["history"],
        "config": seal(cfg, method)[0],  # a deployment key: its id only
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if curves:
        plot_roc(curves, out / "roc.png", title=cfg["name"])
    if getattr(method, "analysis", False):
        from .analysis import write_channel_scores

        write_channel_scores(method, out)
    print(f"wrote {out / 'checkpoint.pt'}, {out / 'metrics.json'}, {out / 'roc.png'}")
    return metrics
