"""Where the shared data lives: one folder holding data/ (faces) and models/ (detector, dlib weights).

$PPFR_DATA names that folder; without it, the `shared` folder beside the checkout (<repo>/../shared), then
../shared from the working directory. An installed edge sets PPFR_DATA or passes --detector.
"""

import os
from pathlib import Path

ENV_VAR = "PPFR_DATA"
_CHECKOUT = Path(__file__).resolve().parents[1]


class DataError(FileNotFoundError):
    """The shared face data is missing or unreadable (reported as one line, without a traceback)."""


def shared_root() -> Path:
    """The shared folder: $PPFR_DATA, else <repo>/../shared, else ../shared from the working directory."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    beside = _CHECKOUT.parent / "shared"
    return beside if beside.is_dir() else Path("..", "shared")


def data_path(*parts) -> Path:
    """A path under the shared face data, e.g. data_path("lfw", "aligned112")."""
    return shared_root().joinpath("data", *parts)


def model_path(*parts) -> Path:
    """A path under the shared models, e.g. model_path("yunet", "face_detection_yunet_2023mar.onnx")."""
    return shared_root().joinpath("models", *parts)


def data_root(path=None) -> Path:
    """The face data folder to use (`path`, e.g. a --data flag, else data_path()); DataError unless it
    holds LFW (lfw/pairs.txt)."""
    root = Path(path) if path else data_path()
    if not (root / "lfw" / "pairs.txt").is_file():
        raise DataError(f"face data not found at {root} (need lfw/pairs.txt); pass --data or set {ENV_VAR}")
    return root
