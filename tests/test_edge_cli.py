"""The real `ppfr-edge` command (a subprocess) against the real server, on real photos from ../shared/data.

The test bundle's recognizer is only briefly trained, so "genuine" here is the same photo protected
twice with fresh randomness (the server must still match it), and "impostor" is another person's photo.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import BUSH, BUSH_2, DATA, LFW_RAW, SERENA, SERENA_2, edge_command
from keys import new_key
from ppfr.bundle import numpy_dtype, read_manifest
from ppfr.bundle.thresholds import Thresholds
from ppfr.cloud.server import ServerConfig, ServerThread
from ppfr.edge.cli import main as edge_main

ABEL = LFW_RAW / "Abel_Pacheco_0001.jpg"
ALIGNED = DATA / "lfw" / "aligned112" / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg"
ALIGNED_OTHER = DATA / "lfw" / "aligned112" / "Zydrunas_Ilgauskas" / "Zydrunas_Ilgauskas_0001.jpg"
MULTI_FACE = DATA / "celeba" / "raw_samples" / "000093.jpg"


@pytest.fixture(scope="module")
def server(local_server):
    return local_server


@pytest.fixture(scope="module")
def api_key(server):
    return server.api_key


@pytest.fixture(scope="module")
def edge(bundle, server, api_key):
    """Run ppfr-edge against the test server with an API key in $PPFR_API_KEY (key=None: without one);
    returns (exit status, parsed --json or stdout, stderr)."""

    def run(*args, as_json=True, server_address=None, key=api_key):
        cmd = edge_command() + [
            "--server",
            server_address or server.address,
            "--bundle",
            str(bundle),
        ]
        cmd += ["--json"] if as_json else []
        env = {k: v for k, v in os.environ.items() if k != "PPFR_API_KEY"}
        env.update({"PPFR_API_KEY": key} if key else {})
        done = subprocess.run(
            cmd + [str(a) for a in args], capture_output=True, text=True, timeout=120, env=env
        )
        assert "Traceback" not in done.stderr, done.stderr
        out = json.loads(done.stdout) if as_json and done.stdout.strip() else done.stdout
        return done.returncode, out, done.stderr

    return run


@pytest.mark.slow
def test_enroll_verify_identify_through_detection_and_alignment(edge, bundle):
    threshold = Thresholds.from_manifest(read_manifest(bundle)).for_count(1)  # bush has one template
    status, out, _ = edge("enroll", "--id", "bush", BUSH)
    assert status == 0 and out["results"][0]["template_count"] == 1
    listing = Path(bundle).parent / "enroll.txt"
    listing.write_text(f"serena\t{SERENA}\nabel {ABEL}\n")
    status, out, _ = edge("enroll", "--list", listing)
    assert status == 0 and [r["subject_id"] for r in out["results"]] == ["serena", "abel"]

    status, out, _ = edge("verify", "--id", "bush", BUSH, SERENA_2, BUSH_2)
    assert status == 0 and out["failed"] == 0
    genuine, impostor, _ = out["results"]
    assert genuine["match"] and genuine["score"] > 0.98  # same photo, fresh random inputs
    assert impostor["score"] < genuine["score"]
    assert genuine["threshold"] == pytest.approx(threshold, abs=1e-5)
    for r in out["results"]:
        assert {"detect", "align", "protect", "round_trip"} <= set(r["timings_ms"])
        assert (
            r["payload_bytes"]
            == np.prod(r["shape"]) * numpy_dtype(read_manifest(bundle).protected_tensor.data_type).itemsize
        )
        assert r["face"]["score"] > 0.6

    status, out, _ = edge("identify", "--top", "2", SERENA, ABEL)
    assert status == 0
    assert [r["candidates"][0]["subject_id"] for r in out["results"]] == ["serena", "abel"]
    assert all(1 <= len(r["candidates"]) <= 2 for r in out["results"])  # matches only
    assert all(c["match"] for r in out["results"] for c in r["candidates"])

    status, text, _ = edge("verify", "--id", "bush", BUSH, as_json=False)
    assert status == 0 and "bush: MATCH" in text and "round trip" in text and "threshold" in text


@pytest.mark.slow
def test_aligned_crops(edge):
    status, out, _ = edge("--aligned", "enroll", "--id", "aaron", ALIGNED)
    assert status == 0
    status, out, _ = edge("--aligned", "verify", "--id", "aaron", ALIGNED, ALIGNED_OTHER)
    assert status == 0
    same, other = out["results"]
    assert same["match"] and same["score"] > 0.98 and other["score"] < same["score"]
    assert "detect" not in same["timings_ms"] and "face" not in same
    status, out, _ = edge("--aligned", "identify", ALIGNED)
    assert status == 0 and out["results"][0]["candidates"][0]["subject_id"] == "aaron"
    status, _, err = edge("--aligned", "verify", "--id", "aaron", BUSH, as_json=False)
    assert status == 2 and "112x112" in err


@pytest.mark.slow
def test_photo_without_a_face_exits_2(edge, tmp_path):
    gradient = np.broadcast_to(np.linspace(0, 255, 400, dtype=np.uint8)[None, :, None], (300, 400, 3))
    blank = tmp_path / "gradient.png"
    cv2.imwrite(str(blank), np.ascontiguousarray(gradient))
    status, _, err = edge("verify", "--id", "bush", blank, as_json=False)
    assert status == 2
    assert "no face found" in err and "gradient.png" in err
    status, out, _ = edge("verify", "--id", "bush", blank, BUSH)  # the other photos still go through
    assert status == 2 and out["failed"] == 1 and out["results"][1]["match"]


@pytest.mark.slow
def test_several_faces_use_the_prominent_one_with_a_warning_or_strict_refuses(edge, bundle, tmp_path):
    status, out, err = edge("protect", "--out", tmp_path, MULTI_FACE, BUSH)
    assert status == 0 and out["failed"] == 0
    several, single = out["results"]
    assert several["faces_found"] == 2 and "2 faces found, using the most prominent one" in several["warning"]
    assert single["faces_found"] == 1 and "warning" not in single
    assert err.count("ppfr-edge: warning:") == 1 and "000093.jpg: 2 faces found" in err
    spec = read_manifest(bundle).protected_tensor
    tensors = [np.load(r["tensor"]) for r in out["results"]]
    for tensor in tensors:
        assert list(tensor.shape[1:]) == list(spec.shape[1:]) and tensor.dtype == numpy_dtype(spec.data_type)
    preview = cv2.imread(out["results"][1]["preview"])
    assert preview is not None and preview.shape[1] > 112
    assert (tmp_path / "George_W_Bush_0001.protected.npy").is_file()

    status, out, err = edge("--strict", "protect", "--out", tmp_path, MULTI_FACE, BUSH)
    assert status == 2 and out["failed"] == 1 and out["results"][1]["ok"]
    assert "2 faces found" in out["results"][0]["error"] and "--strict refuses" in err
    status, _, err = edge("protect", "--strict", "--out", tmp_path, MULTI_FACE, as_json=False)
    assert status == 2 and "ppfr-edge: error:" in err and "several faces" in err

    status, out, err = edge("--largest", "protect", "--out", tmp_path, MULTI_FACE)  # deprecated, no effect
    assert (
        status == 0 and "--largest is deprecated" in err and "--largest is deprecated" in out["warnings"][0]
    )


HELP_TEXT = {
    "": "COMMAND",
    "enroll": "add each photo as a template",
    "verify": "is each photo the claimed subject",
    "identify": "the best-matching enrolled subjects",
    "protect": "write the protected tensor",
    "info": "what the server serves",
    "delete": "remove a subject",
}


@pytest.mark.parametrize("command", list(HELP_TEXT))
def test_every_help_prints(command, capsys, monkeypatch):
    """`ppfr-edge [COMMAND] --help` prints usage and the options and exits 0 (it used to crash on the
    subcommands: their --detector help had %(default)s with a SUPPRESS default)."""
    monkeypatch.setenv("COLUMNS", "300")  # no line wrapping inside the texts looked for
    with pytest.raises(SystemExit) as exit_:
        edge_main([command, "--help"] if command else ["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: ppfr-edge {command}".rstrip())
    assert HELP_TEXT[command] in text
    if not command:  # the commands are listed with what they do
        assert all(f"{name} " in text and what in text for name, what in HELP_TEXT.items())
    assert "--server" in text and "--bundle" in text and "--strict" in text
    assert "--detector DETECTOR   YuNet ONNX model (default: " in text and "--largest" not in text


@pytest.mark.slow
def test_help_of_the_installed_command():
    done = subprocess.run(edge_command() + ["verify", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "usage: ppfr-edge verify" in done.stdout and not done.stderr


@pytest.mark.slow
def test_fresh_random_inputs_per_query(edge, tmp_path):
    status, out, _ = edge("protect", "--out", tmp_path, BUSH, BUSH)
    assert status == 0
    first, second = (np.load(r["tensor"]) for r in out["results"])
    assert not np.array_equal(first, second)  # Shuffle2 drawn anew: channels in another order
    energy = lambda t: np.sort(np.abs(t).mean(axis=(2, 3)), axis=1)  # noqa: E731
    np.testing.assert_allclose(energy(first), energy(second), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_server_errors_are_clear(edge, server, tmp_path):
    status, out, _ = edge("verify", "--id", "nobody-enrolled-this", BUSH)
    assert status == 0 and out["results"][0]["match"] is False  # unknown subject: a plain non-match
    status, _, err = edge("verify", "--id", "bush", BUSH, as_json=False, key=None)
    assert status == 1 and "no API key given" in err and "PPFR_API_KEY" in err
    verify_only = server.create_key("verify-only", "verify")
    status, _, err = edge("--api-key", verify_only, "enroll", "--id", "bush", BUSH, as_json=False, key=None)
    assert status == 1 and "may not do this" in err and "'enroll' scope" in err
    status, _, err = edge("verify", "--id", "bush", BUSH, as_json=False, server_address="127.0.0.1:1")
    assert status == 1 and "cannot reach the server at 127.0.0.1:1" in err
    status, _, err = edge("verify", "--id", "bush", BUSH, as_json=False, server_address="no-port")
    assert status == 2 and "HOST:PORT" in err
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not a jpeg")
    status, _, err = edge("verify", "--id", "bush", junk, tmp_path / "missing.jpg", as_json=False)
    assert status == 2 and "not a readable image" in err and "no such file" in err


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed to make test certificates")
def test_mutual_tls(bundle, tmp_path):
    ca, server_pem, server_key, client_pem, client_key = make_certificates(tmp_path)
    config = ServerConfig(
        bundle=bundle,
        db=tmp_path / "tls.sqlite",
        port=0,
        tls_cert=server_pem,
        tls_key=server_key,
        tls_client_ca=ca,
    )
    with ServerThread(config) as running:
        base = edge_command() + ["--server", f"localhost:{running.port}", "--bundle", str(bundle)]
        base += ["--api-key", new_key(config.db, "enroll")]  # mTLS admits the connection, the key the call
        tls = ["--ca", str(ca), "--cert", str(client_pem), "--key", str(client_key)]
        done = subprocess.run(
            base + tls + ["enroll", "--id", "tls", str(BUSH)], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        done = subprocess.run(
            base + ["--ca", str(ca), "enroll", "--id", "tls", str(BUSH)], capture_output=True, text=True
        )
        assert done.returncode == 1 and "cannot reach the server" in done.stderr


def make_certificates(folder: Path):
    def openssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=ppfr-test-ca",
    )
    (folder / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name, cn, ext in (("server", "localhost", ["-extfile", "san.ext"]), ("client", "edge", [])):
        openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={cn}",
        )
        openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            *ext,
        )
    return tuple(folder / f for f in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key"))
