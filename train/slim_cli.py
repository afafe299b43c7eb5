"""ppfr-train slim: a trained pixel-stem recognizer (default: the shipped one) with a leaner pixel stem,
distilled from its own stem: cheaper to serve, the same router, dlib front and trunk.

    ppfr-train slim --width 48 --depth 2          # pretrained/dlib_ppfr_fd -> runs/dlib_ppfr_fd_slim
    ppfr-eval --checkpoint runs/dlib_ppfr_fd_slim/checkpoint.pt --no-flip
    ppfr-export --checkpoint runs/dlib_ppfr_fd_slim/checkpoint.pt --out artifacts/dlib_ppfr_fd_slim

How (train/stem_distill.py): the new stem's linear map starts as the least-squares fit of the source
stem's image on training faces; then it learns the source stem's image (--stem-steps; channels placed
by the client's draw: neither the router nor any dlib layer runs, so a step is cheap), then the source
recognizer's entry activation and embedding through the router, as deployed (--entry-steps). Only the new
stem learns; faces are the config's training faces, augmented as in training, protected under the
source's (demo) key. The checkpoint's config says the new width and depth, so every tool rebuilds it.
Slim before re-keying: `ppfr-train rekey --from runs/dlib_ppfr_fd_slim/checkpoint.pt`.

`--router-reader N` then gives the chain router a lean per-map reader (one stride-2 convolution N wide),
`--router-layers N` keeps its first N attention layers, `--router-sinkhorn N` sets its Sinkhorn rounds,
and the router is trained again on its own (`lean_router`); `--keep-stem` skips the stem stages, and
with it `--depth N` keeps the stem's first N residual blocks (`--dlib-steps` then retrains the stem).
At batch 1 the router's cost is op overhead, not arithmetic: each attention layer or Sinkhorn round
costs what a layer of dlib's trunk does (docs/results.md, "A lean router and a one-block stem").

`--dlib-steps N` then teaches the pixel stem for N steps with dlib itself on the clean face
(`stem_distill.DlibTeacher`: what the wide default was trained against; the slim stem alone learned from
the wide one, a student of a student), through the router, on every training face with the leak filter as
training runs it. The shipped default is the previous one after `--keep-stem --dlib-steps 1500` (14 min):
LFW 97.60, one-template TAR@1e-3 79.8% against 97.58 and 79.0% (pretrained/README.md).

Measured (the defaults, width 48 depth 2, from the width-96 depth-3 default; ~35 min on the shared 2-core
machine): LFW 97.63 +- 0.50, TAR@1e-3 85.13 on all 6,000 pairs single view (the source: 97.70, 83.20).
"""

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import keys
from .config import ConfigError
from .data import DataError, load_face_folder, resolve
from .rekey import default_out, keyed_stem, pixel_stem
from .rekey_cli import DEFAULT_FROM
from .stem_distill import CleanFaces, DlibTeacher, distill, placed
from .student import PixelStem, ResBlock


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="ppfr-train slim", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--from", dest="src", default=DEFAULT_FROM, help=f"checkpoint to slim ({DEFAULT_FROM})")
    ap.add_argument("--out", default=None, help="output folder (default runs/<source folder>_slim)")
    ap.add_argument("--width", type=int, default=48, help="the new stem's width (48)")
    ap.add_argument(
        "--depth", type=int, default=None, help="the new stem's residual blocks (2; --keep-stem: keep N)"
    )
    ap.add_argument("--stem-steps", type=int, default=600, help="steps matching the stem's image (600)")
    ap.add_argument("--entry-steps", type=int, default=150, help="then steps at entry + embedding (150)")
    ap.add_argument("--keep-stem", action="store_true", help="keep the source's stem: no stem stages")
    ap.add_argument(
        "--router-reader",
        type=int,
        default=0,
        help="a lean per-map reader for the router, its width (0: keep the router as it is)",
    )
    ap.add_argument(
        "--router-layers", type=int, default=0, help="keep the router's first N attention layers (0: all)"
    )
    ap.add_argument("--router-sinkhorn", type=int, default=0, help="the router's Sinkhorn rounds (0: keep)")
    ap.add_argument("--router-steps", type=int, default=1500, help="router steps after a change (1500)")
    ap.add_argument(
        "--dlib-steps",
        type=int,
        default=0,
        help="then steps with dlib itself on the clean face as the stem's teacher, every training face (0)",
    )
    ap.add_argument("--dlib-lr", type=float, default=3e-4, help="their peak learning rate (3e-4)")
    ap.add_argument("--batch-size", type=int, default=32, help="faces per stem step (32)")
    ap.add_argument("--entry-batch-size", type=int, default=16, help="faces per entry step (16)")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--fit-images", type=int, default=1024, help="faces for the linear init (1024)")
    ap.add_argument("--max-images", type=int, default=None, help="training faces (default: all; tests)")
    ap.add_argument("--resume", action="store_true", help="continue from OUT/progress.pt")
    ap.add_argument(
        "--eval", default="all", help="evaluation sets for metrics.json: all (the config's), lfw, or none"
    )
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument("--seed", type=int, default=0)
    return ap


def _source(path: str):
    from .model import load_checkpoint

    config, method, recognizer, ckpt = load_checkpoint(resolve(path))
    try:
        pixel_stem(recognizer)
    except ValueError:
        raise ConfigError(f"{path}: slimming replaces a pixel stem (model.pixel_stem: true)") from None
    if keys.sealed_key_id(config["method"]) is not None:
        raise ConfigError(f"{path} is adapted to a deployment key: slim the one it came from, then re-key")
    return config, method, recognizer.eval(), ckpt.get("state", {})


@torch.no_grad()
def fit_to_teacher(stem: PixelStem, teacher, method, images: np.ndarray, opts: dict) -> None:
    """The new stem's input statistics and linear map: least squares on the teacher stem's image of
    opts['fit_images'] training faces (channels placed as in distillation)."""
    pick = np.random.default_rng(opts["seed"]).choice(
        len(images), min(len(images), opts["fit_images"]), False
    )
    faces = torch.from_numpy(np.array(images[np.sort(pick)]))

    def batches():
        gen = torch.Generator().manual_seed(opts["seed"])
        for i in range(0, len(faces), 64):
            part = faces[i : i + 64]
            rand = method.sample_random(len(part), gen)
            x = placed(teacher, method(part, **rand), rand, opts["place"]).float()
            yield x, teacher.backbone.stem[0](x).permute(0, 2, 3, 1)

    stem.fit(batches)


def _stage_opts(augment: dict, args, target: str) -> dict:
    return {
        "seed": args.seed,
        "steps": args.stem_steps if target == "stem" else args.entry_steps,
        "batch_size": args.batch_size if target == "stem" else args.entry_batch_size,
        "lr": args.lr if target == "stem" else args.lr / 4,
        "augment": augment,
        "place": "known" if target == "stem" else "router",
        "target": target,
        "fit_images": args.fit_images,
        "log_every": 25,
        "save_every": 100,
    }


def _resume_state(args, progress: Path) -> dict | None:
    if not args.resume:
        return None
    if not progress.is_file():
        raise FileNotFoundError(f"--resume: no {progress} (start without --resume)")
    resume = torch.load(progress, map_location="cpu", weights_only=False)
    if (resume["width"], resume["depth"]) != (args.width, args.depth):
        raise ConfigError(
            f"--resume: {progress} holds a width {resume['width']} depth {resume['depth']} stem"
        )
    return resume


def keep_blocks(stem: PixelStem, depth: int) -> int:
    """--keep-stem --depth N: the stem's first N residual blocks stay (the later ones go: each is x + f(x),
    so the image changes little and --dlib-steps retrains it); the stem's depth after."""
    blocks = [i for i, m in enumerate(stem.context) if isinstance(m, ResBlock)]
    drop = set(blocks[depth:]) if depth is not None else set()
    stem.context = torch.nn.Sequential(*[m for i, m in enumerate(stem.context) if i not in drop])
    return len(blocks) - len(drop)


def _start(teacher, method, images, args, augment: dict, resume: dict | None):
    """(student, its new stem): fitted afresh, or as --resume left it."""
    c, s, _ = method.server_shape()
    torch.manual_seed(args.seed)  # the residual blocks' initial weights
    stem = PixelStem(c, s, args.width, args.depth)
    if resume:
        stem.load_state_dict(resume["stem"])
    else:
        fit_to_teacher(stem, teacher, method, images, _stage_opts(augment, args, "stem"))
    student = copy.deepcopy(teacher)
    student.backbone.stem[0] = stem
    return student, stem


def distill_stages(teacher, method, images, args, augment: dict, out: Path, resume) -> tuple:
    """(student, {stage: distill report}): the stem stage, then the entry stage, each resumable from
    OUT/progress.pt (written every 100 steps)."""
    progress = out / "progress.pt"
    student, stem = _start(teacher, method, images, args, augment, resume)
    done = {"entry": ("stem",), "dlib": ("stem", "entry")}.get(resume["stage"], ()) if resume else ()
    reports = {}
    for target in ("stem", "entry"):
        opts = _stage_opts(augment, args, target)
        if opts["steps"] == 0 or target in done:
            continue

        def save(step, optim, target=target):
            out.mkdir(parents=True, exist_ok=True)
            body = {"stage": target, "step": step, "width": args.width, "depth": args.depth}
            torch.save(body | {"stem": stem.state_dict()} | optim, progress)

        again = resume if resume and resume["stage"] == target else None
        params = list(stem.parameters())
        reports[target] = distill(
            teacher, method, student, method, images, opts, params, save=save, resume=again
        )
    return student, reports


def router_changes(args) -> dict:
    """The router options given: ChainRouter's reader, layers and sinkhorn (method.router_* in the config)."""
    given = {"reader": args.router_reader, "layers": args.router_layers, "sinkhorn": args.router_sinkhorn}
    return {k: v for k, v in given.items() if v}


def lean_router(recognizer, method, images: np.ndarray, args, augment: dict, train: bool = True) -> dict:
    """The chain router made leaner (router_changes: a lean per-map reader, ChainRouter reader=N, a third
    of the router's time; fewer attention layers; fewer Sinkhorn rounds), trained as `ppfr-train rekey`
    trains a router (train/rekey.py: cross-entropy against the chain positions under the source's key,
    each face as it is and flipped + augmented); the layers kept and the classifier start from the
    source's, nothing else changes. train=False only makes the change (a --resume of the dlib stage: its
    saved recognizer holds the trained router)."""
    from .ppfr_fd import ChainRouter
    from .rekey import adapt_router

    router, change = recognizer.adapter, router_changes(args)
    if not isinstance(router, ChainRouter):
        raise ConfigError(f"{args.src}: --router-* needs a chain-router recognizer (method.route: true)")
    if change.get("layers", 0) > len(router.compare):
        raise ConfigError(
            f"--router-layers {change['layers']}: the router has {len(router.compare)} attention layers"
        )
    if "reader" in change:
        router.read = ChainRouter(method.mixed_channels, reader=change["reader"]).read
    router.compare = router.compare[: change.get("layers", len(router.compare))]
    router.sinkhorn = change.get("sinkhorn", router.sinkhorn)
    if not train:
        return {}
    # only re-keying's second stage (a fresh reader has no tokens worth reading once): the reader at 3e-3,
    # the comparison layers and classifier at 1e-3
    opts = {"seed": args.seed, "augment": augment, "views": 2, "router": "compare", "steps": 0}
    opts |= {"read_steps": args.router_steps, "read_lr": 1e-3, "read_lr_mult": 3.0, "lr": 1e-3}
    opts |= {"batch_size": 64, "weight_decay": 5e-4, "log_every": 100}
    report = adapt_router(router, method, images, opts)
    recognizer.eval().requires_grad_(False)
    return report


def dlib_stage(student, method, config: dict, args, augment: dict, out: Path, resume) -> dict:
    """--dlib-steps: the stem learns from dlib itself on the clean face (stem_distill.DlibTeacher, what
    the wide default was trained against: a student of that student inherits both approximations),
    through the recognizer's own router as deployed, BatchNorm frozen, on every training face (the
    labeled folder and the leak-filtered unlabeled ones, as training uses). OUT/progress.pt holds the
    whole recognizer, so --resume continues this stage without the ones before it."""
    from .trainer import load_training_faces

    faces = load_training_faces(config["data"] | {"max_images": args.max_images}, print)
    opts = {"seed": args.seed, "steps": args.dlib_steps, "batch_size": args.batch_size, "lr": args.dlib_lr}
    opts |= {"augment": augment, "place": "router", "target": "entry", "feature_weight": 0.25}
    opts |= {"freeze_bn": True, "log_every": 50, "save_every": 100}

    def save(step, optim):
        out.mkdir(parents=True, exist_ok=True)
        body = {"stage": "dlib", "step": step, "width": args.width, "depth": args.depth}
        stems = {"stem": keyed_stem(student).state_dict(), "model": student.state_dict()}
        torch.save(body | stems | optim, out / "progress.pt")

    again = resume if resume and resume["stage"] == "dlib" else None
    if again:
        student.load_state_dict(again["model"])
    teacher, params = DlibTeacher(config["model"]["entry"]), list(keyed_stem(student).parameters())
    clean = CleanFaces(method)
    return distill(teacher, clean, student, method, faces.images, opts, params, save=save, resume=again)


def write_metrics(config: dict, method, recognizer, out: Path, args, seconds: float) -> None:
    """OUT/metrics.json and roc.png in training's layout (trainer.write_results: export and `python -m
    ppfr.train.release` read them) on the config's evaluation sets (--eval), single view as deployed
    (no flip-sum: half the time), the source's figures beside them."""
    from .data import load_eval_set
    from .evaluate import evaluate_pairs, format_row, plot_roc
    from .keys import seal

    specs = [s for s in config["data"].get("eval", []) if args.eval in ("all", s["name"])]
    t0, ec = time.time(), config["eval"]
    src = resolve(args.src).parent / "metrics.json"
    source = json.loads(src.read_text()) if src.is_file() else {}
    results, curves = {}, {}
    for spec in specs:
        ps = load_eval_set(spec, config["data"].get("cache"))
        m, scores = evaluate_pairs(method, recognizer, ps, ec["seed"], 64, flip=False)
        print(format_row(f"{ps.name} slim", m), flush=True)
        before = (source.get("results", {}).get(ps.name) or {}).get("trained")
        results[ps.name] = {"trained": m} | ({"source": before} if before else {})
        curves[f"{ps.name} slim"] = (scores, ps.same)
    stem = {k: config["model"].get(k) for k in ("width", "depth")}  # as built, --keep-stem included
    slim = {"from": str(args.src), **stem, "seconds": seconds}
    metrics = {k: v for k, v in source.items() if k not in ("results", "history")}
    metrics |= {"slim": slim, "eval_seconds": round(time.time() - t0, 1), "results": results}
    metrics["config"] = seal(config, method)[0]  # a deployment key: its id only
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    if curves:
        plot_roc(curves, out / "roc.png", title=config["name"])


def run(args) -> Path:
    from .model import save_checkpoint

    t0 = time.time()
    config, method, teacher, state = _source(args.src)
    dc = config["data"]
    faces = load_face_folder(
        dc["train"], dc.get("labels_csv"), dc.get("overlap_json"), dc.get("cache"), args.max_images
    )
    out = Path(args.out) if args.out else default_out(args.src, "slim")
    stem = f"width {args.width} depth {args.depth}, {args.stem_steps} stem + {args.entry_steps} entry steps"
    kept = "stem kept" + ("" if args.depth is None else f", its first {args.depth} residual block(s)")
    stages, change = (kept if args.keep_stem else stem), router_changes(args)
    if change:
        stages += f"; router {change}, {args.router_steps} steps"
    if args.dlib_steps:
        stages += f"; {args.dlib_steps} steps taught by dlib"
    print(f"ppfr-train slim: {args.src}, {len(faces.labels)} training faces: {stages}", flush=True)
    augment = config.get("train", {}).get("augment", {})
    new_config = copy.deepcopy(config)
    resume = _resume_state(args, out / "progress.pt")
    if args.keep_stem:
        student, reports = copy.deepcopy(teacher), {}
        new_config["model"]["depth"] = keep_blocks(pixel_stem(student), args.depth)
    else:
        student, reports = distill_stages(teacher, method, faces.images, args, augment, out, resume)
        new_config["model"] |= {"width": args.width, "depth": args.depth}
    if change:
        at_dlib = bool(resume) and resume["stage"] == "dlib"
        reports["router"] = lean_router(student, method, faces.images, args, augment, train=not at_dlib)
        new_config["method"] |= {f"router_{k}": v for k, v in change.items()}
    if args.dlib_steps:
        reports["dlib"] = dlib_stage(student, method, config, args, augment, out, resume)
    seconds = round(time.time() - t0, 1)
    state = dict(state) | {"slimmed_from": str(args.src), "slim_seconds": seconds}
    save_checkpoint(out / "checkpoint.pt", new_config, method, student, state=state)
    opts = {k: v for k, v in vars(args).items() if k not in ("resume", "threads")}
    report = {"from": str(args.src), "options": opts, "stages": reports, "total_seconds": seconds}
    (out / "slim.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "progress.pt").unlink(missing_ok=True)
    print(f"wrote {out / 'checkpoint.pt'} in {seconds:.0f} s", flush=True)
    if args.eval != "none":
        write_metrics(new_config, method, student, out, args, seconds)
    return out / "checkpoint.pt"


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.depth is None and not args.keep_stem:
        args.depth = 2
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = (args.width, args.batch_size, args.entry_batch_size)
    steps = (args.stem_steps, args.entry_steps, args.router_steps, args.dlib_steps)
    steps += tuple(router_changes(args).values())
    if min(*sizes, (args.depth or 0) + 1, *(n + 1 for n in steps)) < 1:
        print(
            "ppfr-train slim: error: width and batch size must be >= 1, depth, steps and reader >= 0",
            file=sys.stderr,
        )
        return 2
    if args.keep_stem and not (router_changes(args) or args.dlib_steps):
        print(
            "ppfr-train slim: error: --keep-stem leaves nothing to do without --router-* or --dlib-steps",
            file=sys.stderr,
        )
        return 2
    try:
        run(args)
    except (ConfigError, DataError, FileNotFoundError, ValueError) as err:
        print(f"ppfr-train slim: error: {err}", file=sys.stderr)
        return 2
    return 0
