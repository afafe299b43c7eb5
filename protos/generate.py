"""Regenerate the committed Python stubs from protos/*.proto (`make protos`).

The .proto files import each other by bare file name (`import "tensor.proto"`), so any language compiles
them with a plain `protoc -I protos`. protoc's Python output then imports siblings as top-level modules
(`import tensor_pb2`); the generator rewrites those lines to `from ppfr.protos import tensor_pb2`, the
installed package. Nothing else differs from protoc's output.
"""

import re
import sys
import tempfile
from importlib import resources
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
PACKAGE = "ppfr.protos"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def _package_imports(text: str, siblings: list[str]) -> str:
    """`import tensor_pb2 as x` -> `from ppfr.protos import tensor_pb2 as x` for our own modules."""
    names = "|".join(re.escape(f"{s}_pb2") for s in siblings)
    return re.sub(rf"^import ({names}) as ", rf"from {PACKAGE} import \1 as ", text, flags=re.M)


def generate(out_dir: Path) -> list[Path]:
    """Run protoc on every .proto and write the stubs into out_dir; returns the files written."""
    from grpc_tools import protoc

    well_known = str(resources.files("grpc_tools") / "_proto")
    protos = sorted(PROTO_DIR.glob("*.proto"))
    siblings = [p.stem for p in protos]
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{PROTO_DIR}",
            f"-I{well_known}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *[str(p) for p in protos],
        ]
        if protoc.main(args) != 0:
            raise RuntimeError("protoc failed")
        written = []
        for f in sorted(Path(tmp).iterdir()):
            if f.name.endswith(GENERATED_SUFFIXES):
                target = out_dir / f.name
                target.write_text(_package_imports(f.read_text(), siblings))
                written.append(target)
    return written


if __name__ == "__main__":
    for path in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else PROTO_DIR):
        print(f"wrote {path}")
