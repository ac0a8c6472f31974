"""Each loss on a hand case whose value is known."""
import dataclasses
import math
import os

import pytest
import torch

from kpray.losses import skeleton as L
from kpray.losses.autolink import BACKBONE_FILES, PerceptualLoss
from kpray.ops.coords import to_normalised


def one_hot_maps(pixels, size=16):
    """pixels: [(x, y), ...] -> location maps [1, P, size, size], one-hot."""
    maps = torch.zeros(1, len(pixels), size, size)
    for p, (x, y) in enumerate(pixels):
        maps[0, p, y, x] = 1.0
    return maps


def links_matrix(p, pairs):
    s = torch.zeros(1, p, p)
    for (i, j), v in pairs.items():
        s[0, i, j] = s[0, j, i] = v
    return s


def test_pyramid_mse_constant_offset():
    target = torch.rand(2, 3, 64, 64)
    # per-pixel mean: 0.01 at each of the 5 levels
    assert torch.isclose(L.pyramid_mse(target + 0.1, target, 5, "mean"), torch.tensor(5 * 0.01))
    # eq. 1's squared norm: 0.01 per value, 3 channels x (64^2 + 32^2 + 16^2 + 8^2 + 4^2) values
    expected = 0.01 * 3 * (4096 + 1024 + 256 + 64 + 16)
    assert torch.isclose(L.pyramid_mse(target + 0.1, target, 5, "sum"), torch.tensor(expected))
    assert torch.isclose(L.pyramid_mse(target + 0.1, target, 5), torch.tensor(expected))  # default
    assert L.pyramid_mse(target, target) == 0
    with pytest.raises(ValueError, match="reduction"):
        L.pyramid_mse(target, target, 5, "max")


def test_pyramid_mse_weighted_by_pixel():
    target = torch.zeros(1, 3, 8, 8)
    pred = target.clone()
    pred[..., :, :4] = 0.1                               # errors only in the left half
    left_off = torch.ones(1, 1, 8, 8)
    left_off[..., :, :4] = 0
    assert L.pyramid_mse(pred, target, 1, "mean", left_off) == 0
    assert torch.isclose(L.pyramid_mse(pred, target, 3, "sum", torch.ones(1, 1, 8, 8)),
                         L.pyramid_mse(pred, target, 3, "sum"))
    # weight 2 on the left half: the finest level's sum doubles; pooled, the weight follows
    w = 1 + (1 - left_off)
    assert torch.isclose(L.pyramid_mse(pred, target, 1, "sum", w), 2 * L.pyramid_mse(pred, target, 1, "sum"))
    # level 2 (4x4): the left two columns hold error 0.01 under weight 2 -> 3 ch x 8 px x 0.02
    assert torch.isclose(L.pyramid_mse(pred, target, 2, "sum", w) - L.pyramid_mse(pred, target, 1, "sum", w),
                         torch.tensor(3 * 8 * 0.02))


def test_edge_weights_on_a_thin_bar_and_a_box():
    # a 1-px vertical bar and a 4x4 box on black: every bar pixel is an edge, the box's inside is not
    img = torch.zeros(1, 3, 12, 12)
    img[..., 1:11, 2] = 1.0
    img[..., 4:8, 6:10] = 1.0
    w = L.edge_weights(img, 1.0)[0, 0]
    assert torch.isclose(w.mean(), torch.tensor(1.0))                       # mean 1 per image
    assert w[5, 2] > w[5, 7]              # a bar pixel outweighs the box's inner pixel
    assert torch.isclose(w[5, 7], w[0, 11])                                 # flat: the floor value
    assert torch.isclose(w[0, 11], torch.tensor(1 / 2.0))                   # (1 + 0) / (1 + 1)
    assert torch.equal(L.edge_weights(img, 0.0), torch.ones(1, 1, 12, 12))   # strength 0: eq. 1
    # the bar's share of the weight rises from its share of the pixels
    bar = torch.zeros(12, 12, dtype=torch.bool)
    bar[1:11, 2] = True
    assert w[bar].sum() / w.sum() > 2 * bar.float().mean()


def test_neighbours_and_contiguity():
    # dilation by max-pool 7 reaches 3 pixels: points overlap iff their Chebyshev distance <= 6
    src = one_hot_maps([(5, 5), (5, 11), (14, 14)])
    n = L.neighbour_matrix(src, pool=7)[0]
    assert n[0, 1] == 1 and n[1, 0] == 1 and n[0, 2] == 0 and n[1, 2] == 0
    assert L.contiguity_loss(src, src) == -2.0                 # points 0 and 1 keep each other
    tgt = one_hot_maps([(5, 5), (0, 15), (14, 14)])            # point 1 leaves point 0
    assert L.contiguity_loss(src, tgt) == 0.0


def test_near_loss_hand_case():
    pts = torch.tensor([[[-0.5, 0.0], [0.5, 0.0], [0.0, 0.3]]])
    s = links_matrix(3, {(0, 1): 1.0})
    # points 0, 1 lie on link (0,1): 1 each; point 2 is 0.3 away: exp(-0.3 / 0.1); two frames
    expected = -2 * (2 + math.exp(-3))
    assert torch.isclose(L.near_loss(s, pts, pts, scale=0.1), torch.tensor(expected), atol=1e-5)
    # without self-explanation the endpoints of the only link count for nothing
    expected = -2 * math.exp(-3)
    assert torch.isclose(L.near_loss(s, pts, pts, scale=0.1, exclude_endpoints=True),
                         torch.tensor(expected), atol=1e-5)
    # adding link (0, 2): point 1's nearest place on it is its end, point 2 (d = |(0.5, -0.3)|);
    # point 2 is still explained by (0, 1) only, and point 0 is an endpoint of both
    s3 = links_matrix(3, {(0, 1): 1.0, (0, 2): 1.0})
    expected = -2 * (math.exp(-3) + math.exp(-math.hypot(0.5, 0.3) / 0.1))
    assert torch.isclose(L.near_loss(s3, pts, pts, scale=0.1, exclude_endpoints=True),
                         torch.tensor(expected), atol=1e-5)
    # the relaxation passes gradient to links that are not the max
    s2 = links_matrix(3, {(0, 1): 0.9, (0, 2): 0.5}).requires_grad_()
    L.near_loss(s2, pts, pts, scale=0.1).backward()
    assert s2.grad[0, 0, 2] != 0


@pytest.mark.parametrize("p", [0.5, 1.0])
def test_sparse_losses_hand_case(p):
    s = links_matrix(4, {(0, 1): 1.0})
    links, joints = L.sparse_losses(s, p=p, links_normalise="sum", joints_normalise="sum")
    assert torch.isclose(links, torch.tensor(1.0), atol=1e-4)   # one link
    assert torch.isclose(joints, torch.tensor(2.0 ** (1 / p)), atol=1e-4)  # two joints: (1+1)^(1/p)
    # means: one link of the 6 pairs, two joints of the 4 points
    links, joints = L.sparse_losses(s, p=p, links_normalise="mean", joints_normalise="mean")
    assert torch.isclose(links, torch.tensor((1 / 6) ** (1 / p)), atol=1e-4)
    assert torch.isclose(joints, torch.tensor((2 / 4) ** (1 / p)), atol=1e-4)
    links, joints = L.sparse_losses(s, p=p)                     # defaults: mean links, summed joints
    assert torch.isclose(links, torch.tensor((1 / 6) ** (1 / p)), atol=1e-4)
    assert torch.isclose(joints, torch.tensor(2.0 ** (1 / p)), atol=1e-4)
    with pytest.raises(ValueError, match="joints_normalise"):
        L.sparse_losses(s, p=p, joints_normalise="max")


def test_uniform_loss_hand_case():
    size = 32
    # foreground points every 2 pixels along row 8, dilated as the loss does (max-pool 5)
    ev = L.foreground_evidence(one_hot_maps([(x, 8) for x in range(4, 28, 2)], size), pool=5)
    pix = torch.tensor([[[4.0, 8.0], [27.0, 8.0], [27.0, 28.0]]])
    pts = to_normalised(pix, size)
    delta = L.link_coverage(pts, ev, tau=1.0)[0]               # pairs (0,1), (0,2), (1,2)
    assert delta[0] > 0.8 and delta[1] < 0.3 and delta[2] < 0.3
    s = links_matrix(3, {(0, 1): 0.9, (0, 2): 0.2, (1, 2): 0.6})
    # per frame: mean of S over the pairs with gaps = (0.2 + 0.6) / 2; two frames
    assert torch.isclose(L.uniform_loss(s, [delta[None], delta[None]]), torch.tensor(0.8))
    full = torch.ones(1, 3)
    assert L.uniform_loss(s, [full, full]) == 0


def test_foreground_evidence_dilates_by_two_pixels():
    ev = L.foreground_evidence(one_hot_maps([(8, 8)]), pool=5)[0]
    assert ev[6:11, 6:11].min() == 1 and ev.sum() == 25


def test_length_loss_hand_case():
    pts_s = torch.tensor([[[0.0, 0.0], [0.05, 0.0]]])           # too short by 0.05
    pts_t = torch.tensor([[[-0.8, 0.0], [0.8, 0.0]]])           # too long by 0.6
    s = links_matrix(2, {(0, 1): 0.5})
    value = L.length_loss(s, pts_s, pts_t, l_min=0.1, l_max=1.0)
    assert torch.isclose(value, torch.tensor(0.5 * (0.05 + 0.6)), atol=1e-5)


def test_rigidity_loss_hand_case():
    # three points; link 0-1 keeps length 0.3 (rigid), link 1-2 grows from 0.4 to 0.5
    pts_s = torch.tensor([[[0.0, 0.0], [0.3, 0.0], [0.3, 0.4]]])
    pts_t = torch.tensor([[[0.0, 0.0], [0.0, 0.3], [0.3, 0.7]]])
    s = links_matrix(3, {(0, 1): 1.0, (1, 2): 0.5, (0, 2): 0.0})
    value = L.rigidity_loss(s, pts_s, pts_t)
    assert torch.isclose(value, torch.tensor(0.5 * 0.1), atol=1e-5)
    # the gradient on a link's probability is its length change: 0 for the rigid link
    s.requires_grad_(True)
    L.rigidity_loss(s, pts_s, pts_t).backward()
    assert s.grad[0, 0, 1] == pytest.approx(0.0, abs=1e-5)
    assert s.grad[0, 1, 2] == pytest.approx(0.1, abs=1e-5)


def test_track_loss_hand_case():
    def delta(*places):               # a map [H, W] = 8 x 12 with equal mass at (x, y) places
        m = torch.zeros(8, 12)
        for x, y in places:
            m[y, x] = 1.0 / len(places)
        return m

    # radius 4.8 px: point 0 moves 3 px (kept), point 1 jumps 8 px (lost), point 2 is split
    # between its place and 8 px away in the next frame (half kept)
    maps = torch.stack([delta((1, 1)), delta((2, 2)), delta((2, 4))])[None]
    nxt = torch.stack([delta((4, 1)), delta((10, 2)), delta((2, 4), (10, 4))])[None]
    assert torch.isclose(L.track_loss(maps, nxt, 4.8), torch.tensor(1 - (1 + 0 + 0.5) / 3))
    assert torch.isclose(L.track_loss(maps, maps, 4.8), torch.tensor(0.0))
    assert torch.isclose(L.track_loss(maps, nxt, 8.0), torch.tensor(0.0))      # all within 8 px
    # a map spread over the jump's two ends pays too, though its mean lies between them
    spread = torch.stack([delta((1, 1)), delta((2, 2), (10, 2)), delta((2, 4))])[None]
    assert float(L.track_loss(spread, nxt, 4.8)) > float(L.track_loss(nxt, nxt, 4.8)) + 0.1
    # the gradient moves mass of the lost point towards its place in the other frame
    logits = torch.zeros(1, 3, 8, 12, requires_grad=True)
    L.track_loss(logits.flatten(2).softmax(-1).view(1, 3, 8, 12), nxt, 4.8).backward()
    g = logits.grad[0, 1]
    assert g[2, 10] < 0 and g[2, 2] > g[2, 10]


def test_seek_loss_hand_case():
    # 2 points on a 4 x 4 image; the background fails by 2 at (1, 1), by 1 at (2, 3), else 0
    err = torch.zeros(1, 4, 4)
    err[0, 1, 1], err[0, 2, 3] = 2.0, 1.0
    maps = torch.zeros(1, 2, 4, 4)
    maps[0, 0, 1, 1] = 1.0                               # on the worst pixel: nothing owed
    maps[0, 1, 2, 3], maps[0, 1, 0, 0] = 0.5, 0.5        # half on the half-error pixel
    assert torch.isclose(L.seek_loss(maps, err), torch.tensor(1 - (1.0 + 0.25) / 2))
    assert torch.isclose(L.seek_loss(maps, 3 * err), L.seek_loss(maps, err))   # scale-free
    # the gradient moves point 1's mass from the exact pixel towards the failing ones
    logits = torch.zeros(1, 2, 4, 4, requires_grad=True)
    L.seek_loss(logits.flatten(2).softmax(-1).view(1, 2, 4, 4), err).backward()
    g = logits.grad[0, 1]
    assert g[1, 1] < g[2, 3] < 0 < g[0, 0]


def test_seek_loss_cover_counts_a_pixel_once_and_sends_a_point_where_the_others_are_not():
    # the 4 x 4 case above: the background fails by 2 at (1, 1), by 1 at (2, 3), else 0
    err = torch.zeros(1, 4, 4)
    err[0, 1, 1], err[0, 2, 3] = 2.0, 1.0
    both = torch.zeros(1, 2, 4, 4)
    both[0, :, 1, 1] = 1.0                               # both points on the worst pixel
    assert float(L.seek_loss(both, err)) == pytest.approx(0.0)
    assert float(L.seek_loss(both, err, cover=True)) == pytest.approx(1 - 1.0 / 2)
    apart = both.clone()
    apart[0, 1, 1, 1], apart[0, 1, 2, 3] = 0.0, 1.0
    assert float(L.seek_loss(apart, err, cover=True)) == pytest.approx(1 - (1.0 + 0.5) / 2)
    one = both[:, :1] * 0.5 + apart[:, 1:] * 0.5          # P = 1: the same as the plain term
    assert torch.isclose(L.seek_loss(one, err, cover=True), L.seek_loss(one, err))
    # point 0 holds the worst pixel: point 1 is pulled to the next failing one, not onto it
    logits = torch.zeros(1, 1, 4, 4, requires_grad=True)
    for cover, first, second in ((False, (1, 1), (2, 3)), (True, (2, 3), (1, 1))):
        logits.grad = None
        maps = torch.cat([both[:, :1], logits.flatten(2).softmax(-1).view(1, 1, 4, 4)], 1)
        L.seek_loss(maps, err, cover=cover).backward()
        g = logits.grad[0, 0]
        assert g[first] < g[second] and g[first] < 0, cover


def test_video_rigidity_hand_case():
    # three points over two frames: link 0-1 keeps length 0.3, link 1-2 has 0.4 then 0.6
    # (mean 0.5, mean absolute deviation 0.1), link 0-2 is absent
    pts = torch.tensor([[[0.0, 0.0], [0.3, 0.0], [0.3, 0.4]],
                        [[0.0, 0.0], [0.0, 0.3], [0.0, 0.9]]])
    s = links_matrix(3, {(0, 1): 1.0, (1, 2): 0.5, (0, 2): 0.0})[0]
    spread = L.length_spread(pts)
    assert torch.allclose(spread, spread.T) and torch.allclose(spread.diagonal(), torch.zeros(3))
    assert torch.isclose(L.video_rigidity(s, spread), torch.tensor(0.5 * 0.1), atol=1e-5)
    assert float(L.length_spread(pts[:1]).abs().max()) == pytest.approx(0.0, abs=1e-6)  # one frame
    s_all = links_matrix(3, {(0, 1): 1.0, (1, 2): 1.0, (0, 2): 1.0})[0]
    # link 0-2: length 0.5 then 0.9 -> deviation 0.2
    assert torch.isclose(L.video_rigidity(s_all, spread), torch.tensor(0.1 + 0.2), atol=1e-5)


def test_presets_and_ramp():
    assert set(L.PRESETS) == {"spiders", "spiders0shot", "mwhc", "cartpoles", "swimmers", "human36m"}
    assert L.PRESETS["swimmers"].sparse_links == 7000 and L.PRESETS["human36m"].sparse_joints == 0.0002
    assert L.ramp_factor(0) == 0 and L.ramp_factor(5000) == 0.5 and L.ramp_factor(20000) == 1
    w = L.effective_weights(L.PRESETS["cartpoles"], step=2500)
    assert w["uniform"] == 2.5 and w["sparse_links"] == 125 and w["near"] == 10 and w["length"] == 100
    terms = {k: torch.tensor(1.0) for k in w}
    assert torch.isclose(L.total_loss(terms, L.PRESETS["cartpoles"], step=10_000),
                         torch.tensor(sum(L.PRESETS["cartpoles"].as_dict().values())))
    assert L.preset_for_dataset("cartpole:3") == "cartpoles" and L.preset_for_dataset("mwhc") == "mwhc"
    assert L.preset_for_dataset("walker-parts") == "mwhc" and L.preset_for_dataset("nope") is None
    assert L.preset_for_dataset("cartpoles-nobg") == "cartpoles"
    assert L.preset_for_dataset("hopper-parts-nobg") == "mwhc"


# ---------------------------------------------------------------- AutoLink perceptual loss

@pytest.fixture(scope="module")
def random_lpips():
    return PerceptualLoss("vgg", pretrained=False)


def test_perceptual_loss_random_backbone(random_lpips):
    x = torch.rand(2, 3, 32, 32)
    assert random_lpips(x, x).abs() < 1e-6
    y = x.clone().requires_grad_()
    d = random_lpips(y, torch.rand(2, 3, 32, 32))
    d.backward()
    assert d > 0 and y.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in random_lpips.parameters())


@pytest.mark.parametrize("net", ["vgg", "alex"])
def test_pretrained_without_weights_names_the_file(net, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError) as err:
        PerceptualLoss(net, pretrained=True)
    msg = str(err.value)
    assert BACKBONE_FILES[net] in msg and "TORCH_HOME" in msg
    assert os.path.join(str(tmp_path), "hub", "checkpoints") in msg


def test_random_backbones_do_not_depend_on_the_global_seed():
    """Every DDP rank must build the same loss network: random backbones come from a fixed
    seed, not from the rank's RNG (issue 12, finding 5)."""
    from kpray.losses.autolink import LPIPSLoss, VGGPerceptualLoss

    nets = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        state = torch.get_rng_state()
        nets.append((VGGPerceptualLoss(pretrained=False, resize=0), LPIPSLoss("alex", False)))
        assert torch.equal(torch.get_rng_state(), state)                  # global RNG untouched
    for a, b in zip(*nets):
        assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    lp = nets[0][1].lpips
    assert not lp.lpips                    # no ImageNet-calibrated linear layers on random features


def test_vgg_loss_is_l1_over_four_relu_layers():
    from kpray.losses.autolink import IMAGENET_MEAN, IMAGENET_STD, VGGPerceptualLoss, vgg16_features

    loss = VGGPerceptualLoss(pretrained=False, resize=40)
    torch.manual_seed(0)
    x, y = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    f = vgg16_features(None, pretrained=False)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    a, b = [torch.nn.functional.interpolate((t - mean) / std, size=(40, 40), mode="bilinear",
                                            align_corners=False) for t in (x, y)]
    want = 0.0
    for end in (4, 9, 16, 23):               # relu1_2, relu2_2, relu3_3, relu4_3
        want += (f[:end](a) - f[:end](b)).abs().mean()
    assert loss(x, y).item() == pytest.approx(want.item(), rel=1e-5)
    assert loss(x, x).item() == 0
    assert not any(p.requires_grad for p in loss.parameters())
    loss.train()
    assert not loss.training


def test_vgg_weights_file(tmp_path):
    """--perceptual-weights: a torchvision VGG16 state dict is loaded; a missing or unfitting file
    is one line naming it."""
    from torchvision.models import vgg16

    from kpray.losses.autolink import VGGPerceptualLoss

    torch.manual_seed(5)
    ref = vgg16(weights=None)
    path = tmp_path / "vgg16.pth"
    torch.save(ref.state_dict(), path)
    loss = VGGPerceptualLoss(weights=str(path), resize=0)
    assert torch.equal(loss.blocks[3][-2].weight, ref.features[21].weight)
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        VGGPerceptualLoss(weights=str(tmp_path / "nothere.pth"))
    bad = tmp_path / "bad.pth"
    torch.save({"features.0.weight": torch.zeros(3)}, bad)
    with pytest.raises(ValueError, match="bad.pth") as err:
        VGGPerceptualLoss(weights=str(bad))
    assert "\n" not in str(err.value)


def test_pixel_grad_and_laplacian_losses_by_hand():
    from kpray.losses.autolink import LaplacianLoss, PixelGradientLoss, laplacian_pyramid

    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32)
    # a constant offset c changes the pixels by c, no gradient, and only the low-pass level
    # (2x2 after 4 halvings, weight 2^4)
    c = 0.1
    assert PixelGradientLoss()(x + c, x).item() == pytest.approx(c, rel=1e-5)
    assert LaplacianLoss(5)(x + c, x).item() == pytest.approx(16 * c, rel=1e-4)
    # a step edge moved by one pixel: the gradient term sees it, the pixel term barely
    a, b = torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8)
    a[..., :, 4:] = 1
    b[..., :, 5:] = 1
    pix = (a - b).abs().mean().item()                                   # 8 of 64 pixels: 1/8
    grad = 2 * 8 / (8 * 7)                                              # two columns of |1| in dx
    assert PixelGradientLoss()(a, b).item() == pytest.approx(pix + grad)
    levels = laplacian_pyramid(x, 5)
    assert [lv.shape[-1] for lv in levels] == [32, 16, 8, 4, 2]
    rebuilt = levels[-1]                                                 # the pyramid inverts
    for lv in reversed(levels[:-1]):
        rebuilt = lv + torch.nn.functional.interpolate(rebuilt, size=lv.shape[-2:], mode="bilinear",
                                                       align_corners=False)
    assert torch.allclose(rebuilt, x, atol=1e-5)


def test_rotations_of_points_and_images_agree():
    from kpray.ops.transforms import rotate_images, rotate_points

    # by hand: a quarter turn takes x to y (clockwise on screen, y down)
    p = torch.tensor([[[0.5, 0.0], [0.0, -0.25]]])
    q = rotate_points(p, torch.tensor([math.pi / 2]))
    assert torch.allclose(q, torch.tensor([[[0.0, 0.5], [0.25, 0.0]]]), atol=1e-6)
    # an image of one bright pixel: its centre of mass moves as the point does
    from kpray.ops.coords import pixel_grid

    img = torch.zeros(1, 1, 64, 64)
    img[0, 0, 20, 40] = 1.0
    dot = to_normalised(torch.tensor([[[40.0, 20.0]]]), 64)
    for a in (0.5, math.pi / 2, -2.0, math.pi):
        ang = torch.tensor([a])
        w = rotate_images(img, ang, padding="zeros").flatten(2)
        centre = (w / w.sum(-1, keepdim=True)) @ pixel_grid(64, 64)
        assert torch.allclose(centre, rotate_points(dot, ang), atol=2e-3)
    # with a shift: the content at p moves to R p + t
    t = torch.tensor([[0.2, -0.1]])
    w = rotate_images(img, torch.tensor([0.7]), padding="zeros", shifts=t).flatten(2)
    centre = (w / w.sum(-1, keepdim=True)) @ pixel_grid(64, 64)
    assert torch.allclose(centre, rotate_points(dot, torch.tensor([0.7]), t), atol=2e-3)
    # angle 0 is the identity on images
    x = torch.rand(2, 3, 16, 16)
    assert torch.allclose(rotate_images(x, torch.zeros(2)), x, atol=1e-5)


def test_equivariance_loss_by_hand():
    from kpray.losses.autolink import equivariance_loss
    from kpray.ops.transforms import rotate_points

    torch.manual_seed(0)
    kp = torch.rand(3, 5, 2) * 2 - 1
    ang = torch.tensor([0.3, -1.0, 2.5])
    assert equivariance_loss(rotate_points(kp, ang), kp, ang).item() == pytest.approx(0, abs=1e-10)
    # every keypoint off by (0.1, -0.2): squared distance 0.05
    off = rotate_points(kp, ang) + torch.tensor([0.1, -0.2])
    assert equivariance_loss(off, kp, ang).item() == pytest.approx(0.05, rel=1e-5)
    # a shift of (0.3, 0.4) not followed: 0.25; followed: 0
    t = torch.tensor([[0.3, 0.4]] * 3)
    assert equivariance_loss(rotate_points(kp, ang), kp, ang, t).item() == pytest.approx(0.25, rel=1e-5)
    assert equivariance_loss(rotate_points(kp, ang) + t[:, None], kp, ang, t).item() == \
        pytest.approx(0, abs=1e-10)
    # normalised: divided by the spread (mean squared distance to the image's keypoint mean),
    # so scaling everything towards the centre leaves it unchanged
    pts = torch.tensor([[[0.5, 0.0], [-0.5, 0.0]]])                     # spread 0.25
    a0 = torch.tensor([0.0])
    moved = pts + torch.tensor([0.1, 0.0])                               # error 0.01
    assert equivariance_loss(moved, pts, a0, normalise=True, eps=0).item() == pytest.approx(0.04)
    assert equivariance_loss(0.1 * moved, 0.1 * pts, a0, normalise=True, eps=0).item() == \
        pytest.approx(0.04, rel=1e-5)
    # a detector that ignores the image (fixed keypoints) pays 2 r^2 (1 - cos a) per keypoint
    fixed = torch.tensor([[[0.5, 0.0]]])
    a = torch.tensor([math.pi / 3])
    assert equivariance_loss(fixed, fixed, a).item() == pytest.approx(2 * 0.25 * 0.5, rel=1e-5)


def _bending_chain(n_between: int = 3, angles=(0.0, 0.5, 1.0, 1.5)):
    """Two rigid links A-B-C (0.6 long) bending at B by each angle, with n_between points spaced
    along each link: points [len(angles), 3 + 2 n, 2] (A, B, C first) and the true links."""
    frames = []
    for a in angles:
        A, B = torch.tensor([-0.6, 0.0]), torch.tensor([0.0, 0.0])
        C = 0.6 * torch.tensor([math.cos(a), math.sin(a)])
        pts = [A, B, C]
        for u in torch.arange(1, n_between + 1) / (n_between + 1):
            pts += [A + u * (B - A), B + u * (C - B)]
        frames.append(torch.stack(pts))
    return torch.stack(frames), {(0, 1), (1, 2)}


@pytest.mark.parametrize("exclude_endpoints", [False, True])
def test_structure_loss_prefers_the_true_skeleton(exclude_endpoints):
    # Every (straight, bent) pair; the free links that minimise near + sparse + length must be
    # exactly A-B and B-C: the points in between are explained, and a link A-C bends away.
    pts, truth = _bending_chain()
    src, tgt = pts[[0, 0, 0]], pts[[1, 2, 3]]
    w = dataclasses.replace(L.PRESETS["cartpoles"], sparse_joints=1.0)
    s = L.fit_links(src, tgt, w, exclude_endpoints=exclude_endpoints)
    found = {(a, b) for a in range(s.shape[0]) for b in range(a + 1, s.shape[0]) if s[a, b] >= 0.5}
    assert found == truth, found


def soft_maps(pixels, size=32, peak=0.5):
    """Location maps [1, P, size, size] whose most likely pixel holds `peak` and whose 4
    neighbours share the rest, as a soft (non-one-hot) map does."""
    maps = torch.zeros(1, len(pixels), size, size)
    for p, (x, y) in enumerate(pixels):
        maps[0, p, y, x] = peak
        for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            maps[0, p, y + dy, x + dx] = (1 - peak) / 4
    return maps


def test_uniform_evidence_peak_normalised_separates_gaps():
    """With soft maps (peak 0.5) the raw evidence never reaches alpha = 0.8, so every link counts
    as having a gap; normalised by each map's peak, a link along points is covered and one
    across a gap is not."""
    size = 32
    maps = soft_maps([(x, 8) for x in range(4, 28, 2)], size)
    pts = to_normalised(torch.tensor([[[4.0, 8.0], [26.0, 8.0], [26.0, 28.0]]]), size)
    raw = L.link_coverage(pts, L.foreground_evidence(maps, 5, "raw"), tau=1.0)[0]
    peak = L.link_coverage(pts, L.foreground_evidence(maps, 5, "peak"), tau=1.0)[0]
    assert (raw < 0.8).all()                                   # the degenerate literal reading
    assert peak[0] >= 0.8 and peak[1] < 0.8 and peak[2] < 0.8  # along the points / across gaps
    s = links_matrix(3, {(0, 1): 0.9, (0, 2): 0.2, (1, 2): 0.6})
    assert torch.isclose(L.uniform_loss(s, [raw[None]]), torch.tensor((0.9 + 0.2 + 0.6) / 3))
    assert torch.isclose(L.uniform_loss(s, [peak[None]]), torch.tensor((0.2 + 0.6) / 2))
    with pytest.raises(ValueError, match="evidence mode"):
        L.foreground_evidence(maps, 5, "sum")


def test_near_margin_thickens_the_link():
    # link (0, 1) along y = 0; point 2 is 0.05 beside it, point 3 is 0.3 beside it; two frames
    pts = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.5, 0.05], [0.5, 0.3]]])
    s = links_matrix(4, {(0, 1): 1.0})
    plain = -2 * (2 + math.exp(-0.5) + math.exp(-3.0))
    assert torch.isclose(L.near_loss(s, pts, pts, scale=0.1), torch.tensor(plain), atol=1e-4)
    assert torch.isclose(L.near_loss(s, pts, pts, scale=0.1, margin=0.0), torch.tensor(plain), atol=1e-4)
    # margin 0.05: point 2 is inside the thickened link (1), point 3 is 0.25 outside it
    thick = -2 * (2 + 1 + math.exp(-2.5))
    assert torch.isclose(L.near_loss(s, pts, pts, scale=0.1, margin=0.05), torch.tensor(thick), atol=1e-4)


def test_near_density_weights_count_a_pile_of_points_once():
    # points 0-2 coincide, point 3 lies 1.0 away (far beyond sigma): weights 1/3, 1/3, 1/3, 1
    pts = torch.tensor([[[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [1.0, 0.0]]])
    w = L.point_density_weights(pts, 0.05)
    assert torch.allclose(w, torch.tensor([[1 / 3, 1 / 3, 1 / 3, 1.0]]), atol=1e-6)
    # two points sigma apart: each 1 / (1 + e^-0.5)
    two = torch.tensor([[[0.0, 0.0], [0.05, 0.0]]])
    assert torch.allclose(L.point_density_weights(two, 0.05), torch.full((1, 2), 1 / (1 + math.exp(-0.5))))
    # a link from the pile (point 0) to point 3 explains every point (d = 0): plain eq. 3 counts
    # 4 points per frame, the density-weighted one 1 + 1 (the pile once, the lone point once)
    s = links_matrix(4, {(0, 3): 1.0})
    assert torch.isclose(L.near_loss(s, pts, pts, scale=0.1), torch.tensor(-8.0), atol=1e-4)
    assert torch.isclose(L.near_loss(s, pts, pts, scale=0.1, density_sigma=0.05), torch.tensor(-4.0), atol=1e-4)
    # a link inside the pile (0, 1) is worth the pile alone: 1 place, where plain eq. 3 gives 3
    inside = links_matrix(4, {(0, 1): 1.0})
    far = math.exp(-1.0 / 0.1)
    assert torch.isclose(L.near_loss(inside, pts, pts, scale=0.1), torch.tensor(-2 * (3 + far)), atol=1e-4)
    assert torch.isclose(L.near_loss(inside, pts, pts, scale=0.1, density_sigma=0.05),
                         torch.tensor(-2 * (1 + far)), atol=1e-4)


def test_near_endpoint_credit_and_softmax_max():
    pts = torch.tensor([[[-0.5, 0.0], [0.5, 0.0], [0.0, 0.0]]])     # point 2 on link (0, 1)
    s = links_matrix(3, {(0, 1): 1.0})
    # endpoints 0 and 1 get the credit, point 2 gets 1; two frames
    for credit in (0.0, 0.5, 1.0):
        v = L.near_loss(s, pts, pts, scale=0.1, endpoint_credit=credit)
        assert torch.isclose(v, torch.tensor(-2 * (1 + 2 * credit)), atol=1e-5)
    assert torch.isclose(L.near_loss(s, pts, pts, exclude_endpoints=True, endpoint_credit=0.5),
                         torch.tensor(-2.0), atol=1e-5)         # exclude wins: credit 0
    # two links explain a point equally well (x = 1, 1, 0.2): the straight-through max gives
    # the arg-max all of the gradient, the softmax max splits it between the tied links
    grads = {}
    for name, fn in (("st", L._straight_through_max), ("soft", L._soft_max)):
        x = torch.tensor([1.0, 1.0, 0.2], requires_grad=True)
        fn(x, 0.1).backward()
        grads[name] = x.grad
    assert grads["st"][0] == pytest.approx(1.0, abs=0.01) and grads["st"][1] == pytest.approx(0.0, abs=0.01)
    assert grads["soft"][0] == pytest.approx(grads["soft"][1]) and 0.4 < grads["soft"][0] < 0.6
    v = L.near_loss(s, pts, pts, scale=0.1, endpoint_credit=1.0, max_mode="softmax")
    assert -6 < float(v) < -2                                  # a relaxation: below the hard max
    with pytest.raises(ValueError, match="max_mode"):
        L.near_loss(s, pts, pts, max_mode="hard")
