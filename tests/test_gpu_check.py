"""`make gpu-check` on a machine without a GPU (as in CI): the CPU fallbacks run from a pack of faces and
checkpoints (no ../shared at check time) and skip the GPU rows with a message. The training rows go through
the trainer's own train_step. (How long it takes is the check's own printed figure, not asserted here.)"""

import json
import subprocess
import sys

import pytest
from helpers import REPO
from ppfr.bench import gpu_check

pytestmark = pytest.mark.slow  # the whole check on CPU: a minute or more


def test_cpu_fallback_from_a_pack(tmp_path, data_dir):
    empty = tmp_path / "none"
    empty.mkdir()
    pack = gpu_check.pack(tmp_path / "pack", data_dir, faces=8, artifacts=empty, runs=empty)
    index = json.loads((pack / "index.json").read_text())
    assert [b["name"] for b in index["bundles"]] == ["dlib_ppfr_fd"]  # the shipped default, tracked
    assert index["bundles"][0]["checkpoint"] == "pretrained/dlib_ppfr_fd/checkpoint.pt"
    assert (pack / "faces.npz").is_file() and (pack / "face-api").is_dir()

    out = tmp_path / "check.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "gpu_check.py"),
            "--pack",
            str(pack),
            "--json",
            str(out),
            "--cpu",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    rows = result["bundles"]["dlib_ppfr_fd"]["variants"]["torch-cpu-fp32"]["rows"]
    assert [r["batch"] for r in rows] == list(gpu_check.CPU_BATCHES) and all(
        r["items_per_s"] > 0 for r in rows
    )
    assert result["training"]["stage1_trunk_frozen"]["steps_per_s"] > 0
    assert result["training"]["stage2_trunk_trained"]["steps_per_s"] > 0
    assert result["goal"]["result"]["met"] is None
    assert "GPU rows skipped" in proc.stdout and "| dlib_ppfr_fd | torch-cpu-fp32 |" in proc.stdout
    assert "goal: >= 50,000 faces/s" in proc.stdout


def test_missing_pack_is_a_clear_error(tmp_path, capsys):
    assert gpu_check.main(["--pack", str(tmp_path / "nope"), "--json", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert "make gpu-check-pack" in err and "Traceback" not in err
