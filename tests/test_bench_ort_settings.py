"""`ppfr-bench ort-settings`: ONNX Runtime session settings side by side on a real small bundle. Figures are
not asserted (CI machines are busy), only that every setting ran at both batches and the JSON says so."""

import json

import numpy as np
from ppfr.bench.cli import main
from ppfr.bench.ort_settings import settings


def test_missing_bundle_is_one_line(tmp_path, capsys):
    assert main(["ort-settings", "--bundle", str(tmp_path / "nothing"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not a bundle" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_every_setting_side_by_side(small_bundle, tmp_path, capsys):
    bundle = small_bundle("ppfr_fd")
    args = ["--bundle", str(bundle), "--rounds", "2", "--seconds", "0.02", "--warmup", "1", "--batch", "4"]
    assert main(["ort-settings", *args, "--workers", "2", "--faces", "3", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "| server |" in printed and "load average" in printed
    result = json.loads((tmp_path / "ort_settings.json").read_text())
    machine = result["machine"]
    assert machine["load_average_at_start"] is not None and "load_average_at_end" in machine
    (res,) = result["bundles"]
    names = [r["name"] for r in res["rows"]]
    assert names == [s.name for s in settings(2)] and names[0] == "server"
    assert {"level disable", "level basic", "level extended", "intra 1", "intra 2"} <= set(names)
    assert {"parallel inter 2", "1 sess intra 1 x 2 callers", "2 sess intra 1 x 2 callers"} <= set(names)
    for row in res["rows"]:
        assert row["batch1"]["n"] >= 2 * 2 and np.isfinite(row["batch1"]["p99_ms"])  # 2 rounds, >= 2 calls
        assert row["faces_per_s_b1"] > 0 and row["faces_per_s_b4"] > 0
    assert res["rows"][0]["faces_per_s_b4_vs_server"] == 1.0
