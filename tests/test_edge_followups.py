"""ppfr-edge follow-ups (issue 26 review): `ppfr-edge calibrate` is a subcommand of the installed command
(ppfr.edge.calibrate's own options and errors, one line and exit 2 for a bad folder)."""

import shutil

import pytest
from ppfr.edge.cli import main as edge_main


def test_calibrate_is_a_subcommand_with_its_own_help(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")
    with pytest.raises(SystemExit) as exit_:
        edge_main(["--help"])
    assert exit_.value.code == 0
    listed = "calibrate           set a bundle's thresholds from the site's own photos"
    assert listed in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        edge_main(["calibrate", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: ppfr-edge calibrate") and "--photos PHOTOS" in text and "--far FAR" in text


def test_calibrate_bad_input_is_one_line_and_exit_2(small_bundle, tmp_path, capsys):
    bundle = tmp_path / "bundle"
    shutil.copytree(small_bundle("ppfr_fd"), bundle)
    unchanged = (bundle / "manifest.json").read_bytes()
    site = tmp_path / "site"
    (site / "only_one_person").mkdir(parents=True)
    for photos, expected in (
        (tmp_path / "missing", f"--photos {tmp_path / 'missing'}: not a folder"),
        (site, "fewer than 2 people"),  # the bundle is opened, the folder read: too little data
    ):
        assert edge_main(["calibrate", str(bundle), "--photos", str(photos), "--no-progress"]) == 2
        out, err = capsys.readouterr()
        assert not out and err.count("\n") == 1 and err.startswith("ppfr-edge calibrate: error:")
        assert expected in err
    assert (bundle / "manifest.json").read_bytes() == unchanged


def test_options_before_calibrate_are_refused(capsys):
    with pytest.raises(SystemExit) as exit_:
        edge_main(["--json", "calibrate", "artifacts/x", "--photos", "site"])
    assert exit_.value.code == 2
    assert "calibrate takes its own options, after it" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # the other commands still refuse what they do not know
        edge_main(["info", "--no-such-option"])
    assert exit_.value.code == 2
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err
