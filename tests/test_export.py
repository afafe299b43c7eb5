"""Export of a small model of every method: real faces, real ONNX Runtime sessions, real parity."""

import contextlib
import io
import json

import numpy as np
import onnx
import pytest
import torch
from bundles import export_small, small_config
from google.protobuf import json_format
from helpers import lfw_faces
from ppfr.bundle import read_manifest, session
from ppfr.data import lfw_faces as lfw_faces_of
from ppfr.export import cli, onnx_export, parity
from ppfr.export.bundle import frontend_id
from ppfr.protos import manifest_pb2, tensor_pb2
from ppfr.train.methods import METHODS
from ppfr.train.model import build_model, save_checkpoint

METHOD_NAMES = sorted(METHODS)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """One exported bundle per method (ppfr_fd through the CLI from a checkpoint + metrics.json)."""
    root = tmp_path_factory.mktemp("export")
    out = {}
    for name in METHOD_NAMES:
        if name == "ppfr_fd":
            continue
        result = export_small(root / name, method=name, eval_pairs=20)
        assert result.parity.frontend_max_rel_error <= parity.MAX_RELATIVE_ERROR
        assert result.parity.recognizer_min_cosine >= parity.MIN_COSINE and result.parity.num_faces == 16
        out[name] = result.bundle
    config = small_config("ppfr_fd", name="run_ppfr_fd")
    torch.manual_seed(0)
    method, recognizer = build_model(config)
    run = root / "runs" / "run_ppfr_fd"
    save_checkpoint(run / "checkpoint.pt", config, method, recognizer)
    lfw = {"accuracy_mean": 0.61, "tar_at_far_1e-03": 0.02, "threshold_at_far_1e-03": 0.87, "num_pairs": 6000}
    metrics = {"results": {"lfw": {"trained": lfw}}, "train": {"faces": 6198, "identities": 286, "steps": 9}}
    (run / "metrics.json").write_text(json.dumps(metrics))
    args = [
        "--checkpoint",
        str(run / "checkpoint.pt"),
        "--out",
        str(root / "ppfr_fd"),
        "--eval-pairs",
        "20",
        "--enrolled-photos",
        "1",
    ]
    args.append("--demo-key")  # a keyed method: the test bundle says which key it uses
    args.append("--accept-degraded")  # untrained: far below the 50% TAR export otherwise demands
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert cli.main(args) == 0
    assert "DEGRADED: TAR 2.00% at FAR 1e-3 (written: --accept-degraded)" in printed.getvalue()
    out["ppfr_fd"] = root / "ppfr_fd"
    return out


@pytest.mark.slow
@pytest.mark.parametrize("method", METHOD_NAMES)
def test_bundle_matches_pytorch_at_batch_1_and_7(bundles, method):
    bundle = bundles[method]
    manifest = read_manifest(bundle)
    assert manifest.method == method
    config = small_config(method, name=manifest.name)
    torch.manual_seed(0)
    m, recognizer = build_model(config)
    m.eval()
    recognizer.eval()
    faces = lfw_faces(8, start=100)
    if method == "dctdp":
        from helpers import DATA

        m.calibrate(torch.from_numpy(lfw_faces_of(DATA, 32)))
    front32 = onnx.load(str(bundle / "frontend.onnx"))
    fs, rs = session(bundle / "frontend.onnx"), session(bundle / "recognizer.onnx")
    assert [i.name for i in fs.get_inputs()] == ["image", *[r.name for r in manifest.random_inputs]]
    assert fs.get_outputs()[0].type == "tensor(float16)"
    assert front32.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert not list((bundle).glob("*.data"))  # one self-contained file each
    for n in (1, 7):
        random = m.sample_random(n, torch.Generator().manual_seed(n))
        feeds = {"image": faces[:n], **{k: v.numpy() for k, v in random.items()}}
        protected = fs.run(None, feeds)[0]
        with torch.no_grad():
            ref = m(torch.from_numpy(faces[:n]), **random).float().numpy()
            assert protected.shape == (n, *manifest.protected_tensor.shape[1:])
            # float16 wire: equal to the float32 reference up to float16 rounding
            np.testing.assert_allclose(
                protected.astype(np.float32), ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max()
            )
            emb = rs.run(None, {"protected": protected})[0]
            emb_ref = recognizer.embed(torch.from_numpy(protected.astype(np.float32))).numpy()
        assert emb.shape == (n, manifest.embedding_size)
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
        assert parity.min_cosine(emb, emb_ref) >= parity.MIN_COSINE


@pytest.mark.slow
def test_manifest_round_trips_and_is_complete(bundles):
    for bundle in bundles.values():
        manifest = read_manifest(bundle)
        text = (bundle / "manifest.json").read_text()
        again = json_format.Parse(json_format.MessageToJson(manifest), manifest_pb2.BundleManifest())
        assert again == manifest
        assert json.loads(text)["frontendId"] == manifest.frontend_id
        data = (bundle / "frontend.onnx").read_bytes()
        assert manifest.frontend.size_bytes == len(data) and manifest.frontend.path == "frontend.onnx"
        assert manifest.frontend_image_input.shape == [-1, 112, 112, 3]
        assert manifest.frontend_image_input.data_type == tensor_pb2.DATA_TYPE_UINT8
        assert manifest.protected_tensor.data_type == tensor_pb2.DATA_TYPE_FLOAT16
        assert manifest.embedding.shape == [-1, 128] and manifest.embedding_size == 128
        c, h, w = manifest.protected_tensor.shape[1:]
        assert (
            manifest.payload.float16_bytes == c * h * w * 2
            and manifest.payload.float32_bytes == c * h * w * 4
        )
        assert manifest.threshold.false_accept_rate == 1e-3 and manifest.threshold.num_pairs > 0
        assert manifest.opset >= 18 and manifest.create_time and manifest.training.backbone == "mobilefacenet"
        assert len(manifest.frontend_id) == 64
    fd = read_manifest(bundles["ppfr_fd"])
    assert fd.threshold.cosine == pytest.approx(0.87) and fd.threshold.num_pairs == 6000  # from metrics.json
    assert fd.training.run_name == "run_ppfr_fd" and len(fd.training.checkpoint_sha256) == 64
    assert (fd.training.num_images, fd.training.num_identities) == (6198, 286)
    (shuffle2,) = fd.random_inputs
    assert (shuffle2.name, list(shuffle2.shape), shuffle2.distribution) == ("shuffle2", [34], "permutation")
    assert shuffle2.data_type == tensor_pb2.DATA_TYPE_INT64 and shuffle2.params["n"] == 34
    assert "key" not in fd.method_params  # the key itself never enters the manifest
    pf = read_manifest(bundles["partialface"])
    assert [r.name for r in pf.random_inputs] == ["subset", "permutation"]
    assert read_manifest(bundles["dctdp"]).random_inputs[0].distribution == "laplace"


@pytest.mark.slow
def test_changed_key_changes_frontend_id():
    faces = lfw_faces(2)
    ids = []
    for key in ("key-a", "key-b"):
        m, _ = build_model(small_config("ppfr_fd", key=key))
        random = m.sample_random(2, torch.Generator().manual_seed(0))
        model = onnx_export.cast_output(
            onnx_export.export_frontend(m, torch.from_numpy(faces), random), "float16"
        )
        ids.append(frontend_id(model.SerializeToString(), m.key_material()))
    assert ids[0] != ids[1]
    # the id is a pure function of (graph bytes, key material)
    assert (
        frontend_id(b"graph", b"key-a") == frontend_id(b"graph", b"key-a") != frontend_id(b"graph", b"key-b")
    )


@pytest.mark.slow
def test_parity_failure_is_loud(bundles):
    """A graph that disagrees with the PyTorch model is refused with a clear ParityError."""
    torch.manual_seed(0)
    m, recognizer = build_model(small_config("rgb"))
    torch.manual_seed(1)
    _, other = build_model(small_config("rgb"))  # different weights than the exported recognizer
    faces = lfw_faces(4)
    front = onnx.load(str(bundles["rgb"] / "frontend.onnx"))
    recog = onnx.load(str(bundles["rgb"] / "recognizer.onnx"))
    front32 = onnx_export.export_frontend(m, torch.from_numpy(faces[:2]), {})
    parity.check(front32, front, recog, m.eval(), recognizer.eval(), faces, {}, "float16")
    with pytest.raises(parity.ParityError, match="recognizer parity failed"):
        parity.check(front32, front, recog, m, other.eval(), faces, {}, "float16")


def test_cli_user_mistakes_are_clear(tmp_path, capsys):
    assert (
        cli.main(["--checkpoint", str(tmp_path / "runs/x/checkpoint.pt"), "--out", str(tmp_path / "a")]) == 2
    )
    err = capsys.readouterr().err
    assert "no checkpoint" in err and "Traceback" not in err
    assert cli.main([]) == 2
    assert cli.main(["--all", "--runs", str(tmp_path)]) == 2
    assert "train first" in capsys.readouterr().err
