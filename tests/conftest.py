"""Shared test fixtures (real face data, small real bundles, a real PostgreSQL); shared helpers that are not
fixtures live in helpers.py. `pytest -m "not slow"` (make test-fast) skips the tests marked slow."""

from pathlib import Path

import numpy as np
import pytest
from helpers import DATA, MODELS, Protector, first_faces_of_people, read_rgb

# Until every test module imports these from helpers (they used to live here):
from helpers import REPO as REPO
from helpers import lfw_faces as lfw_faces


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.exists():
        pytest.fail(
            f"the shared face data is missing: expected {DATA} (clone beside ../shared or set PPFR_DATA)"
        )
    return DATA


@pytest.fixture(scope="session")
def models_dir() -> Path:
    return MODELS


@pytest.fixture(scope="session")
def faces(data_dir) -> np.ndarray:
    """32 real aligned CelebA training faces, uint8 RGB NHWC."""
    paths = sorted((data_dir / "celeba" / "aligned112").glob("*/*.jpg"))[::197][:32]
    return np.stack([read_rgb(p) for p in paths])


@pytest.fixture(scope="session")
def small_bundle(tmp_path_factory, data_dir):
    """Factory: small_bundle(method) -> a small real exported bundle (untrained MobileFaceNet, real
    exporter with parity checks), built once per test session and shared by every test module."""
    from bundles import make_bundle

    root = tmp_path_factory.mktemp("bundles")
    cache = {}

    def get(method: str = "ppfr_fd") -> Path:
        if method not in cache:
            cache[method] = make_bundle(root / f"small_{method}", method=method, train_steps=0)
        return cache[method]

    return get


@pytest.fixture(scope="session")
def bundle(small_bundle) -> Path:
    """The small PPFR-FD bundle (a module may define its own `bundle`)."""
    return small_bundle("ppfr_fd")


@pytest.fixture(scope="session")
def protect(bundle) -> Protector:
    """The edge's side of a call on `bundle`: face -> ProtectedFace, fresh random inputs each time."""
    return Protector(bundle)


@pytest.fixture(scope="session")
def people() -> np.ndarray:
    """One face each of six different LFW people."""
    return first_faces_of_people(6)


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL 16 with pgvector (PyPI pgserver, no root needed; as root it runs the server as a
    `pgserver` system user), started once per session. Calling it creates a fresh, empty database and
    returns its postgresql:// URL. Its data folder is outside pytest's tmp folder: pytest resets that to
    0700 when another session starts, which would lock the `pgserver` user out of a running server."""
    import shutil
    import tempfile
    import uuid
    import warnings

    import psycopg

    with warnings.catch_warnings():  # no XDG_RUNTIME_DIR in CI: pgserver falls back to /tmp, and says so
        warnings.simplefilter("ignore")
        import pgserver

    folder = Path(tempfile.mkdtemp(prefix="ppfr-pg-"))
    server = pgserver.get_server(folder / "data", cleanup_mode="stop")
    admin = server.get_uri()

    def new_database() -> str:
        name = f"g_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return server.get_uri(name)

    yield new_database
    server.cleanup()
    shutil.rmtree(folder, ignore_errors=True)
