"""ppfr.data: the shared face data and models, LFW pairs and people, reading face crops.

Torch-free; imports only ppfr.protos of ours (nothing else of ours; numpy, and OpenCV where an image is
read). The shared folder (holding data/ and models/) is $PPFR_DATA, else <repo>/../shared:

    from ppfr import data
    root = data.data_root(args.data)              # DataError unless it holds LFW
    pairs, same, fold = data.lfw_pairs(root)      # LFW View-2, 10 folds
    face = data.read_rgb(root / "lfw" / "aligned112" / pairs[0][0])
    detector = data.model_path("yunet", "face_detection_yunet_2023mar.onnx")
"""

from .images import FACE_SIZE, read_faces, read_rgb
from .lfw import lfw_faces, lfw_pairs, lfw_people, read_pairs
from .paths import ENV_VAR, DataError, data_path, data_root, model_path, shared_root

__all__ = [
    "ENV_VAR",
    "FACE_SIZE",
    "DataError",
    "data_path",
    "data_root",
    "lfw_faces",
    "lfw_pairs",
    "lfw_people",
    "model_path",
    "read_faces",
    "read_pairs",
    "read_rgb",
    "shared_root",
]
