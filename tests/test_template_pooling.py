"""`ppfr-bench pooling` on a few real LFW people through a real bundle, and its rules against the server's."""

import json

import numpy as np
import pytest
from helpers import DATA
from ppfr.bench.cli import main as bench_main
from ppfr.cloud.matrix import TemplateMatrix
from ppfr.evaluation.pooling import RULES

PEOPLE = ["Abdullah_Gul", "Adrien_Brody", "Al_Sharpton", "Alvaro_Uribe", "Amelie_Mauresmo"]


def test_pooled_rule_is_what_the_server_scores():
    rng = np.random.default_rng(0)
    templates = rng.normal(size=(3, 8)).astype(np.float32)
    templates /= np.linalg.norm(templates, axis=1, keepdims=True)
    probe = rng.normal(size=8).astype(np.float32)
    probe /= np.linalg.norm(probe)
    matrix = TemplateMatrix(8)
    matrix.add_many(["s"] * 3, np.arange(3), templates)
    assert matrix.verify("s", probe) == pytest.approx(
        float(RULES["pooled"](templates, probe[None])[0]), abs=1e-6
    )
    assert float(RULES["best"](templates, probe[None])[0]) == pytest.approx(float((templates @ probe).max()))


def test_pooling_bench_on_real_faces(small_bundle, tmp_path, capsys):
    root = tmp_path / "aligned112"
    for name in PEOPLE:
        (root / name).mkdir(parents=True)
        for crop in sorted((DATA / "lfw" / "aligned112" / name).glob("*.jpg"))[:4]:
            (root / name / crop.name).symlink_to(crop)
    out = tmp_path / "pooling.json"
    argv = ["pooling", "--bundle", str(small_bundle("ppfr_fd")), "--lfw", str(root), "--enroll", "1,3"]
    assert bench_main([*argv, "--out", str(out)]) == 0
    assert "TAR@FAR1e-3" in capsys.readouterr().out
    rows = json.loads(out.read_text())["rows"]
    assert [(r["enrolled"], r["rule"]) for r in rows] == [(k, rule) for k in (1, 3) for rule in RULES]
    one = [r for r in rows if r["enrolled"] == 1]
    assert all(r["accepted"] == one[0]["accepted"] and r["rejected"] == one[0]["rejected"] for r in one)
    three = rows[-1]
    assert three["people"] == 5 and three["genuine"] == 5 and three["impostor"] == 20
    assert 0 <= three["accepted"] <= 1 and 0 <= three["rejected"] <= 1


def test_bad_arguments_are_clear_errors(tmp_path, capsys, small_bundle):
    with pytest.raises(SystemExit) as exit_:
        bench_main(["pooling", "--bundle", str(tmp_path)])
    assert exit_.value.code == 2 and "is not a bundle" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench_main(["pooling", "--bundle", str(small_bundle("ppfr_fd")), "--enroll", "0"])
    assert "--enroll takes positive counts" in capsys.readouterr().err


@pytest.mark.slow
def test_export_rejects_a_bad_enrolled_count(capsys):
    from ppfr.export.cli import main as export_main

    with pytest.raises(SystemExit) as exit_:
        export_main(["--checkpoint", "x.pt", "--enrolled-photos", "0"])
    assert exit_.value.code == 2 and "--enrolled-photos must be at least 1" in capsys.readouterr().err
