"""`ppfr-bench edge-draw`: the edge step timed with the ChaCha20 drawer and the OS-read drawer it replaced,
side by side. Figures are not asserted (CI machines are busy), only that both variants ran and the
baseline draws what the manifest declares."""

import json

import numpy as np
from ppfr.bench.cli import main
from ppfr.bench.edge_draw import os_draw_all
from ppfr.protos.bundle import read_manifest


def test_no_bundle_is_a_clear_error(tmp_path, capsys):
    assert main(["edge-draw", "--artifacts", str(tmp_path), "--out", str(tmp_path / "x.json")]) == 2
    assert "no dlib_* bundles" in capsys.readouterr().err
    assert main(["edge-draw", "--bundle", str(tmp_path / "nothing")]) == 2
    assert "not a bundle" in capsys.readouterr().err


def test_before_and_after_side_by_side(small_bundle, tmp_path, capsys):
    bundle = small_bundle("ppfr_fd")
    base = os_draw_all(read_manifest(bundle).random_inputs)
    assert sorted(base["shuffle2"][0].tolist()) == list(range(34))
    out = tmp_path / "edge_draw.json"
    args = ["--bundle", str(bundle), "--iters", "20", "--rounds", "2", "--warmup", "1", "--faces", "2"]
    assert main(["edge-draw", *args, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| ppfr_fd | shuffle2:permutation[34] |" in printed and "load average" in printed
    (row,) = json.loads(out.read_text())["bundles"]
    for variant in ("before", "after"):
        for part in ("random_draw", "frontend_draw_serialize"):
            assert row[variant][part]["n"] == 20 and np.isfinite(row[variant][part]["p99_ms"])
