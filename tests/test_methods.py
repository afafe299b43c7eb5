"""The five protection methods: shapes, randomness as inputs, and each method's own promises."""

import numpy as np
import pytest
import torch
from ppfr.train.dctdp import DCTDP
from ppfr.train.methods import METHODS, build_method
from ppfr.train.partialface import COMBOS, KEPT, PRUNED, SUBSETS, LayoutRouter, PartialFace, channel_table
from ppfr.train.ppfr_fd import PPFRFD, ChainRouter, EnergySort, keyed_permutation

EXPECTED_SHAPES = {
    "rgb": (3, 112, 112),
    "bdct": (192, 14, 14),
    "ppfr_fd": (34, 14, 14),
    "dctdp": (189, 14, 14),
    "partialface": (27, 14, 14),
}


@pytest.fixture(scope="module")
def batch(faces):
    return torch.from_numpy(faces[:8])


@pytest.mark.parametrize("name", sorted(METHODS))
def test_shape_payload_and_determinism(name, batch):
    method = build_method(name)
    method.calibrate(batch)
    rand = method.sample_random(len(batch), torch.Generator().manual_seed(0))
    out = method(batch, **rand)
    assert tuple(out.shape[1:]) == method.output_shape() == EXPECTED_SHAPES[name]
    assert torch.isfinite(out).all()
    assert method.payload_bytes("float16") * 2 == method.payload_bytes("float32") == out[0].numel() * 4
    # No randomness inside forward: the same inputs give the same tensor.
    assert torch.equal(out, method(batch, **rand))
    for spec in method.random_inputs():
        assert tuple(rand[spec.name].shape) == (len(batch), *spec.shape)


def test_registry_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown protection method"):
        build_method("nope")
    with pytest.raises(ValueError, match="bad parameters"):
        build_method("bdct", colour="gray")


# --- PPFR-FD ----------------------------------------------------------------------------------


def test_ppfr_fd_energy_sort_undoes_shuffle2(batch):
    method = PPFRFD(key="k1")
    g = torch.Generator().manual_seed(1)
    a = method(batch, **method.sample_random(len(batch), g))
    b = method(batch, **method.sample_random(len(batch), g))
    assert not torch.equal(a, b)  # different Shuffle2 on the wire
    sort = EnergySort()
    assert torch.allclose(sort(a), sort(b), atol=1e-6)


def test_ppfr_fd_chain_router_places_channels_by_the_draw(batch):
    """route: true. Given the draw, the router's placement is the chain order M_0..M_33 exactly, i.e. the
    tensor the client had before Shuffle2; the recognizer's input keeps the wire's shape."""
    method = PPFRFD(route=True)
    router = method.server_adapter()
    assert isinstance(router, ChainRouter) and method.server_shape() == (34, 14, 14)
    rand = method.sample_random(len(batch), torch.Generator().manual_seed(2))
    sent = method(batch, **rand)
    before_shuffle2 = method(batch, shuffle2=torch.arange(34).expand(len(batch), 34))
    assert torch.allclose(router.place_known(sent, rand), before_shuffle2, atol=1e-5)
    assert router(sent).shape == sent.shape


@pytest.mark.slow
def test_ppfr_fd_chain_router_learns_the_order_on_real_faces(data_dir):
    """Shuffle2 is not sent, but each channel's pattern and its correlation with its chain neighbours give
    it away: after a short training the router puts far more channels of held-out faces in their place
    than the energy sort keeps in a stable place (a fact about PPFR-FD's privacy, too). The lean per-map
    reader (`--router-reader 16`) learns it nearly as well as the wide one (72.9% of channels placed
    against 75.7%) in under a third of the time."""
    from helpers import read_rgb

    torch.manual_seed(0)
    paths = sorted((data_dir / "celeba" / "aligned112").glob("*/*.jpg"))[::23][:320]
    imgs = torch.from_numpy(np.stack([read_rgb(p) for p in paths]))
    method = PPFRFD(route=True, router_reader=16)
    router = method.server_adapter()
    train, held_out = imgs[:256], imgs[256:]
    opt = torch.optim.Adam(router.parameters(), 2e-3)
    for _ in range(200):
        rand = method.sample_random(32)
        router(method(train[torch.randint(0, len(train), (32,))], **rand))
        loss = router.aux_loss(rand)
        opt.zero_grad()
        loss.backward()
        opt.step()
    rand = method.sample_random(len(held_out))
    sent = method(held_out, **rand)
    with torch.no_grad():
        placed = router(sent)
    truth = router.place_known(sent, rand)
    routed = (placed - truth).flatten(2).norm(dim=2) < 0.5 * truth.flatten(2).norm(dim=2)
    order = torch.topk(sent.abs().mean((2, 3)), 34, dim=1).indices  # the energy sort's pick
    source = rand["shuffle2"].gather(1, order)
    stable = (source == source.mode(0).values).float().mean()
    print(f"\nchannels routed to their place {routed.float().mean():.1%}; energy sort stable {stable:.1%}")
    assert routed.float().mean() > max(0.5, 1.5 * stable)


def test_ppfr_fd_keys_change_shuffle1():
    p1, p2 = keyed_permutation(b"key-one", 35), keyed_permutation(b"key-two", 35)
    assert sorted(p1) == sorted(p2) == list(range(35))
    assert p1 != p2
    assert p1 == keyed_permutation(b"key-one", 35)  # deterministic given the key
    assert not torch.equal(PPFRFD(key="key-one").keep, PPFRFD(key="key-two").keep)
    assert 0 not in PPFRFD(key="key-one").keep.tolist()  # DC dropped


def test_ppfr_fd_self_normalised_output(batch):
    out = PPFRFD()(batch, **PPFRFD().sample_random(len(batch)))
    assert torch.allclose(out.mean(dim=1), torch.zeros(1), atol=1e-4)
    assert (out.std(dim=1, unbiased=False) <= 1 + 1e-4).all()  # sigma / (sigma + eps)
    tight = PPFRFD(eps=1e-5)  # these faces have no flat blocks, so a tiny guard gives unit std
    out = tight(batch, **tight.sample_random(len(batch)))
    assert torch.allclose(out.std(dim=1, unbiased=False), torch.ones(1), atol=1e-3)


def test_ppfr_fd_analysis_penalty(batch):
    method = PPFRFD(analysis=True)
    out = method(batch)
    assert out.shape[1] == 36  # DC included in the analysis network
    penalty = method.extra_loss()
    penalty.backward()
    # Every weight starts above gamma, so every channel is penalised in proportion to its energy;
    # the DC channel (highest energy) gets the largest push.
    grad = method.weighting.logits.grad
    assert (grad > 0).all() and grad.argmax().item() == 0


# --- DCTDP ------------------------------------------------------------------------------------


def test_dctdp_budget_and_noise_scale(batch):
    method = DCTDP(epsilon=2.0)
    method.calibrate(batch)
    with torch.no_grad():
        method.rhos.copy_(torch.randn_like(method.rhos))
    eps = method.budgets()
    assert eps.sum().item() == pytest.approx(method.total_epsilon, rel=1e-4)
    assert method.total_epsilon == 2.0 * 189 * 14 * 14
    # Realised scale: mean |noise added| of Laplace(0, b) is b. Same face, 400 independent draws.
    face = batch[:1].expand(400, -1, -1, -1)
    with torch.no_grad():
        clean = method(face[:1], noise=torch.zeros(1, *method.output_shape()))
        noisy = method(face, **method.sample_random(400, torch.Generator().manual_seed(3)))
        ratio = (noisy - clean).abs().mean(dim=0) / method.noise_scale()
    assert ratio.median().item() == pytest.approx(1.0, abs=0.02)
    assert ((ratio - 1).abs() < 0.3).float().mean().item() > 0.99


def test_dctdp_noise_is_independent_per_image(batch):
    method = DCTDP()
    method.calibrate(batch)
    face = batch[:1].expand(2, -1, -1, -1)
    with torch.no_grad():
        out = method(face, **method.sample_random(2, torch.Generator().manual_seed(5)))
        clean = method(face[:1], noise=torch.zeros(1, *method.output_shape()))
        # Standardise by the per-coefficient scale: 37,044 unit Laplace draws per image.
        n0, n1 = ((out - clean) / method.noise_scale()).flatten(1)
    assert not torch.equal(n0, n1)
    assert abs(np.corrcoef(n0.numpy(), n1.numpy())[0, 1]) < 0.03  # ~6 standard errors


def test_dctdp_clips_to_the_sensitivity_bound(batch):
    method = DCTDP()
    with pytest.raises(RuntimeError, match="calibrate"):
        method(batch, noise=torch.zeros(len(batch), *method.output_shape()))
    method.calibrate(batch)
    out = method(batch, noise=torch.zeros(len(batch), *method.output_shape()))
    bound = method.clip_bound[None, :, None, None]
    assert (out.abs() <= bound + 1e-5).all()
    assert torch.equal(method.sensitivity(), 2 * method.clip_bound)
    assert "clip_bound" in method.state_dict() and "rhos" in method.state_dict()
    assert method.locs is None  # mean shift off by default


# --- PartialFace ------------------------------------------------------------------------------


def test_partialface_constants():
    assert len(KEPT) == 54 and set(PRUNED) == {k for k in range(64) if k // 8 + k % 8 <= 3}
    assert sorted(j for s in SUBSETS for j in s) == list(range(54))
    r0 = [KEPT[j] for j in SUBSETS[0]]
    uv = [(0, 5), (4, 2), (4, 6), (2, 5), (5, 2), (6, 7), (7, 1), (6, 2), (7, 6)]  # methods.md §4
    assert [(k // 8, k % 8) for k in r0] == uv
    assert len(COMBOS) == 20 and COMBOS[0] == (0, 1, 2) and COMBOS[-1] == (3, 4, 5)


def test_partialface_emits_documented_channels(batch):
    method = PartialFace()
    full = method.frontend(batch)
    table = channel_table()
    for subset in range(6):
        for perm in range(3):
            s = torch.full((len(batch),), subset)
            p = torch.full((len(batch),), perm)
            out = method(batch, subset=s, permutation=p)
            assert out.shape[1] == 27
            assert torch.equal(out, full[:, table[subset][perm]])
    # Permutation 1 = [7,3,0,6,5,4,1,2,8]: output position 0 holds the subset's element 7, per plane.
    assert table[0][1][0] == KEPT[SUBSETS[0][7]] and table[0][1][9] == 64 + KEPT[SUBSETS[0][7]]


def test_partialface_router_puts_each_frequency_in_its_own_channel(batch):
    """route: true. Given the layout, the router's scattering puts every sent channel where the fixed
    162-channel layout keeps that frequency (zeros elsewhere); the recognizer's input is that layout."""
    method = PartialFace(route=True)
    router, full = method.server_adapter(), method.frontend(batch)
    canon = LayoutRouter.canonical(method.table)
    assert method.server_shape() == (162, 14, 14) and len(canon) == 162
    for layout, sent in enumerate(method.table.tolist()):
        subset, perm = divmod(layout, 3)
        out = method(
            batch, subset=torch.full((len(batch),), subset), permutation=torch.full((len(batch),), perm)
        )
        placed = router.place_known(
            out, {"subset": torch.full((len(batch),), subset), "permutation": torch.full((len(batch),), perm)}
        )
        rows = [canon.index(c) for c in sent]
        assert torch.allclose(placed[:, rows], full[:, sent])
        assert placed[:, [i for i in range(162) if i not in rows]].abs().max() == 0


@pytest.mark.slow
def test_partialface_router_reads_the_layout_off_real_faces(faces):
    """The layout is not sent, but the channel energies give it away: the router's classifier learns it in
    a few seconds on real faces and gets held-out faces right (a fact about PartialFace's privacy, too)."""
    torch.manual_seed(0)
    method = PartialFace(route=True)
    router, imgs = method.server_adapter(), torch.from_numpy(faces)
    train, held_out = imgs[: len(imgs) * 3 // 4], imgs[len(imgs) * 3 // 4 :]
    opt = torch.optim.Adam(router.classify.parameters(), 1e-3)
    for _ in range(150):
        pick = torch.randint(0, len(train), (32,))
        rand = method.sample_random(32)
        router(method(train[pick], **rand))
        loss = router.aux_loss(rand)
        opt.zero_grad()
        loss.backward()
        opt.step()
    rand = method.sample_random(len(held_out))
    with torch.no_grad():
        router(method(held_out, **rand))
    right = (router.logits.argmax(1) == rand["subset"] * 3 + rand["permutation"]).float().mean()
    assert right >= 0.9


def test_partialface_training_subsets_follow_labels():
    method = PartialFace()
    labels = torch.arange(200)
    draws = method.sample_random(200, torch.Generator().manual_seed(0), labels=labels)
    for y, s in zip(labels.tolist(), draws["subset"].tolist()):
        assert s in COMBOS[y % 20]
