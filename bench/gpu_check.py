"""`make gpu-check`: one command a lent GPU machine runs as is (<= 8 minutes), one table, one JSON.

For every trained bundle: recognizer throughput and latency at batch 1..256 in PyTorch CUDA fp32 / fp16 /
bf16, torch.compile and CUDA graphs, ONNX Runtime CUDA and TensorRT where importable (a line says so
otherwise); and training steps/s of the default recipe (configs/dlib_ppfr_fd.yaml, a few steps of each
stage). Without a GPU it runs its CPU forms instead (PyTorch CPU fp32 at batch 1..16, ONNX Runtime CPU,
two training steps at a small batch) in well under a minute, and says the GPU rows were skipped.

It needs neither ../shared nor a set-up virtual environment: `make gpu-check-pack` (here, where the data
is) writes the folder .gpu-check/ (git-ignored):
    faces.npz        64 aligned CelebA training faces (uint8 RGB 112x112)
    face-api/        the pretrained dlib ResNet weights (from `python -m ppfr.train.pretrained where`):
                     the online teacher of the training steps and the frozen trunk of stage-1 bundles
    bundles/<name>/  bundle.json (name, method, protected shape) and checkpoint.pt in release form
                     (train.model.save_release: fp16, a frozen trunk left out); the shipped default
                     points at the tracked pretrained/dlib_ppfr_fd/checkpoint.pt instead
A bare machine with python3, torch, numpy, pyyaml (and onnxruntime for its rows) then runs
`make gpu-check` from the git tree plus that folder; scripts/gpu_check.py makes `ppfr` importable from
the tree when it is not installed.
"""

import argparse
import json
import os
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from . import gpu_bench
from .machine import describe

REPO = Path(__file__).resolve().parents[1]
PACK = REPO / ".gpu-check"
DEFAULT_BUNDLE = "dlib_ppfr_fd"
DEFAULT_CONFIG = REPO / "configs" / "dlib_ppfr_fd.yaml"
GOAL_FACES_PER_S = 50_000  # the goal: default recognizer, fp16, one H100/H200
GPU_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CPU_BATCHES = (1, 4, 16)


class CheckError(RuntimeError):
    """Missing pack or data: said plainly (the CLI prints it without a traceback)."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- pack: what the check needs, from ../shared, runs/ and the venv ------------------------------------


def _bundle_sources(artifacts: Path, runs: Path) -> list[dict]:
    """Every trained bundle (artifacts/dlib_*) with a checkpoint, plus the shipped default."""
    found = {}
    for manifest in sorted(artifacts.glob("dlib_*/manifest.json")):
        m = json.loads(manifest.read_text())
        run = (m.get("training") or {}).get("runName") or m.get("name")
        name = manifest.parent.name
        shipped = REPO / "pretrained" / name / "checkpoint.pt"  # tracked: travels with the git tree
        cands = [shipped] if name == DEFAULT_BUNDLE else []
        cands += [runs / name / "checkpoint.pt", runs / run / "checkpoint.pt", shipped]
        ckpt = next((c for c in cands if c.is_file()), None)
        if ckpt is None:
            log(f"pack: {name}: no checkpoint (runs/{name}, runs/{run} or pretrained/{name}), left out")
            continue
        shape = [int(s) for s in m["protectedTensor"]["shape"][1:]]
        found[name] = {"method": m.get("method"), "shape": shape, "ckpt": ckpt}
    shipped = REPO / "pretrained" / DEFAULT_BUNDLE / "checkpoint.pt"
    if DEFAULT_BUNDLE not in found and shipped.is_file():
        found[DEFAULT_BUNDLE] = {"method": None, "shape": None, "ckpt": shipped}
    return [{"name": k, **v} for k, v in found.items()]


def pack(out: Path = PACK, data: Path | None = None, faces: int = 64, artifacts=None, runs=None) -> Path:
    import torch
    from ppfr.data import data_path
    from ppfr.train.model import build_model, save_release
    from ppfr.train.pretrained import PretrainedError, weights_dir

    data = Path(data) if data else data_path()
    folder = data / "celeba" / "aligned112"
    paths = sorted(folder.glob("*/*.jpg"))
    if len(paths) < faces:
        raise CheckError(f"need {faces} aligned faces in {folder}, found {len(paths)} (pass --data)")
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    (out / "bundles").mkdir(parents=True)
    import cv2

    pick = paths[:: max(1, len(paths) // faces)][:faces]
    imgs = np.stack([cv2.imread(str(p), cv2.IMREAD_COLOR)[:, :, ::-1] for p in pick])
    np.savez_compressed(
        out / "faces.npz", faces=imgs, names=np.array([str(p.relative_to(data)) for p in pick])
    )
    try:
        src = weights_dir()
    except PretrainedError as err:
        raise CheckError(str(err)) from None
    shutil.copytree(src, out / "face-api")
    index = []
    for b in _bundle_sources(Path(artifacts or REPO / "artifacts"), Path(runs or REPO / "runs")):
        dst = out / "bundles" / b["name"]
        dst.mkdir(parents=True)
        if b["ckpt"].is_relative_to(REPO / "pretrained"):
            ckpt = str(b["ckpt"].relative_to(REPO))  # tracked: travels with the git tree
        else:
            save_release(b["ckpt"], dst / "checkpoint.pt")
            ckpt = str((dst / "checkpoint.pt").relative_to(out))
        config = torch.load(REPO / ckpt if ckpt.startswith("pretrained") else out / ckpt, weights_only=False)[
            "config"
        ]
        method, _ = build_model(config, pretrained=False)
        info = {
            "name": b["name"],
            "method": b["method"] or method.name,
            "shape": b["shape"] or list(method.output_shape()),
            "checkpoint": ckpt,
        }
        (dst / "bundle.json").write_text(json.dumps(info, indent=2) + "\n")
        index.append(info)
        log(f"pack: {b['name']} ({info['method']}, {info['shape']}) <- {b['ckpt']}")
    (out / "index.json").write_text(
        json.dumps({"created": _now(), "faces": len(imgs), "bundles": index}, indent=2) + "\n"
    )
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    log(f"pack: wrote {out} ({size / 1e6:.1f} MB: {len(imgs)} faces, face-api weights, {len(index)} bundles)")
    return out


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- the check ---------------------------------------------------------------------------------------


def load_pack(path: Path) -> tuple[np.ndarray, list[dict]]:
    index = Path(path) / "index.json"
    if not index.is_file():
        raise CheckError(
            f"no packed faces at {path}: run `make gpu-check-pack` where ../shared is, then carry "
            f"{Path(path).name}/ along with the git tree"
        )
    faces = np.load(Path(path) / "faces.npz")["faces"]
    return faces, json.loads(index.read_text())["bundles"]


def load_recognizer(pack_dir: Path, info: dict):
    """(method, recognizer) in float32 eval mode. A checkpoint holding the whole trunk needs nothing else;
    one without it (frozen trunk) takes it from the pretrained weights (PPFR_PRETRAINED_DIR)."""
    import torch
    from ppfr.train.model import FROZEN_TRUNK, build_model, load_checkpoint

    path = (
        REPO / info["checkpoint"]
        if info["checkpoint"].startswith("pretrained/")
        else pack_dir / info["checkpoint"]
    )
    ck = torch.load(path, map_location="cpu", weights_only=False)
    if any(k.startswith(FROZEN_TRUNK) for k in ck["recognizer"]):
        method, recognizer = build_model(ck["config"], pretrained=False)
        method.load_state_dict(ck["method"])
        recognizer.load_state_dict(ck["recognizer"])
    else:
        _, method, recognizer, _ = load_checkpoint(path)
    return method.float().eval(), recognizer.float().eval()


def protected_inputs(method, faces: np.ndarray):
    """Real protected tensors of the packed faces (the bundle's torch front-end, fresh random draws)."""
    import torch

    with torch.no_grad():
        x = torch.from_numpy(faces)
        return method(x, **method.sample_random(len(x), torch.Generator().manual_seed(0))).float()


def training_steps(
    pack_dir: Path, faces: np.ndarray, device: str, batch: int, steps: int, warmup: int
) -> dict:
    """Steps/s of the default recipe (configs/dlib_ppfr_fd.yaml) through the trainer's own pieces
    (build_losses, Batches, train_step): online distillation from the frozen pretrained net, stage 1
    (trunk frozen) and stage 2 (trunk fine-tuned, from the recipe's first stage boundary), on the packed
    faces. Only train_step is timed; the first warmup steps (a stage's fresh optimizer) are not."""
    import torch
    from ppfr.train.config import full_config, load_config
    from ppfr.train.data import FaceFolder
    from ppfr.train.model import build_model
    from ppfr.train.trainer import Batches, Schedule, TrainState, build_losses, build_optimizers, train_step

    cfg = full_config(load_config(DEFAULT_CONFIG))
    cfg["train"]["batch_size"] = batch
    tc = cfg["train"]
    dev = torch.device(device)
    torch.manual_seed(0)
    method, recognizer = build_model(cfg)
    names = [f"packed/{i}" for i in range(len(faces))]
    data = FaceFolder(faces, np.arange(len(faces)), names, names)
    module, teacher = build_losses(cfg, method, recognizer, data, torch.from_numpy(faces))
    method.calibrate(torch.from_numpy(faces))
    module = module.to(dev)
    batches = Batches(data, method, cfg, teacher, 0, 1, dev)
    schedule = Schedule(tc, tc["max_steps"], batches.steps_per_epoch)
    state = TrainState(module, build_optimizers(module, tc), schedule, log=lambda *a, **k: None)
    state.module.train()
    out = {"batch": batch, "device": device, "config": str(DEFAULT_CONFIG.relative_to(REPO))}
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for stage, start in (("stage1_trunk_frozen", 0), ("stage2_trunk_trained", tc["stages"][0])):
        state.progress["step"] = start
        times = []
        for i in range(warmup + steps):
            b = batches(state.progress["step"])
            sync()
            t0 = time.perf_counter()
            losses = train_step(state, b)
            sync()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
        out[stage] = {
            "steps": len(times),
            "steps_per_s": round(len(times) / sum(times), 3),
            "faces_per_s": round(batch * len(times) / sum(times), 1),
            "loss": round(float(sum(losses.values()).detach()), 4),
        }
    return out


def run_check(pack_dir: Path, budget_s: float, gpu: bool | None = None) -> dict:
    t_start = time.time()
    faces, bundles = load_pack(pack_dir)
    fa = Path(pack_dir) / "face-api"
    if "PPFR_PRETRAINED_DIR" not in os.environ and fa.is_dir():
        os.environ["PPFR_PRETRAINED_DIR"] = str(fa)
    ok, what = gpu_bench.available()
    if gpu is False:
        ok, what = False, "GPU rows disabled with --cpu"
    result = {
        "created": _now(),
        "machine": describe(),
        "gpu": {"available": ok, "name" if ok else "reason": what},
        "goal": {"faces_per_s": GOAL_FACES_PER_S, "bundle": DEFAULT_BUNDLE, "variant": "fp16"},
        "bundles": {},
        "notes": [],
    }
    log(f"gpu-check: {'GPU ' + what if ok else what}")
    if not ok:
        result["notes"].append(f"GPU rows skipped: {what}; CPU fallbacks measured instead")
    # the default first: the goal is on it, and a budget overrun must not cost its rows
    for info in sorted(bundles, key=lambda b: b["name"] != DEFAULT_BUNDLE):
        name = info["name"]
        entry = result["bundles"][name] = {"method": info["method"], "shape": info["shape"], "notes": []}
        if budget_s - (time.time() - t_start) < (60 if ok else 5):
            entry["notes"].append(f"skipped: time budget ({budget_s:.0f}s) spent")
            log(f"  {name}: skipped (time budget spent)")
            continue
        measure_bundle(Path(pack_dir), info, faces, ok, entry)
        log_entry(name, entry)
    result["training"] = measure_training(Path(pack_dir), faces, ok)
    result["seconds"] = round(time.time() - t_start, 1)
    result["goal"]["result"] = _goal(result)
    return result


def measure_bundle(pack_dir: Path, info: dict, faces: np.ndarray, gpu: bool, entry: dict) -> None:
    """One bundle's rows (PyTorch variants, then ONNX Runtime/TensorRT) into entry["variants"]."""
    import torch

    name = info["name"]
    try:
        method, recognizer = load_recognizer(pack_dir, info)
    except Exception as err:  # one bundle that cannot load must not sink the rest
        entry["notes"].append(f"not measured: cannot build the recognizer ({type(err).__name__}: {err})")
        return
    inputs = protected_inputs(method, faces)
    t0 = time.time()
    if gpu:
        variants = gpu_bench.TORCH_VARIANTS
        if name != DEFAULT_BUNDLE:  # compiling every bundle would not fit the 8 minutes
            variants = [v for v in variants if v[2] != "compile"]
        entry["variants"] = gpu_bench._torch_variants(
            recognizer, info["shape"], GPU_BATCHES, 30, variants, "cuda", inputs
        )
        torch.cuda.empty_cache()
    elif name == DEFAULT_BUNDLE:  # CPU fallback: PyTorch on the default only (a minute in all)
        torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
        cpu_variant = [("torch-cpu-fp32", "float32", "eager")]
        entry["variants"] = gpu_bench._torch_variants(
            recognizer, info["shape"], CPU_BATCHES, 4, cpu_variant, "cpu", inputs, warmup=2
        )
    else:
        entry["variants"] = {}
        entry["notes"].append("torch-cpu-fp32: measured on the default bundle only (CPU fallback)")
    batches, repeats = (GPU_BATCHES, 30) if gpu else (CPU_BATCHES, 2)
    entry["variants"].update(
        gpu_bench._onnx_variants(
            REPO / "artifacts" / name, info["shape"], batches, repeats, entry["notes"], cpu=not gpu
        )
    )
    entry["seconds"] = round(time.time() - t0, 1)


def log_entry(name: str, entry: dict) -> None:
    for v, r in entry.get("variants", {}).items():
        if "rows" in r and r["rows"]:
            best = max(r["rows"], key=lambda x: x["items_per_s"])
            log(f"  {name} {v}: batch1 p50 {r['rows'][0]['p50_ms']:.3f} ms, best {best['items_per_s']:.0f}/s")
        else:
            log(f"  {name} {v}: {r.get('error')}")
    for n in entry["notes"]:
        log(f"  {name}: {n}")


def measure_training(pack_dir: Path, faces: np.ndarray, gpu: bool) -> dict:
    try:
        if gpu:
            return training_steps(pack_dir, faces, "cuda", 48, 10, 3)
        out = training_steps(pack_dir, faces, "cpu", 8, 1, 1)
        out["note"] = "CPU fallback: batch 8 (the recipe's 48 on a GPU), one timed step"
        return out
    except Exception as err:
        return {"error": f"{type(err).__name__}: {err}"}


def _goal(result: dict) -> dict:
    d = result["bundles"].get(DEFAULT_BUNDLE, {}).get("variants", {})
    best = None
    for name in ("torch-fp16", "torch-fp16-compiled", "torch-fp16-cudagraph", "tensorrt-fp16"):
        for r in d.get(name, {}).get("rows", []):
            if best is None or r["items_per_s"] > best["faces_per_s"]:
                best = {"variant": name, "batch": r["batch"], "faces_per_s": r["items_per_s"]}
    if not result["gpu"]["available"] or best is None:
        return {"met": None, "note": "not measured: no GPU"}
    return {**best, "met": best["faces_per_s"] >= GOAL_FACES_PER_S}


def table(result: dict) -> str:
    """One Markdown table: a row per bundle x runtime; latency at batch 1, faces/s at each batch."""
    batches = sorted(
        {
            r["batch"]
            for b in result["bundles"].values()
            for v in b.get("variants", {}).values()
            for r in v.get("rows", [])
        }
    )
    head = ["bundle", "runtime", "b1 p50 ms"] + [f"b{b} faces/s" for b in batches]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, b in result["bundles"].items():
        for v, r in b.get("variants", {}).items():
            if "rows" not in r:
                lines.append(f"| {name} | {v} | error: {r.get('error', '')[:80]} |" + " |" * (len(head) - 3))
                continue
            by = {x["batch"]: x for x in r["rows"]}
            p50 = f"{by[1]['p50_ms']:.3f}" if 1 in by else ""
            cells = [f"{by[x]['items_per_s']:,.0f}" if x in by else "" for x in batches]
            lines.append("| " + " | ".join([name, v, p50, *cells]) + " |")
    g = result["gpu"]
    out = [f"GPU: {g['name']}" if g["available"] else f"GPU: none ({g['reason']})", "", *lines, ""]
    t = result.get("training", {})
    if "error" in t:
        out.append(f"training ({DEFAULT_CONFIG.name}): error: {t['error']}")
    elif t:
        s1, s2 = t["stage1_trunk_frozen"], t["stage2_trunk_trained"]
        out.append(
            f"training ({t['config']}, batch {t['batch']}, {t['device']}): stage 1 {s1['steps_per_s']:.2f} "
            f"steps/s ({s1['faces_per_s']:.0f} faces/s), stage 2 {s2['steps_per_s']:.2f} steps/s "
            f"({s2['faces_per_s']:.0f} faces/s)"
        )
    goal = result["goal"]["result"]
    if goal.get("met") is None:
        out.append(
            f"goal: >= {GOAL_FACES_PER_S:,} faces/s, {DEFAULT_BUNDLE} fp16 on an H100/H200: {goal['note']}"
        )
    else:
        out.append(
            f"goal: >= {GOAL_FACES_PER_S:,} faces/s, {DEFAULT_BUNDLE} fp16: "
            f"{goal['faces_per_s']:,.0f} faces/s "
            f"({goal['variant']}, batch {goal['batch']}): {'MET' if goal['met'] else 'NOT MET'}"
        )
    notes: dict[str, list] = {}  # the same skip line for many bundles is printed once
    for name, b in result["bundles"].items():
        for n in b.get("notes", []):
            notes.setdefault(n.replace(f"artifacts/{name}", "artifacts/<bundle>"), []).append(name)
    for n, names in notes.items():
        out.append(f"{n} [{'every bundle' if len(names) == len(result['bundles']) else ', '.join(names)}]")
    out.extend(result["notes"])
    out.append(
        f"load average at start: {result['machine'].get('load_average_at_start')}; took {result['seconds']}s"
    )
    return "\n".join(out)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m ppfr.bench.gpu_check", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command")
    k = sub.add_parser("pack", help="write the packed faces, weights and checkpoints (needs ../shared)")
    k.add_argument("--out", type=Path, default=PACK)
    k.add_argument(
        "--data", type=Path, default=None, help="shared face data (default $PPFR_DATA/data or ../shared/data)"
    )
    k.add_argument("--faces", type=int, default=64)
    p.add_argument("--pack", type=Path, default=PACK, help="the packed folder (default .gpu-check/)")
    p.add_argument("--json", type=Path, default=REPO / "runs" / "gpu-check" / "gpu_check.json")
    p.add_argument("--budget-s", type=float, default=420, help="stop starting new bundles after this long")
    p.add_argument("--cpu", action="store_true", help="CPU fallbacks even where a GPU is present")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.command == "pack":
            pack(args.out, args.data, args.faces)
            return 0
        result = run_check(args.pack, args.budget_s, gpu=False if args.cpu else None)
    except CheckError as err:
        print(f"gpu-check: error: {err}", file=sys.stderr)
        return 2
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
