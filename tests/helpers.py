"""What several test modules share (not a test module; conftest.py holds the fixtures):

    from helpers import DATA, REPO, lfw_faces, Protector, code_of
    faces = lfw_faces(4)                     # the first 4 LFW pair images, uint8 RGB NHWC
    face = Protector(bundle)(faces[0])       # a ProtectedFace message, fresh random inputs, as the edge sends

Paths come from ppfr.data, so PPFR_DATA moves the tests' data too.
"""

import shutil
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from ppfr import data
from ppfr.bundle import Bundle, data_type
from ppfr.protos import verification_pb2

REPO = Path(__file__).resolve().parents[1]
DATA = data.data_path()
MODELS = data.model_path()
read_rgb = data.read_rgb
LFW_RAW = DATA / "lfw" / "raw_samples_250"  # raw LFW photos for the edge's detection
BUSH, BUSH_2 = LFW_RAW / "George_W_Bush_0001.jpg", LFW_RAW / "George_W_Bush_0002.jpg"
SERENA, SERENA_2 = LFW_RAW / "Serena_Williams_0001.jpg", LFW_RAW / "Serena_Williams_0002.jpg"


def edge_command() -> list[str]:
    """The installed ppfr-edge command (beside this Python, else on PATH)."""
    script = Path(sys.executable).with_name("ppfr-edge")
    return [str(script)] if script.exists() else [shutil.which("ppfr-edge") or "ppfr-edge"]


def lfw_faces(n: int, start: int = 0) -> np.ndarray:
    """n aligned 112x112 LFW faces (uint8 RGB NHWC): pair images start..start+n-1, always the same ones."""
    names = (DATA / "lfw" / "pairs_images.txt").read_text().split()[start : start + n]
    return data.read_faces(DATA / "lfw" / "aligned112" / name for name in names)


def first_faces_of_people(n: int) -> np.ndarray:
    """One face each of n different LFW people (the first pair image of each name)."""
    names = (DATA / "lfw" / "pairs_images.txt").read_text().split()
    firsts = {}
    for name in names:
        firsts.setdefault(name.split("/")[0], name)
        if len(firsts) == n:
            break
    return data.read_faces(DATA / "lfw" / "aligned112" / name for name in firsts.values())


class Protector:
    """The edge's side of a call: a bundle's front-end with fresh random inputs per face -> ProtectedFace."""

    def __init__(self, bundle):
        self.bundle = Bundle(bundle, threads=1)
        self.manifest = self.bundle.manifest

    def __call__(self, face_rgb) -> verification_pb2.ProtectedFace:
        out = self.bundle.protect(np.asarray(face_rgb, np.uint8))
        return verification_pb2.ProtectedFace(
            data=out.tobytes(),
            shape=list(out.shape),
            data_type=data_type(out.dtype),
            frontend_id=self.bundle.frontend_id,
        )


def face_with(good: verification_pb2.ProtectedFace, **fields) -> verification_pb2.ProtectedFace:
    """A copy of a protected face with some fields replaced (shape: a list), for malformed requests."""
    face = verification_pb2.ProtectedFace()
    face.CopyFrom(good)
    for key, value in fields.items():
        if key == "shape":
            del face.shape[:]
            face.shape.extend(value)
        else:
            setattr(face, key, value)
    return face


def code_of(call) -> tuple[grpc.StatusCode, str]:
    """The status code and details of a call that must fail."""
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details()


class SlowRuntime:
    """Wraps the real runtime and takes `delay` seconds per call, to outlast a client's deadline."""

    def __init__(self, runtime, delay):
        self.runtime, self.delay = runtime, delay
        self.name, self.max_batch = runtime.name, runtime.max_batch

    def embed(self, batch):
        time.sleep(self.delay)
        return self.runtime.embed(batch)

    def close(self):
        self.runtime.close()


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certs(folder: Path) -> dict[str, bytes]:
    """A CA, a server certificate for 127.0.0.1/localhost, and a client certificate, all signed by the CA."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ca = ["-subj", "/CN=ppfr-test-ca", "-addext", "basicConstraints=critical,CA:TRUE"]
    ca += ["-addext", "keyUsage=critical,keyCertSign"]
    _openssl("req", "-x509", *ec, *ca, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", cwd=folder)
    (folder / "server.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    (folder / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for who in ("server", "client"):
        _openssl("req", *ec, "-keyout", f"{who}.key", "-out", f"{who}.csr", "-subj", f"/CN={who}", cwd=folder)
        sign = [
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            f"{who}.ext",
        ]
        _openssl("x509", "-req", "-in", f"{who}.csr", *sign, "-out", f"{who}.pem", cwd=folder)
    return {
        name: (folder / name).read_bytes() for name in ("ca.pem", "server.pem", "client.pem", "client.key")
    }


def new_tenant():
    """(the tenant with its secret key, the public evaluation context bytes): real CKKS keys."""
    from ppfr.bundle import tenant

    secret, public = tenant.keygen()
    return tenant.Tenant(secret, secret=True), public


def decrypting_edge(edge_tenant, threshold: float = 0.5):
    """The decrypting half of ppfr.edge.sealed.SealedEdge only (no recognizer needed): one threshold for
    every template count."""
    from ppfr.bundle.thresholds import Thresholds
    from ppfr.edge.sealed import SealedEdge

    edge = SealedEdge.__new__(SealedEdge)
    edge.tenant, edge.thresholds = edge_tenant, Thresholds((threshold,), 1e-3)
    return edge


def celeba_embeddings(people: int, photos: int = 3) -> np.ndarray:
    """people x photos unit dlib embeddings of real CelebA faces (the shared teacher cache), float64."""
    z = np.load(DATA / "teacher" / "dlib_celeba.npz")
    names = np.array([p.split("/")[0] for p in z["paths"]])
    chosen = [p for p in dict.fromkeys(names) if (names == p).sum() >= photos][:people]
    x = z["emb"][np.concatenate([np.flatnonzero(names == p)[:photos] for p in chosen])].astype(np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def serving(bundle, folder: Path, **settings):
    """A real server on a loopback port in this process with a fresh SQLite gallery in `folder`."""
    from ppfr.cloud.server import ServerConfig, ServerThread

    settings = {"port": 0, "max_batch": 4, "max_delay_ms": 1, **settings}
    return ServerThread(ServerConfig(bundle=bundle, db=folder / "gallery.sqlite", **settings))
