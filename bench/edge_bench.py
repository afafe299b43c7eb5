"""Edge costs: detection and alignment on raw photos (method-independent), and per bundle the random
draw, the front-end at batch 1 on one ONNX Runtime thread, and the serialized VerifyRequest."""

from pathlib import Path

import numpy as np

from .stats import summarize, time_calls

SUBJECT = "bench-subject-0001"


def wire_request(fe, protected: np.ndarray, subject_id: str = SUBJECT) -> bytes:
    """The serialized VerifyRequest the edge sends for one protected face."""
    from ppfr.protos import verification_pb2

    return verification_pb2.VerifyRequest(
        subject_id=subject_id, face=fe.to_proto(protected)
    ).SerializeToString()


def enroll_request(fe, protected: np.ndarray, subject_id: str = SUBJECT) -> bytes:
    from ppfr.protos import verification_pb2

    return verification_pb2.EnrollRequest(
        subject_id=subject_id, face=fe.to_proto(protected)
    ).SerializeToString()


def frontend(bundle_dir):
    """The edge's own front-end (a ppfr.bundle.Bundle) on one ONNX Runtime thread."""
    from ppfr.edge.frontend import FrontEnd

    return FrontEnd(bundle_dir, threads=1)


def bench_detection(photo_dir, yunet_path, cfg, log) -> tuple[dict, np.ndarray]:
    """Detection and alignment latency (one OpenCV thread) over the raw photos; returns the figures
    and the aligned faces (uint8 RGB NHWC) for the front-end benchmarks."""
    import cv2
    from ppfr.edge.align import align
    from ppfr.edge.detect import Detector
    from ppfr.edge.image import read_bgr

    cv2.setNumThreads(1)
    photos = sorted(Path(photo_dir).glob("*.jpg"))
    if not photos:
        raise FileNotFoundError(f"no raw photos (*.jpg) in {photo_dir}")
    images = [read_bgr(p) for p in photos]
    det = Detector(yunet_path)
    found = [det.detect(img) for img in images]
    pairs = [(img, f[0].landmarks) for img, f in zip(images, found) if f]
    if not pairs:
        raise RuntimeError(f"YuNet found no face in the photos of {photo_dir}")
    faces = np.stack([cv2.cvtColor(align(img, lm)[0], cv2.COLOR_BGR2RGB) for img, lm in pairs])
    it = {"i": 0}

    def detect_one():
        it["i"] += 1
        det.detect(images[it["i"] % len(images)])

    def align_one():
        it["i"] += 1
        img, lm = pairs[it["i"] % len(pairs)]
        align(img, lm)

    args = (cfg.edge_warmup, cfg.edge_iters, cfg.edge_max_s)
    out = {
        "photos": len(images),
        "faces_found": len(pairs),
        "image_size": list(images[0].shape[:2]),
        "threads": 1,
        "implementation": "ppfr.edge.detect.Detector (YuNet) + ppfr.edge.align.align",
        "detection": summarize(time_calls(detect_one, *args)),
        "alignment": summarize(time_calls(align_one, *args)),
    }
    log(
        f"  detection p50 {out['detection']['p50_ms']:.2f} ms,"
        f" alignment p50 {out['alignment']['p50_ms']:.3f} ms"
        f" ({len(pairs)}/{len(images)} faces, {images[0].shape[1]}x{images[0].shape[0]})"
    )
    return out, faces


def bench_frontend(bundle_dir, faces: np.ndarray, cfg) -> tuple[dict, list[np.ndarray]]:
    """Front-end figures for one bundle, and protected tensors of the faces (batch 1 each)."""
    from ppfr.protos import verification_pb2

    fe = frontend(bundle_dir)
    singles = [np.ascontiguousarray(f[None]) for f in faces]
    feeds = {fe.image_input: singles[0], **fe.random_inputs()}
    it = {"i": 0}

    def run_only():  # the ONNX graph alone, random inputs given
        it["i"] += 1
        feeds[fe.image_input] = singles[it["i"] % len(singles)]
        fe.frontend.run([fe.output], feeds)

    def full():  # what the edge does per query after alignment: draw, run, serialize
        it["i"] += 1
        wire_request(fe, fe.protect(faces[it["i"] % len(faces)]))

    args = (cfg.edge_warmup, cfg.edge_iters, cfg.edge_max_s)
    run = summarize(time_calls(run_only, *args))
    draw = summarize(time_calls(fe.random_inputs, *args))
    total = summarize(time_calls(full, *args))
    protected = [fe.protect(f) for f in faces]
    req = wire_request(fe, protected[0])
    out = {
        "threads": 1,
        "frontend": run,
        "random_draw": draw,
        "frontend_draw_serialize": total,
        "random_inputs": [r.name for r in fe.manifest.random_inputs],
        "protected_shape": list(protected[0].shape),
        "protected_dtype": str(protected[0].dtype),
        "tensor_bytes": len(verification_pb2.VerifyRequest.FromString(req).face.data),
        "payload_bytes": len(req),
    }
    return out, protected
