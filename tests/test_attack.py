"""ppfr-attack end to end at a tiny setting (real faces, a small real bundle); figures not asserted."""

import json

import pytest
from ppfr.attack import cli, report


@pytest.mark.slow
def test_attack_end_to_end(bundle, tmp_path):
    out = tmp_path / "attack"
    argv = [
        "--bundle",
        str(bundle),
        "--out",
        str(out),
        "--victims",
        "2",
        "--calib",
        "4",
        "--max-attacker",
        "48",
    ]
    argv += ["--utkface", "0", "--steps", "2", "--batch", "8", "--widths", "8,16", "--res", "28"]
    argv += ["--rgb-judge", str(bundle)]  # any bundle exercises the second-judge path
    assert cli.main(argv) == 0
    for f in ("attack.json", "attack.md", "grid.png"):
        assert (out / f).stat().st_size > 0
    result = json.loads((out / "attack.json").read_text())
    assert result["split"]["identity_overlap"] == 0
    (row,) = result["results"]
    assert row["method"] == "ppfr_fd" and set(row["judges"]) == {"dlib", "rgb"}
    assert {"match_rate", "false_match_rate"} <= set(row["judges"]["dlib"]["reconstruction"])
    assert {"match_rate_at_own_far", "rank1"} <= set(row["linkage"]["dlib"])  # the recognizer as linker
    assert (out / row["arrays"]).is_file()
    assert "cross_key_match_rate" in row["key_renewal"]
    assert "| small_ppfr_fd |" in (out / "attack.md").read_text()
    # a second run on the same victims merges into one report
    merged = tmp_path / "merged"
    assert report.main(["--merge", str(out), str(out), "--out", str(merged)]) == 0
    assert len(json.loads((merged / "attack.json").read_text())["results"]) == 2
    assert (merged / "grid.png").stat().st_size > 0
    # --steps 0: no inversion, the linkage and key-renewal rows alone
    quick = tmp_path / "quick"
    argv[argv.index("--steps") + 1], argv[argv.index("--out") + 1] = "0", str(quick)
    assert cli.main(argv) == 0
    (row,) = json.loads((quick / "attack.json").read_text())["results"]
    assert not row["judges"] and "rank1" in row["linkage"]["dlib"] and "arrays" not in row


def test_no_bundles_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["--bundles-dir", str(tmp_path / "none")]) == 2
    assert "make export" in capsys.readouterr().err


def test_white_box_without_checkpoint_fails_before_training(bundle, tmp_path, capsys):
    argv = ["--bundle", str(bundle), "--white-box", "--runs", str(tmp_path / "none"), "--out", str(tmp_path)]
    assert cli.main(argv) == 1
    assert "--white-box needs" in capsys.readouterr().err
    assert not (tmp_path / "attack.json").exists()


def test_white_box_frontend_from_checkpoint(tmp_path, faces):
    """The white-box attacker rebuilds the method (and key) from the run's checkpoint; its canonical view
    is the server adapter's output (PPFR-FD: energy-sorted channels)."""
    from types import SimpleNamespace

    import numpy as np
    from bundles import small_config
    from ppfr.attack.whitebox import whitebox_frontend
    from ppfr.train.model import build_model, save_checkpoint

    config = small_config("ppfr_fd", name="wb_run")
    method, recognizer = build_model(config)
    save_checkpoint(tmp_path / "wb_run" / "checkpoint.pt", config, method, recognizer)
    manifest = SimpleNamespace(training=SimpleNamespace(run_name="wb_run"))
    fake = SimpleNamespace(manifest=manifest, name="wb_run", method="ppfr_fd")
    front = whitebox_frontend(fake, runs_dir=tmp_path)
    out = front.protect(faces[:4], np.random.default_rng(0))
    assert out.shape == (4, 34, 14, 14) and np.isfinite(out).all()
    energy = np.abs(out).mean(axis=(2, 3))
    assert (np.diff(energy, axis=1) <= 1e-4).all()  # sorted by energy, descending


@pytest.mark.slow
def test_inversion_recovers_what_bdct_does_not_hide(faces):
    """Calibration in miniature: the block DCT is invertible, so the inversion network (its learned
    inverse-DCT stem) must bring faces it never saw back at PSNR > 25 dB after a short training."""
    from types import SimpleNamespace

    import numpy as np
    import torch
    from ppfr.attack.inversion import reconstruct, train_inversion
    from ppfr.attack.metrics import psnr
    from ppfr.attack.whitebox import TorchFrontend
    from ppfr.train.methods import build_method

    torch.set_num_threads(1)
    front = TorchFrontend(build_method("bdct"))
    train, held_out = faces[:24], faces[24:]
    cfg = SimpleNamespace(widths=(8, 16), res=28, lr=1e-2, steps=150, batch=16)
    net, _ = train_inversion(front, train, cfg, seed=0)
    recon = reconstruct(net, front.protect(held_out, np.random.default_rng(1)))
    assert psnr(held_out / 255.0, recon / 255.0).mean() > 25.0


def test_stem_images_are_the_servers_own_inversion(tmp_path, faces):
    """A recognizer with a pixel stem draws a face from every protected query; the attack scores that
    image (for bdct the stem's least-squares start is an exact inverse, so it is the face itself). A
    recognizer without one gives nothing to score."""
    from types import SimpleNamespace

    import numpy as np
    import torch
    from bundles import small_config
    from ppfr.attack.metrics import psnr
    from ppfr.attack.whitebox import stem_images
    from ppfr.train.model import build_model, save_checkpoint

    def saved(name, config):
        method, recognizer = build_model(config)
        recognizer.calibrate(method, torch.from_numpy(faces[:24]))
        save_checkpoint(tmp_path / name / "checkpoint.pt", config, method, recognizer)
        manifest = SimpleNamespace(training=SimpleNamespace(run_name=name))
        return SimpleNamespace(manifest=manifest, name=name, method=config["method"]["name"])

    model = {"backbone": "dlib", "embedding_size": 128, "entry": "conv64_1", "width": 16, "depth": 1}
    pixel = saved("pix", {"name": "pix", "method": {"name": "bdct"}, "model": model | {"pixel_stem": True}})
    seen, images = stem_images(pixel, faces[24:28], np.random.default_rng(0), runs_dir=tmp_path)
    assert seen.shape == (4, 192, 14, 14) and images.shape == (4, 112, 112, 3) and images.dtype == np.uint8
    assert psnr(faces[24:28] / 255.0, images / 255.0).mean() > 40
    plain = saved("plain", small_config("ppfr_fd", name="plain"))
    assert stem_images(plain, faces[:2], np.random.default_rng(0), runs_dir=tmp_path) is None
