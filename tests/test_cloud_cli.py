"""`ppfr-cloud` command line: bad input exits 2 with one clear line and no traceback; `import ppfr.cloud`
never pulls in torch."""

import subprocess
import sys
from types import SimpleNamespace

import pytest
from ppfr.cloud.cli import main


@pytest.fixture
def run_cli(capsys):
    """main() in this process (the console script's entry point); argparse errors exit through SystemExit."""

    def run(*args):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exit_:
            code = exit_.code
        captured = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=captured.out, stderr=captured.err)

    return run


def test_import_does_not_pull_in_torch():
    code = "import sys, ppfr.cloud, ppfr.cloud.server, ppfr.cloud.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"


def test_missing_bundle(run_cli, tmp_path):
    out = run_cli("serve", "--bundle", tmp_path / "nope", "--db", tmp_path / "g.sqlite", "--port", 0)
    assert out.returncode == 2
    assert "bundle folder" in out.stderr and "does not exist" in out.stderr
    assert "Traceback" not in out.stderr


def test_folder_that_is_not_a_bundle(run_cli, tmp_path):
    out = run_cli("serve", "--bundle", tmp_path, "--db", tmp_path / "g.sqlite", "--port", 0)
    assert out.returncode == 2 and "manifest.json" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("port", ["70000", "-1", "http"])
def test_bad_port(run_cli, tmp_path, port):
    out = run_cli("serve", "--bundle", tmp_path, "--db", tmp_path / "g.sqlite", "--port", port)
    assert out.returncode == 2 and "--port" in out.stderr and "Traceback" not in out.stderr


def test_unreadable_or_invalid_certificate(run_cli, tmp_path):
    base = ["serve", "--bundle", tmp_path, "--db", tmp_path / "g.sqlite", "--port", 0]
    out = run_cli(*base, "--tls-cert", tmp_path / "missing.pem", "--tls-key", tmp_path / "missing.key")
    assert out.returncode == 2 and "--tls-cert" in out.stderr and "cannot read" in out.stderr
    assert "Traceback" not in out.stderr
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    out = run_cli(*base, "--tls-cert", tmp_path / "junk.pem", "--tls-key", tmp_path / "junk.pem")
    assert out.returncode == 2 and "PEM" in out.stderr and "Traceback" not in out.stderr
    out = run_cli(*base, "--tls-cert", tmp_path / "junk.pem")
    assert out.returncode == 2 and "--tls-key" in out.stderr


def test_bad_batching_flags(run_cli, tmp_path):
    out = run_cli("serve", "--bundle", tmp_path, "--db", tmp_path / "g.sqlite", "--max-batch", 0)
    assert out.returncode == 2 and "--max-batch" in out.stderr and "Traceback" not in out.stderr


def test_keys_create_list_revoke(run_cli, tmp_path):
    db = tmp_path / "g.sqlite"
    out = run_cli("keys", "list", "--db", db)
    assert out.returncode == 2 and "does not exist" in out.stderr
    out = run_cli("keys", "create", "--db", db, "--name", "door-3", "--scopes", "verify,enroll", "--rate", 20)
    assert out.returncode == 0 and "shown only this once" in out.stderr
    key = out.stdout.strip()
    assert key.startswith("ppfr_") and "\n" not in key  # stdout is the key alone
    key_id = key.split("_")[1]
    out = run_cli("keys", "list", "--keys", tmp_path / "g.sqlite.keys")
    assert key_id in out.stdout and "door-3" in out.stdout and "enroll,verify" in out.stdout
    assert "active" in out.stdout and key[18:] not in out.stdout
    assert run_cli("keys", "revoke", "--db", db, key_id).returncode == 0
    assert "revoked" in run_cli("keys", "list", "--db", db).stdout
    out = run_cli("keys", "revoke", "--db", db, key_id)
    assert out.returncode == 2 and "no active key" in out.stderr
    out = run_cli("keys", "create", "--db", db, "--name", "x", "--scopes", "root")
    assert out.returncode == 2 and "scopes" in out.stderr and "Traceback" not in out.stderr
    out = run_cli("keys", "list", "--db", "postgresql://nobody@127.0.0.1:1/ppfr")  # keys in the database
    assert (
        out.returncode == 2
        and "cannot open the API key table" in out.stderr
        and "Traceback" not in out.stderr
    )
