"""Checkpoint -> bundle folder: frontend.onnx, recognizer.onnx, manifest.json (docs/DESIGN.md §2).

Nothing is written to the bundle folder unless both graphs pass onnx.checker and the parity check.
"""

import datetime
import hashlib
import json
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from google.protobuf import struct_pb2
from ppfr import data as shared_data
from ppfr.bundle import data_type, session, write_manifest
from ppfr.bundle.calibration import threshold_message
from ppfr.protos import manifest_pb2, tensor_pb2
from ppfr.train import keys

from . import evaluation, onnx_export, parity
from .onnx_export import EMBEDDING, IMAGE, PROTECTED, ExportError

FRONTEND = "frontend.onnx"
RECOGNIZER = "recognizer.onnx"
DETECTOR = "detector.onnx"  # YuNet, copied in so the edge needs nothing but the bundle (edge/detect.py)
YUNET = ("yunet", "face_detection_yunet_2023mar.onnx")
WIRE_DTYPES = ("float16", "float32")
MIN_TAR = 0.5  # export refuses a bundle below this TAR@FAR 1e-3 unless told to accept it


class DegradedError(ExportError):
    """The exported graphs verify too poorly (e.g. a key the recognizer was not trained under)."""


@dataclass
class ExportResult:
    bundle: Path
    manifest: manifest_pb2.BundleManifest
    parity: parity.Parity
    pairs: dict | None = None  # single-pair figures (accuracy, TAR, threshold) behind the manifest's
    by_templates: list | None = None  # thresholds for subjects with 1, 2, 3+ templates at evaluation.FARS
    detector: str | None = None  # sha256 of the bundle's detector.onnx (None: none found to copy)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def frontend_id(frontend_bytes: bytes, key_material: bytes) -> str:
    """sha256 over frontend.onnx bytes followed by the method's key material."""
    return hashlib.sha256(frontend_bytes + key_material).hexdigest()


def _struct(d: dict) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(json.loads(json.dumps(d)))
    return s


def _spec(name: str, shape, dtype) -> tensor_pb2.TensorSpec:
    return tensor_pb2.TensorSpec(name=name, shape=list(shape), data_type=data_type(dtype))


def _model_file(path: Path, data: bytes) -> manifest_pb2.ModelFile:
    return manifest_pb2.ModelFile(path=path.name, sha256=sha256(data), size_bytes=len(data))


def _training_info(config: dict, ckpt: dict, checkpoint: Path | None) -> manifest_pb2.TrainingInfo:
    state = dict(ckpt.get("state") or {})
    metrics = checkpoint.parent / "metrics.json" if checkpoint else None
    if metrics and metrics.is_file():
        train = json.loads(metrics.read_text()).get("train") or {}
        state.update(num_images=train.get("faces"), num_identities=train.get("identities"))
        state.setdefault("steps", train.get("steps"))
    data = config.get("data") or {}
    train_data = data.get("train") or ""
    return manifest_pb2.TrainingInfo(
        run_name=str(config.get("name", "")),
        config=json.dumps(keys.redacted_config(config), sort_keys=True, default=str),
        checkpoint_sha256=sha256(checkpoint.read_bytes()) if checkpoint else "",
        train_data=train_data if isinstance(train_data, str) else json.dumps(train_data, default=str),
        num_identities=int(state.get("num_identities") or state.get("num_classes") or 0),
        num_images=int(state.get("num_images") or 0),
        epochs=int(state.get("epoch") or state.get("epochs") or 0),
        backbone=str((config.get("model") or {}).get("backbone", "")),
    )


def _version() -> str:
    try:
        return metadata.version("ppfr")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def export_model(
    config: dict,
    method,
    recognizer,
    out_dir,
    *,
    ckpt: dict | None = None,
    checkpoint: Path | None = None,
    dtype: str = "float16",
    data=None,
    threshold: dict | None = None,
    eval_pairs: int | None = None,
    enrolled_photos: int = 1,
    parity_faces: int = 16,
    seed: int = 0,
    method_key: keys.MethodKey | None = None,
    min_tar: float | None = None,
    template_thresholds: bool | None = None,
) -> ExportResult:
    """Export an in-memory (method, recognizer) to `out_dir`; raises ExportError/ParityError on failure.

    threshold: a dict as `evaluation.from_metrics` returns; None recomputes it on LFW pairs through the
    exported graphs (`eval_pairs` limits the pairs, for quick bundles). enrolled_photos > 1 replaces it
    with the FAR 1e-3 point for subjects enrolled from that many photos, pooled as the server scores
    (`evaluation.pooled`, through the exported graphs).

    method_key: the deployment key of a keyed method (train/keys.py); it replaces the key the method
    was trained with (trained parameters are kept). None keeps the method's own key. Either way the
    manifest records only the key id and whether it is the public demo key, never the key (a `threshold`
    passed in must be that key's).

    template_thresholds: also thresholds for subjects with 1, 2 and 3+ templates (pooled, exported graphs,
    evaluation.FARS; `eval_pairs` caps their subjects); default when enrolled_photos > 1 (1: the single-pair
    threshold for all). min_tar: DegradedError, before writing, when the single-pair TAR@1e-3 is below.
    """
    if dtype not in WIRE_DTYPES:
        raise ExportError(f"dtype must be one of {WIRE_DTYPES}, got {dtype!r}")
    if method_key is not None and keys.method_key_bytes(method) is not None:  # refuses another key's seal
        config, method = keys.unseal(config, method, method_key.key)
    method.eval()
    recognizer.eval()
    root = shared_data.data_root(data)
    faces = shared_data.lfw_faces(root, max(parity_faces, 2))
    random = method.sample_random(len(faces), torch.Generator().manual_seed(seed))
    front32, front, recog = _graphs(method, recognizer, faces, random, dtype)
    result = parity.check(front32, front, recog, method, recognizer, faces, random, dtype)
    figures = (threshold, eval_pairs, enrolled_photos, template_thresholds)
    pairs, by_templates, threshold = _thresholds(root, front, recog, method, seed, *figures, min_tar)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = _files(front, recog)
    manifest = _manifest(config, method, recognizer, out, files, dtype, threshold)
    _record(manifest, out, files, by_templates)
    manifest.training.CopyFrom(_training_info(config, ckpt or {}, checkpoint))
    manifest.opset = onnx_export.opset_of(front)
    _write(out, files, manifest)
    return ExportResult(out, manifest, result, pairs, by_templates, manifest.detector.sha256 or None)


def _files(front, recog) -> dict:
    """The bundle's model files by name: both graphs and, when found (ppfr.data), the YuNet detector."""
    files = {FRONTEND: front.SerializeToString(), RECOGNIZER: recog.SerializeToString()}
    detector = shared_data.model_path(*YUNET)
    if detector.is_file():
        files[DETECTOR] = detector.read_bytes()
    return files


def _thresholds(root, front, recog, method, seed, threshold, eval_pairs, enrolled, per_count, min_tar):
    """(single-pair entry, [1, 2, 3+ template entries] or None, the manifest's main threshold entry).

    ONNX Runtime sessions are opened only when something is computed here. The main threshold is the
    single-pair one for enrolled == 1, else the pooled point for `enrolled` photos (the server's default
    before it picks by template count). A single-pair TAR below min_tar raises DegradedError before the
    pooled thresholds are computed (a refused export returns early)."""
    per_count = enrolled > 1 if per_count is None else per_count
    given = threshold is not None and enrolled == 1 and not per_count  # nothing to compute
    embed = None if given else evaluation.Memo(_graph_embedder(front, recog, method, seed))
    pairs = threshold or evaluation.recompute(root, embed, eval_pairs)
    if min_tar is not None and pairs["tar"] < min_tar:
        raise DegradedError(_degraded(method, pairs, min_tar))
    if given:
        return pairs, None, pairs
    by_templates = None
    if per_count:
        by_templates = evaluation.by_template_count(root, embed, eval_pairs, evaluation.FARS)
    counts = {e["templates"]: e for e in by_templates or [] if e["far"] == evaluation.FAR}
    if enrolled == 1:
        main = pairs
    elif enrolled in counts:
        main = {k: v for k, v in counts[enrolled].items() if k != "templates"}
    else:
        main = evaluation.pooled(root, embed, enrolled, base=pairs, max_people=eval_pairs)
    for e in [main, *(by_templates or [])]:
        e["accuracy"] = pairs["accuracy"]  # pooling defines no accuracy: the single pairs' figure
    return pairs, by_templates, main


def _degraded(method, pairs: dict, min_tar: float) -> str:
    key = keys.method_key_bytes(method)
    under = f" under key id {keys.key_id(key)}" if key is not None else ""
    return (
        f"the exported graphs{under} verify LFW pairs at accuracy {pairs['accuracy']:.2%}, TAR "
        f"{pairs['tar']:.2%} at FAR 1e-3 (below {min_tar:.0%}): the recognizer was not trained for this "
        "key (adapt it to the key first, docs/export.md); --accept-degraded writes the bundle anyway"
    )


def _graphs(method, recognizer, faces: np.ndarray, random: dict, dtype: str):
    """(float32 front-end, front-end in the wire dtype, recognizer) as ONNX models."""
    c, h, w = method.output_shape()
    front32 = onnx_export.export_frontend(
        method, torch.from_numpy(faces[:2]), {k: v[:2] for k, v in random.items()}
    )
    front = onnx_export.cast_output(front32, dtype)
    example = torch.zeros(2, c, h, w, dtype=onnx_export.TORCH_FLOAT[dtype])
    return front32, front, onnx_export.export_recognizer(recognizer, example)


def _manifest(config, method, recognizer, out: Path, files: dict, dtype: str, threshold: dict):
    """The manifest of the exported graphs (training info and opset are added by the caller)."""
    c, h, w = method.output_shape()
    with torch.no_grad():
        emb_size = int(recognizer(torch.zeros(1, c, h, w)).shape[1])
    return manifest_pb2.BundleManifest(
        name=bundle_name(str(config.get("name", out.name)), method),
        method=method.name,
        method_params=_struct(_method_params(method)),
        frontend_id=frontend_id(files[FRONTEND], method.key_material()),
        frontend=_model_file(out / FRONTEND, files[FRONTEND]),
        recognizer=_model_file(out / RECOGNIZER, files[RECOGNIZER]),
        frontend_image_input=_spec(IMAGE, (-1, 112, 112, 3), "uint8"),
        random_inputs=[
            manifest_pb2.RandomInputSpec(
                name=r.name,
                shape=list(r.shape),
                data_type=data_type(r.dtype),
                distribution=r.distribution,
                params=_struct(r.params),
            )
            for r in method.random_inputs()
        ],
        protected_tensor=_spec(PROTECTED, (-1, c, h, w), dtype),
        embedding=_spec(EMBEDDING, (-1, emb_size), "float32"),
        embedding_size=emb_size,
        threshold=threshold_message(threshold),
        payload=manifest_pb2.PayloadSize(
            float16_bytes=method.payload_bytes("float16"),
            float32_bytes=method.payload_bytes("float32"),
            wire_data_type=data_type(dtype),
        ),
        ppfr_version=_version(),
        create_time=_now(),
    )


def bundle_name(run: str, method) -> str:
    """The run's name, and for a keyed method under a key other than the public demo key its key id too:
    two exports of one run under two keys are two bundles (their front-ends differ) with two names."""
    key = keys.method_key_bytes(method)
    return run if key is None or key == keys.DEMO_KEY else f"{run}-key{keys.key_id(key)[:8]}"


def _record(manifest, out: Path, files: dict, by_templates: list | None) -> None:
    """The per-template-count thresholds and the detector file, in the manifest."""
    for e in by_templates or []:
        manifest.thresholds_by_templates.add(templates=e["templates"], threshold=threshold_message(e))
    if DETECTOR in files:
        manifest.detector.CopyFrom(_model_file(out / DETECTOR, files[DETECTOR]))


def _write(out: Path, files: dict, manifest) -> None:
    """The graphs (each replaced atomically), then the manifest; engines of an older recognizer go."""
    for name, data_bytes in files.items():
        tmp = out / (name + ".tmp")
        tmp.write_bytes(data_bytes)
        tmp.replace(out / name)
    for p in out.glob("recognizer.*.plan"):
        p.unlink()
    write_manifest(manifest, out)


def _method_params(method) -> dict:
    """method.params() with the key id of train/keys.py (never the key) and the demo-key flag."""
    params = dict(method.params())
    params.pop("key", None)
    key = keys.method_key_bytes(method)
    if key is not None:
        params["key_id"] = keys.key_id(key)
        params["key_id_kdf"] = f"HMAC-SHA256(key, '{keys.KEY_ID_LABEL.decode()}'), first 64 bits"
        params["demo_key"] = key == keys.DEMO_KEY
    return params


def _graph_embedder(front, recog, method, seed):
    """faces -> embeddings through the exported graphs, one fresh random draw per face (as deployed)."""
    fs, rs = session(front.SerializeToString()), session(recog.SerializeToString())
    gen = torch.Generator().manual_seed(seed + 1)

    def embed(images: np.ndarray) -> np.ndarray:
        random = {k: v.numpy() for k, v in method.sample_random(len(images), gen).items()}
        protected = fs.run([PROTECTED], parity.frontend_feeds(images, random))[0]
        return rs.run([EMBEDDING], {PROTECTED: protected})[0]

    return embed


def export_checkpoint(checkpoint, out_dir, **kw) -> ExportResult:
    """Load `runs/<name>/checkpoint.pt` and export it. The single-pair figures come from its
    metrics.json only when the export key is the key it was trained under; else they are recomputed."""
    from ppfr.train.model import load_checkpoint

    checkpoint = Path(checkpoint)
    config, method, recognizer, ckpt = load_checkpoint(checkpoint)
    new_key = kw.get("method_key")
    trained = keys.trained_key_id(config["method"])  # a sealed checkpoint names its key's id
    same_key = new_key is None or keys.method_key_bytes(method) is None or trained == new_key.key_id
    if kw.get("threshold") is None and same_key:
        kw["threshold"] = evaluation.from_metrics(checkpoint.parent / "metrics.json")
    return export_model(config, method, recognizer, out_dir, ckpt=ckpt, checkpoint=checkpoint, **kw)
