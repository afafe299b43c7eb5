"""ppfr-bench in its tiny configuration (CI): the three output files exist with the expected keys and rows.
Figures are not asserted — only that every stage ran and wrote them."""

import json

import pytest
from ppfr.bench.cli import main
from ppfr.bench.loadgen import check_loopback, read_requests, write_requests
from ppfr.bench.stats import summarize


def test_summarize_and_request_file(tmp_path):
    s = summarize([1.0, 2.0, 3.0, 4.0])
    assert s["n"] == 4 and s["p50_ms"] == 2.5 and s["max_ms"] == 4.0
    assert summarize([]) == {"n": 0}
    msgs = [b"a", b"", b"\x00" * 70000]
    assert read_requests(write_requests(tmp_path / "r.bin", msgs)) == msgs


def test_loadgen_refuses_non_loopback():
    check_loopback("127.0.0.1:5000")
    with pytest.raises(SystemExit, match="non-loopback"):
        check_loopback("10.0.0.1:5000")


def test_no_bundles_is_a_clear_error(tmp_path, capsys):
    assert main(["--tiny", "--artifacts", str(tmp_path / "none"), "--out", str(tmp_path / "out")]) == 2
    assert "no bundles to bench" in capsys.readouterr().err


def test_two_bundles_of_one_name_are_both_benched(tmp_path, small_bundle):
    from ppfr.bench.cli import find_bundles

    for copy in ("a", "b"):  # two exports of one run: the same manifest name
        (tmp_path / copy).symlink_to(small_bundle("ppfr_fd"), target_is_directory=True)
    found, _ = find_bundles([], tmp_path, [str(tmp_path / "a"), str(tmp_path / "b")], print)
    assert [str(d) for d, _ in found.values()] == [str(tmp_path / "a"), str(tmp_path / "b")]
    assert list(found)[1].endswith("@b")  # the name labels files the bench writes: no path separator


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, small_bundle):
    root = tmp_path_factory.mktemp("artifacts")
    for method in ("rgb", "ppfr_fd"):
        (root / f"small_{method}").symlink_to(small_bundle(method), target_is_directory=True)
    return root


@pytest.mark.slow
def test_tiny_suite_writes_json_md_png(artifacts, tmp_path, capsys):
    out = tmp_path / "bench"
    rc = main(["--tiny", "--methods", "rgb,ppfr_fd,dctdp", "--artifacts", str(artifacts), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "skip dctdp" in err and "end to end" in err  # progress lines and the clear skip line

    result = json.loads((out / "bench.json").read_text())
    for key in ("machine", "config", "methods", "summary", "edge_detection", "gpu", "skipped", "wall_s"):
        assert key in result
    for key in ("cpu_model", "logical_cores", "versions"):
        assert key in result["machine"]
    assert [s["name"] for s in result["skipped"]] == ["dctdp"]
    assert set(result["methods"]) == {"small_rgb", "small_ppfr_fd"}
    for m in result["methods"].values():
        assert m["edge"]["payload_bytes"] > 0
        assert "p99_ms" in m["edge"]["frontend"]
        assert "onnxruntime" in m["recognizer"]["runtimes"]
        for mode in ("batching_on", "batching_off"):
            levels = [r["concurrency"] for r in m["e2e"][mode]["sweep"]]
            assert levels == list(result["config"]["concurrency"])
    row = {r["bundle"]: r for r in result["summary"]}
    assert row["small_rgb"]["frontend_vs_rgb"] == 1.0
    for key in ("frontend_p50_ms", "payload_bytes", "recognizer_b1_p50_ms", "e2e_c1_p50_ms", "batching_gain"):
        assert key in row["small_ppfr_fd"]

    md = (out / "bench.md").read_text()
    assert "| small_rgb |" in md and "| small_ppfr_fd |" in md and "## GPU" in md
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
