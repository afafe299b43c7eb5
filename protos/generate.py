"""Regenerate the committed Python stubs from protos/*.proto (`make protos`).

protoc sees the folder under the virtual path `ppfr/protos` (-I ppfr/protos=protos), so generated
code imports its siblings as `ppfr.protos.<module>`, matching the installed package.
"""

import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generate(out_dir: Path) -> list[Path]:
    """Run protoc on every .proto and write the stubs into out_dir; returns the files written."""
    from grpc_tools import protoc

    well_known = str(resources.files("grpc_tools") / "_proto")
    protos = sorted(PROTO_DIR.glob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-Ippfr/protos={PROTO_DIR}",
            f"-I{well_known}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *[f"ppfr/protos/{p.name}" for p in protos],
        ]
        if protoc.main(args) != 0:
            raise RuntimeError("protoc failed")
        written = []
        for f in sorted((Path(tmp) / "ppfr" / "protos").iterdir()):
            if f.name.endswith(GENERATED_SUFFIXES):
                target = out_dir / f.name
                shutil.copyfile(f, target)
                written.append(target)
    return written


if __name__ == "__main__":
    for path in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else PROTO_DIR):
        print(f"wrote {path}")
