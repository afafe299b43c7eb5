"""ppfr.bundle.Bundle on a real small bundle (real exporter, ONNX Runtime, LFW faces): protect() with fresh or
seeded draws, embed() as the server embeds, and clear errors for broken bundles."""

import json
import shutil

import numpy as np
import pytest
from helpers import lfw_faces
from ppfr.bundle import Bundle, BundleError, Seeded, read_manifest, session
from ppfr.cloud.runtime import create_runtime


@pytest.fixture(scope="module")
def bundle(small_bundle):
    return small_bundle("ppfr_fd")


def test_protect_draws_fresh_inputs_and_seeded_draws_repeat(bundle):
    b, faces = Bundle(bundle), lfw_faces(4)
    m = read_manifest(bundle)
    x = b.protect(faces, Seeded(3))
    assert x.shape == (4, *m.protected_tensor.shape[1:]) and x.dtype == np.float16  # the wire dtype
    assert np.array_equal(x, b.protect(faces, Seeded(3)))
    assert np.array_equal(x, b.protect(faces, Seeded(3), batch=2))  # chunks continue one generator
    fresh = [b.protect(faces[0]) for _ in range(2)]  # one HWC face; OS-seeded ChaCha20 draws
    assert fresh[0].shape == (1, *x.shape[1:]) and not np.array_equal(fresh[0], fresh[1])


def test_embed_is_what_the_server_computes(bundle):
    b = Bundle(bundle, threads=1)
    x = b.protect(lfw_faces(6, start=50), Seeded(0))
    emb = b.embed(x, batch=4)
    assert emb.dtype == np.float32 and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    runtime = create_runtime("onnxruntime", bundle, threads=1)
    try:
        np.testing.assert_allclose(emb, runtime.embed(x), atol=1e-6)
    finally:
        runtime.close()


def test_broken_bundles_are_bundle_errors(bundle, tmp_path):
    with pytest.raises(BundleError, match="no manifest.json"):
        Bundle(tmp_path)
    copy = shutil.copytree(bundle, tmp_path / "b")
    (copy / "frontend.onnx").unlink()
    with pytest.raises(BundleError, match="has no front-end model frontend.onnx"):
        Bundle(copy).protect(lfw_faces(1))
    doc = json.loads((copy / "manifest.json").read_text())
    doc["randomInputs"][0]["distribution"] = "gaussian"
    (copy / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(BundleError, match="unknown distribution 'gaussian'"):
        Bundle(copy)
    with pytest.raises(BundleError, match="cannot load the ONNX model"):
        session(b"not an onnx model")
    with pytest.raises(BundleError, match="model file missing"):
        session(tmp_path / "none.onnx")
