"""The edge installs and runs on its own (issue 26, item 4): a plain virtualenv outside the checkout (no
system site-packages, so no torch), `pip install <copy of the checkout>[edge]`, a bundle copied to a temp
folder (it carries the YuNet detector), and that venv's `ppfr-edge` enrolls and verifies raw photos
against a real server (ppfr.cloud.local.LocalServer) with nothing else: PPFR_DATA points nowhere.

pip downloads the edge's wheels once (about 100 MB) and reuses its cache after; the test prints how long
the venv and the install took."""

import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from helpers import BUSH, BUSH_2, REPO, SERENA
from ppfr.cloud.local import LocalServer

pytestmark = pytest.mark.slow


def sources() -> list[str]:
    """What a source install needs: pyproject's package folders (and pyproject.toml, the README)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    return sorted(set(project["tool"]["setuptools"]["package-dir"].values()))


@pytest.fixture(scope="module")
def edge_venv(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("edge-install")
    source = root / "ppfr"
    for name in sources():
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    venv = root / "venv"
    started = time.monotonic()
    # no pip of its own (ensurepip takes seconds): this interpreter's pip installs into it (--python)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    made = time.monotonic()
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet"]
    pip.append("--disable-pip-version-check")
    done = subprocess.run([*pip, f"{source}[edge]"], capture_output=True, text=True, cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    print(f"\nedge install: venv {made - started:.1f} s, pip install .[edge] {time.monotonic() - made:.1f} s")
    return venv


def test_fresh_venv_has_the_edge_and_no_torch(edge_venv):
    python = str(edge_venv / "bin" / "python")
    probe = "import importlib.util as u; print(u.find_spec('torch') is None, bool(u.find_spec('ppfr.edge')))"
    out = subprocess.run([python, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "True"]
    where = subprocess.run(
        [python, "-c", "import ppfr.edge, sys; print(ppfr.edge.__file__)"], capture_output=True, text=True
    ).stdout
    assert str(edge_venv) in where and str(REPO) not in where  # the installed copy, not the checkout


def test_installed_edge_verifies_raw_photos_with_only_a_bundle(edge_venv, small_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(small_bundle("ppfr_fd"), bundle)
    assert (bundle / "detector.onnx").is_file()
    photos = tmp_path / "photos"
    photos.mkdir()
    for photo in (BUSH, BUSH_2, SERENA):
        shutil.copy2(photo, photos / photo.name)
    with LocalServer(bundle) as server:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env.update(PPFR_API_KEY=server.api_key, PPFR_DATA=str(tmp_path / "nowhere"))

        def edge(*args):
            cmd = [str(edge_venv / "bin" / "ppfr-edge"), "--server", server.address, "--bundle", str(bundle)]
            done = subprocess.run(
                [*cmd, "--json", *map(str, args)], capture_output=True, text=True, env=env, cwd=tmp_path
            )
            assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
            return json.loads(done.stdout)

        assert edge("enroll", "--id", "bush", photos / BUSH.name)["results"][0]["template_count"] == 1
        out = edge("verify", "--id", "bush", photos / BUSH.name, photos / SERENA.name)
        same, other = out["results"]
        assert same["match"] and same["score"] > 0.98  # the enrolled photo again, fresh random inputs
        assert other["score"] < same["score"] and same["face"]["score"] > 0.6
