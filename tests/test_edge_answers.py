"""What ppfr-edge reports from the server's answers (issue 26 review), against real servers on loopback
with API keys, on real LFW crops: a template count or score the server keeps from a key without the admin
scope is left out (text and --json alike), never shown as 0; the sealed edge holds each subject to the
bundle's threshold for its template count, as the plain server does (ppfr.bundle.thresholds)."""

import json
import shutil

import pytest
from helpers import DATA, serving
from keys import new_key
from ppfr.bundle import read_manifest, write_manifest
from ppfr.edge.cli import main as edge_main

PHOTOS = [
    DATA / "lfw" / "aligned112" / n for n in (DATA / "lfw" / "pairs_images.txt").read_text().split()[:4]
]


def _json(capsys, *argv) -> list:
    """One in-process ppfr-edge run with --json: its results."""
    capsys.readouterr()
    assert edge_main(["--json", *map(str, argv)]) == 0
    return json.loads(capsys.readouterr().out)["results"]


def _text(capsys, *argv) -> str:
    """One in-process ppfr-edge run for people: what it printed."""
    capsys.readouterr()
    assert edge_main(list(map(str, argv))) == 0
    return capsys.readouterr().out


def test_hidden_counts_and_scores_are_left_out(small_bundle, tmp_path, capsys, monkeypatch):
    bundle = small_bundle("ppfr_fd")
    db = tmp_path / "gallery.sqlite"
    keys = {"admin": new_key(db), "device": new_key(db, scopes="enroll,verify")}
    with serving(bundle, tmp_path) as running:
        common = ["--server", f"127.0.0.1:{running.port}", "--bundle", bundle, "--aligned"]
        seen = {}
        for who, key in keys.items():
            monkeypatch.setenv("PPFR_API_KEY", key)
            enroll = ["enroll", "--id", f"s-{who}", PHOTOS[0]]
            verify = ["verify", "--id", f"s-{who}", PHOTOS[0]]
            seen[who] = [run(capsys, *common, *argv) for argv in (enroll, verify) for run in (_json, _text)]
    enrolled, enroll_text, verified, verify_text = seen["admin"]
    assert enrolled[0]["template_count"] == 1 and ", 2 templates)" in enroll_text  # enrolled twice
    assert verified[0]["score"] > 0.9 and " score " in verify_text
    enrolled, enroll_text, verified, verify_text = seen["device"]
    assert "template_count" not in enrolled[0] and enrolled[0]["template_id"]
    assert (
        enroll_text.count("(template ") == 1 and "templates" not in enroll_text and ", 0" not in enroll_text
    )
    assert "score" not in verified[0] and verified[0]["match"] is True and verified[0]["threshold"]
    assert " score " not in verify_text and ": MATCH  threshold " in verify_text


@pytest.fixture
def counted_rgb(small_bundle, tmp_path):
    """The small rgb bundle with thresholds by template count: no score reaches 1 or 3+, any reaches 2."""
    path = tmp_path / "rgb"
    shutil.copytree(small_bundle("rgb"), path)
    manifest = read_manifest(path)
    far = manifest.threshold.false_accept_rate
    for k, cosine in ((1, 1.5), (2, -1.5), (3, 1.5)):
        entry = manifest.thresholds_by_templates.add(templates=k)
        entry.threshold.cosine, entry.threshold.false_accept_rate = cosine, far
    write_manifest(manifest, path)
    return path


def test_sealed_edge_picks_the_threshold_by_template_count(counted_rgb, tmp_path, capsys, monkeypatch):
    pytest.importorskip("tenseal")
    assert edge_main(["tenant", "keygen", "--out", str(tmp_path / "keys"), "--json"]) == 0
    capsys.readouterr()
    sealed = {"sealed": "sealed-edge", "tenant_context": tmp_path / "keys" / "tenant.public", "threads": 1}
    monkeypatch.setenv("PPFR_API_KEY", new_key(tmp_path / "gallery.sqlite"))
    with serving(counted_rgb, tmp_path, **sealed) as running:
        common = ["--server", f"127.0.0.1:{running.port}", "--bundle", str(counted_rgb), "--aligned"]
        common += ["--tenant-secret", str(tmp_path / "keys" / "tenant.secret")]
        for subject, photos in (("one", 1), ("two", 2), ("three", 3)):
            for photo in PHOTOS[:photos]:
                _json(capsys, *common, "enroll", "--id", subject, photo)
        decided = {
            s: _json(capsys, *common, "verify", "--id", s, PHOTOS[0])[0] for s in ("one", "two", "three")
        }
        found = _json(capsys, *common, "identify", "--top", "3", PHOTOS[0])[0]
    assert {s: (r["match"], r["threshold"]) for s, r in decided.items()} == {
        "one": (False, 1.5),
        "two": (True, -1.5),  # told by the server's template_count: 2, not the 3+ one
        "three": (False, 1.5),
    }
    assert all(abs(r["score"]) <= 1.0001 for r in decided.values())
    assert [c["subject_id"] for c in found["candidates"]] == ["two"]  # counted from the answer's slots
