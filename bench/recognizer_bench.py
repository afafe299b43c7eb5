"""Recognizer cost per available runtime (the cloud's own runtimes): latency at batch 1 and throughput
at batch 8/32/64 (ONNX Runtime CPU always; TensorRT where TensorRT, a GPU and an engine are present)."""

import numpy as np

from .stats import summarize, throughput, time_calls


def runtimes(bundle_dir, max_batch: int) -> tuple[list, list[str]]:
    """(runtimes, notes): the cloud runtimes this machine can create for the bundle."""
    from ppfr.cloud.runtime import RuntimeUnavailable, create_runtime, tensorrt_available, tensorrt_engine

    out, notes = [create_runtime("onnxruntime", bundle_dir, threads=0, max_batch=max_batch)], []
    if tensorrt_available() and tensorrt_engine(bundle_dir) is not None:
        try:
            out.append(create_runtime("tensorrt", bundle_dir, max_batch=max_batch))
        except RuntimeUnavailable as err:
            notes.append(f"tensorrt: {err}")
    else:
        notes.append("tensorrt: not measured (no TensorRT, GPU or engine on this machine)")
    return out, notes


def batch_of(protected: list[np.ndarray], n: int) -> np.ndarray:
    """n protected faces (cycled) as one batch."""
    rows = [protected[i % len(protected)][0] for i in range(n)]
    return np.ascontiguousarray(np.stack(rows))


def bench_recognizer(bundle_dir, protected: list[np.ndarray], cfg) -> dict:
    rts, notes = runtimes(bundle_dir, max(cfg.rec_batches))
    out = {"notes": notes, "runtimes": {}}
    for rt in rts:
        one = batch_of(protected, 1)
        lat = summarize(
            time_calls(lambda rt=rt, x=one: rt.embed(x), cfg.rec_warmup, cfg.rec_iters, cfg.rec_max_s)
        )
        thr = {}
        for b in cfg.rec_batches:
            x = batch_of(protected, b)
            iters = max(3, cfg.rec_iters // max(1, b // 8))
            warm = 1 if not thr else 0  # one warm-up call at the first batch size is enough for ORT
            thr[str(b)] = throughput(lambda rt=rt, x=x: rt.embed(x), b, warm, iters, cfg.rec_max_s)
        out["runtimes"][rt.name] = {"batch1": lat, "throughput": thr}
        rt.close()
    return out
