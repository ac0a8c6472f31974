"""kpray.metrics against hand-computed cases and brute force over all assignments."""
import itertools
import math

import numpy as np
import pytest

from kpray import metrics as M

KEYS = ("dist", "precision", "recall", "f1", "consistency", "diff")


def _metrics_close(a, b, keys=KEYS):
    for k in keys:
        if math.isnan(b[k]):
            assert math.isnan(a[k]), k
        else:
            assert a[k] == pytest.approx(b[k], abs=1e-12), k


# --------------------------------------------------------------------------- brute force

def _assignments(P, J):
    """All maximal injective matchings as lists of (i, j), |M| = min(P, J)."""
    if P <= J:
        for perm in itertools.permutations(range(J), P):
            yield [(i, perm[i]) for i in range(P)]
    else:
        for perm in itertools.permutations(range(P), J):
            yield [(perm[j], j) for j in range(J)]


def _dist(a, b):
    return math.hypot(a[0] - b[0], a[1] - b[1])


def brute_joint_metrics(pred, gt, eps):
    T, P, J = pred.shape[0], pred.shape[1], gt.shape[1]
    cost = lambda pairs, t=None: sum(  # noqa: E731
        (_dist(pred[t, i], gt[t, j]) if t is not None
         else sum(_dist(pred[s, i], gt[s, j]) for s in range(T)) / T) for i, j in pairs)
    best = min(_assignments(P, J), key=cost)
    m = len(best)
    dist = sum(_dist(pred[t, i], gt[t, j]) for t in range(T) for i, j in best) / (T * m)
    prec, rec, f1, agree = [], [], [], 0
    target = dict(best)
    scale = max(_dist(pred[t, i], gt[t, j]) for t in range(T) for i in range(P) for j in range(J))
    for t in range(T):
        hits = sum(_dist(pred[t, i], gt[t, j]) <= eps for i, j in best)
        p, r = hits / P, hits / J
        prec.append(p), rec.append(r), f1.append(0.0 if p + r == 0 else 2 * p * r / (p + r))
        frame = list(_assignments(P, J))
        c_min = min(cost(a, t) for a in frame)
        optimal = [a for a in frame if cost(a, t) <= c_min + 1e-10 * scale]
        agree += max(sum(target.get(i) == j for i, j in a) for a in optimal)
    return {"dist": dist, "precision": np.mean(prec), "recall": np.mean(rec),
            "f1": np.mean(f1), "consistency": agree / (T * m), "diff": abs(P - J)}, best


def brute_structure(pred_adj, gt_adj, best):
    tp = fp = tn = fn = 0
    for (i1, j1), (i2, j2) in itertools.combinations(sorted(best), 2):
        p = bool(pred_adj[i1, i2] or pred_adj[i2, i1])
        t = bool(gt_adj[j1, j2] or gt_adj[j2, j1])
        tp += p and t
        fp += p and not t
        fn += (not p) and t
        tn += (not p) and (not t)
    r = lambda a, b: a / b if b else math.nan  # noqa: E731
    tpr, tnr = r(tp, tp + fn), r(tn, tn + fp)
    prec = r(tp, tp + fp)
    f1 = (2 * prec * tpr / (prec + tpr) if not (math.isnan(prec) or math.isnan(tpr))
          and prec + tpr > 0 else (0.0 if tp + fp + fn else math.nan))
    return {"acc": r(tp + tn, tp + fp + tn + fn), "bcc": (tpr + tnr) / 2, "precision": prec,
            "recall": tpr, "f1": f1}


@pytest.mark.parametrize("P,J", [(3, 3), (4, 2), (2, 5), (5, 4), (1, 3), (3, 1), (5, 5)])
def test_brute_force_agreement(P, J):
    rng = np.random.default_rng(100 * P + J)
    seen = set()
    for trial in range(8):
        T = int(rng.integers(1, 6))
        gt = rng.uniform(-1, 1, (T, J, 2))
        # predictions near a random subset of GT joints, with noise large enough to cause
        # per-frame identity switches and misses
        src = rng.integers(0, J, P)
        pred = gt[:, src] + rng.normal(0, 0.35, (T, P, 2))
        eps = float(rng.uniform(0.1, 0.6))
        got = M.joint_metrics(pred, gt, eps)
        want, best = brute_joint_metrics(pred, gt, eps)
        _metrics_close(got, want)
        seen |= {("switch", 0 < got["consistency"] < 1), ("partial", 0 < got["f1"] < 1)}
        pa = rng.random((P, P)) < 0.4
        ga = rng.random((J, J)) < 0.4
        got_s = M.structure_metrics(pa, ga, pred, gt)
        _metrics_close(got_s, brute_structure(pa, ga, best),
                       keys=("acc", "bcc", "precision", "recall", "f1"))
    if min(P, J) > 1:  # the random cases must exercise identity switches and partial hits
        assert ("switch", True) in seen and ("partial", True) in seen


# --------------------------------------------------------------------------- hand cases

def test_hand_case_square_with_identity_switch():
    gt = np.array([[[0, 0], [1, 0]]] * 4, dtype=float)              # [T=4, J=2, 2]
    pred = gt.copy()
    pred[3] = pred[3, ::-1]                                           # frame 3 swapped
    got = M.joint_metrics(pred, gt, eps=0.5)
    # M: i0->j0, i1->j1 (cost 0.25 each); frame 3 distances 1, 1
    assert got == pytest.approx({"dist": 0.25, "precision": 0.75, "recall": 0.75, "f1": 0.75,
                                 "consistency": 0.75, "diff": 0.0})


def test_hand_case_partial_hits():
    gt = np.array([[[0, 0], [1, 0]], [[0, 0], [0, 1]]], dtype=float)
    pred = np.array([[[1, 0], [0.3, 0]], [[0, 1], [0, 0.1]]], dtype=float)
    got = M.joint_metrics(pred, gt, eps=0.2)
    # M: i0->j1 (distances 0, 0), i1->j0 (0.3, 0.1); frame 0: 1 hit, frame 1: 2 hits
    assert got == pytest.approx({"dist": 0.1, "precision": 0.75, "recall": 0.75, "f1": 0.75,
                                 "consistency": 1.0, "diff": 0.0})


def test_hand_case_more_predictions_than_gt():
    gt = np.array([[[0, 0], [1, 0]]], dtype=float)                   # J = 2
    pred = np.array([[[0, 0.1], [5, 5], [1, 0.2]]], dtype=float)      # P = 3
    got = M.joint_metrics(pred, gt, eps=0.15)
    assert got == pytest.approx({"dist": 0.15, "precision": 1 / 3, "recall": 0.5, "f1": 0.4,
                                 "consistency": 1.0, "diff": 1.0})


def test_hand_case_more_gt_than_predictions():
    gt = np.array([[[0, 0], [5, 5], [1, 0]]], dtype=float)            # J = 3
    pred = np.array([[[0, 0.1], [1, 0.2]]], dtype=float)              # P = 2
    got = M.joint_metrics(pred, gt, eps=0.15)
    assert got == pytest.approx({"dist": 0.15, "precision": 0.5, "recall": 1 / 3, "f1": 0.4,
                                 "consistency": 1.0, "diff": 1.0})


def test_joint_hit_rates_hand_case():
    # J = 3 true joints, P = 2 predictions over 2 frames; M: i0->j1 (distances 0, 0.3),
    # i1->j0 (0.1, 0.1); j2 is matched to nothing
    gt = np.array([[[0, 0], [1, 0], [9, 9]], [[0, 0], [0, 1], [9, 9]]], dtype=float)
    pred = np.array([[[1, 0], [0.1, 0]], [[0, 1.3], [0, 0.1]]], dtype=float)
    got = M.joint_hit_rates(pred, gt, eps=0.2)
    assert got == pytest.approx([1.0, 0.5, 0.0])
    # their sum is the mean hits per frame: recall * J
    assert got.sum() == pytest.approx(M.joint_metrics(pred, gt, eps=0.2)["recall"] * 3)
    assert M.joint_hit_rates(pred, gt, eps=0.4) == pytest.approx([1.0, 1.0, 0.0])
    assert M.joint_hit_rates(np.zeros((2, 0, 2)), gt, eps=0.2).tolist() == [0.0, 0.0, 0.0]


def test_joint_reach_rates_hand_case_and_bound():
    gt = np.array([[[0, 0], [1, 0], [9, 9]], [[0, 0], [0, 1], [9, 9]]], dtype=float)
    pred = np.array([[[1, 0], [0.1, 0]], [[0, 1.3], [0, 0.1]]], dtype=float)
    assert M.joint_reach_rates(pred, gt, eps=0.2) == pytest.approx([1.0, 0.5, 0.0])
    # one point that visits both joints in turn: each joint is reached in half the frames,
    # but a video matching holds the point on one of them only
    gt = np.array([[[0, 0], [5, 0]]] * 2, dtype=float)
    pred = np.array([[[0, 0]], [[5, 0]]], dtype=float)
    assert M.joint_reach_rates(pred, gt, eps=0.5) == pytest.approx([0.5, 0.5])
    assert M.joint_hit_rates(pred, gt, eps=0.5).sum() == pytest.approx(0.5)
    rng = np.random.default_rng(0)
    for _ in range(20):
        pred, gt = rng.uniform(0, 4, (6, 5, 2)), rng.uniform(0, 4, (6, 3, 2))
        assert np.all(M.joint_reach_rates(pred, gt, 1.0) >= M.joint_hit_rates(pred, gt, 1.0))
    assert M.joint_reach_rates(np.zeros((2, 0, 2)), gt[:2], 1.0).tolist() == [0.0, 0.0, 0.0]


def test_skeleton_coverage_hand_case():
    # one link (0, 0) - (4, 0) sampled at x = 0 .. 4; radius 1
    gt = np.array([[[0, 0], [4, 0]]] * 2, dtype=float)
    adj = np.array([[0, 1], [1, 0]])
    pred = np.array([[[0.5, 0]], [[2, 0.5]]], dtype=float)      # frame 0: x = 0, 1; frame 1: x = 2
    assert M.skeleton_coverage(pred, gt, adj, radius=1.0, spacing=1.0) == pytest.approx((2 / 5 + 1 / 5) / 2)
    # a point on each end covers both ends only; two more in between cover it all
    ends = np.array([[[0, 0], [4, 0]]], dtype=float)
    assert M.skeleton_coverage(ends, gt[:1], adj, 0.5, 1.0) == pytest.approx(2 / 5)
    full = np.array([[[0, 0], [4, 0], [1.5, 0], [2.5, 0]]], dtype=float)
    assert M.skeleton_coverage(full, gt[:1], adj, 0.5, 1.0) == pytest.approx(1.0)
    # no link: undefined; no point: nothing covered
    assert math.isnan(M.skeleton_coverage(pred, gt, np.zeros((2, 2)), 1.0, 1.0))
    assert M.skeleton_coverage(np.zeros((2, 0, 2)), gt, adj, 1.0, 1.0) == 0.0
    with pytest.raises(ValueError):
        M.skeleton_coverage(pred, gt, adj, 1.0, 0.0)


def test_distance_equal_to_eps_is_a_hit():
    gt = np.zeros((1, 1, 2))
    pred = np.array([[[0.75, 1.0]]])                                  # distance exactly 1.25
    assert M.joint_metrics(pred, gt, eps=1.25)["f1"] == 1.0
    assert M.joint_metrics(pred, gt, eps=1.2499)["f1"] == 0.0


def test_frame_ties_resolved_towards_video_matching():
    gt = np.array([[[0, 0], [4, 0]]] * 2, dtype=float)
    # frame 1: both predictions at (1, 0), so both frame assignments cost 4 (a tie)
    pred = np.array([[[1, 0], [3, 0]], [[1, 0], [1, 0]]], dtype=float)
    for order in ([0, 1], [1, 0]):
        got = M.joint_metrics(pred[:, order], gt, eps=1.0)
        assert got["consistency"] == 1.0
        assert got["dist"] == pytest.approx((1 + 1 + 1 + 3) / 4)


def test_video_level_tie_dist_is_the_optimal_cost():
    gt = np.array([[[0, 0], [2, 0]]], dtype=float)
    pred = np.array([[[1, 0], [1, 0]]], dtype=float)                  # every matching costs 2
    got = M.joint_metrics(pred, gt, eps=1.0)
    assert got["dist"] == 1.0 and got["f1"] == 1.0 and got["consistency"] == 1.0


@pytest.mark.parametrize("P,J", [(0, 3), (3, 0), (0, 0)])
def test_empty_side(P, J):
    got = M.joint_metrics(np.zeros((4, P, 2)), np.zeros((4, J, 2)), 0.2)
    assert math.isnan(got["dist"])
    assert got["precision"] == got["recall"] == got["f1"] == got["consistency"] == 0.0
    assert got["diff"] == abs(P - J)
    s = M.structure_metrics(np.zeros((P, P), bool), np.zeros((J, J), bool),
                            np.zeros((4, P, 2)), np.zeros((4, J, 2)))
    assert all(math.isnan(s[k]) for k in ("acc", "bcc", "precision", "recall", "f1"))


def test_mismatched_frames_raise():
    with pytest.raises(ValueError):
        M.joint_metrics(np.zeros((3, 2, 2)), np.zeros((4, 2, 2)), 0.2)


def test_structure_hand_case():
    gt = np.array([[[0, 0], [1, 0], [2, 0]]], dtype=float)
    gt_adj = np.zeros((3, 3), bool)
    gt_adj[0, 1] = gt_adj[1, 2] = True                                # chain 0-1-2
    pred_adj = np.zeros((3, 3), bool)
    pred_adj[0, 1] = pred_adj[0, 2] = True                           # TP (0,1), FP (0,2), FN (1,2)
    s = M.structure_metrics(pred_adj, gt_adj, gt, gt)
    assert s["acc"] == pytest.approx(1 / 3)
    assert s["bcc"] == pytest.approx((0.5 + 0.0) / 2)
    assert s["precision"] == pytest.approx(0.5) and s["recall"] == pytest.approx(0.5)
    assert s["f1"] == pytest.approx(0.5)
    assert (s["tp"], s["fp"], s["fn"], s["tn"]) == (1, 1, 1, 0)
    # only one triangle given for the GT: read symmetrically
    s2 = M.structure_metrics(pred_adj.T, gt_adj, gt, gt)
    assert s2["acc"] == s["acc"] and s2["f1"] == s["f1"]


def test_structure_ignores_unmatched_and_nan_ratios():
    gt = np.array([[[0, 0], [1, 0]]], dtype=float)
    gt_adj = np.array([[0, 1], [1, 0]], bool)
    pred = np.array([[[0, 0], [1, 0], [9, 9]]], dtype=float)         # joint 2 unmatched
    pred_adj = np.ones((3, 3), bool)
    s = M.structure_metrics(pred_adj, gt_adj, pred, gt)
    assert s["n_pairs"] == 1 and s["acc"] == 1.0 and s["precision"] == 1.0
    assert math.isnan(s["bcc"])                                        # no true negative pair
    s = M.structure_metrics(np.zeros((3, 3), bool), np.zeros((2, 2), bool), pred, gt)
    assert s["acc"] == 1.0 and math.isnan(s["precision"]) and math.isnan(s["f1"])
    # probabilities are binarised at 0.5
    s = M.structure_metrics(np.full((3, 3), 0.5), gt_adj, pred, gt)
    assert s["tp"] == 1


# --------------------------------------------------------------------------- invariances

def test_perfect_prediction():
    rng = np.random.default_rng(3)
    gt = rng.uniform(-1, 1, (30, 9, 2))
    gt_adj = np.zeros((9, 9), bool)
    for a, b in [(0, 1), (1, 2), (1, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8)]:
        gt_adj[a, b] = gt_adj[b, a] = True
    perm = rng.permutation(9)
    pred, pred_adj = gt[:, perm], gt_adj[np.ix_(perm, perm)]
    j = M.joint_metrics(pred, gt, 0.2)
    s = M.structure_metrics(pred_adj, gt_adj, pred, gt)
    assert j["dist"] == 0 and j["f1"] == 1 and j["consistency"] == 1 and j["diff"] == 0
    assert s["bcc"] == 1 and s["acc"] == 1 and s["f1"] == 1


@pytest.mark.parametrize("P,J", [(12, 9), (7, 10), (8, 8)])
def test_invariant_to_permuting_predictions(P, J):
    rng = np.random.default_rng(P * J)
    gt = rng.uniform(-1, 1, (20, J, 2))
    pred = gt[:, rng.integers(0, J, P)] + rng.normal(0, 0.3, (20, P, 2))
    pa = rng.random((P, P)) < 0.3
    pa = pa | pa.T
    ga = rng.random((J, J)) < 0.3
    base_j = M.joint_metrics(pred, gt, 0.25)
    base_s = M.structure_metrics(pa, ga, pred, gt)
    assert 0 < base_j["consistency"] < 1
    for _ in range(3):
        perm = rng.permutation(P)
        _metrics_close(M.joint_metrics(pred[:, perm], gt, 0.25), base_j)
        _metrics_close(M.structure_metrics(pa[np.ix_(perm, perm)], ga, pred[:, perm], gt),
                       base_s, keys=("acc", "bcc", "precision", "recall", "f1"))


# --------------------------------------------------------------------------- regression

def test_regression_exact_linear_map():
    rng = np.random.default_rng(0)
    K, J = 6, 4
    w = rng.normal(size=(2 * K, 2 * J))
    tr = rng.uniform(0, 64, (50, K, 2))
    te = rng.uniform(0, 64, (20, K, 2))
    f = lambda x: (x.reshape(len(x), -1) @ w).reshape(len(x), J, 2)  # noqa: E731
    assert M.regression_error(tr, f(tr), te, f(te), 64) == pytest.approx(0, abs=1e-9)


def test_regression_hand_case():
    train_kp = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])                 # N=2, K=1
    train_gt = np.array([[[2.0, 0.0]], [[0.0, 3.0]]])                 # map: x -> 2x, y -> 3y
    test_kp = np.array([[[1.0, 1.0]]])
    test_gt = np.array([[[5.0, 7.0]]])                                # predicted (2, 3): error 5
    assert M.regression_error(train_kp, train_gt, test_kp, test_gt, 10) == pytest.approx(0.5)
    # flattened inputs are accepted
    assert M.regression_error(train_kp.reshape(2, 2), train_gt.reshape(2, 2),
                              test_kp.reshape(1, 2), test_gt, 10) == pytest.approx(0.5)


WALKER = ["neck", "hip", "knee_r", "ankle_r", "toe_r", "knee_l", "ankle_l", "toe_l"]


def test_lr_swap_permutation():
    assert M.lr_swap_permutation(WALKER) == [0, 1, 5, 6, 7, 2, 3, 4]
    assert M.lr_swap_permutation(["a", "b"]) is None
    assert M.lr_swap_permutation(None) is None
    assert M.lr_swap_permutation(["left_hand", "head", "right_hand"]) == [2, 1, 0]
    assert M.lr_swap_permutation(["hip_left", "hip_right", "l_eye", "r_eye"]) == [1, 0, 3, 2]
    assert M.lr_swap_permutation(["knee_r", "ankle_l"]) is None       # no mate of its own
    assert M.lr_swap_permutation(["hip_1", "knee_1", "foot_1"]) is None  # a spider's legs
    assert M.default_regression_protocol(WALKER) == {"protocol": "h36m",
                                                     "swap": [0, 1, 5, 6, 7, 2, 3, 4]}
    assert M.default_regression_protocol(["hinge_1", "tip"]) == {"protocol": "h36m", "swap": None}


def _walker_set(seed, n_train=200, n_test=100, flip_train=0.0, flip_test=0.5):
    """Keypoints = the true joints; GT with left/right labels flipped in a share of frames."""
    rng = np.random.default_rng(seed)
    perm = M.lr_swap_permutation(WALKER)
    tr, te = rng.uniform(0, 64, (n_train, 8, 2)), rng.uniform(0, 64, (n_test, 8, 2))
    tr_gt, te_gt = tr.copy(), te.copy()
    for gt, share in ((tr_gt, flip_train), (te_gt, flip_test)):
        flip = rng.random(len(gt)) < share
        gt[flip] = gt[flip][:, perm]
    return tr, tr_gt, te, te_gt, perm


def test_regression_h36m_swaps_flipped_labels():
    tr, tr_gt, te, te_gt, perm = _walker_set(0)
    plain = M.regression_error(tr, tr_gt, te, te_gt, 64)
    assert plain > 0.1                                   # half the test frames are mislabelled
    assert M.regression_error(tr, tr_gt, te, te_gt, 64, protocol="plain", swap=perm) == plain
    d = M.regression_details(tr, tr_gt, te, te_gt, 64, protocol="h36m", swap=perm)
    assert d["error"] == pytest.approx(0, abs=1e-9)
    assert d["n_test_swapped"] > 10 and d["n_train_swapped"] == 0 and d["n_train_used"] == 200
    # without a swap the h36m protocol cannot undo the flips
    assert M.regression_error(tr, tr_gt, te, te_gt, 64, protocol="h36m") > 0.1
    # flipped fitting labels too: the swap iteration repairs the fit
    tr, tr_gt, te, te_gt, perm = _walker_set(1, flip_train=0.3)
    assert M.regression_error(tr, tr_gt, te, te_gt, 64) > 0.1
    d = M.regression_details(tr, tr_gt, te, te_gt, 64, protocol="h36m", swap=perm)
    assert d["error"] == pytest.approx(0, abs=1e-9) and d["n_train_swapped"] > 10


def test_regression_h36m_leaves_at_most_min_swaps():
    """As the official loop: a round with <= min_swaps candidates swaps nothing."""
    tr, tr_gt, te, te_gt, perm = _walker_set(2, n_test=8, flip_test=1.0)
    d = M.regression_details(tr, tr_gt, te, te_gt, 64, protocol="h36m", swap=perm)
    assert d["n_test_swapped"] == 0 and d["error"] > 0.1
    d = M.regression_details(tr, tr_gt, te, te_gt, 64, protocol="h36m", swap=perm, min_swaps=0)
    assert d["n_test_swapped"] == 8 and d["error"] == pytest.approx(0, abs=1e-9)


def test_regression_h36m_drops_outliers():
    rng = np.random.default_rng(3)
    K, J = 5, 4
    w = rng.normal(size=(2 * K, 2 * J))
    f = lambda x: (x.reshape(len(x), -1) @ w).reshape(len(x), J, 2)  # noqa: E731
    tr, te = rng.uniform(0, 64, (200, K, 2)), rng.uniform(0, 64, (50, K, 2))
    tr_gt = f(tr) + rng.normal(scale=0.01, size=(200, J, 2))
    clean_plain = M.regression_error(tr, tr_gt, te, f(te), 64)
    clean_h36m = M.regression_error(tr, tr_gt, te, f(te), 64, protocol="h36m")
    assert clean_plain < 1e-3 and clean_h36m < 1e-3
    tr_gt[17] += 5000.0                                             # one corrupted sample
    assert M.regression_error(tr, tr_gt, te, f(te), 64) > 10 * clean_plain + 0.01
    d = M.regression_details(tr, tr_gt, te, f(te), 64, protocol="h36m")
    assert d["n_train_used"] == 199
    assert d["error"] == pytest.approx(clean_h36m, rel=0.2, abs=1e-6)
    # no rejection: the corrupted sample stays in the fit
    assert M.regression_error(tr, tr_gt, te, f(te), 64, protocol="h36m",
                              outlier_sigma=None) > 0.01
    # a perfect fit (std 0) drops nothing
    assert M.regression_details(tr, f(tr), te, f(te), 64, protocol="h36m")["n_train_used"] == 200


def test_regression_taichi_bias_and_missing():
    rng = np.random.default_rng(4)
    K, J = 3, 4
    a = rng.normal(size=(2 * K, 2 * J))
    b = rng.uniform(10, 50, 2 * J)
    f = lambda x: (x.reshape(len(x), -1) @ a + b).reshape(len(x), J, 2)  # noqa: E731
    tr, te = rng.uniform(0, 64, (60, K, 2)), rng.uniform(0, 64, (30, K, 2))
    tr_gt, te_gt = f(tr), f(te)
    assert M.regression_error(tr, tr_gt, te, te_gt, 64, protocol="taichi") == \
        pytest.approx(0, abs=1e-9)
    assert M.regression_error(tr, tr_gt, te, te_gt, 64) > 0.01           # no bias: not exact
    # a missing joint (NaN) in some train and test samples is skipped, not scored
    tr_gt[:20, 1] = np.nan
    te_gt[:10, 2] = np.nan
    te_gt[:5, 3, 0] = np.nan
    assert M.regression_error(tr, tr_gt, te, te_gt, 64, protocol="taichi") == \
        pytest.approx(0, abs=1e-9)
    with pytest.raises(ValueError, match="taichi"):
        M.regression_error(tr, tr_gt, te, te_gt, 64, protocol="h36m")


def test_regression_taichi_hand_case():
    """K = J = 1, GT = keypoints + (3, -1) on train. Test GT off the fit by +2 in x in every
    sample and by +4 in y in the one sample whose y is missing: MAE x = 2, y = 0, mean 1."""
    train_kp = np.array([[[0.0, 0.0]], [[1.0, 0.0]], [[0.0, 1.0]], [[2.0, 5.0]]])
    train_gt = train_kp + [3.0, -1.0]
    test_kp = np.array([[[1.0, 1.0]], [[4.0, 2.0]]])
    test_gt = test_kp + [5.0, -1.0]
    test_gt[1, 0, 1] = np.nan                         # (would be off by 4 if present)
    assert M.regression_error(train_kp, train_gt, test_kp, test_gt, 10,
                              protocol="taichi") == pytest.approx(1 / 10)
    # a coordinate present nowhere in the test set is skipped; none at all gives NaN
    test_gt[:, 0, 1] = np.nan
    assert M.regression_error(train_kp, train_gt, test_kp, test_gt, 10,
                              protocol="taichi") == pytest.approx(2 / 10)
    test_gt[:] = np.nan
    assert math.isnan(M.regression_error(train_kp, train_gt, test_kp, test_gt, 10,
                                         protocol="taichi"))


def test_regression_bad_input():
    kp, gt = np.zeros((5, 3, 2)), np.zeros((5, 2, 2))
    with pytest.raises(ValueError, match="protocol"):
        M.regression_error(kp, gt, kp, gt, 64, protocol="h3.6m")
    with pytest.raises(ValueError, match="swap"):
        M.regression_error(kp, gt, kp, gt, 64, protocol="h36m", swap=[0, 0])
    with pytest.raises(ValueError, match="swap"):
        M.regression_error(kp, gt, kp, gt, 64, protocol="h36m", swap=[1, 0, 2])
    with pytest.raises(ValueError, match=r"\[N, K, 2\]"):
        M.regression_error(np.zeros((5, 3, 3)), gt, kp, gt, 64)
    with pytest.raises(ValueError, match="same number of samples"):
        M.regression_error(kp, gt[:4], kp, gt, 64)
    with pytest.raises(ValueError, match="numbers of keypoints"):
        M.regression_error(kp, gt, kp[:, :2], gt, 64)
    with pytest.raises(ValueError, match="image_size"):
        M.regression_error(kp, gt, kp, gt, 0)


def test_keypoint_spread_hand_case():
    # image 1: a 3-4-5 triangle, pairwise distances 3, 4, 5 -> 4; image 2: all at one point -> 0
    pts = np.array([[[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]], [[1.0, 1.0]] * 3])
    assert M.keypoint_spread(pts) == pytest.approx(2.0)
    gt = np.array([[[0.0, 0.0], [10.0, 0.0]], [[0.0, 0.0], [0.0, 10.0]]])   # spread 10
    assert M.spread_ratio(pts, gt) == pytest.approx(0.2)
    assert math.isnan(M.spread_ratio(pts, np.zeros((2, 2, 2))))
    rng = np.random.default_rng(5)                                        # brute force
    p = rng.normal(size=(4, 5, 2))
    brute = np.mean([np.mean([np.linalg.norm(img[i] - img[j]) for i in range(5)
                              for j in range(i + 1, 5)]) for img in p])
    assert M.keypoint_spread(p) == pytest.approx(brute)
    with pytest.raises(ValueError, match="two points"):
        M.keypoint_spread(np.zeros((3, 1, 2)))
    with pytest.raises(ValueError, match=r"\[N, K, 2\]"):
        M.keypoint_spread(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="images"):
        M.spread_ratio(p, p[:2])


# --------------------------------------------------------------------------- helpers

def test_normalise_pixels():
    xy = np.array([[0, 0], [63, 63], [31.5, 31.5]])
    assert M.normalise_pixels(xy, 64) == pytest.approx(np.array([[-1, -1], [1, 1], [0, 0]]))
    # width 5 (x in 0..4), height 3 (y in 0..2)
    assert M.normalise_pixels([[4, 1], [2, 2]], (5, 3)) == pytest.approx(
        np.array([[1, 0], [0, 1]]))


def test_skeleton_joints_and_select():
    prob = np.zeros((5, 5))
    prob[0, 3] = 0.7        # upper triangle only
    prob[4, 1] = 0.5        # lower triangle, exactly at the threshold
    prob[2, 2] = 0.9        # diagonal ignored
    prob[1, 2] = 0.49
    assert M.skeleton_joints(np.zeros((5, 2)), prob).tolist() == [0, 1, 3, 4]
    pts = np.arange(3 * 5 * 2, dtype=float).reshape(3, 5, 2)
    joints, adj = M.select_skeleton(pts, prob)
    assert joints.shape == (3, 4, 2) and np.array_equal(joints, pts[:, [0, 1, 3, 4]])
    want = np.zeros((4, 4), bool)
    want[0, 2] = want[2, 0] = want[1, 3] = want[3, 1] = True
    assert np.array_equal(adj, want)


def test_autolink_adjacency():
    w = np.array([[0.0, 2.0, 1.0],
                  [9.0, 0.0, 0.9],     # lower triangle is not read
                  [9.0, 9.0, 0.0]])
    a = M.autolink_adjacency(w)
    assert a.tolist() == [[False, True, True], [True, False, False], [True, False, False]]
    assert M.autolink_adjacency(w, method="minmax").sum() == 2     # only 0-1 (both directions)
    assert not M.autolink_adjacency(np.zeros((4, 4))).any()
    with pytest.raises(ValueError):
        M.autolink_adjacency(w, method="mean")


def test_aggregate_ignores_nan_and_counts():
    agg = M.aggregate([{"a": 1.0, "b": math.nan, "name": "x"}, {"a": 3.0, "b": 2.0},
                       {"a": math.nan, "b": math.nan}])
    assert agg["a"] == 2.0 and agg["b"] == 2.0 and agg["n_videos"] == 3
    assert agg["nan_count"] == {"a": 1, "b": 2} and "name" not in agg
    assert math.isnan(M.aggregate([{"a": math.nan}])["a"])


def test_paper_constants():
    assert M.PAPER_EPSILON == {"spiders": 0.20, "cartpoles": 0.15, "swimmers": 0.20,
                               "mwhc": 0.30, "spiders0shot": 0.20}
    assert M.PAPER_TABLE_I["ours"]["cartpoles"]["bcc"] == 0.94
    assert M.PAPER_TABLE_I["baseline_rows"]["human36m"]["recall"] == 0.89
    assert M.PAPER_TABLE_II["ours"]["spiders"]["dist"] == 0.083
    assert M.PAPER_TABLE_II["baseline_rows"]["spiders0shot"]["diff"] == 2.5
    for table in (M.PAPER_TABLE_I, M.PAPER_TABLE_II):
        assert set(table["ours"]) == set(table["baseline_rows"]) == set(M.PAPER_DATASETS)


def test_paper_epsilon_covers_single_bodies():
    from kpray.metrics import paper_epsilon

    assert paper_epsilon("cartpoles") == 0.15 and paper_epsilon("cartpole:3") == 0.15
    assert paper_epsilon("walker") == 0.30 and paper_epsilon("spider:5") == 0.20
    assert paper_epsilon("walker-parts") == 0.30 and paper_epsilon("hopper-parts") == 0.30
    assert paper_epsilon("walker-parts-nobg") == 0.30 and paper_epsilon("cartpoles-nobg") == 0.15
    assert paper_epsilon("cartpole:3-nobg") == 0.15 and paper_epsilon("nope-nobg") is None
    assert paper_epsilon("swimmer:2") == 0.20 and paper_epsilon("human36m") is None
    assert paper_epsilon(None) is None


def test_joint_switches_by_hand():
    """Three joints at x = 0, 10, 20 (y = 0) in 4 frames; radius 3. Point 0 sits on joints
    1, 2, 1, 1: on a joint in 4/4 frames, 3/4 on joint 1, 2 joints, changes in 2 of 3
    consecutive pairs. Point 1 sits on joint 0 in frames 0-1 and nowhere after: 2/4 frames, one
    joint, no change in its 1 pair. Point 2 is never within 3 of a joint: no row. Ignoring joint
    0 drops point 1; min_on 0.6 drops it too."""
    joints = np.tile(np.array([[0.0, 0.0], [10.0, 0.0], [20.0, 0.0]]), (4, 1, 1))
    points = np.array([[[10.5, 0], [0, 1], [5, 5]],
                       [[19.0, 1], [1, 0], [5, 5]],
                       [[11.0, 0], [6, 0], [5, 5]],
                       [[9.0, -2], [5, 0], [5, 5]]], dtype=float)
    rows = M.joint_switches(points, joints, radius=3.0)
    np.testing.assert_allclose(rows, [[1.0, 0.75, 2, 2 / 3], [0.5, 1.0, 1, 0.0]])
    np.testing.assert_allclose(M.joint_switches(points, joints, 3.0, ignore=[0]), rows[:1])
    np.testing.assert_allclose(M.joint_switches(points, joints, 3.0, min_on=0.6), rows[:1])
    assert M.joint_switches(points, joints, radius=0.1).shape == (0, 4)
