"""Test vectors for ports of the edge (issue 26, item 4): tests/vectors/dlib_ppfr_fd_demo.json records, for
the shipped default exported with the public demo key, each photo's detection, the aligned crop's sha256,
the protected tensor for FIXED random inputs (written out in full, so a port needs no PCG64) and the
first values of the embedding. A port in another language checks itself against the file; this test
recomputes every figure with the Python edge.

    .venv/bin/python tests/test_vectors.py write     # regenerate after a deliberate change (docs/edge.md)

Hashes are of little-endian bytes in C order: the crop as uint8 RGB [112, 112, 3], the protected tensor in
the wire dtype [1, C, H, W]. Embeddings are compared within 1e-4 (float summation order differs between
runtimes); the crop and the protected tensor exactly, given the same OpenCV and ONNX Runtime.
"""

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
VECTORS = REPO / "tests" / "vectors" / "dlib_ppfr_fd_demo.json"
SHIPPED = REPO / "pretrained" / "dlib_ppfr_fd" / "checkpoint.pt"
PHOTOS = ("lfw/raw_samples_250/George_W_Bush_0001.jpg", "lfw/raw_samples_250/Serena_Williams_0001.jpg")
FIRST = 8


def _sha(array: np.ndarray) -> str:
    le = array.astype(array.dtype.newbyteorder("<"), copy=False)
    return hashlib.sha256(np.ascontiguousarray(le).tobytes()).hexdigest()


def export_graphs(out: Path) -> Path:
    """The shipped default's graphs under the demo key (what `make demo` exports, without its thresholds)."""
    from ppfr.export.bundle import export_model
    from ppfr.train.model import load_checkpoint

    config, method, recognizer, ckpt = load_checkpoint(SHIPPED)
    unused = {"cosine": 1.0, "far": 1e-3, "tar": 0.0, "accuracy": 0.0, "num_pairs": 0, "set": "none"}
    export_model(
        config,
        method,
        recognizer,
        out,
        ckpt=ckpt,
        threshold=unused,
        template_thresholds=False,
        parity_faces=2,
    )
    return out


def _photo(bundle, pipeline, name: str, seed: int) -> dict:
    import cv2
    from ppfr import data
    from ppfr.bundle import Seeded

    path = data.data_path(*name.split("/"))
    done = pipeline.prepare(path)
    crop = cv2.cvtColor(done.face_bgr, cv2.COLOR_BGR2RGB)
    random = bundle.random_inputs(1, Seeded(seed))
    (protected,) = bundle.frontend.run([bundle.output], {bundle.image_input: crop[None], **random})
    embedding = bundle.embed(protected)[0]
    return {
        "photo": name,
        "photo_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "landmarks": np.round(done.face.landmarks.astype(float), 2).tolist(),
        "crop_sha256": _sha(crop),
        "crop_first_pixels": crop.reshape(-1)[:FIRST].tolist(),
        "random_inputs": {k: v[0].tolist() for k, v in random.items()},
        "protected": {
            "shape": list(protected.shape),
            "dtype": str(protected.dtype),
            "sha256": _sha(protected),
            "first": protected.reshape(-1)[:FIRST].astype(float).tolist(),
        },
        "embedding": {"size": int(embedding.size), "first": [round(float(x), 6) for x in embedding[:FIRST]]},
    }


def compute(bundle_dir: Path) -> dict:
    from ppfr.bundle import Bundle
    from ppfr.edge.pipeline import Pipeline

    bundle = Bundle(bundle_dir, threads=1)
    pipeline = Pipeline(bundle_dir)
    m = bundle.manifest
    return {
        "about": "ppfr edge test vectors: docs/edge.md, 'Test vectors for ports'",
        "bundle": {
            "source": "pretrained/dlib_ppfr_fd exported with --demo-key (the public key 'ppfr-demo-key')",
            "method": m.method,
            "frontend_id": m.frontend_id,
            "frontend_sha256": m.frontend.sha256,
            "recognizer_sha256": m.recognizer.sha256,
            "detector_sha256": hashlib.sha256((bundle_dir / "detector.onnx").read_bytes()).hexdigest(),
        },
        "photos": [_photo(bundle, pipeline, name, seed) for seed, name in enumerate(PHOTOS)],
    }


@pytest.fixture(scope="module")
def recomputed(tmp_path_factory):
    return compute(export_graphs(tmp_path_factory.mktemp("vectors") / "dlib_ppfr_fd"))


@pytest.mark.slow
def test_vectors_match_the_python_edge(recomputed):
    want = json.loads(VECTORS.read_text())
    # the exporter's ONNX bytes differ from one export to the next (graph layout, names; same outputs), and
    # frontend_id hashes frontend.onnx: what a port checks is what the graphs compute, below
    skip = {"recognizer_sha256", "frontend_sha256", "frontend_id"}
    assert {k: v for k, v in recomputed["bundle"].items() if k not in skip} == {
        k: v for k, v in want["bundle"].items() if k not in skip
    }
    for got, ref in zip(recomputed["photos"], want["photos"], strict=True):
        assert got["photo_sha256"] == ref["photo_sha256"]
        np.testing.assert_allclose(got["landmarks"], ref["landmarks"], atol=0.05)
        assert got["crop_sha256"] == ref["crop_sha256"] and got["random_inputs"] == ref["random_inputs"]
        assert got["protected"] == ref["protected"]
        np.testing.assert_allclose(got["embedding"]["first"], ref["embedding"]["first"], atol=1e-4)


if __name__ == "__main__" and sys.argv[1:] == ["write"]:
    with tempfile.TemporaryDirectory() as tmp:
        VECTORS.parent.mkdir(parents=True, exist_ok=True)
        VECTORS.write_text(json.dumps(compute(export_graphs(Path(tmp) / "b")), indent=1) + "\n")
    print(f"wrote {VECTORS}")
