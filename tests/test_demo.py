"""`ppfr-demo --bundle DIR` on the small test bundle: a real local server, the real `ppfr-edge` command on raw
LFW photos, the report and runs/demo/summary.json with every decision. The bundle is untrained, so only
that every request was answered and the figures add up is asserted, not accuracy."""

import json

import pytest
from ppfr.demo.cli import main


@pytest.mark.slow
def test_the_demo_enrolls_verifies_identifies_and_lists_every_decision(
    small_bundle, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)  # the demo writes runs/demo/ in the working directory
    assert main(["--bundle", str(small_bundle("ppfr_fd")), "--identities", "3"]) == 0
    printed = capsys.readouterr().out
    assert "genuine probes accepted" in printed and "server stopped (exit status 0)" in printed
    summary = json.loads((tmp_path / "runs" / "demo" / "summary.json").read_text())
    assert summary["identities"] == 3 and summary["failed"] == 0
    probes = summary["genuine"]  # every probe claims its own identity once and another's once
    assert probes >= 3 and summary["impostor"] == probes
    decisions = summary["decisions"]
    assert len(decisions) == 2 * probes and {d["kind"] for d in decisions} == {"genuine", "impostor"}
    accepted = sum(d["match"] for d in decisions if d["kind"] == "genuine")
    rejected = sum(not d["match"] for d in decisions if d["kind"] == "impostor")
    assert (accepted, rejected) == (summary["genuine_accepted"], summary["impostor_rejected"])
