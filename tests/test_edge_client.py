"""The edge client against a real server (issue 26, item 4): bounded retries with backoff on UNAVAILABLE and
RESOURCE_EXHAUSTED, an idempotency key on every Enroll, malformed API keys as the caller's error, photos
over the pixel limit refused from their header, and the CLI's identify / info / delete wording and --json.
"""

import json
import os
import re
import struct
import subprocess
import sys
import threading
import time
import zlib

import pytest
from helpers import BUSH, DATA, REPO, SERENA, edge_command
from keys import new_key
from ppfr.cloud.local import LocalServer, free_port
from ppfr.cloud.server import ServerConfig, ServerThread
from ppfr.edge.client import NO_RETRY, Client, Retry, make_channel
from ppfr.edge.errors import EdgeError, ServerError
from ppfr.edge.image import MAX_PIXELS, header_size
from ppfr.edge.pipeline import Pipeline

ALIGNED = DATA / "lfw" / "aligned112" / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg"


@pytest.fixture(scope="module")
def bundle(small_bundle):
    return small_bundle("ppfr_fd")


@pytest.fixture(scope="module")
def server(bundle):
    with LocalServer(bundle, extra_args=["--max-batch", "4", "--max-delay-ms", "1"]) as running:
        yield running


@pytest.fixture(scope="module")
def face(bundle):
    pipeline = Pipeline(bundle, aligned=True)
    return pipeline.frontend.to_proto(pipeline.run(ALIGNED).tensor)


def client(address, api_key, retry: Retry | None = None) -> Client:
    return Client(make_channel(address), address, timeout=10, api_key=api_key, retry=retry or Retry())


def png_header(width: int, height: int) -> bytes:
    """A PNG signature and IHDR chunk (with its CRC) claiming width x height: a decompression bomb's
    first bytes, a few dozen on disk."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))


def test_rate_limited_calls_are_retried_with_backoff(server, face):
    slow = server.create_key("slow", rate=2)  # 2 calls/s, bursts of 2
    retrying = client(server.address, slow, Retry(attempts=8, base_s=0.1, cap_s=1.0, budget_s=20))
    retrying.enroll("rate", face)
    started = time.monotonic()
    for _ in range(6):
        retrying.verify("rate", face)  # all answered, some after RESOURCE_EXHAUSTED and a wait
    assert retrying.retries > 0 and time.monotonic() - started >= 1.0
    plain = client(server.address, slow, NO_RETRY)
    with pytest.raises(ServerError) as err:
        for _ in range(6):
            plain.verify("rate", face)
    assert err.value.code == "RESOURCE_EXHAUSTED" and plain.retries == 0


def test_retries_are_bounded_in_attempts_and_time(face):
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    c = client(address, "k", Retry(attempts=4, base_s=0.05, cap_s=0.2, budget_s=5))
    started = time.monotonic()
    with pytest.raises(ServerError) as err:
        c.verify("x", face)
    assert err.value.code == "UNAVAILABLE" and c.retries == 3
    assert time.monotonic() - started < 5 + 4 * 10  # the budget bounds the waits, the timeout each try
    c = client(address, "k", Retry(attempts=100, base_s=0.5, cap_s=0.5, budget_s=1.0))
    started = time.monotonic()
    with pytest.raises(ServerError):
        c.verify("x", face)
    # the 1 s budget, not the 100 attempts, ended it (full jitter: the number of retries varies)
    assert c.retries < 99 and time.monotonic() - started < 1.0 + 0.5 + 10


def test_a_server_that_comes_up_late_is_reached_by_retrying(bundle, face):
    port = free_port()
    late = LocalServer(bundle, port=port)
    late.api_key = late.create_key()
    starter = threading.Timer(1.0, late.start)
    starter.start()
    try:
        c = client(late.address, late.api_key, Retry(attempts=60, base_s=0.2, cap_s=1.0, budget_s=120))
        assert c.enroll("late", face).template_count == 1
        assert c.retries > 0
    finally:
        starter.join()
        late.stop()


def test_enroll_is_idempotent(server, face):
    c = client(server.address, server.api_key)
    first = c.enroll("idem", face, idempotency_key="attempt-1")
    again = c.enroll("idem", face, idempotency_key="attempt-1")  # a retry of the same enrollment
    assert again.template_id == first.template_id and again.template_count == 1
    assert c.enroll("idem", face).template_count == 2  # a new enrollment: a fresh key each call
    assert c.enroll("idem", face).template_count == 3


def test_api_key_whitespace_is_stripped_and_bad_keys_are_the_callers_error(server, face):
    assert client(server.address, server.api_key + "\n").info().bundle_name
    assert client(server.address, f"  {server.api_key}\r\n").info().bundle_name
    for bad in ("ab\x01cd", "\n", "clé"):
        with pytest.raises(EdgeError) as err:
            client(server.address, bad)
        assert not isinstance(err.value, ServerError) and "API key" in str(err.value)
    env = {**os.environ, "PPFR_API_KEY": server.api_key + "\n"}
    done = subprocess.run(
        [*edge_command(), "--server", server.address, "info", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    env["PPFR_API_KEY"] = "bad\x1bkey"
    done = subprocess.run(
        [*edge_command(), "--server", server.address, "info"], capture_output=True, text=True, env=env
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "INTERNAL" not in done.stderr


def test_photos_over_the_pixel_limit_are_refused_before_decoding(bundle, tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header(50000, 50000) + b"\x00" * 64)
    assert header_size(bomb.read_bytes()) == (50000, 50000)
    big = tmp_path / "big.png"
    big.write_bytes(png_header(20000, 20000))
    started = time.monotonic()
    for photo in (bomb, big):
        done = subprocess.run(
            [*edge_command(), "--bundle", str(bundle), "protect", "--out", str(tmp_path), str(photo)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 2, done.stderr
        assert done.stderr.count("\n") == 1 and "over the limit" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    assert time.monotonic() - started < 120
    assert 20000 * 20000 > MAX_PIXELS


def test_header_sizes_of_real_photos(tmp_path):
    import cv2

    bgr = cv2.imread(str(BUSH))
    assert header_size(BUSH.read_bytes()) == (bgr.shape[1], bgr.shape[0])  # JPEG
    for ext in (".png", ".bmp", ".webp"):
        path = tmp_path / f"b{ext}"
        cv2.imwrite(str(path), bgr[:, :201])
        assert header_size(path.read_bytes()) == (201, bgr.shape[0]), ext


def _edge(server, bundle, *args):
    env = {**os.environ, "PPFR_API_KEY": server.api_key}
    cmd = [*edge_command(), "--server", server.address, "--bundle", str(bundle), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


def test_identify_without_a_match_and_json_of_info_and_delete(server, bundle):
    done = _edge(server, bundle, "identify", SERENA)  # nobody enrolled from this photo
    assert done.returncode == 0 and "no match above the threshold" in done.stdout
    assert _edge(server, bundle, "enroll", "--id", "bush-json", BUSH).returncode == 0
    done = _edge(server, bundle, "info", "--json")
    info = json.loads(done.stdout)
    assert info["command"] == "info" and info["info"]["bundle_name"] and info["exit_status"] == 0
    done = _edge(server, bundle, "--json", "delete", "--id", "bush-json")
    deleted = json.loads(done.stdout)
    assert deleted["info"]["deleted_template_count"] == 1 and deleted["exit_status"] == 0


def docs_block(marker: str, lang: str) -> str:
    """The fenced block after `<!-- marker ... -->` in docs/edge.md, as a reader would copy it."""
    text = (REPO / "docs" / "edge.md").read_text()
    return re.search(rf"<!-- {marker}[^>]*-->\n```{lang}\n(.*?)```", text, re.S).group(1)


def test_the_documented_library_example_runs(server, bundle, tmp_path):
    script = tmp_path / "example.py"
    script.write_text(docs_block("library-example", "python"))
    env = {
        **os.environ,
        "PPFR_SERVER": server.address,
        "PPFR_BUNDLE": str(bundle),
        "PPFR_API_KEY": server.api_key,
    }
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "templates: 1" in done.stdout and "match:" in done.stdout and "error:" not in done.stdout


def test_the_documented_openssl_recipe_gives_working_mutual_tls(bundle, tmp_path):
    made = subprocess.run(
        ["bash", "-e", "-c", docs_block("tls-recipe", "bash")], cwd=tmp_path, capture_output=True
    )
    assert made.returncode == 0, made.stderr
    db = tmp_path / "gallery.sqlite"
    tls = {
        "tls_cert": tmp_path / "server.pem",
        "tls_key": tmp_path / "server.key",
        "tls_client_ca": tmp_path / "ca.pem",
    }
    key = new_key(db)
    with ServerThread(ServerConfig(bundle=bundle, db=db, port=0, **tls)) as running:
        env = {**os.environ, "PPFR_API_KEY": key}
        edge = [*edge_command(), "--server", f"127.0.0.1:{running.port}", "--ca", str(tmp_path / "ca.pem")]
        mutual = ["--cert", str(tmp_path / "client.pem"), "--key", str(tmp_path / "client.key")]
        done = subprocess.run([*edge, *mutual, "info", "--json"], capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["info"]["bundle_name"]
        done = subprocess.run([*edge, "info"], capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 1 and "Traceback" not in done.stderr  # no client certificate: refused
