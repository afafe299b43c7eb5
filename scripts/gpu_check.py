"""`make gpu-check` on any machine: runs ppfr.bench.gpu_check, from the git tree when ppfr is not installed.

A lent GPU machine starts bare (python3 with torch, no virtual environment, no network): there `ppfr` is
made importable from this checkout by a folder of links that mirrors pyproject.toml's package-dir
(ppfr.train -> train/, ppfr.bench -> bench/, ...), so nothing needs installing. Arguments go to
`python -m ppfr.bench.gpu_check` (`pack` writes .gpu-check/ where ../shared is).
"""

import importlib.util
import re
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def packages() -> dict[str, str]:
    """pyproject.toml's package-dir ("ppfr.train" = "train"): the one list, read as text (python3.10 has no
    tomllib)."""
    text = (REPO / "pyproject.toml").read_text()
    return dict(re.findall(r'^"ppfr\.(\w+)"\s*=\s*"([^"]+)"', text, flags=re.M))


def ensure_importable() -> None:
    if importlib.util.find_spec("ppfr") is not None and importlib.util.find_spec("ppfr.bench") is not None:
        return
    shim = Path(tempfile.mkdtemp(prefix="ppfr-tree-")) / "ppfr"
    shim.mkdir()
    for name, folder in packages().items():
        (shim / name).symlink_to(REPO / folder, target_is_directory=True)
    sys.path.insert(0, str(shim.parent))


if __name__ == "__main__":
    ensure_importable()
    from ppfr.bench.gpu_check import main

    sys.exit(main(sys.argv[1:]))
