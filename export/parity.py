"""ONNX Runtime vs PyTorch on real faces with the same random inputs: the export's acceptance test.

- front-end (float32 graph): max relative error = max|ort - torch| / max|torch| <= 1e-4 (relative to
  the tensor's scale: elementwise ratios are meaningless for DCT coefficients that sit at zero);
- recognizer: cosine between ORT and PyTorch embeddings >= 0.9999 for every face, on the same
  protected tensors (in the wire dtype);
- every output finite, and the shipped float16 front-end equal to the torch output rounded to float16.
"""

from dataclasses import dataclass

import numpy as np
import onnx
import torch
from ppfr.bundle import session

from .onnx_export import EMBEDDING, IMAGE, PROTECTED, FrontendGraph, RecognizerGraph

MAX_RELATIVE_ERROR = 1e-4
MIN_COSINE = 0.9999


class ParityError(RuntimeError):
    """ONNX Runtime disagrees with PyTorch beyond the stated tolerance."""


@dataclass
class Parity:
    frontend_max_rel_error: float
    frontend_wire_max_rel_error: float  # shipped front-end (wire dtype, e.g. float16) vs torch float32
    recognizer_min_cosine: float
    num_faces: int

    def ok(self) -> bool:
        return self.frontend_max_rel_error <= MAX_RELATIVE_ERROR and self.recognizer_min_cosine >= MIN_COSINE


def frontend_feeds(image: np.ndarray, random: dict[str, torch.Tensor | np.ndarray]) -> dict[str, np.ndarray]:
    feeds = {IMAGE: np.ascontiguousarray(image)}
    feeds.update({k: np.asarray(v) for k, v in random.items()})
    return feeds


def max_relative_error(got: np.ndarray, ref: np.ndarray) -> float:
    scale = max(float(np.abs(ref).max()), 1e-12)
    return float(np.abs(got.astype(np.float64) - ref.astype(np.float64)).max() / scale)


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-30)
    return float(cos.min())


def _finite(name: str, x: np.ndarray) -> None:
    if not np.isfinite(x).all():
        raise ParityError(f"{name} has non-finite values (overflow in the wire dtype?)")


@torch.no_grad()
def check(
    frontend32: onnx.ModelProto,
    frontend_wire: onnx.ModelProto,
    recognizer_onnx: onnx.ModelProto,
    method,
    recognizer,
    faces: np.ndarray,
    random: dict[str, torch.Tensor],
    wire_dtype: str,
) -> Parity:
    """Run both graphs in ONNX Runtime and in PyTorch; raise ParityError beyond tolerance."""
    feeds = frontend_feeds(faces, random)
    ref = FrontendGraph(method).eval()(torch.from_numpy(faces), *(random[n] for n in method_names(method)))
    ref = ref.numpy()
    got32 = _run(frontend32, PROTECTED, feeds)
    wire = _run(frontend_wire, PROTECTED, feeds)
    for name, x in (("torch front-end", ref), ("ORT front-end", got32), ("ORT wire front-end", wire)):
        _finite(name, x)
    rel = max_relative_error(got32, ref)
    ref_wire = ref.astype(wire_dtype)
    _finite(f"torch front-end output in {wire_dtype}", ref_wire)
    if rel > MAX_RELATIVE_ERROR:
        raise ParityError(
            f"front-end parity failed: max relative error {rel:.3g} (limit {MAX_RELATIVE_ERROR:g})"
        )
    # The shipped graph is the float32 graph plus one Cast: its output must be that output, rounded.
    ulp = np.abs(np.spacing(got32.astype(wire_dtype))).astype(np.float64)
    if (np.abs(wire.astype(np.float64) - got32.astype(wire_dtype).astype(np.float64)) > ulp).any():
        raise ParityError(
            f"the {wire_dtype} front-end does not match the float32 graph rounded to {wire_dtype}"
        )
    wire_err = max_relative_error(wire, ref)
    emb_ref = RecognizerGraph(recognizer).eval()(torch.from_numpy(ref_wire)).numpy()
    emb = _run(recognizer_onnx, EMBEDDING, {PROTECTED: ref_wire})
    _finite("ORT embedding", emb)
    cos = min_cosine(emb, emb_ref)
    if cos < MIN_COSINE:
        raise ParityError(f"recognizer parity failed: min embedding cosine {cos:.6f} (limit {MIN_COSINE})")
    return Parity(rel, wire_err, cos, len(faces))


def _run(model: onnx.ModelProto, output: str, feeds: dict) -> np.ndarray:
    return session(model.SerializeToString()).run([output], feeds)[0]


def method_names(method) -> list[str]:
    return [r.name for r in method.random_inputs()]
