"""Formulas and tiny-size forward/backward/optimisation checks of both models."""
import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from kpray.losses.autolink import PerceptualLoss
from kpray.models.autolink import AutoLink, AutoLinkConfig, random_grid_mask
from kpray.models.skeleton import (SkeletonConfig, SkeletonModel, SkeletonPrediction,
                                   gumbel_location_maps, neural_point_transport, point_colours)
from kpray.ops.coords import pixel_grid, soft_argmax, to_normalised


# ---------------------------------------------------------------- formulas

def test_soft_argmax_known_heatmap():
    h = torch.full((1, 2, 8, 8), -1e4)
    h[0, 0, 2, 5] = 0.0                                     # one peak at x = 5, y = 2
    h[0, 1, 1, 1] = h[0, 1, 5, 3] = 0.0                     # two equal peaks: their midpoint
    kp = soft_argmax(h)
    assert torch.allclose(kp[0, 0], to_normalised(torch.tensor([5.0, 2.0]), 8), atol=1e-6)
    assert torch.allclose(kp[0, 1], to_normalised(torch.tensor([2.0, 3.0]), 8), atol=1e-6)
    assert torch.allclose(soft_argmax(torch.zeros(1, 1, 8, 8)), torch.zeros(1, 1, 2), atol=1e-6)


def test_masking_ratio_is_exact_per_sample():
    gen = torch.Generator().manual_seed(0)
    keep = random_grid_mask(8, 128, grid=16, ratio=0.8, generator=gen)
    assert keep.shape == (8, 1, 128, 128)
    cells = keep.view(8, 16, 8, 16, 8)
    assert (cells.amax(dim=(2, 4)) == cells.amin(dim=(2, 4))).all()        # constant per cell
    masked = (cells[:, :, 0, :, 0] == 0).sum(dim=(1, 2))
    assert (masked == round(0.8 * 256)).all()                                # 205 of 256 cells
    assert not torch.equal(keep[0], keep[1])                                 # random per sample


def test_gumbel_location_maps():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    soft = gumbel_location_maps(logits, tau=1.0)
    assert torch.allclose(soft.sum(dim=(-1, -2)), torch.ones(2, 3))
    assert (soft > 0).all() and soft.amax() < 1
    hard = gumbel_location_maps(logits, tau=1.0, hard=True)
    assert torch.allclose(hard.sum(dim=(-1, -2)), torch.ones(2, 3))
    assert ((hard == 0) | (hard == 1)).all() and (hard == 1).sum() == 6
    (hard * torch.randn(2, 3, 8, 8)).sum().backward()
    assert logits.grad.abs().sum() > 0                                        # straight-through
    # a low temperature concentrates a sample on one pixel; no noise gives the tempered softmax
    assert gumbel_location_maps(logits.detach(), tau=0.01).amax(dim=(-1, -2)).min() > 0.9
    plain = gumbel_location_maps(logits.detach(), tau=2.0, noise=False)
    assert torch.allclose(plain.flatten(2), (logits.detach().flatten(2) / 2).softmax(-1))


def _one_hot(b, p, size, pixels):
    maps = torch.zeros(b, p, size, size)
    for k, (x, y) in enumerate(pixels):
        maps[:, k, y, x] = 1.0
    return maps


def test_npt_moves_a_coloured_point():
    size = 64
    source = torch.zeros(1, 3, size, size)
    source[0, :, 9:12, 9:12] = torch.tensor([1.0, 0.0, 0.0])[:, None, None]   # red patch at (10, 10)
    src_maps = _one_hot(1, 1, size, [(10, 10)])
    tgt_maps = _one_hot(1, 1, size, [(40, 30)])
    background = torch.full((1, 3, size, size), 0.5)
    assert torch.allclose(point_colours(source, src_maps)[0, 0], torch.tensor([1.0, 0.0, 0.0]))
    recon = neural_point_transport(source, src_maps, tgt_maps, background)
    assert torch.allclose(recon[0, :, 30, 40], torch.tensor([1.0, 0.0, 0.0]), atol=1e-3)  # moved
    assert torch.allclose(recon[0, :, 10, 10], torch.full((3,), 0.5))       # gone from the source
    assert torch.allclose(recon[0, :, 5, 50], torch.full((3,), 0.5))        # background elsewhere
    # the red spreads to the 3x3 neighbourhood of the target, fading
    assert recon[0, 0, 30, 41] > 0.5 and recon[0, 1, 30, 41] < 0.5


def test_npt_patch_pastes_the_source_patch_at_the_target():
    # red left and green right of the source point: the pasted patch keeps them apart, in place
    size = 16
    source = torch.zeros(1, 3, size, size)
    source[0, 0, 5, 4] = 1.0
    source[0, 1, 5, 6] = 1.0
    src_maps, tgt_maps = _one_hot(1, 1, size, [(5, 5)]), _one_hot(1, 1, size, [(10, 10)])
    background = torch.full((1, 3, size, size), 0.5)
    recon = neural_point_transport(source, src_maps, tgt_maps, background, sigma=0.01, patch=5)
    assert torch.allclose(recon[0, :, 10, 9], torch.tensor([1.0, 0.0, 0.0]), atol=0.01)
    assert torch.allclose(recon[0, :, 10, 11], torch.tensor([0.0, 1.0, 0.0]), atol=0.01)
    assert recon[0, :, 10, 10].abs().max() < 0.01                       # the point's own pixel
    assert torch.allclose(recon[0, :, 2, 2], torch.full((3,), 0.5))      # background elsewhere
    # one colour per point (the paper) paints the patch's mean everywhere instead
    flat = neural_point_transport(source, src_maps, tgt_maps, background, sigma=0.01)
    assert torch.allclose(flat[0, :, 10, 9], flat[0, :, 10, 11])
    with pytest.raises(ValueError, match="odd"):
        neural_point_transport(source, src_maps, tgt_maps, background, patch=4)


def test_npt_patch_of_one_colour_equals_the_colour_splat():
    # a one-colour source: patches are that colour, so patch 3 (std as the splat's) = patch 1
    torch.manual_seed(0)
    b, p, size = 2, 4, 16
    logits = torch.full((2, b, p, size, size), -1e9)
    logits[..., 3:-3, 3:-3] = 3 * torch.randn(2, b, p, size - 6, size - 6)   # away from padding
    src_maps, tgt_maps = torch.softmax(logits.flatten(3), -1).view(2, b, p, size, size)
    source = torch.rand(3)[None, :, None, None].expand(b, 3, size, size).contiguous()
    background = torch.rand(b, 3, size, size)
    one = neural_point_transport(source, src_maps, tgt_maps, background)
    three = neural_point_transport(source, src_maps, tgt_maps, background, patch=3, patch_sigma=0.8)
    assert torch.allclose(one, three, atol=1e-5)


# ---------------------------------------------------------------- AutoLink

@pytest.fixture(scope="module")
def alex_random():
    return PerceptualLoss("alex", pretrained=False)


def tiny_autolink(perceptual, **kw):
    kw = {"heatmap_size": 8, **kw}
    cfg = AutoLinkConfig(image_size=32, num_keypoints=4, detector_width=8, decoder_width=8,
                         decoder_depth=2, mask_grid=4, loss="lpips", perceptual_net="alex",
                         pretrained=False, **kw)
    return AutoLink(cfg, perceptual=perceptual)


def test_autolink_shapes_and_gradients(alex_random):
    torch.manual_seed(0)
    model = tiny_autolink(alex_random)
    w = model.edge_weights()
    off = w[~torch.eye(4, dtype=bool)]
    # official init: softplus(-4 + 0.1 N(0, 1)) ~ 0.018, random, symmetric, zero diagonal
    assert 0.010 < off.min() and off.max() < 0.030 and off.std() > 0
    assert torch.equal(w, w.T) and not w.diagonal().any()
    images = torch.rand(2, 3, 32, 32)
    out = model.reconstruct(images)
    assert out["keypoints"].shape == (2, 4, 2) and out["heatmaps"].shape == (2, 4, 8, 8)
    assert out["edge_map"].shape == (2, 1, 32, 32) and out["reconstruction"].shape == (2, 3, 32, 32)
    loss, terms = model.training_step(images)
    loss.backward()
    assert set(terms) >= {"perceptual", "alpha"} and terms["alpha"] == 1
    for name in ("edge_weight_raw", "alpha", "detector.net.6.weight", "decoder.out.weight"):
        assert model.get_parameter(name).grad.abs().sum() > 0, name
    assert not any(k.startswith("perceptual") for k in model.state_dict())
    pred = model.predict(images)
    assert pred["keypoints"].shape == (2, 4, 2) and pred["edge_weights"].shape == (4, 4)


def test_autolink_optimisation_lowers_loss(alex_random):
    torch.manual_seed(0)
    model = tiny_autolink(alex_random, lr=2e-3)
    opt = model.configure_optimizer()
    images = torch.rand(4, 3, 32, 32)
    losses = []
    for step in range(12):
        torch.manual_seed(1)                                  # same masks: a fixed objective
        loss, _ = model(images, step=step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_autolink_earlier_reading_reachable(alex_random):
    """The fields that keep our earlier choices: all-1 edges, 'skip' detector, 'unet' decoder
    (sigmoid output), [0, 1] pixels (masked cells black)."""
    torch.manual_seed(0)
    model = tiny_autolink(alex_random, edge_init_logit=0.5413248546129181, edge_init_std=0.0,
                          detector="skip", decoder="unet", init="torch", pixel_range="unit")
    assert torch.allclose(model.edge_weights(), 1 - torch.eye(4), atol=1e-5)
    out = model.reconstruct(torch.rand(2, 3, 32, 32))
    assert out["heatmaps"].shape == (2, 4, 8, 8)
    r = out["reconstruction"]
    assert 0 <= r.min() and r.max() <= 1                                  # sigmoid
    assert (out["masked"][out["mask"].expand(-1, 3, -1, -1) == 0] == 0).all()


def test_autolink_official_layout_and_init(alex_random):
    torch.manual_seed(0)
    full = AutoLink(AutoLinkConfig(loss="pixel_grad"))                    # 128 px, widths 64
    n = lambda m: sum(p.numel() for p in m.parameters())                  # noqa: E731
    assert n(full.detector) == 7_736_272 and n(full.decoder) == 17_972_803   # official sizes
    convs = [m for m in full.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(not m.bias.any() for m in convs if m.bias is not None)
    # Kaiming normal, a = 0.2: std = gain / sqrt(fan_in), gain = sqrt(2 / (1 + 0.04))
    conv = full.decoder.downs[1][0]
    fan_in = conv.weight[0].numel()
    assert conv.weight.std().item() == pytest.approx((2 / 1.04 / fan_in) ** 0.5, rel=0.03)
    model = tiny_autolink(alex_random)
    images = torch.rand(2, 3, 32, 32)
    out = model.reconstruct(images)
    # [-1, 1] inside the networks: masked cells are mid-grey, 0.5 in [0, 1] units
    hidden = out["mask"].expand(-1, 3, -1, -1) == 0
    assert torch.allclose(out["masked"][hidden], torch.tensor(0.5))
    assert model.detect(images)[1].shape == (2, 4, 8, 8)
    assert tiny_autolink(alex_random, heatmap_size=16).detect(images)[1].shape == (2, 4, 16, 16)
    with pytest.raises(ValueError, match="heatmap_size"):
        tiny_autolink(alex_random, heatmap_size=12)


def test_autolink_decoder_coords(alex_random):
    """decoder_coords feeds x and y maps: 6 input channels, and the output depends on them."""
    torch.manual_seed(0)
    model = tiny_autolink(alex_random, decoder_coords=True)
    assert model.decoder.down0[0].in_channels == 6
    images = torch.rand(2, 3, 32, 32)
    out = model.reconstruct(images)
    with torch.no_grad():
        model.decoder.down0[0].weight[:, 4:] = 0                          # cut the coordinates
    assert not torch.allclose(model.decode(model.to_net(images) * out["mask"], out["edge_map"]),
                              out["reconstruction"])


def test_autolink_equivariance_term(alex_random):
    """equivariance_weight adds weight x equivariance_loss on the detector (same RNG draws as
    model.equivariance), reaches the detector's gradient, and is refused when negative."""
    torch.manual_seed(0)
    images = torch.rand(2, 3, 32, 32)
    off = tiny_autolink(alex_random)
    assert "equivariance" not in off(images)[1]
    model = tiny_autolink(alex_random, equivariance_weight=2.0, equivariance_max_angle=90.0)
    torch.manual_seed(1)
    loss, terms = model(images)
    torch.manual_seed(1)
    out = model.reconstruct(images)
    eq = model.equivariance(images, out["keypoints"])
    assert terms["equivariance"].item() == pytest.approx(eq.item(), rel=1e-5)
    assert loss.item() == pytest.approx(terms["perceptual"].item() + 2.0 * eq.item(), rel=1e-5)
    model.zero_grad()
    eq.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.detector.parameters())
    ramped = tiny_autolink(alex_random, equivariance_weight=2.0, equivariance_ramp_steps=100)
    assert [ramped.equivariance_weight_at(s) for s in (0, 50, 100, 500)] == [0.0, 1.0, 2.0, 2.0]
    torch.manual_seed(1)
    loss0, terms0 = ramped(images, step=0)
    assert "equivariance" in terms0 and loss0.item() == pytest.approx(terms0["perceptual"].item())
    shifted = tiny_autolink(alex_random, equivariance_weight=1.0, equivariance_max_shift=0.3)
    assert shifted(images)[1]["equivariance"] > 0
    for bad in ({"equivariance_weight": -1.0}, {"equivariance_max_shift": 2.5},
                {"equivariance_ramp_steps": -1}):
        with pytest.raises(ValueError, match="equivariance"):
            tiny_autolink(alex_random, **bad)


def test_autolink_keypoint_delay_holds_only_the_detector(alex_random):
    """Before keypoint_delay_steps the detector's gradient is exactly zero (and not None: DDP
    needs every parameter used) while the decoder and the graph learn; from then on it flows."""
    torch.manual_seed(0)
    images = torch.rand(2, 3, 32, 32)
    model = tiny_autolink(alex_random, keypoint_delay_steps=10)

    def grads(step):
        model.zero_grad()
        torch.manual_seed(1)
        model(images, step=step)[0].backward()
        return ([p.grad for p in model.detector.parameters()],
                [p.grad for p in model.decoder.parameters()], model.edge_weight_raw.grad)

    det, dec, edge = grads(9)
    assert all(g is not None and g.abs().sum() == 0 for g in det)
    assert any(g.abs().sum() > 0 for g in dec) and edge.abs().sum() > 0
    det, _, _ = grads(10)
    assert any(g.abs().sum() > 0 for g in det)
    with pytest.raises(ValueError, match="keypoint_delay_steps"):
        tiny_autolink(alex_random, keypoint_delay_steps=-1)


def test_autolink_edge_skip_adds_the_edge_map_to_the_output(alex_random):
    """edge_skip c: the reconstruction is the decoder's plus c * edge map in network units
    ([-1, 1], so c / 2 in [0, 1] units), c a learnable scalar; 0 adds no parameter (old
    checkpoints load) and changes nothing."""
    torch.manual_seed(0)
    masked = torch.rand(2, 3, 32, 32) * 2 - 1
    edges = torch.rand(2, 1, 32, 32)
    plain = tiny_autolink(alex_random)
    assert "edge_skip" not in plain.state_dict()
    torch.manual_seed(3)
    skip = tiny_autolink(alex_random, edge_skip=0.8)
    torch.manual_seed(3)
    same = tiny_autolink(alex_random)
    skip.load_state_dict(same.state_dict(), strict=False)
    with torch.no_grad():
        diff = skip.decode(masked, edges) - same.decode(masked, edges)
    assert torch.allclose(diff, 0.4 * edges.expand_as(diff), atol=1e-6)
    images = torch.rand(2, 3, 32, 32)
    skip(images)[0].backward()
    assert skip.edge_skip.grad is not None and skip.edge_skip.grad.abs() > 0
    scheduled = tiny_autolink(alex_random, edge_skip=2.0, edge_skip_steps=100)
    assert "edge_skip" not in scheduled.state_dict()
    assert [scheduled.edge_skip_at(s) for s in (0, 25, 100, 300, None)] == [2.0, 1.5, 0.0, 0.0, 0.0]
    with torch.no_grad():
        d25 = scheduled.decode(masked, edges, step=25) - scheduled.decode(masked, edges, step=100)
    assert torch.allclose(d25, 0.75 * edges.expand_as(d25), atol=1e-6)
    # edge_response, a slope of brightness change on the edge map: the skip adds c / 2 to it
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        r0 = scheduled.edge_map_reliance(images, seed=4, step=0)
        r25 = scheduled.edge_map_reliance(images, seed=4, step=25)
        r100 = scheduled.edge_map_reliance(images, seed=4, step=100)
    assert r0["edge_response"] - r100["edge_response"] == pytest.approx(1.0, rel=1e-3)
    assert r25["edge_response"] - r100["edge_response"] == pytest.approx(0.75, rel=1e-3)
    for bad in ({"edge_skip": float("nan")}, {"edge_skip": 1.0, "edge_skip_steps": -1}):
        with pytest.raises(ValueError, match="edge_skip"):
            tiny_autolink(alex_random, **bad)


@pytest.mark.parametrize("polarity_step,at,other", [(-1, 5, 4), (0, 0, 5)])
def test_autolink_edge_polarity_negates_a_darkening_edge_channel(alex_random, polarity_step, at,
                                                                 other):
    """edge_polarity: at step keypoint_delay_steps (edge_polarity_step -1) or at the step
    edge_polarity_step names (0: before any update), and no other, a model whose edge response
    is negative gets its decoder's first-conv weights on the edge channel negated (and
    edge_sign -1), nothing else; a model whose response is positive is left alone. (That this
    turns the response positive holds where it is first-order in the edges, as in trained
    models: docs/benchmarks.md; in a tiny untrained net it need not.)"""
    torch.manual_seed(0)
    images = torch.rand(4, 3, 32, 32)
    models = {}
    for seed in range(40):                                 # one model of each sign
        torch.manual_seed(seed)
        m = tiny_autolink(alex_random, edge_polarity=True, keypoint_delay_steps=5,
                          edge_polarity_step=polarity_step)
        m.eval()
        with torch.no_grad():
            r = m.edge_map_reliance(images, seed=at, step=at)["edge_response"]
        models.setdefault(r > 0, m)
        if len(models) == 2:
            break
    assert len(models) == 2
    for positive, model in models.items():
        model.train()
        before = {k: v.detach().clone() for k, v in model.state_dict().items()}
        with torch.no_grad():
            model(images, step=other)                      # not now: nothing changes but BN stats
        first = next(m for m in model.decoder.modules() if isinstance(m, torch.nn.Conv2d))
        assert torch.equal(first.weight, before["decoder.down0.0.weight"])
        model.load_state_dict(before)
        with torch.no_grad():
            model(images, step=at)
        after = model.state_dict()
        w0, w1 = before["decoder.down0.0.weight"], after["decoder.down0.0.weight"]
        assert torch.equal(w1[:, :3], w0[:, :3])
        if positive:
            assert torch.equal(w1, w0) and float(model.edge_sign) == 1.0
        else:
            assert torch.equal(w1[:, 3], -w0[:, 3]) and float(model.edge_sign) == -1.0
        assert all(torch.equal(after[k], v) for k, v in before.items()
                   if k.startswith(("detector.", "edge_weight")) and "running" not in k
                   and "num_batches" not in k)
    with pytest.raises(ValueError, match="edge_polarity_step"):
        tiny_autolink(alex_random, edge_polarity=True, edge_polarity_step=-2)


def test_autolink_init_candidates_trains_the_start_whose_edges_brighten_most(alex_random):
    """init_candidates K: at step 0 (training mode) the model's weights become those of the
    start with the largest edge response among its own and K - 1 fresh builds seeded
    candidate_seed + k, each measured alone here by brute force; init_choice names it; the run's
    own start is the K = 1 model's; no other step chooses; K = 1 adds no buffer."""
    torch.manual_seed(0)
    images = torch.rand(4, 3, 32, 32)
    torch.manual_seed(11)
    plain = tiny_autolink(alex_random)
    assert "init_choice" not in plain.state_dict()
    after_plain = torch.rand(3)
    torch.manual_seed(11)
    model = tiny_autolink(alex_random, init_candidates=4)
    assert torch.equal(torch.rand(3), after_plain)          # the run's RNG stream is unchanged
    own = {k: v.clone() for k, v in model.state_dict().items()}
    assert all(torch.equal(own[k], v) for k, v in plain.state_dict().items())
    assert int(model.init_choice) == -1
    responses = []
    for k in range(4):
        m = tiny_autolink(alex_random, init_candidates=4)
        m.load_state_dict(own if k == 0 else model.candidate_state(k))
        m.eval()
        with torch.no_grad():
            responses.append(m.edge_map_reliance(images, seed=0, step=0)["edge_response"])
    assert len({round(r, 6) for r in responses}) == 4       # four different starts
    best = max(range(4), key=responses.__getitem__)
    model.train()
    with torch.no_grad():
        model(images, step=1)                               # not at step 1
    assert int(model.init_choice) == -1
    with torch.no_grad():
        model(images, step=0)
    assert int(model.init_choice) == best
    want = own if best == 0 else model.candidate_state(best)
    got = model.state_dict()
    for k, v in want.items():
        if "running" in k or "num_batches" in k or k == "init_choice":   # BN statistics moved
            continue
        assert torch.equal(got[k], v), k
    with pytest.raises(ValueError, match="init_candidates"):
        tiny_autolink(alex_random, init_candidates=0)


def test_autolink_init_seed_fixes_the_start_and_leaves_the_run_rng_alone(alex_random):
    """init_seed: the weights are those a model built right after manual_seed(init_seed) has,
    whatever the global RNG's state, and building it leaves the global RNG where it was."""
    torch.manual_seed(2)
    want = tiny_autolink(alex_random).state_dict()
    for run_seed in (0, 5):
        torch.manual_seed(run_seed)
        expected_next = torch.rand(3)
        torch.manual_seed(run_seed)
        got = tiny_autolink(alex_random, init_seed=2).state_dict()
        assert all(torch.equal(got[k], v) for k, v in want.items())
        assert torch.equal(torch.rand(3), expected_next)
    torch.manual_seed(0)
    own = tiny_autolink(alex_random).state_dict()          # the run seed's start is another
    assert not all(torch.equal(own[k], v) for k, v in want.items())


def test_autolink_restart_step_restarts_a_darkening_start_and_holds_again(alex_random):
    """restart_step N: at step began + N only, a start whose edge response is below
    restart_below gets the next fresh start's weights (candidate_state), restarts, start_step,
    init_choice and restarted_at say so, and the keypoint hold starts again from there; a start
    at or above it is kept; restart_max caps the restarts."""
    torch.manual_seed(0)
    images = torch.rand(4, 3, 32, 32)

    def detector_grad(m, step):
        m.zero_grad()
        m(images, step=step)[0].backward()
        return sum(float(p.grad.abs().sum()) for p in m.detector.parameters() if p.grad is not None)

    torch.manual_seed(1)
    m = tiny_autolink(alex_random, restart_step=3, keypoint_delay_steps=2, restart_below=1e9,
                      restart_max=1)
    m.train()
    assert int(m.restarts) == 0 and int(m.init_choice) == 0 and m.began() == 0
    for step in range(3):
        m(images, step=step)
    assert int(m.restarts) == 0 and m.restarted_at is None
    want = m.candidate_state(1)
    with torch.no_grad():
        m(images, step=3)
    got = m.state_dict()
    assert all(torch.equal(got[k], v) for k, v in want.items()
               if "running" not in k and "num_batches" not in k and k not in
               ("restarts", "start_step", "init_choice"))
    assert (int(m.restarts), m.began(), int(m.init_choice), m.restarted_at) == (1, 3, 1, 3)
    assert detector_grad(m, 4) == 0 and detector_grad(m, 5) > 0   # held again until step 5
    with torch.no_grad():
        m(images, step=6)                                           # restart_max reached
    assert int(m.restarts) == 1
    torch.manual_seed(1)
    kept = tiny_autolink(alex_random, restart_step=3, keypoint_delay_steps=2, restart_below=-1e9)
    kept.train()
    with torch.no_grad():
        for step in range(4):
            kept(images, step=step)
    assert int(kept.restarts) == 0 and kept.began() == 0 and kept.restarted_at is None
    for bad in ({"restart_step": 2, "keypoint_delay_steps": 2}, {"restart_step": -1},
                {"restart_step": 3, "restart_max": -1}):
        with pytest.raises(ValueError, match="restart_step"):
            tiny_autolink(alex_random, **bad)


def test_keypoint_spread_by_hand():
    from kpray.models.autolink import keypoint_spread

    kp = torch.tensor([[[0.0, 0.0], [3.0, 4.0], [0.0, 4.0]],            # distances 5, 3, 4
                       [[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]]])           # a blob: 0
    assert keypoint_spread(kp).item() == pytest.approx((12 / 3 + 0) / 2)


def test_edge_map_reliance(alex_random):
    """0 when the decoder's edge-map input is cut; positive when the decoder reads it."""
    torch.manual_seed(0)
    model = tiny_autolink(alex_random, edge_init_logit=3.0)
    model.eval()
    images = torch.rand(2, 3, 32, 32)
    first = model.decoder.down0[0]
    assert model.edge_map_reliance(images)["edge_reliance"] != 0
    with torch.no_grad():
        first.weight[:, 3] = 0                                             # channel 3: edges
    r = model.edge_map_reliance(images)
    assert r["edge_reliance"] == pytest.approx(0, abs=1e-6) and r["loss"] > 0


# ---------------------------------------------------------------- skeleton model

def tiny_skeleton(**kw):
    return SkeletonModel(SkeletonConfig.from_preset(
        "cartpoles", num_points=6, pi_width=4, psi_width=4, background_width=4,
        background_latent=8, **kw))


def test_reliance_by_hand():
    """1 - mse / mse_background: the points remove 3/4 of the background's error; none; all."""
    from kpray.models.skeleton import reliance

    assert float(reliance(torch.tensor(0.25), torch.tensor(1.0))) == pytest.approx(0.75)
    assert float(reliance(torch.tensor(0.4), torch.tensor(0.4))) == 0.0
    assert float(reliance(torch.tensor(0.0), torch.tensor(0.4))) == 1.0


def test_skeleton_restart_keep_best_returns_to_a_better_start_once_the_restarts_run_out():
    """restart_keep_best: a start replaced at its decision is shelved with its reliance; when
    the last allowed start is also below restart_below at its own decision, the shelved start
    comes back exactly as it was (weights, buffers, init_choice and start_step, so no later
    decision falls due) if it scored higher, and the last start stays if it scored higher.
    restart_keep_best=False makes no decision on the last start."""
    torch.manual_seed(0)
    src, tgt = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)

    def first_restart(**kw):
        torch.manual_seed(1)
        m = tiny_skeleton(restart_step=4, restart_window=2, restart_below=0.5, restart_max=1, **kw)
        m.train()
        before = copy.deepcopy(m.state_dict())
        m.reliance_sums.copy_(torch.tensor([0.7, 1.0]))               # reliance 0.3 < 0.5
        with torch.no_grad():
            m((src, tgt), step=4)
        assert (int(m.restarts), int(m.init_choice), m.began()) == (1, 1, 4)
        return m, before

    def same(a, b):      # the forward after a decision moves BatchNorm's running statistics
        keys = [k for k in b if "running" not in k and "num_batches" not in k
                and k not in ("restarts", "reliance_sums")]
        return all(torch.equal(a[k], b[k]) for k in keys)

    m, start0 = first_restart()
    assert m.shelf is not None and m.shelf[0] == pytest.approx(0.3)
    m.reliance_sums.copy_(torch.tensor([0.9, 1.0]))                    # the last start: 0.1
    with torch.no_grad():
        m((src, tgt), step=8)
    assert same(m.state_dict(), start0)
    assert (int(m.restarts), int(m.init_choice), m.began(), m.restarted_at) == (1, 0, 0, 8)
    with torch.no_grad():
        for step in range(9, 14):                                      # no decision falls due
            m((src, tgt), step=step)
    assert (int(m.restarts), int(m.init_choice), m.restarted_at) == (1, 0, 8)

    m, _ = first_restart()
    start1 = copy.deepcopy(m.state_dict())
    m.reliance_sums.copy_(torch.tensor([0.6, 1.0]))                    # the last start: 0.4
    with torch.no_grad():
        m((src, tgt), step=8)
    assert same(m.state_dict(), start1) and not same(m.state_dict(), start0)
    assert (int(m.init_choice), m.began(), m.restarted_at) == (1, 4, 4)

    m, _ = first_restart(restart_keep_best=False)
    assert m.shelf is None
    m.reliance_sums.copy_(torch.tensor([0.9, 1.0]))
    with torch.no_grad():
        m((src, tgt), step=8)
    assert (int(m.init_choice), m.began(), m.restarted_at) == (1, 4, 4)
    assert float(m.reliance_sums.abs().sum()) > 0                      # not decided: not cleared


def test_skeleton_restart_step_replaces_a_start_whose_points_the_reconstruction_does_not_use():
    """restart_step N, window W: the reconstruction's and the background's errors of steps
    N - W .. N - 1 only are summed; at step N a reliance below restart_below loads the next fresh
    start (candidate_state), and restarts, start_step, init_choice and restarted_at say so; a
    reliance above it keeps the start; restart_max caps the restarts. The logged reliance is
    1 - mse(reconstruction) / mse(background), as point_reliance measures it."""
    torch.manual_seed(0)
    src, tgt = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    torch.manual_seed(1)
    m = tiny_skeleton(restart_step=4, restart_window=2, restart_below=1e9, restart_max=1)
    m.train()
    errors = []
    with torch.no_grad():
        for step in range(4):
            out = m.run(src, tgt, step=step)                      # same draws as forward's run
            errors.append([F.mse_loss(out["reconstruction"], tgt), F.mse_loss(out["background"], tgt)])
            m((src, tgt), step=step)
            if step < 2:
                assert float(m.reliance_sums.abs().sum()) == 0
    assert torch.allclose(m.reliance_sums, torch.tensor(errors[2]) + torch.tensor(errors[3]), rtol=1e-4)
    want = m.candidate_state(1)
    with torch.no_grad():
        m((src, tgt), step=4)
    got = m.state_dict()
    assert all(torch.equal(got[k], v) for k, v in want.items()
               if "running" not in k and "num_batches" not in k and k not in
               ("restarts", "start_step", "init_choice"))
    assert (int(m.restarts), m.began(), int(m.init_choice), m.restarted_at) == (1, 4, 1, 4)
    with torch.no_grad():
        for step in range(5, 9):
            m((src, tgt), step=step)                                # restart_max reached
    assert int(m.restarts) == 1
    torch.manual_seed(1)
    kept = tiny_skeleton(restart_step=4, restart_window=2, restart_below=-1e9)
    kept.train()
    with torch.no_grad():
        for step in range(5):
            kept((src, tgt), step=step)
    assert int(kept.restarts) == 0 and kept.began() == 0 and kept.restarted_at is None
    assert float(kept.reliance_sums.abs().sum()) == 0                # cleared at the decision
    kept.eval()
    with torch.no_grad():
        logged = float(kept((src, tgt), step=5)[1]["reliance"])
        out = kept.run(src, tgt, step=5)
        measured = kept.point_reliance(src, tgt)
    by_hand = 1 - F.mse_loss(out["reconstruction"], tgt) / F.mse_loss(out["background"], tgt)
    assert logged == pytest.approx(float(by_hand), rel=1e-4)
    assert logged == pytest.approx(measured["reliance"], abs=1e-6)    # reliance ~1e-4 untrained
    assert measured["reliance"] == pytest.approx(1 - measured["mse"] / measured["mse_background"],
                                                 abs=1e-6)
    for bad in ({"restart_step": 4, "restart_window": 5}, {"restart_step": -1},
                {"restart_step": 4, "restart_max": -1}, {"restart_step": 4, "restart_window": 0}):
        with pytest.raises(ValueError, match="restart_step"):
            tiny_skeleton(**bad)


def test_skeleton_shapes_and_gradients():
    torch.manual_seed(0)
    model = tiny_skeleton()
    src, tgt = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    out = model.run(src, tgt, step=0)
    assert out["source_maps"].shape == (2, 6, 64, 64) and out["reconstruction"].shape == (2, 3, 64, 64)
    links = out["links"]
    assert links.shape == (2, 6, 6) and torch.equal(links, links.transpose(1, 2))
    assert (links.diagonal(dim1=1, dim2=2) == 0).all() and ((links >= 0) & (links <= 1)).all()
    loss, terms = model.training_step((src, tgt), step=5000)
    assert set(terms) >= {"recon", "contiguity", "near", "sparse_joints", "sparse_links",
                          "uniform", "length", "gumbel_tau"}
    loss.backward()
    norm = model.clip_gradients()
    assert torch.isfinite(norm)
    for part in (model.pi, model.psi, model.background):
        grads = [p.grad for p in part.parameters() if p.grad is not None]
        assert grads and max(g.abs().max() for g in grads) <= 1.0              # clipped by value
    model.eval()
    pred = model.predict(src[0])
    assert isinstance(pred, SkeletonPrediction)
    assert pred.points.shape == (1, 6, 2) and pred.links.shape == (1, 6, 6)
    assert torch.equal(pred.joint_mask[0], (pred.links[0] >= 0.5).any(-1))
    grid = pixel_grid(64, 64)
    assert all((grid == pt).all(-1).any() for pt in pred.points[0])           # on pixel centres
    assert pred.joints(0).shape == (int(pred.joint_mask[0].sum()), 2)


def test_skeleton_point_readout_expected_is_the_maps_mean():
    from kpray.ops.coords import expected_location

    torch.manual_seed(0)
    model = tiny_skeleton().eval()
    x = torch.rand(3, 3, 64, 64)
    argmax = model.predict(x).points
    model.config = dataclasses.replace(model.config, point_readout="expected")
    mean = model.predict(x).points
    with torch.no_grad():
        want = expected_location(gumbel_location_maps(model.pi(x), model.config.gumbel_tau_end,
                                                      noise=False))
    assert torch.allclose(mean, want) and not torch.allclose(mean, argmax)
    assert torch.equal(model.predict_points(x), mean)                  # the same readout, no psi
    model.config = dataclasses.replace(model.config, point_readout="argmax")
    assert torch.equal(model.predict_points(x), argmax)
    with pytest.raises(ValueError, match="point_readout"):
        tiny_skeleton(point_readout="mode")


def test_skeleton_point_readout_tracked_follows_peaks_over_a_video_and_is_the_argmax_alone():
    from kpray.ops.coords import argmax_location, tracked_location

    torch.manual_seed(0)
    model = tiny_skeleton(point_readout="tracked", readout_peaks=4, readout_motion=0.05).eval()
    x = torch.rand(6, 3, 64, 64)
    logits, maps = model.locate(x)
    want = tracked_location(maps, 4, 0.05)
    assert not torch.equal(want, argmax_location(maps))        # this video's maps: it matters
    assert torch.equal(model.predict(x, video=True).points, want)
    assert torch.equal(model.predict_points(x, video=True), want)
    assert torch.equal(model.predict(x).points, argmax_location(logits))   # lone images
    for bad in ({"readout_peaks": 0}, {"readout_motion": 0.0}, {"readout_peaks": 2.5}):
        with pytest.raises(ValueError, match="readout_peaks"):
            tiny_skeleton(**bad)


def test_skeleton_patch_transport_trains_pi_and_refuses_even_sizes():
    torch.manual_seed(0)
    model = tiny_skeleton(transport_patch=5)
    src, tgt = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    out = model.run(src, tgt)
    want = neural_point_transport(src, out["source_maps"], out["target_maps"], out["background"],
                                  patch=5, patch_sigma=model.config.transport_patch_sigma)
    assert torch.allclose(out["reconstruction"], want)                # the config reaches the NPT
    ((out["reconstruction"] - tgt) ** 2).mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.pi.parameters())
    with pytest.raises(ValueError, match="transport_patch"):
        tiny_skeleton(transport_patch=4)


def test_skeleton_ramp_and_temperature():
    model = tiny_skeleton(gumbel_tau_start=1.0, gumbel_tau_end=0.5)
    assert model.gumbel_temperature(0) == 1.0
    assert model.gumbel_temperature(10_000) == pytest.approx(0.5)
    assert tiny_skeleton().gumbel_temperature(5000) == pytest.approx(0.1)   # default: constant
    assert SkeletonConfig.from_preset("swimmers").loss_weights().sparse_links == 7000
    with pytest.raises(ValueError):
        SkeletonConfig.from_preset("nope")


def test_sparse_joints_scale_keeps_each_preset_rows_joint_weight_ratio():
    """sparse_joints_scale 30: 30 x the row's joint weight whatever ``weights`` says (Cartpoles
    0.1 -> 3, Spiders 0.005 -> 0.15), the other weights kept; 0 leaves the weights as given; the
    model's ramped term weights and a saved config's round trip read it; negative is refused."""
    from kpray.losses import skeleton as L

    given = L.LossWeights(**{**L.PRESETS["spiders"].as_dict(), "sparse_joints": 3.0, "uniform": 1e4})
    spiders = SkeletonConfig.from_preset("spiders", weights=given, sparse_joints_scale=30.0)
    assert spiders.loss_weights().sparse_joints == pytest.approx(0.15)
    assert spiders.loss_weights().uniform == 1e4
    cart = SkeletonConfig.from_preset("cartpoles", sparse_joints_scale=30.0)
    assert cart.loss_weights().sparse_joints == pytest.approx(3.0)
    assert SkeletonConfig.from_preset("spiders", weights=given).loss_weights().sparse_joints == 3.0
    model = tiny_skeleton(sparse_joints_scale=30.0)
    assert model.term_weights(10_000)["sparse_joints"] == pytest.approx(3.0)
    saved = spiders.to_dict()
    saved["weights"] = L.LossWeights(**saved["weights"])
    assert SkeletonConfig(**saved).loss_weights().sparse_joints == pytest.approx(0.15)
    with pytest.raises(ValueError, match="sparse_joints_scale"):
        tiny_skeleton(sparse_joints_scale=-1.0)


def test_skeleton_without_gumbel_noise_is_deterministic():
    torch.manual_seed(0)
    src, tgt = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    plain = tiny_skeleton(gumbel_noise=False)
    a = plain.run(src, tgt, step=0)["source_maps"]
    torch.manual_seed(123)                                  # another draw of the noise, if any
    assert torch.equal(a, plain.run(src, tgt, step=0)["source_maps"])
    noisy = tiny_skeleton(gumbel_noise=True)
    noisy.load_state_dict(plain.state_dict())
    assert not torch.allclose(noisy.run(src, tgt, step=0)["source_maps"], a)


@pytest.mark.parametrize("moves", [True, False])
def test_near_and_length_move_the_points_only_when_asked(moves):
    torch.manual_seed(0)
    model = tiny_skeleton(structure_moves_points=moves, psi_target="loss")
    src, tgt = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    out = model.run(src, tgt, step=0)
    for k in ("source_points", "target_points", "links"):
        out[k].retain_grad()
    terms = model.loss_terms(out, tgt)
    (terms["near"] + terms["length"]).backward()
    assert out["links"].grad.abs().sum() > 0               # links are always trained by them
    for k in ("source_points", "target_points"):
        g = out[k].grad
        assert (g is not None and g.abs().sum() > 0) == moves, k


@pytest.mark.parametrize("psi_head", ["fc", "solver"])
def test_near_moves_the_points_only_from_structure_moves_points_from(psi_head):
    """structure_moves_points_from N: before N steps of the start, near and length leave the
    point coordinates alone (a solver psi is not even run in training), from N on they move
    them; a fc psi's links are trained by them throughout."""
    src, tgt = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    torch.manual_seed(0)
    model = tiny_skeleton(structure_moves_points=True, structure_moves_points_from=5,
                          psi_target="loss", psi_head=psi_head, gumbel_noise=False)
    model.train()
    for step, moves in ((4, False), (5, True)):
        out = model.run(src, tgt, step=step)
        assert out["moves_points"] == moves
        if psi_head == "solver" and not moves:
            assert out["links"] is None and "near" not in model.loss_terms(out, tgt)
            continue
        for k in ("source_points", "target_points"):
            out[k].retain_grad()
        terms = model.loss_terms(out, tgt)
        terms["near"].backward()
        for k in ("source_points", "target_points"):
            g = out[k].grad
            assert (g is not None and g.abs().sum() > 0) == moves, (step, k)
    with pytest.raises(ValueError, match="structure_moves_points_from"):
        tiny_skeleton(structure_moves_points_from=-1)


@pytest.mark.parametrize("term", ["near", "length"])
def test_points_gain_scales_only_its_terms_gradient_on_the_points(term):
    """near_points_gain / length_points_gain g: the term has the same value and the same
    gradient on the links, and g times the gradient on the point coordinates; the other
    term is untouched."""
    src, tgt = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    other = "length" if term == "near" else "near"
    grads, values = {}, {}
    for gain in (1.0, 0.1):
        torch.manual_seed(0)
        model = tiny_skeleton(structure_moves_points=True, psi_target="loss", gumbel_noise=False,
                              l_min=0.5, l_max=0.6,        # most links out of range: length acts
                              **{f"{term}_points_gain": gain})
        for t in (term, other):
            out = model.run(src, tgt, step=0)
            for k in ("source_points", "target_points", "links"):
                out[k].retain_grad()
            loss = model.loss_terms(out, tgt)[t]
            values[gain, t] = float(loss.detach())
            loss.backward()
            grads[gain, t] = {k: out[k].grad.clone()
                              for k in ("source_points", "target_points", "links")}
    for t, g in ((term, 0.1), (other, 1.0)):
        assert values[0.1, t] == pytest.approx(values[1.0, t], rel=1e-6)
        assert torch.allclose(grads[0.1, t]["links"], grads[1.0, t]["links"], rtol=1e-5, atol=1e-8)
        for k in ("source_points", "target_points"):
            assert grads[1.0, t][k].abs().sum() > 0
            assert torch.allclose(grads[0.1, t][k], g * grads[1.0, t][k], rtol=1e-4, atol=1e-9), (t, k)
    with pytest.raises(ValueError, match=f"{term}_points_gain"):
        tiny_skeleton(**{f"{term}_points_gain": -1.0})


def test_rigidity_term_joins_the_loss_only_when_weighted():
    src, tgt = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    torch.manual_seed(0)
    off = tiny_skeleton(gumbel_noise=False)
    _, terms = off((src, tgt), step=0)
    assert "rigidity" not in terms
    torch.manual_seed(0)
    on = tiny_skeleton(gumbel_noise=False, rigidity_weight=2.0)
    loss_on, terms = on((src, tgt), step=0)
    loss_off, _ = off((src, tgt), step=0)
    assert terms["rigidity"] > 0
    assert float(loss_on) == pytest.approx(float(loss_off) + 2.0 * float(terms["rigidity"]), rel=1e-5)
    torch.manual_seed(0)
    late = tiny_skeleton(gumbel_noise=False, rigidity_weight=2.0, rigidity_start_step=5)
    assert float(late((src, tgt), step=4)[0]) == pytest.approx(float(off((src, tgt), step=4)[0]),
                                                               rel=1e-5)
    assert float(late((src, tgt), step=5)[0]) == pytest.approx(float(on((src, tgt), step=5)[0]),
                                                               rel=1e-5)
    # rigidity_trains_psi=False: the term's value is the same, its gradient reaches no link
    for trains in (True, False):
        torch.manual_seed(0)
        m = tiny_skeleton(gumbel_noise=False, rigidity_weight=2.0, rigidity_trains_psi=trains)
        out = m.run(src, tgt, step=0)
        out["links"].retain_grad()
        m.loss_terms(out, tgt)["rigidity"].backward()
        assert (out["links"].grad is not None and out["links"].grad.abs().sum() > 0) == trains
    with pytest.raises(ValueError, match="rigidity_weight"):
        tiny_skeleton(rigidity_weight=-1.0)


def test_seek_term_pulls_pi_towards_the_backgrounds_errors_only_within_its_window():
    from kpray.losses import skeleton as L

    src, tgt = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    torch.manual_seed(0)
    m = tiny_skeleton(gumbel_noise=False, seek_weight=2.0, seek_from=3, seek_until=6)
    assert [m.term_weights(s)["seek"] for s in (2, 3, 5, 6)] == [0.0, 2.0, 2.0, 0.0]
    assert "seek" not in tiny_skeleton().term_weights(4)
    out = m.run(src, tgt, step=4)
    terms = m.loss_terms(out, tgt)
    err = (out["background"] - tgt).pow(2).sum(1)       # B's squared error per pixel [B, H, W]
    want = L.seek_loss(out["target_maps"], err)
    assert float(terms["seek"]) == pytest.approx(float(want)) and 0 < float(want) < 1
    m.zero_grad()
    terms["seek"].backward()                              # pi only: B's error is a constant
    assert sum(float(p.grad.abs().sum()) for p in m.pi.parameters() if p.grad is not None) > 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in m.background.parameters())
    with pytest.raises(ValueError, match="seek_weight"):
        tiny_skeleton(seek_weight=-1.0)
    torch.manual_seed(0)
    m = tiny_skeleton(gumbel_noise=False, seek_weight=1.0, seek_cover=True)
    out = m.run(src, tgt, step=100)
    err = (out["background"] - tgt).pow(2).sum(1)
    want = L.seek_loss(out["target_maps"], err, cover=True)
    assert float(m.loss_terms(out, tgt)["seek"]) == pytest.approx(float(want))
    assert float(want) != pytest.approx(float(L.seek_loss(out["target_maps"], err)))


def test_track_term_joins_the_loss_only_with_the_next_frames_and_trains_pi_alone():
    src, tgt, nxt = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    torch.manual_seed(0)
    m = tiny_skeleton(gumbel_noise=False, track_weight=3.0, track_margin=0.1,
                      psi_detach_maps=True)
    _, terms = m((src, tgt), step=0)
    assert "track" not in terms                         # no next frames: no term
    loss, terms = m((src, tgt, nxt), step=0)
    from kpray.losses import skeleton as L

    out = m.run(src, tgt, step=0, track=nxt)
    want = L.track_loss(out["source_maps"], out["track_maps"], 0.1 * 64 / 2)
    assert float(terms["track"]) == pytest.approx(float(want), rel=1e-5) and float(want) > 0
    # pi sees three frames in one pass, so BatchNorm's batch differs: compare on the same run
    rest = sum(w * terms[k] for k, w in m.term_weights(0).items() if k in terms and k != "track")
    assert float(loss) == pytest.approx(float(rest) + 3.0 * float(terms["track"]), rel=1e-5)
    assert "track" not in tiny_skeleton().term_weights(0)
    m.zero_grad()
    m.loss_terms(m.run(src, tgt, step=0, track=nxt), tgt)["track"].backward()
    assert sum(float(p.grad.abs().sum()) for p in m.pi.parameters() if p.grad is not None) > 0
    assert all(p.grad is None or p.grad.abs().sum() == 0
               for p in [*m.psi.parameters(), *m.background.parameters()])
    # the same frame as its own next frame: only a map's own spread beyond the margin is charged
    assert float(m((src, tgt, src), step=0)[1]["track"]) < float(want)
    torch.manual_seed(0)
    late = tiny_skeleton(gumbel_noise=False, track_weight=3.0, track_start_step=5)
    assert late.term_weights(4)["track"] == 0 and late.term_weights(5)["track"] == 3.0
    # unweighted, the next frames are not even located: the step is that of the pair alone
    torch.manual_seed(0)
    plain = tiny_skeleton(gumbel_noise=False)
    plain.load_state_dict(late.state_dict())
    assert "track" not in late((src, tgt, nxt), step=4)[1]
    assert float(late((src, tgt, nxt), step=4)[0]) == float(plain((src, tgt), step=4)[0])
    assert "track" in late((src, tgt, nxt), step=5)[1]
    restarted = tiny_skeleton(track_weight=3.0, track_start_step=5, restart_step=10,
                              restart_window=5)
    restarted.start_step.fill_(250)                   # counted from the current start
    assert restarted.term_weights(254)["track"] == 0 and restarted.term_weights(255)["track"] == 3
    with pytest.raises(ValueError, match="track_margin"):
        tiny_skeleton(track_margin=-0.1)


def test_skeleton_optimisation_lowers_loss():
    torch.manual_seed(0)
    model = tiny_skeleton(lr=5e-3)
    opt = model.configure_optimizer()
    src, tgt = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    losses = []
    for step in range(10):
        torch.manual_seed(1)                                  # same Gumbel noise every step
        loss, _ = model((src, tgt), step=10_000)              # full weights
        opt.zero_grad()
        loss.backward()
        model.clip_gradients()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


def test_psi_point_channels_peak_and_detach():
    torch.manual_seed(0)
    maps = torch.softmax(torch.randn(2, 6, 64 * 64), -1).view(2, 6, 64, 64).requires_grad_(True)
    peak = tiny_skeleton().psi.point_channels(maps)
    assert torch.allclose(peak.amax(dim=(-1, -2)), torch.ones(2, 6))      # the point's pixel = 1
    raw = tiny_skeleton(psi_maps="raw").psi.point_channels(maps)
    assert torch.equal(raw, maps) and raw.max() < 0.05                    # probabilities
    img = torch.rand(2, 3, 64, 64)
    for detach in (False, True):
        model = tiny_skeleton(psi_detach_maps=detach)
        model.psi(img, maps).sum().backward()
        assert (maps.grad is not None and maps.grad.abs().sum() > 0) == (not detach)
        maps.grad = None
    with pytest.raises(ValueError, match="psi_maps"):
        tiny_skeleton(psi_maps="gauss")


def test_link_sigmoid_gradient_floor():
    from kpray.models.skeleton import link_sigmoid

    z = torch.tensor([12.0, 0.0, -12.0], requires_grad=True)
    link_sigmoid(z, 0.1).sum().backward()
    assert torch.allclose(z.grad, torch.tensor([0.1, 0.25, 0.1]))
    z.grad = None
    link_sigmoid(z, 0.0).sum().backward()
    assert z.grad[0] < 1e-5 and torch.equal(link_sigmoid(z, 0.1), torch.sigmoid(z))


def test_paper_literal_config():
    from kpray.models.skeleton import PAPER_LITERAL

    lit = SkeletonConfig.paper_literal("swimmers")
    assert lit.preset == "swimmers" and lit.gumbel_noise and lit.structure_moves_points
    assert lit.uniform_evidence == "raw" and lit.psi_maps == "raw" and lit.recon_reduction == "sum"
    ours = SkeletonConfig()
    assert all(getattr(lit, k) == v for k, v in PAPER_LITERAL.items())
    assert any(getattr(ours, k) != v for k, v in PAPER_LITERAL.items())   # the defaults depart
    assert SkeletonConfig.paper_literal(num_points=8).num_points == 8


def test_psi_fit_target_trains_psi_by_bce_only():
    """psi_target="fit": psi_fit (BCE to each sample's own structure-loss minimiser) is the only
    term reaching psi; the structure terms see its links detached."""
    torch.manual_seed(0)
    model = tiny_skeleton(psi_target="fit", psi_fit_steps=20)
    src, tgt = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    out = model.run(src, tgt, step=0)
    out["links"].retain_grad()
    terms = model.loss_terms(out, tgt)
    assert "psi_fit" in terms and 0 < float(terms["psi_fit"].detach()) < 10
    structure = terms["near"] + terms["sparse_joints"] + terms["uniform"] + terms["length"]
    assert not structure.requires_grad                      # links and points both detached
    terms["psi_fit"].backward()
    assert out["links"].grad.abs().sum() > 0
    with pytest.raises(ValueError, match="psi_target"):
        m = tiny_skeleton(psi_target="both")
        m.loss_terms(m.run(src, tgt), tgt)


def test_psi_fit_init_choices():
    torch.manual_seed(0)
    src, tgt = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    for init in ("zero", "psi"):
        m = tiny_skeleton(psi_target="fit", psi_fit_init=init, psi_fit_steps=3)
        assert torch.isfinite(m.loss_terms(m.run(src, tgt), tgt)["psi_fit"])
    m = tiny_skeleton(psi_target="fit", psi_fit_init="last")
    with pytest.raises(ValueError, match="psi_fit_init"):
        m.loss_terms(m.run(src, tgt), tgt)
