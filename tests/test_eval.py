"""Evaluation maths against hand-computed cases, and the flip-sum / seeding contract of embed_faces."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ppfr.data import read_pairs
from ppfr.train.evaluate import embed_faces, kfold_accuracy, tar_at_far, verification_metrics
from ppfr.train.model import build_model


def test_kfold_accuracy_hand_computed():
    # fold 0: pos 0.9 0.8, neg 0.3 0.1 | fold 1: pos 0.7 0.65, neg 0.6 0.4
    scores = np.array([0.9, 0.8, 0.3, 0.1, 0.7, 0.6, 0.4, 0.65])
    same = np.array([1, 1, 0, 0, 1, 0, 0, 1], bool)
    folds = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    accs, thrs = kfold_accuracy(scores, same, folds)
    # Test fold 0: threshold from fold 1 sits between 0.6 (neg) and 0.65 (pos) -> 0.625; all 4 right.
    # Test fold 1: threshold from fold 0 sits between 0.3 and 0.8 -> 0.55; 0.6 (neg) is accepted: 3/4.
    np.testing.assert_allclose(thrs, [0.625, 0.55])
    np.testing.assert_allclose(accs, [1.0, 0.75])
    m = verification_metrics(scores, same, folds)
    assert m["accuracy_mean"] == pytest.approx(0.875)
    assert m["accuracy_std"] == pytest.approx(0.125)
    assert m["num_pairs"] == 8


def test_tar_at_far_hand_computed():
    scores = np.array([0.9, 0.5, 0.2, 0.6, 0.3, 0.1, 0.0])
    same = np.array([1, 1, 1, 0, 0, 0, 0], bool)
    # 4 negatives: FAR 0.25 lets one pass -> threshold = 2nd highest negative (0.3): 0.9 and 0.5 accepted.
    assert tar_at_far(scores, same, 0.25) == (pytest.approx(2 / 3), 0.3)
    # FAR below 1/4 lets none pass -> threshold = highest negative (0.6): only 0.9 accepted.
    assert tar_at_far(scores, same, 1e-3) == (pytest.approx(1 / 3), 0.6)


def test_lfw_pairs_protocol(data_dir):
    pairs, folds = read_pairs(data_dir / "lfw" / "pairs.txt")
    assert len(pairs) == 6000 and np.bincount(folds).tolist() == [600] * 10
    same = np.array([s for _, _, s in pairs])
    assert same[:300].all() and not same[300:600].any()  # 300 same then 300 different per fold
    assert pairs[0][0].endswith("_0001.jpg") or "_" in pairs[0][0]


def test_embed_faces_flip_sum_and_seed(faces):
    torch.manual_seed(0)
    cfg = {
        "method": {"name": "ppfr_fd"},
        "model": {"embedding_size": 16, "width": 0.25, "blocks": [1, 1, 1, 1]},
    }
    method, rec = build_model(cfg)
    rec.eval()
    x = torch.as_tensor(faces[:4])
    a = embed_faces(method, rec, faces[:4], seed=3, flip=True)
    b = embed_faces(method, rec, faces[:4], seed=3, flip=True)
    np.testing.assert_array_equal(a, b)  # a fixed seed reproduces a stochastic method exactly
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1, rtol=1e-5)
    # By hand: both views draw from one generator seeded 3, plain first, flip in pixel space (width).
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        f = rec(method(x, **method.sample_random(4, gen)))
        f = f + rec(method(x.flip(2), **method.sample_random(4, gen)))
    np.testing.assert_allclose(a, F.normalize(f, dim=1).numpy(), atol=1e-5)
    single = embed_faces(method, rec, faces[:4], seed=3)  # the default: one view, as the server embeds
    assert np.abs(single - a).max() > 1e-3  # the flip view really contributes
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        plain = F.normalize(rec(method(x, **method.sample_random(4, gen))), dim=1).numpy()
    np.testing.assert_allclose(single, plain, atol=1e-5)
