"""Shared test fixtures (real face data, small real bundles, a real PostgreSQL); shared helpers that are not
fixtures live in helpers.py. `pytest -m "not slow"` (make test-fast) skips the tests marked slow."""
# ruff: noqa: E402 (an xdist worker pins its CPUs before numpy, torch or ONNX Runtime start threads)

import os
from pathlib import Path


def _pin_xdist_worker() -> None:
    """Under `pytest -n N` (make test), worker i keeps every N-th CPU: torch, ONNX Runtime and the
    subprocesses a test starts size their thread pools to it, instead of each worker spinning one thread
    per core on cores the other workers use (unpinned, `make test` took 311-365 s on 2 cores against
    237-262 s). First thing, before numpy starts threads."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", 1))
    if worker and count > 1 and hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))
        mine = set(cpus[int(worker.removeprefix("gw")) % count :: count]) if len(cpus) >= count else set()
        if mine:
            os.sched_setaffinity(0, mine)


_pin_xdist_worker()

import numpy as np
import pytest
from helpers import DATA, MODELS, Protector, first_faces_of_people, read_rgb

# Until every test module imports these from helpers (they used to live here):
from helpers import REPO as REPO
from helpers import lfw_faces as lfw_faces

# Slow tests in modules whose owners have not marked them yet (node ids without parameters); marking the
# test itself with @pytest.mark.slow is the better place, and then its line here goes.
SLOW = {
    "tests/test_template_key.py::test_template_linkage_runs_end_to_end_at_a_tiny_setting",
    "tests/test_cloud_replicas.py::test_kill_9_of_a_replica_under_enrollment_load_loses_no_acknowledged_enrollment",
    "tests/test_cloud_holes.py::test_shutdown_drains_admitted_calls",
    "tests/test_cloud_failures.py::test_a_database_outage_is_not_serving_unavailable_and_recovers",
    "tests/test_sealed_edge.py::test_sealed_edge_matches_the_plain_server_on_real_faces",
    "tests/test_rekey.py::test_key_is_never_an_argument",
    "tests/test_rekey.py::test_rekey_keeps_the_key_out_of_argv_logs_checkpoint_and_manifest",
    "tests/test_sealed_server.py",  # the whole module: a sealed server per fixture
    "tests/test_cloud_thresholds.py::test_export_writes_a_threshold_per_template_count_and_far",
    "tests/test_export_truth.py::test_calibrate_sets_the_threshold_from_the_sites_photos",
    "tests/test_sealed_gallery.py::test_reopen_delete_and_refusals",
}


def pytest_collection_modifyitems(items):
    for item in items:
        if item.nodeid.split("[")[0] in SLOW or item.nodeid.split("::")[0] in SLOW:
            item.add_marker(pytest.mark.slow)
    # modules with slow tests first (each in its own order): under xdist a long module that starts last
    # would leave the other workers idle at the end
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)


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


def _run_folder(tmp_path_factory) -> Path:
    """The test run's temporary folder, shared by its xdist workers (each has its own below it)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def small_bundle(tmp_path_factory, data_dir):
    """Factory: small_bundle(method) -> a small real exported bundle (untrained MobileFaceNet, real
    exporter with parity checks), built once per test run and shared by every test module (and every
    xdist worker: the first to need it builds it under a file lock in the run's own temporary folder)."""
    from bundles import make_bundle
    from filelock import FileLock

    root = _run_folder(tmp_path_factory)

    def get(method: str = "ppfr_fd") -> Path:
        out = root / f"small_{method}"
        with FileLock(str(out) + ".lock"):
            if not (out / "manifest.json").is_file():
                make_bundle(out, method=method, train_steps=0)
        return out

    return get


@pytest.fixture(scope="session", autouse=True)
def export_cache(tmp_path_factory):
    """Each distinct ONNX graph exported once per test run (tests/export_cache.py says why it is sound)."""
    from export_cache import cached
    from ppfr.export import onnx_export

    folder = _run_folder(tmp_path_factory) / "onnx-graphs"
    folder.mkdir(exist_ok=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(onnx_export, "_export", cached(onnx_export._export, folder))
        yield folder


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


@pytest.fixture(scope="module")
def local_server(bundle):
    """`ppfr-cloud serve` on `bundle` in its own process (ppfr.cloud.local.LocalServer: a free port, a fresh
    gallery, its own API key as .api_key), small batches; stopped after the module."""
    from ppfr.cloud.local import LocalServer

    with LocalServer(bundle, extra_args=["--max-batch", "4", "--max-delay-ms", "1"]) as running:
        yield running


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
    with psycopg.connect(admin, autocommit=True) as conn:
        # a throwaway cluster: no fsync (each CREATE DATABASE writes the template through the WAL, and the
        # shutdown checkpoint otherwise syncs all of it); commits, visibility and locking are unchanged
        conn.execute("ALTER SYSTEM SET fsync = off")
        conn.execute("SELECT pg_reload_conf()")

    def new_database() -> str:
        name = f"g_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return server.get_uri(name)

    yield new_database
    server.cleanup()
    shutil.rmtree(folder, ignore_errors=True)
