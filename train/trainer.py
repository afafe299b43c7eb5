"""The one training loop for every protection method (single process, or DDP under torchrun).

A method contributes its front-end (forward), its random inputs (`sample_random`, labels passed so
PartialFace can restrict subsets per identity) and, where it has one, `extra_loss()` (PPFR-FD analysis
penalty). Losses: a margin head (ArcFace/CosFace) and/or distillation from a cached teacher embedding.
Every trained parameter (backbone, head, distillation projection, the method's learnable parts) goes
into the checkpoint with the config and the step, so `resume` continues the same run exactly.
"""

import copy
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from torch import nn

from .augment import augment
from .data import FaceFolder, load_eval_set, load_face_folder, load_unlabeled, resolve
from .distill import DistillLoss, load_teacher
from .evaluate import evaluate_pairs, format_row, plot_roc
from .heads import build_head
from .model import build_model, save_checkpoint

SHARED = "../shared/data"
DEFAULTS = {
    "name": "run",
    "seed": 0,
    "method": {"name": "ppfr_fd"},
    "model": {"backbone": "mobilefacenet", "embedding_size": 128, "stem": "direct"},
    "head": {"type": "cosface", "s": 32.0, "m": 0.35, "weight": 1.0},
    # online: the pretrained dlib net runs beside the student on the same augmented faces (student.py);
    # otherwise the cached `teacher` embeddings are the targets.
    "distill": {
        "weight": 0.0,
        "teacher": f"{SHARED}/teacher/dlib_celeba.npz",
        "center": True,
        "online": False,
        "feature_weight": 1.0,
    },
    "data": {
        "train": f"{SHARED}/celeba/aligned112",
        "labels_csv": f"{SHARED}/celeba/labels.csv",
        "overlap_json": f"{SHARED}/celeba/overlap_flags.json",
        "max_images": None,
        "unlabeled": [],  # [{root, max_images}]: flat folders of faces without identities (UTKFace)
        "leak_far": 1e-5,  # unlabeled faces this close to an eval image are dropped (leak_filter.py)
        "cache": "runs/.cache",
        "eval": [{"name": "lfw", "pairs": f"{SHARED}/lfw/pairs.txt", "root": f"{SHARED}/lfw/aligned112"}],
    },
    "train": {
        "batch_size": 64,  # per process
        "max_steps": 1000,
        "epochs": None,  # when set, overrides max_steps (steps = epochs * steps per epoch)
        "optimizer": "sgd",
        "lr": 0.1,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "method_lr": None,  # learnable protection parameters (DCTDP rhos, analysis logits); None = lr
        "method_optimizer": "adam",
        "schedule": "cosine",  # cosine | step
        "milestones": [],  # epochs (step schedule)
        "gamma": 0.1,
        "warmup_steps": 0,
        "flip": True,
        "augment": {},  # augment.py: scale, rotate, shift, brightness, contrast, gray
        "trunk_lr_mult": 1.0,  # learning-rate factor for a pretrained trunk (0 freezes it)
        "trunk_frozen_steps": 0,  # the trunk stays frozen this many steps (the stem learns first)
        "front_lr_mult": 1.0,  # learning-rate factor for a pixel stem's copy of the pretrained first layers
        # Steps where a new stage begins: a fresh optimizer, and the LR schedule runs to the next boundary
        # (to max_steps after the last). E.g. [1000] with trunk_frozen_steps 1000: stem, then fine-tuning.
        "stages": [],
        "calibrate_images": 1024,
        "eval_every": 0,  # steps; 0 = only at the end
        "save_every": 0,
        "max_minutes": None,  # wall-clock cap for the loop (makes step count machine-dependent)
        "threads": None,
        "device": "auto",
        "amp": False,
        "log_every": 20,
    },
    "eval": {"seed": 0, "init": True, "batch_size": 128},
}


class ConfigError(Exception):
    """A user mistake in the config: reported without a traceback."""


def merge(base: dict, over: dict, path: str = "") -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if k not in base and path in ("", "train.", "data.", "eval.", "distill.", "head."):
            raise ConfigError(f"unknown config key {path + k!r}; known: {sorted(base)}")
        if isinstance(v, dict) and isinstance(base.get(k), dict) and k not in ("method", "model"):
            out[k] = merge(base[k], v, f"{path}{k}.")
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_config(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config {path} does not exist")
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path} must be a mapping")
    cfg.setdefault("name", path.stem)
    return cfg


def full_config(config: dict) -> dict:
    cfg = merge(DEFAULTS, config)
    if not isinstance(cfg["method"], dict) or "name" not in cfg["method"]:
        raise ConfigError("config needs method: {name: rgb|bdct|ppfr_fd|dctdp|partialface, ...}")
    if cfg["head"].get("weight", 0) <= 0 and cfg["distill"].get("weight", 0) <= 0:
        raise ConfigError("nothing to train: set head.weight > 0 and/or distill.weight > 0")
    return cfg


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


class TrainStep(nn.Module):
    """Everything with trainable parameters in one module, so DDP syncs all of their gradients."""

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


def lr_factor(step: int, total: int, tc: dict, steps_per_epoch: int) -> float:
    warm = tc["warmup_steps"] or 0
    if step < warm:
        return (step + 1) / warm
    if tc["schedule"] == "step":
        epoch = step / steps_per_epoch
        return tc["gamma"] ** sum(epoch >= m for m in tc["milestones"])
    if tc["schedule"] == "cosine":
        t = (step - warm) / max(1, total - warm)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    if tc["schedule"] == "constant":
        return 1.0
    raise ConfigError(f"unknown train.schedule {tc['schedule']!r}; choose cosine, step or constant")


def _is_trunk(name: str) -> bool:
    return ".backbone.trunk." in name


def _front_ids(step_mod: nn.Module) -> set[int]:
    """Parameters of a pixel stem's copy of the pretrained first layers (student.DlibFront)."""
    from .student import DlibFront

    return {id(p) for m in step_mod.modules() if isinstance(m, DlibFront) for p in m.parameters()}


def _trainable(name: str, p, tc: dict) -> bool:
    """Parameters the optimizer holds: a pretrained trunk joins unless trunk_lr_mult is 0 (even while
    trunk_frozen_steps keeps it still: frozen parameters get no gradient, and the optimizer skips them)."""
    return p.requires_grad or (_is_trunk(name) and tc["trunk_lr_mult"] > 0)


def _freeze_trunk(step_mod: nn.Module, frozen: bool) -> None:
    """A frozen trunk computes no weight gradients at all (cheaper steps); input gradients still flow."""
    for name, p in step_mod.named_parameters():
        if _is_trunk(name):
            p.requires_grad_(not frozen)


def _optimizer(step_mod: TrainStep, tc: dict):
    method_params = [p for p in step_mod.method.parameters() if p.requires_grad]
    ids = {id(p) for p in method_params}
    rest = [(n, p) for n, p in step_mod.named_parameters() if _trainable(n, p, tc) and id(p) not in ids]
    front = _front_ids(step_mod)

    def lr_mult(name, p) -> float:  # pretrained layers learn at a fraction of lr
        if _is_trunk(name):
            return tc["trunk_lr_mult"]
        return tc["front_lr_mult"] if id(p) in front else 1.0

    groups = []
    for mult in sorted({lr_mult(n, p) for n, p in rest}):
        sel = [p for n, p in rest if lr_mult(n, p) == mult]
        lr = tc["lr"] * mult
        groups += [
            {"params": [p for p in sel if p.ndim > 1], "weight_decay": tc["weight_decay"], "lr": lr},
            # BN, PReLU, biases, scales: no weight decay
            {"params": [p for p in sel if p.ndim <= 1], "weight_decay": 0.0, "lr": lr},
        ]
    groups = [g for g in groups if g["params"]]
    name = tc["optimizer"]
    if name == "sgd":
        main = torch.optim.SGD(groups, lr=tc["lr"], momentum=tc["momentum"], nesterov=True)
    elif name == "adamw":
        main = torch.optim.AdamW(groups, lr=tc["lr"])
    else:
        raise ConfigError(f"unknown train.optimizer {name!r}; choose sgd or adamw")
    opts = [main]
    if method_params:  # reference DCTDP trains its noise module with its own Adam
        mlr = tc["method_lr"] if tc["method_lr"] is not None else tc["lr"]
        cls = torch.optim.Adam if tc["method_optimizer"] == "adam" else torch.optim.SGD
        opts.append(cls(method_params, lr=mlr))
    for o in opts:
        for g in o.param_groups:
            g["base_lr"] = g["lr"]
    return opts


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


def _eval_all(method, recognizer, sets, seed, bs) -> tuple[dict, dict]:
    metrics, scores = {}, {}
    for ps in sets:
        metrics[ps.name], scores[ps.name] = evaluate_pairs(method, recognizer, ps, seed, bs)
    return metrics, scores


def train(config: dict, out_dir=None, resume=None, progress: bool = True) -> Path:
    """Train per `config` (see DEFAULTS); returns the checkpoint path (out_dir/checkpoint.pt)."""
    from tqdm import tqdm

    cfg = full_config(config)
    tc, ec = cfg["train"], cfg["eval"]
    rank, world, device = _dist_setup(cfg)
    out = Path(out_dir) if out_dir is not None else resolve("runs") / cfg["name"]
    ckpt_path = out / "checkpoint.pt"
    log = print if rank == 0 else (lambda *a, **k: None)

    torch.manual_seed(cfg["seed"])
    np.random.seed(cfg["seed"])
    try:
        method, recognizer = build_model(cfg)
    except (ValueError, TypeError) as err:
        raise ConfigError(str(err)) from None
    emb_dim = cfg["model"].get("embedding_size", 512)

    dc = cfg["data"]
    data = load_face_folder(dc["train"], dc["labels_csv"], dc["overlap_json"], dc["cache"], dc["max_images"])
    if dc["unlabeled"]:
        data = _with_unlabeled(data, dc, log)
    n = len(data.labels)
    head = distill = online = None
    teacher = teacher_flip = None
    if cfg["head"].get("weight", 0) > 0:
        hc = {k: v for k, v in cfg["head"].items() if k != "weight"}
        try:
            head = build_head(embedding_size=emb_dim, num_classes=data.num_classes, **hc)
        except (ValueError, TypeError) as err:
            raise ConfigError(f"head: {err}") from None
    calib = np.random.default_rng(cfg["seed"]).choice(n, min(n, tc["calibrate_images"]), replace=False)
    calib_images = torch.as_tensor(np.ascontiguousarray(data.images[np.sort(calib)]))
    if cfg["distill"].get("weight", 0) > 0 and cfg["distill"]["online"]:
        from .student import OnlineDistillLoss, OnlineTeacher

        online = OnlineTeacher(cfg["model"].get("entry", "conv64_1"))
        online.set_mean(calib_images)
        distill = OnlineDistillLoss(cfg["distill"]["feature_weight"])
    elif cfg["distill"].get("weight", 0) > 0:
        teacher, teacher_flip = load_teacher(cfg["distill"]["teacher"], data.paths, cfg["distill"]["center"])
        distill = DistillLoss(emb_dim, teacher.shape[1])
    log(
        f"[{cfg['name']}] {n} faces, {data.num_classes} identities; method {cfg['method']['name']} "
        f"-> {method.output_shape()}, {sum(p.numel() for p in recognizer.parameters()) / 1e6:.2f}M params"
    )

    # Data statistics the method needs (DCTDP clip bounds): a fixed sample of training faces.
    method.calibrate(calib_images)
    if not resume:  # a resumed run loads these parameters from its checkpoint
        recognizer.calibrate(method, calib_images, cfg["seed"])  # e.g. a pixel stem's linear start

    step_mod = TrainStep(
        method,
        recognizer,
        head,
        distill,
        cfg["head"].get("weight", 0),
        cfg["distill"].get("weight", 0),
        online,
    ).to(device)
    opts = _optimizer(step_mod, tc)

    bs = tc["batch_size"]
    steps_per_epoch = max(1, n // (bs * world))
    total = int(tc["epochs"] * steps_per_epoch) if tc["epochs"] else int(tc["max_steps"])
    state = {"step": 0, "history": [], "init": None, "train_seconds": 0.0}
    if resume:
        ck = torch.load(resolve(resume), map_location=device, weights_only=False)
        method.load_state_dict(ck["method"])
        recognizer.load_state_dict(ck["recognizer"])
        if head is not None and ck.get("head"):
            head.load_state_dict(ck["head"])
        if distill is not None and ck.get("distill"):
            distill.load_state_dict(ck["distill"])
        state.update(ck.get("state", {}))
        if state["step"] not in tc["stages"]:  # at a stage boundary the optimizer starts afresh anyway
            for o, s in zip(opts, ck.get("optimizer") or []):
                o.load_state_dict(s)
        log(f"resumed from {resume} at step {state['step']}")

    sets = []
    if rank == 0:
        sets = [load_eval_set(s, dc["cache"]) for s in dc["eval"]]
    if rank == 0 and ec["init"] and state["init"] is None and sets:
        t0 = time.time()
        state["init"], init_scores = _eval_all(method, recognizer, sets, ec["seed"], ec["batch_size"])
        state["init_scores"] = {k: v.tolist() for k, v in init_scores.items()}
        for k, m in state["init"].items():
            log(format_row(f"{k} at init", m) + f"  ({time.time() - t0:.0f}s)")
    _barrier(world)

    model = step_mod
    if world > 1:
        model = nn.parallel.DistributedDataParallel(
            step_mod, device_ids=[device.index] if device.type == "cuda" else None
        )

    def save(final=False):
        if rank != 0:
            return
        save_checkpoint(ckpt_path, cfg, method, recognizer, head=head, state=dict(state, total_steps=total))
        # The generic checkpoint has one optimizer slot; keep all of ours and the distill projection.
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        ck["optimizer"] = [o.state_dict() for o in opts]
        ck["distill"] = distill.state_dict() if distill is not None else None
        torch.save(ck, ckpt_path)

    amp = tc["amp"] and device.type == "cuda"
    bar = tqdm(
        total=total,
        initial=state["step"],
        desc=cfg["name"],
        disable=not progress or rank != 0,
        dynamic_ncols=True,
    )
    t_start, t_prev = time.time(), state["train_seconds"]
    step_mod.train()
    running = {}
    while state["step"] < total:
        step = state["step"]
        _freeze_trunk(step_mod, tc["trunk_lr_mult"] == 0 or step < tc["trunk_frozen_steps"])
        epoch, within = divmod(step, steps_per_epoch)
        # Data order and random inputs derive from (seed, step): resume reproduces the same batches.
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg["seed"] * 100003 + epoch))
        idx = perm[(within * world + rank) * bs : (within * world + rank + 1) * bs].numpy()
        gen = torch.Generator().manual_seed(cfg["seed"] * 7919 + step * world + rank)
        images = torch.as_tensor(np.ascontiguousarray(data.images[np.sort(idx)]))
        labels = torch.as_tensor(data.labels[np.sort(idx)])
        flip = (
            torch.rand(len(idx), generator=gen) < 0.5
            if tc["flip"]
            else torch.zeros(len(idx), dtype=torch.bool)
        )
        images = torch.where(flip[:, None, None, None], images.flip(2), images)  # pixel-space flip
        images = augment(images, gen, tc["augment"])
        tgt = None
        if teacher is not None:
            rows = np.sort(idx)
            tgt = torch.where(
                flip[:, None], torch.as_tensor(teacher_flip[rows]), torch.as_tensor(teacher[rows])
            )
            tgt = tgt.to(device)
        rand = {k: v.to(device) for k, v in method.sample_random(len(idx), gen, labels).items()}
        if step in tc["stages"] and step > 0 and state.get("stage_start") != step:
            opts = _optimizer(step_mod, tc)
            state["stage_start"] = step
            log(f"step {step}: a new stage begins (fresh optimizer)")
        horizon = min([b for b in tc["stages"] if b > step] + [total])
        f = lr_factor(step, horizon, tc, steps_per_epoch)
        for o in opts:
            for g in o.param_groups:
                g["lr"] = g["base_lr"] * f
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            losses = model(images.to(device), labels.to(device), tgt, rand)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise RuntimeError(f"loss is {loss.item()} at step {step}; lower train.lr")
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss.backward()
        for o in opts:
            o.step()
        state["step"] += 1
        for k, v in losses.items():
            running[k] = 0.9 * running.get(k, v.item()) + 0.1 * v.item()
        bar.update(1)
        state["train_seconds"] = t_prev + time.time() - t_start
        if state["step"] % tc["log_every"] == 0 or state["step"] == total:
            stats = {k: f"{v:.3f}" for k, v in running.items()} | {
                "lr": f"{opts[0].param_groups[0]['lr']:.3g}"
            }
            bar.set_postfix(stats)
            if not progress:  # log files get plain lines instead of a bar
                took = state["train_seconds"] / state["step"]
                log(
                    f"step {state['step']}/{total} "
                    + " ".join(f"{k} {v}" for k, v in stats.items())
                    + f" ({took:.2f} s/step)",
                    flush=True,
                )
        last = state["step"] == total
        if tc["max_minutes"] and state["train_seconds"] > 60 * tc["max_minutes"]:
            log(f"\nstopping at step {state['step']}: train.max_minutes={tc['max_minutes']} reached")
            total = state["step"]
            last = True
        if tc["eval_every"] and state["step"] % tc["eval_every"] == 0 and not last and rank == 0:
            m, _ = _eval_all(method, recognizer, sets, ec["seed"], ec["batch_size"])
            state["history"].append({"step": state["step"], **{k: v["accuracy_mean"] for k, v in m.items()}})
            bar.write(" | ".join(format_row(f"step {state['step']} {k}", v) for k, v in m.items()))
            step_mod.train()
        if tc["save_every"] and state["step"] % tc["save_every"] == 0 and not last:
            save()
        if world > 1 and tc["max_minutes"]:  # every rank must stop at the same step
            t = torch.tensor([total])
            dist.all_reduce(t, op=dist.ReduceOp.MIN)
            total = int(t)
    bar.close()
    state["total_steps"] = total
    save(final=True)

    if rank == 0:
        write_results(cfg, out, method, recognizer, sets, state, n, data.num_classes, world)
    _barrier(world)
    return ckpt_path


def write_results(cfg, out: Path, method, recognizer, sets, state, n_faces, n_classes, world) -> dict:
    ec = cfg["eval"]
    t0 = time.time()
    trained, scores = _eval_all(method, recognizer, sets, ec["seed"], ec["batch_size"])
    results = {}
    curves = {}
    for name, m in trained.items():
        entry = {"trained": m}
        if state.get("init") and name in state["init"]:
            init = state["init"][name]
            entry["init"] = init
            entry["delta_accuracy"] = m["accuracy_mean"] - init["accuracy_mean"]
            curves[f"{name} init"] = (
                np.array(state["init_scores"][name]),
                next(s.same for s in sets if s.name == name),
            )
        curves[f"{name} trained"] = (scores[name], next(s.same for s in sets if s.name == name))
        results[name] = entry
        print(format_row(f"{name} trained", m))
        if "init" in entry:
            print(format_row(f"{name} at init", entry["init"]))
            print(
                f"{name}: trained beats init by {100 * entry['delta_accuracy']:+.2f} points "
                f"(10-fold accuracy, eval seed {ec['seed']})"
            )
    metrics = {
        "name": cfg["name"],
        "method": cfg["method"]["name"],
        "backbone": cfg["model"].get("backbone"),
        "protected_shape": list(method.output_shape()),
        "payload_bytes_float16": method.payload_bytes("float16"),
        "payload_bytes_float32": method.payload_bytes("float32"),
        "eval_seed": ec["seed"],
        "train": {
            "steps": state["step"],
            "seconds": round(state["train_seconds"], 1),
            "faces": n_faces,
            "identities": n_classes,
            "processes": world,
            "batch_size_global": cfg["train"]["batch_size"] * world,
            "distill_weight": cfg["distill"].get("weight", 0),
            "head": cfg["head"].get("type") if cfg["head"].get("weight", 0) > 0 else None,
        },
        "eval_seconds": round(time.time() - t0, 1),
        "results": results,
        "history": state["history"],
        "config": cfg,
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
