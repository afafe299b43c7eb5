"""Method keys handled like keys (issue 15, item 4): ppfr-export refuses a keyed method without a key
from --key-file or $PPFR_METHOD_KEY (unless --demo-key), and the bundle carries the key id, never the key."""

import base64
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from bundles import small_config
from helpers import lfw_faces
from ppfr.bundle import read_manifest, session
from ppfr.export import cli
from ppfr.train import keys
from ppfr.train.methods import build_method
from ppfr.train.model import build_model, save_checkpoint


@pytest.fixture(autouse=True)
def no_env_key(monkeypatch):
    monkeypatch.delenv(keys.ENV_VAR, raising=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A small untrained ppfr_fd checkpoint trained (as the configs do) with the demo key."""
    root = tmp_path_factory.mktemp("keys")
    config = small_config("ppfr_fd", name="keyed", key="ppfr-demo-key")
    torch.manual_seed(0)
    method, recognizer = build_model(config)
    path = root / "runs" / "keyed" / "checkpoint.pt"
    save_checkpoint(path, config, method, recognizer)
    return path


def _secret(tmp_path, name="method.key") -> tuple:
    key = base64.b64encode(os.urandom(32))
    path = tmp_path / name
    path.write_bytes(key + b"\n")  # the trailing newline of `... > file` is not part of the key
    path.chmod(0o600)
    return key, path


@pytest.mark.slow
def test_keyed_export_without_a_key_is_refused(run, tmp_path, capsys):
    out = tmp_path / "bundle"
    assert cli.main(["--checkpoint", str(run), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert (
        "ppfr-export: error:" in err and "--key-file" in err and keys.ENV_VAR in err and "--demo-key" in err
    )
    assert "Traceback" not in err and not out.exists()
    # the console script itself: exit status 2, one clear message, no traceback
    env = {k: v for k, v in os.environ.items() if k != keys.ENV_VAR}
    proc = subprocess.run(
        [sys.executable, "-m", "ppfr.export.cli", "--checkpoint", str(run), "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 2 and "no key was given" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


def test_contradictory_or_weak_keys_are_refused(run, tmp_path, capsys, monkeypatch):
    key, path = _secret(tmp_path)
    out = str(tmp_path / "b")
    assert cli.main(["--checkpoint", str(run), "--out", out, "--key-file", str(path), "--demo-key"]) == 2
    assert "one way only" in capsys.readouterr().err
    monkeypatch.setenv(keys.ENV_VAR, "short")
    assert cli.main(["--checkpoint", str(run), "--out", out]) == 2
    assert "at least 16" in capsys.readouterr().err
    monkeypatch.setenv(keys.ENV_VAR, key.decode())
    assert cli.main(["--checkpoint", str(run), "--out", out, "--demo-key"]) == 2  # env key and --demo-key
    err = capsys.readouterr().err
    assert "one way only" in err and key.decode() not in err
    monkeypatch.delenv(keys.ENV_VAR)
    demo = tmp_path / "demo.key"
    demo.write_bytes(keys.DEMO_KEY)
    assert cli.main(["--checkpoint", str(run), "--out", out, "--key-file", str(demo)]) == 2
    assert "public demo key" in capsys.readouterr().err
    assert cli.main(["--checkpoint", str(run), "--out", out, "--key-file", str(tmp_path / "none")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_resolve_sources():
    assert keys.resolve(environ={keys.ENV_VAR: "k" * 20 + "\n"}).key == b"k" * 20
    assert keys.resolve(environ={keys.ENV_VAR: "k" * 20}).source == f"${keys.ENV_VAR}"
    demo = keys.resolve(demo=True, environ={})
    assert demo.demo and demo.key_id == keys.key_id(keys.DEMO_KEY) and "PUBLIC demo key" in demo.describe()
    with pytest.raises(keys.KeyPolicyError, match="no key was given"):
        keys.resolve(environ={})
    secret = keys.MethodKey(b"s" * 32, "test")
    assert "sss" not in repr(secret) and "sss" not in secret.describe()
    # the id is a keyed hash with a fixed label: stable, 64 bits, not the plain sha256 of the key
    import hashlib

    assert keys.key_id(b"s" * 32) == keys.key_id(b"s" * 32) != keys.key_id(b"t" * 32)
    assert len(keys.key_id(b"s" * 32)) == 16
    assert keys.key_id(b"s" * 32) != hashlib.sha256(b"s" * 32).hexdigest()[:16]


def test_unkeyed_methods_need_no_key(tmp_path):
    config = small_config("rgb", name="plain")
    method, recognizer = build_model(config)
    path = tmp_path / "runs" / "plain" / "checkpoint.pt"
    save_checkpoint(path, config, method, recognizer)

    class Args:
        key_file, demo_key = None, False

    assert cli._method_key([(path, tmp_path / "out")], Args) is None


def _quick_export(run, out, *key) -> list[str]:
    """ppfr-export's arguments for `run` under `key`: 20 LFW pairs, the untrained run's collapse accepted."""
    return [
        *("--checkpoint", str(run), "--out", str(out), *key),
        *("--eval-pairs", "20", "--enrolled-photos", "1", "--accept-degraded"),
    ]


@pytest.mark.slow
def test_key_file_bundle_holds_the_key_id_never_the_key(run, tmp_path, capsys):
    key, path = _secret(tmp_path)
    out = tmp_path / "bundle"
    assert cli.main(_quick_export(run, out, "--key-file", str(path))) == 0
    printed = capsys.readouterr()
    manifest = read_manifest(out)
    params = dict(manifest.method_params)
    assert params["key_id"] == keys.key_id(key) and params["demo_key"] is False
    assert "key" not in params
    for f in ("manifest.json", "frontend.onnx", "recognizer.onnx"):
        assert key not in (out / f).read_bytes(), f
    assert key.decode() not in printed.out + printed.err and keys.key_id(key) in printed.out
    assert "was trained under another key" in printed.err  # its recognizer learned the demo key's mix
    config = json.loads(manifest.training.config)
    assert config["method"]["key"] == keys.REDACTED
    assert b"ppfr-demo-key" not in (out / "manifest.json").read_bytes()

    # the front-end really is Shuffle1 under the given key (not the training key)
    faces = lfw_faces(3)
    shuffle2 = np.stack([np.random.default_rng(i).permutation(34) for i in range(3)]).astype(np.int64)
    sess = session(out / "frontend.onnx")
    got = sess.run(None, {"image": faces, "shuffle2": shuffle2})[0].astype(np.float32)
    with torch.no_grad():
        want = build_method("ppfr_fd", key=key)(torch.from_numpy(faces), torch.from_numpy(shuffle2)).numpy()
        demo = build_method("ppfr_fd", key="ppfr-demo-key")(
            torch.from_numpy(faces), torch.from_numpy(shuffle2)
        )
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=2e-3 * np.abs(want).max())
    assert np.abs(got - demo.numpy()).max() > 0.1

    # --demo-key: the same run, marked as demo, another key id and front-end
    demo_out = tmp_path / "demo"
    assert cli.main(_quick_export(run, demo_out, "--demo-key")) == 0
    assert "PUBLIC demo key" in capsys.readouterr().out
    dm = read_manifest(demo_out)
    assert dict(dm.method_params)["demo_key"] is True
    assert dict(dm.method_params)["key_id"] == keys.key_id(keys.DEMO_KEY)
    assert dm.frontend_id != manifest.frontend_id and dm.recognizer.sha256 == manifest.recognizer.sha256
