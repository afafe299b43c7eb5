"""`ppfr-bench raw-pairs` on a handful of real LFW pairs: the real server, the edge's detection and
alignment on raw photos, the same pairs from aligned112. Accuracy is not asserted (the test bundle is
untrained), only that every pair went through both paths and the figures add up."""

import json

import cv2
import numpy as np
import pytest
from helpers import DATA
from ppfr.bench.cli import main as bench_main
from ppfr.evaluation.raw_pairs import Pair, choose, figures

LFW = DATA / "lfw"
PAIRS = [  # a genuine pair whose B photo shows two faces, impostors, and one photo without a face
    ("Charles_Schumer/Charles_Schumer_0001.jpg", "Charles_Schumer/Charles_Schumer_0002.jpg", 1),
    ("Charles_Schumer/Charles_Schumer_0002.jpg", "James_Watt/James_Watt_0001.jpg", 0),
    ("David_Beckham/David_Beckham_0022.jpg", "Laura_Morante/Laura_Morante_0001.jpg", 0),
    ("Charles_Schumer/Charles_Schumer_0001.jpg", "Nobody/Nobody_0001.jpg", 0),
]


@pytest.fixture
def data(tmp_path):
    """A data folder with those pairs: the real photos (linked) and a faceless 'photo' in both forms."""
    root = tmp_path / "data"
    for folder, size in (("raw250", (250, 250)), ("aligned112", (112, 112))):
        for a, b, _ in PAIRS:
            for name in (a, b):
                path = root / "lfw" / folder / name
                path.parent.mkdir(parents=True, exist_ok=True)
                if name.startswith("Nobody") and not path.exists():
                    ramp = np.linspace(0, 255, size[1], dtype=np.uint8)[None, :, None]
                    cv2.imwrite(str(path), np.ascontiguousarray(np.broadcast_to(ramp, (*size, 3))))
                elif not path.exists():
                    path.symlink_to(LFW / folder / name)
    lines = ["a\tb\tsame\tfold"] + [f"{a}\t{b}\t{same}\t1" for a, b, same in PAIRS]
    (root / "lfw" / "raw250_pairs.tsv").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.slow
def test_raw_pairs_through_the_real_server(small_bundle, data, tmp_path, capsys):
    out = tmp_path / "raw_pairs.json"
    argv = ["--bundle", str(small_bundle("ppfr_fd")), "--data", str(data), "--out", str(out), "--no-progress"]
    assert bench_main(["raw-pairs", *argv]) == 0
    printed = capsys.readouterr().out
    assert "accuracy at threshold" in printed and "genuine accept rate" in printed
    assert "impostor reject rate" in printed and "raw - aligned" in printed
    summary = json.loads(out.read_text())
    photos = summary["photos_raw"]
    assert photos["total"] == 6 and photos["accepted"] == 5 and photos["several_faces"] >= 2
    assert (
        photos["refused_by_reason"] == {"no face found": 1} and "Nobody/Nobody_0001.jpg" in photos["refused"]
    )
    assert summary["threshold"] == pytest.approx(summary["server_threshold"], abs=1e-6)
    raw, aligned = summary["raw"], summary["aligned"]
    assert raw["pairs"] == aligned["pairs"] == 4 and raw["genuine"] == 1 and raw["impostor"] == 3
    assert raw["pairs_refused"] == 1 and aligned["pairs_refused"] == 0
    assert summary["accuracy_difference_points"] == pytest.approx(
        100 * (raw["accuracy"] - aligned["accuracy"])
    )
    detail = summary["pairs_detail"]
    assert detail[3]["raw"] == {"refused": "Nobody/Nobody_0001.jpg"} and "score" in detail[3]["aligned"]
    for row in detail[:3]:
        for mode in ("raw", "aligned"):
            r = row[mode]
            assert -1.0 <= r["score"] <= 1.0 and isinstance(r["match"], bool)
            assert r["threshold"] == pytest.approx(summary["threshold"], abs=1e-6)


def test_bad_inputs_are_clear_errors(tmp_path, capsys, small_bundle):
    assert bench_main(["raw-pairs", "--bundle", str(tmp_path), "--data", str(tmp_path)]) == 2
    assert "pairs file not found" in capsys.readouterr().err
    bundle = str(small_bundle("ppfr_fd"))
    assert bench_main(["raw-pairs", "--bundle", str(tmp_path / "nothing"), "--pairs", "2"]) == 2
    assert "ppfr-bench raw-pairs: error:" in capsys.readouterr().err
    assert bench_main(["raw-pairs", "--bundle", bundle, "--pairs", "1"]) == 2
    assert "at least 2" in capsys.readouterr().err


def test_choose_takes_half_genuine_half_impostor_spread_over_the_list():
    pairs = [Pair(f"a{i}", f"b{i}", i % 600 < 300, 1 + i // 600) for i in range(1200)]
    assert choose(pairs, None) == pairs and choose(pairs, 5000) == pairs
    few = choose(pairs, 7)
    assert sum(p.same for p in few) == 4 and sum(not p.same for p in few) == 3
    assert {p.fold for p in few} == {1, 2}


def test_figures_count_a_refused_photo_as_no_match():
    pairs = [
        Pair("a", "b", True, 1),
        Pair("c", "d", True, 1),
        Pair("e", "f", False, 1),
        Pair("g", "h", False, 1),
    ]
    results = [
        {"score": 0.9, "match": True},
        {"refused": "d"},
        {"score": 0.1, "match": False},
        {"score": 0.8, "match": True},
    ]
    f = figures(pairs, results)
    assert f["accuracy"] == 0.5 and f["genuine_accept_rate"] == 0.5 and f["impostor_reject_rate"] == 0.5
    assert f["pairs_refused"] == 1 and f["mean_score_genuine"] == pytest.approx(0.9)
