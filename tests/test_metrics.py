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
    assert paper_epsilon("swimmer:2") == 0.20 and paper_epsilon("human36m") is None
    assert paper_epsilon(None) is None
