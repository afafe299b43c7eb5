"""deploy/cluster.py's pieces that `make cluster` (run by CI) does not exercise itself: the `key` command the
compose file's one-shot job runs, and the client's choice of a balanced target. The whole cluster is
`make cluster` (PostgreSQL + two replicas + the round-robin client), not repeated here."""

import importlib.util
import os
import stat
import subprocess
import sys

import pytest
from helpers import REPO
from ppfr.cloud.auth import KEY_PATTERN, KeyStore

CLUSTER = [sys.executable, str(REPO / "deploy" / "cluster.py")]
_spec = importlib.util.spec_from_file_location("ppfr_deploy_client", REPO / "deploy" / "client.py")
deploy_client = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(deploy_client)
balanced_target = deploy_client.balanced_target


def test_key_command_writes_a_private_key_file_the_store_accepts(tmp_path):
    db, out = tmp_path / "gallery.sqlite", tmp_path / "secrets" / "api.key"
    cmd = [*CLUSTER, "key", "--db", str(db), "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    key = out.read_text().strip()
    assert KEY_PATTERN.fullmatch(key) and key not in done.stdout + done.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    store = KeyStore(f"{db}.keys", create=False)
    try:
        assert store.authenticate(key).scopes == {"verify", "enroll", "admin"}
    finally:
        store.close()


def test_key_command_without_a_database_is_one_clear_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PPFR_CLOUD_DB"}
    done = subprocess.run([*CLUSTER, "key"], capture_output=True, text=True, env=env)
    assert done.returncode == 1 and "key needs --db or $PPFR_CLOUD_DB" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr


def test_balanced_target_spreads_over_ip_addresses_and_needs_a_name_otherwise():
    assert balanced_target(["127.0.0.1:1", "127.0.0.1:2"], None) == "ipv4:127.0.0.1:1,127.0.0.1:2"
    assert balanced_target(["[::1]:1", "[::1]:2"], None) == "ipv6:[::1]:1,[::1]:2"
    assert balanced_target(["a:1"], "dns:///replicas:50051") == "dns:///replicas:50051"
    with pytest.raises(SystemExit, match="dns:///NAME:PORT"):
        balanced_target(["replica1:50051", "replica2:50051"], None)
