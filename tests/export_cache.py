"""The graphs `torch.onnx.export` writes, kept for the test run (conftest's `export_cache` fixture).

Many tests export the same small model (one seed, one method) on their way to what they test: a key file,
thresholds by template count, a tenant block. The dynamo exporter takes 1-3 s of one core per graph
whatever the model, so the run exports each distinct graph once, shared by the xdist workers through a
folder under a file lock. The key is everything the graph depends on: the module's classes, plain
attributes, every parameter and buffer, the example inputs and the export arguments; a module holding
anything else (an object without a plain value) is not cached. Everything after the export (the cast to
the wire dtype, ONNX Runtime vs PyTorch parity on real faces, the thresholds) runs in each test as always.
"""

import hashlib
from pathlib import Path

import onnx
import torch
from filelock import FileLock

PLAIN = (bool, int, float, str, bytes, type(None))


def _plain(value) -> bool:
    if isinstance(value, (tuple, list)):
        return all(_plain(v) for v in value)
    return isinstance(value, PLAIN)


def _tensor(digest, name: str, tensor: torch.Tensor) -> None:
    data = tensor.detach().cpu().contiguous()
    digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}|".encode())
    digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())


def fingerprint(module: torch.nn.Module, args: tuple, *export_args) -> str | None:
    """sha256 of what the exported graph depends on, or None where a module holds something else."""
    digest = hashlib.sha256(repr(export_args).encode())
    for prefix, sub in module.named_modules():
        digest.update(f"{prefix}:{type(sub).__module__}.{type(sub).__qualname__}|".encode())
        for name, value in sorted(vars(sub).items()):
            if name.startswith("_") or name == "training":
                continue
            if isinstance(value, torch.Tensor):
                _tensor(digest, f"{prefix}.{name}", value)
            elif _plain(value):
                digest.update(f"{prefix}.{name}={value!r}|".encode())
            else:
                return None
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        _tensor(digest, name, tensor)
    for i, arg in enumerate(args):
        _tensor(digest, f"arg{i}", arg)
    return digest.hexdigest()


def cached(real, folder: Path):
    """`onnx_export._export` with its graphs kept in `folder`."""

    def export(module, args, input_names, output_name, dynamic_shapes) -> onnx.ModelProto:
        key = fingerprint(module, args, list(input_names), output_name, repr(dynamic_shapes))
        if key is None:
            return real(module, args, input_names, output_name, dynamic_shapes)
        module.eval()  # as the exporter leaves it
        path = folder / f"{key}.onnx"
        with FileLock(str(path) + ".lock"):
            if not path.is_file():
                model = real(module, args, input_names, output_name, dynamic_shapes)
                path.write_bytes(model.SerializeToString())
                return model
        return onnx.load_from_string(path.read_bytes())

    return export
