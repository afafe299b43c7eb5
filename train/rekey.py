"""Re-keying: a trained PPFR-FD recognizer adapted to a deployment's own method key.

A new key changes Shuffle1, so the 34 mixed channels M_j = (E_a + E_b) / 2 the client sends pair other
DCT frequencies, in another chain order. Two parts of the server read that:
- the chain router learned to tell the training key's mixes apart: it learns again, cross-entropy against
  the chain positions (no teacher, no identity labels), on chain-order protected maps computed once per
  face view (`router_inputs` says why the chain order suffices): first its comparison layers and
  classifier on the maps as its per-map CNN reads them (read once), then all of it, that CNN included;
- the stem (a pixel stem, or a `FrequencyStem` straight into the trunk) reads the training key's mixes:
  a 34 x 34 linear translation, new-key chain order -> training-key chain order, fitted by least squares
  on the same training faces protected under both keys, is folded into the stem's first layers
  (`fold_translation`), so the architecture, the config and the export stay as they were; then the
  stem learns, through the new router as deployed, to land where the source lands under its own key
  (`refine_stem`: distillation, same faces and draws, no labels).
The dlib front and the trunk are kept.

    ppfr-train rekey --key-file method.key            # pretrained/dlib_ppfr_fd -> runs/dlib_ppfr_fd_rekeyed

The checkpoint written holds the key id, never the key (keys.seal); export and evaluation take the key
again from --key-file or $PPFR_METHOD_KEY. Measured: docs/results.md, "Re-keying".
"""

import copy
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .augment import augment
from .model import Recognizer
from .student import FrequencyStem, PixelStem


def chain_order(method, images: torch.Tensor) -> torch.Tensor:
    """The protected tensor of uint8 NHWC faces with its channels in chain order (Shuffle2 = identity)."""
    n = method.mixed_channels
    return method(images, shuffle2=torch.arange(n).expand(len(images), n))


@torch.no_grad()
def fit_translation(old, new, images: torch.Tensor, chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, c) minimising |A x_new + c - x_old|^2 over every block position of `images`: x_new, x_old the
    faces protected under the new and the training key, both in chain order."""
    gram = rhs = 0.0
    for i in range(0, len(images), chunk):
        part = images[i : i + chunk]
        xs = [chain_order(m, part).double().permute(0, 2, 3, 1).flatten(0, 2) for m in (new, old)]
        a = torch.cat([xs[0], torch.ones_like(xs[0][:, :1])], 1)
        gram, rhs = gram + a.T @ a, rhs + a.T @ xs[1]
    w = torch.linalg.solve(gram + 1e-6 * torch.eye(gram.shape[0], dtype=gram.dtype), rhs)
    return w[:-1].T.float(), w[-1].float()


@torch.no_grad()
def fold_translation(stem: PixelStem | FrequencyStem, a: torch.Tensor, c: torch.Tensor) -> None:
    """Makes `stem` read x through x_old = A x + c: its input BatchNorm (an affine map in eval mode)
    and A, c go into the 1x1 convolutions that read the normalised input (the pixel stem's linear map
    and context path, the FrequencyStem's `inp`); the BatchNorm becomes the identity. The stem must then
    stay in eval mode (its statistics are frozen)."""
    bn = stem.norm
    s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    t = bn.bias - bn.running_mean * s
    g, h = s[:, None] * a, s * c + t  # BN(A x + c) = G x + h
    if isinstance(stem, FrequencyStem):
        readers = [(stem.inp[0], stem.inp[1])]
    else:
        readers = [(stem.linear, None), (stem.context[0], stem.context[1])]
    for conv, after in readers:  # a 1x1 conv with a bias, or without one and then a BatchNorm
        w = conv.weight[:, :, 0, 0]
        if after is None:
            conv.bias.add_(w @ h)
        else:
            after.running_mean.sub_(w @ h)
        conv.weight.copy_((w @ g)[:, :, None, None])
    bn.weight.fill_(1.0)
    bn.bias.zero_()
    bn.running_mean.zero_()
    bn.running_var.fill_(1.0 - bn.eps)


def pixel_stem(recognizer: Recognizer) -> PixelStem:
    stem = getattr(recognizer.backbone, "stem", None)
    if not (isinstance(stem, nn.Sequential) and isinstance(stem[0], PixelStem)):
        raise ValueError("needs a pixel-stem recognizer (model.pixel_stem: true)")
    return stem[0]


def keyed_stem(recognizer: Recognizer) -> PixelStem | FrequencyStem:
    """The layers that read the protected channels: the pixel stem, or a FrequencyStem into the trunk."""
    stem = getattr(recognizer.backbone, "stem", None)
    if isinstance(stem, FrequencyStem):
        return stem
    if isinstance(stem, nn.Sequential) and isinstance(stem[0], PixelStem):
        return stem[0]
    raise ValueError("re-keying needs a dlib-trunk recognizer with a pixel stem or a FrequencyStem")


@torch.no_grad()
def router_inputs(router, method, images: np.ndarray, views: int, opts: dict) -> tuple:
    """(maps [N*views, C, H, W] float16, correlations [N*views, C, C]) of the faces in chain order.

    The router is permutation-equivariant (each map read on its own, attention without positions,
    correlations permuted with the channels) and a Shuffle2 draw only permutes channels (the second
    self-normalisation is across channels): so training on the chain order with targets 0..C-1 is
    training on every draw, and the protected maps are computed once per face view.
    View 0 is the face as it is; the others are flipped and augmented (train.augment)."""
    maps, corr, chunk = [], [], 64
    for v in range(views):
        gen = torch.Generator().manual_seed(opts["seed"] * 7919 + v)
        for i in range(0, len(images), chunk):
            faces = torch.from_numpy(np.array(images[i : i + chunk]))  # a copy: the cache is read-only
            if v:
                faces = augment(faces.flip(2) if v % 2 else faces, gen, opts["augment"])
            x = chain_order(method, faces)
            maps.append(x.half())
            corr.append(router.correlation(x))
    return torch.cat(maps), torch.cat(corr)


@torch.no_grad()
def read_all(router, maps: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """[N, C, dim]: every map read by the router's per-map CNN as it is now (its tokens)."""
    return torch.cat([router.tokens(maps[i : i + chunk].float()) for i in range(0, len(maps), chunk)])


def placed(router, maps: torch.Tensor, corr: torch.Tensor, chunk: int = 256) -> float:
    """The fraction of chain-order channels whose most likely chain position is their own."""
    hits = 0.0
    with torch.no_grad():
        for i in range(0, len(maps), chunk):
            logits = router.chain_logits(router.tokens(maps[i : i + chunk].float()), corr[i : i + chunk])
            hits += (logits.argmax(2) == torch.arange(maps.shape[1])).float().sum().item()
    return hits / (len(maps) * maps.shape[1])


def _optimizer(router, parts: dict, steps: int, opts: dict):
    """AdamW with a one-cycle rate over the router's `parts` ({name: learning rate}); the rest frozen."""
    router.requires_grad_(False)
    groups = []
    for name, lr in parts.items():
        params = list(getattr(router, name).parameters())
        for p in params:
            p.requires_grad_(True)
        groups.append({"params": params, "lr": lr})
    opt = torch.optim.AdamW(groups, weight_decay=opts["weight_decay"])
    # 10% warm-up; a short run's (tests) gets 30%, since a warm-up of exactly one step divides by zero
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=list(parts.values()), total_steps=max(steps, 1), pct_start=0.1 if steps >= 20 else 0.3
    )
    return opt, sched


def train_router(router, inputs: tuple, parts: dict, steps: int, opts: dict, log=print) -> dict:
    """`steps` steps of the router's `parts` ({name: peak learning rate}), cross-entropy against the chain
    positions. inputs: (maps, correlations) when the per-map reader `read` learns, which then reads every
    step; else (tokens, correlations), read once (read_all). Returns the last running loss and placement."""
    data, corr = inputs
    batch, n, reads = opts["batch_size"], data.shape[1], "read" in parts
    opt, sched = _optimizer(router, parts, steps, opts)
    router.train()
    target = torch.arange(n).repeat(batch)
    avg, t0, gen = {}, time.time(), torch.Generator().manual_seed(opts["seed"] + reads)
    for step in range(steps):
        idx = torch.randint(0, len(data), (batch,), generator=gen)
        tokens = router.tokens(data[idx].float()) if reads else data[idx]
        logits = router.chain_logits(tokens, corr[idx])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, n), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        hit = (logits.argmax(2) == target.reshape(batch, n)).float().mean().item()
        for k, v in (("route", loss.item()), ("placed", hit)):
            avg[k] = 0.9 * avg.get(k, v) + 0.1 * v
        if (step + 1) % opts["log_every"] == 0 or step + 1 == steps:
            log(
                f"router ({'+'.join(parts)}) step {step + 1}/{steps} route {avg['route']:.3f} "
                f"placed {100 * avg['placed']:.1f}% ({(time.time() - t0) / (step + 1):.2f} s/step)",
                flush=True,
            )
    router.eval()
    return avg


def adapt_router(router, method_new, images: np.ndarray, opts: dict, log=print) -> dict:
    """Two stages on the same chain-order maps: the comparison layers and classifier on tokens read once
    (opts['steps'], cheap), then the whole router, its per-map reader included (opts['read_steps'],
    each step reads its batch again; the reader at opts['read_lr_mult'] of the rate)."""
    t0 = time.time()
    maps, corr = router_inputs(router, method_new, images, opts["views"], opts)
    log(f"router inputs: {len(maps)} face views ({time.time() - t0:.0f}s)", flush=True)
    parts = {"classify": opts["lr"]} | ({"compare": opts["lr"]} if opts["router"] == "compare" else {})
    last = {}
    if opts["steps"]:
        last = train_router(router, (read_all(router, maps), corr), parts, opts["steps"], opts, log)
    if opts["read_steps"]:
        lr = opts["read_lr"]
        parts = {"read": lr * opts["read_lr_mult"]} | {k: lr for k in parts}
        last = train_router(router, (maps, corr), parts, opts["read_steps"], opts, log)
    return last


def adapt(method_old, method_new, recognizer: Recognizer, images: np.ndarray, opts: dict, log=print) -> dict:
    """Adapts `recognizer` (trained under method_old's key) to method_new's key in place: the stem's
    input translation (least squares on opts['fit_images'] faces), the router (adapt_router), then
    opts['entry_steps'] of the stem (refine_stem; 0: none)."""
    t0 = time.time()
    recognizer.eval()
    pick = np.random.default_rng(opts["seed"]).choice(
        len(images), min(len(images), opts["fit_images"]), False
    )
    faces = torch.as_tensor(np.ascontiguousarray(images[np.sort(pick)]))
    a, c = fit_translation(method_old, method_new, faces)
    with torch.no_grad():
        x_new, x_old = (chain_order(m, faces[:64]) for m in (method_new, method_old))
        pred = torch.einsum("ij,bjhw->bihw", a, x_new) + c[None, :, None, None]
        r2 = 1 - (pred - x_old).pow(2).sum() / (x_old - x_old.mean((0, 2, 3), keepdim=True)).pow(2).sum()
    teacher = copy.deepcopy(recognizer) if opts.get("entry_steps") else None  # still the training key's
    fold_translation(keyed_stem(recognizer), a, c)
    log(
        f"stem input translation: least squares on {len(faces)} faces, R^2 {r2:.4f} ({time.time() - t0:.0f}s)"
    )
    recognizer.requires_grad_(False)
    last = adapt_router(recognizer.adapter, method_new, images, opts, log)
    report = {"translation_r2": float(r2), "router": last}
    if teacher is not None:
        report["entry"] = refine_stem(teacher, method_old, recognizer, method_new, images, opts, log)
    recognizer.requires_grad_(False)
    recognizer.eval()
    return report | {"seconds": round(time.time() - t0, 1)}


def refine_stem(teacher, method_old, recognizer, method_new, images: np.ndarray, opts: dict, log=print):
    """The translated stem learns, through the adapted router as deployed, to land where the source lands
    under its training key (entry activation and embedding, train/stem_distill.py; the same faces and
    Shuffle2 draws on both sides): what the least-squares translation and the new router's
    misplacements leave. Its BatchNorm statistics stay frozen (fold_translation)."""
    from .stem_distill import distill

    dopts = {"seed": opts["seed"], "steps": opts["entry_steps"], "batch_size": 16, "lr": opts["entry_lr"]}
    dopts |= {"augment": opts["augment"], "place": "router", "target": "entry", "freeze_bn": True}
    params = list(keyed_stem(recognizer).parameters())
    return distill(teacher, method_old, recognizer, method_new, images, dopts, params, log=log)


def default_out(src: Path, suffix: str = "rekeyed") -> Path:
    """runs/<the source's folder>_<suffix>, in the repository like ppfr-train's runs/<name>."""
    from .data import resolve

    return resolve("runs") / f"{Path(src).parent.name}_{suffix}"
