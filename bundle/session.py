"""One way to open an ONNX model under ONNX Runtime (edge, cloud, export, attack, bench, tests).

The options were chosen by measurement (a one-off study, docs/benchmarks.md): graph level all
and sequential execution beat the alternatives; `threads` 0 lets ONNX Runtime use one per physical core.
"""

from pathlib import Path

from .manifest import BundleError

CPU = ["CPUExecutionProvider"]


def session(model, threads: int = 0, providers=None):
    """An onnxruntime.InferenceSession of `model` (a path, or the serialized model as bytes); a file that
    is missing or that ONNX Runtime cannot load raises BundleError with the path."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = max(0, int(threads))
    options.inter_op_num_threads = 1
    if isinstance(model, bytes):
        source, name = model, "the ONNX model"
    else:
        source = name = str(model)
        if not Path(model).is_file():
            raise BundleError(f"model file missing: {model} (re-run `make export`)")
    try:
        return ort.InferenceSession(source, options, providers=list(providers or CPU))
    except Exception as err:  # onnxruntime raises its own untyped errors for bad files
        raise BundleError(f"cannot load {name}: {err}") from None
