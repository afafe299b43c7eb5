"""GPU section: the recognizer on PyTorch CUDA (fp32, fp16, bf16, torch.compile, CUDA graphs), ONNX
Runtime CUDA and TensorRT, batch 1..256. Runs only where a GPU is present; torch is imported lazily, here
only (the edge and server under test stay torch-free). `make gpu-check` (bench/gpu_check.py) reuses these
timers for every trained bundle, and their CPU forms where there is no GPU."""

import time
from pathlib import Path

import numpy as np

from .machine import gpus
from .stats import summarize


def available() -> tuple[bool, str]:
    names = gpus()
    if not names:
        return False, "no NVIDIA GPU on this machine (nvidia-smi absent or lists none): GPU section skipped"
    try:
        import torch
    except ImportError:
        return False, f"GPU {names[0]} present but torch is not installed: GPU section skipped"
    if not torch.cuda.is_available():
        return False, f"GPU {names[0]} present but torch has no CUDA (CPU build?): GPU section skipped"
    return True, torch.cuda.get_device_name(0)


def _torch_recognizer(manifest):
    """The trained torch recognizer behind the bundle (from its checkpoint), or None with a reason."""
    from ppfr.train.model import load_checkpoint

    run = manifest.training.run_name or manifest.name
    ckpt = Path("runs") / run / "checkpoint.pt"
    if not ckpt.is_file():
        return None, f"no checkpoint {ckpt}: PyTorch variants not measured"
    _, _, recognizer, _ = load_checkpoint(ckpt)
    return recognizer.eval(), None


def _time_cuda(fn, iters: int, warmup: int = 3, cuda: bool = True) -> list[float]:
    """Latency in ms of fn (synchronised with the GPU when `cuda`)."""
    import torch

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    out = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def _row(batch: int, lat: list[float]) -> dict:
    s = summarize(lat)
    return {"batch": batch, "items_per_s": round(batch / (s["p50_ms"] / 1e3), 1), **s}


# (name, dtype, mode): every PyTorch variant the GPU section knows
TORCH_VARIANTS = (
    ("torch-fp32", "float32", "eager"),
    ("torch-fp16", "float16", "eager"),
    ("torch-bf16", "bfloat16", "eager"),
    ("torch-fp16-compiled", "float16", "compile"),
    ("torch-fp16-cudagraph", "float16", "graph"),
)


def _torch_variants(
    model, shape, batches, iters, variants=TORCH_VARIANTS, device: str = "cuda", inputs=None, warmup: int = 3
) -> dict:
    """{variant: {"rows": [...]} or {"error": ...}}. inputs: optional [N, *shape] float tensor of real
    protected faces, cycled to each batch (else standard normal)."""
    import torch

    out = {}
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    for name, dtype_name, mode in variants:
        dtype = getattr(torch, dtype_name)
        m = model.to(dev, dtype)
        rows = []
        try:
            # one dynamic-shape compilation serves every batch size (no recompile per batch)
            fwd = torch.compile(m.embed, dynamic=True) if mode == "compile" else m.embed
            for b in batches:
                if inputs is not None:
                    x = inputs[torch.arange(b) % len(inputs)].to(dev, dtype)
                else:
                    x = torch.randn(b, *shape, device=dev, dtype=dtype)
                with torch.inference_mode():
                    if mode == "graph":
                        fwd(x)
                        torch.cuda.synchronize()
                        graph = torch.cuda.CUDAGraph()
                        with torch.cuda.graph(graph):
                            fwd(x)
                        rows.append(_row(b, _time_cuda(graph.replay, iters, warmup)))
                    else:
                        rows.append(_row(b, _time_cuda(lambda f=fwd, x=x: f(x), iters, warmup, cuda)))
        except Exception as err:  # one failing variant must not sink the others
            out[name] = {"error": f"{type(err).__name__}: {err}"}
            continue
        out[name] = {"rows": rows}
    model.to(torch.device("cpu"), torch.float32)
    return out


def _onnx_variants(bundle_dir, shape, batches, iters, notes: list | None = None, cpu: bool = False) -> dict:
    """ONNX Runtime CUDA and TensorRT (and ONNX Runtime CPU when `cpu`), where importable; what is not
    measured gets a line in `notes`."""
    out = {}
    notes = notes if notes is not None else []
    try:
        import onnxruntime as ort
        from ppfr.cloud.runtime import OnnxRuntime, create_runtime, tensorrt_available, tensorrt_engine
    except Exception as err:  # no onnxruntime, or stubs for another protobuf
        notes.append(f"onnxruntime/tensorrt: skipped (cannot import the cloud runtimes: {err})")
        return out

    makers = []
    if not (Path(bundle_dir) / "recognizer.onnx").is_file():
        notes.append(f"onnxruntime/tensorrt: skipped (no {bundle_dir}/recognizer.onnx here: run make export)")
        return out
    if cpu:
        path = Path(bundle_dir) / "recognizer.onnx"
        makers.append(("onnxruntime-cpu", lambda: OnnxRuntime(path, max_batch=max(batches))))
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        notes.append(
            f"onnxruntime-cuda: skipped (onnxruntime {ort.__version__} has no CUDAExecutionProvider; "
            "pip install onnxruntime-gpu)"
        )
    else:
        path = Path(bundle_dir) / "recognizer.onnx"
        makers.append(
            (
                "onnxruntime-cuda",
                lambda: OnnxRuntime(
                    path, max_batch=max(batches), providers=["CUDAExecutionProvider", "CPUExecutionProvider"]
                ),
            )
        )
    if tensorrt_available() and tensorrt_engine(bundle_dir) is not None:
        makers.append(
            ("tensorrt-fp16", lambda: create_runtime("tensorrt", bundle_dir, max_batch=max(batches)))
        )
    elif not tensorrt_available():
        notes.append("tensorrt: skipped (the tensorrt package or a CUDA GPU is not available)")
    else:
        notes.append(f"tensorrt: skipped (no engine in {bundle_dir}: build one on this GPU with ppfr-export)")
    for name, make in makers:
        try:
            rt = make()
            rows = []
            for b in batches:
                if b > rt.max_batch:
                    continue
                x = np.random.default_rng(0).standard_normal((b, *shape)).astype(np.float32)
                for _ in range(3):
                    rt.embed(x)
                lat = []
                for _ in range(iters):
                    t0 = time.perf_counter()
                    rt.embed(x)
                    lat.append((time.perf_counter() - t0) * 1e3)
                rows.append(_row(b, lat))
            out[name] = {"rows": rows}
            rt.close()
        except Exception as err:
            out[name] = {"error": f"{type(err).__name__}: {err}"}
    return out


def bench_gpu(bundle_dir, manifest, cfg, log) -> dict:
    shape = [int(s) for s in manifest.protected_tensor.shape[1:]]
    out = {"variants": {}, "notes": []}
    model, note = _torch_recognizer(manifest)
    if note:
        out["notes"].append(note)
    else:
        out["variants"].update(_torch_variants(model, shape, cfg.gpu_batches, cfg.gpu_iters))
    out["variants"].update(_onnx_variants(bundle_dir, shape, cfg.gpu_batches, cfg.gpu_iters, out["notes"]))
    for name, v in out["variants"].items():
        if "rows" in v and v["rows"]:
            best = max(v["rows"], key=lambda r: r["items_per_s"])
            log(f"  gpu {name}: batch1 p50 {v['rows'][0]['p50_ms']:.3f} ms, best {best['items_per_s']:.0f}/s")
        elif "error" in v:
            log(f"  gpu {name}: {v['error']}")
    return out
