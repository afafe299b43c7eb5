"""torch -> ONNX for the two halves of a bundle (dynamo exporter, dynamic batch, one file each).

- front-end: `image` uint8 [N,112,112,3] + one input per declared random input -> `protected`;
  exported in float32 (the parity check runs on that graph), then a final Cast to float16 is appended
  at the ONNX level when the bundle ships float16, so both variants are one and the same graph.
- recognizer: `protected` (the wire dtype) -> `embedding` float32, L2-normalised, server adapter inside.

Key material (PPFR-FD Shuffle1) is a module buffer, so it lands in the graph as a constant; random
inputs are graph inputs, never drawn inside the graph.
"""

import io
import logging
import warnings

import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper
from torch import nn

OPSET = 20
IMAGE = "image"
PROTECTED = "protected"
EMBEDDING = "embedding"
ONNX_FLOAT = {"float16": TensorProto.FLOAT16, "float32": TensorProto.FLOAT}
TORCH_FLOAT = {"float16": torch.float16, "float32": torch.float32}


class ExportError(RuntimeError):
    """Export or validation failed; the message says why."""


class FrontendGraph(nn.Module):
    """The method's forward with random inputs as positional graph inputs, float32 output."""

    def __init__(self, method: nn.Module):
        super().__init__()
        self.method = method
        self.names = [r.name for r in method.random_inputs()]

    def forward(self, image: torch.Tensor, *random: torch.Tensor) -> torch.Tensor:
        return self.method(image, **dict(zip(self.names, random))).float()


class RecognizerGraph(nn.Module):
    """protected (wire dtype) -> float32 -> adapter + backbone -> L2-normalised embedding."""

    def __init__(self, recognizer: nn.Module):
        super().__init__()
        self.recognizer = recognizer

    def forward(self, protected: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.recognizer(protected.float()), dim=1)


def check_ready(method) -> None:
    if method.name == "dctdp" and torch.isnan(method.clip_bound).any():
        raise ExportError("DCTDP clip bounds are not calibrated: the checkpoint holds no calibrate() result")


def _export(module: nn.Module, args: tuple, input_names, output_name: str, dynamic_shapes) -> onnx.ModelProto:
    module.eval()
    # "torchvision is not installed. Skipping torchvision::nms" on every export: not our concern.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    buf = io.BytesIO()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module,
                args,
                input_names=list(input_names),
                output_names=[output_name],
                dynamic_shapes=dynamic_shapes,
                opset_version=OPSET,
                external_data=False,
                verbose=False,
            )
            program.save(buf, external_data=False)
    except Exception as err:  # the exporter raises many types; one clear message for all
        raise ExportError(f"torch.onnx.export failed for {output_name!r}: {_summary(err)}") from err
    model = onnx.load_from_string(buf.getvalue())
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as err:
        raise ExportError(f"onnx.checker rejected the {output_name!r} graph: {err}") from err
    return model


def _summary(err: Exception) -> str:
    """The exporter's own summary line instead of its multi-page report."""
    text = str(err)
    if "## Exception summary" in text:
        text = text.split("## Exception summary", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def export_frontend(method, image: torch.Tensor, random: dict[str, torch.Tensor]) -> onnx.ModelProto:
    """Front-end graph with float32 output; `image`/`random` are example inputs (batch >= 2)."""
    check_ready(method)
    graph = FrontendGraph(method)
    batch = torch.export.Dim("batch", min=1, max=65536)
    names = [IMAGE, *graph.names]
    args = (image, *(random[n] for n in graph.names))
    shapes = ({0: batch}, tuple({0: batch} for _ in graph.names)) if graph.names else ({0: batch},)
    return _export(graph, args, names, PROTECTED, shapes)


def export_recognizer(recognizer, protected: torch.Tensor) -> onnx.ModelProto:
    """Recognizer graph taking `protected` in the dtype of the example tensor."""
    batch = torch.export.Dim("batch", min=1, max=65536)
    return _export(RecognizerGraph(recognizer), (protected,), [PROTECTED], EMBEDDING, ({0: batch},))


def cast_output(model: onnx.ModelProto, dtype: str) -> onnx.ModelProto:
    """Append a Cast so the front-end emits `dtype` (no-op for float32)."""
    if dtype == "float32":
        return model
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    out = graph.output[0]
    inner = f"{out.name}_float32"
    for node in graph.node:
        node.output[:] = [inner if o == out.name else o for o in node.output]
        node.input[:] = [inner if i == out.name else i for i in node.input]
    graph.node.append(helper.make_node("Cast", [inner], [out.name], to=ONNX_FLOAT[dtype], name="cast_wire"))
    out.type.tensor_type.elem_type = ONNX_FLOAT[dtype]
    onnx.checker.check_model(model, full_check=True)
    return model


def opset_of(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
