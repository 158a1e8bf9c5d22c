import math

import numpy as np
import pytest

from cdtool.metrics import BinaryMetrics, best_threshold, tuned_threshold


def test_confusion_scores_match_hand_computation():
    truth = np.array([1, 1, 1, 0, 0, 0, 0, 0], bool)
    pred = np.array([1, 1, 0, 1, 0, 0, 0, 0], bool)
    m = BinaryMetrics().update(pred, truth).compute()
    # tp 2, fp 1, fn 1, tn 4
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["iou"] == pytest.approx(0.5)
    assert m["miou"] == pytest.approx((0.5 + 4 / 6) / 2)
    assert m["oa"] == pytest.approx(6 / 8)
    pe = (3 * 3 + 5 * 5) / 64
    assert m["kappa"] == pytest.approx((0.75 - pe) / (1 - pe))
    assert math.isnan(m["auroc"])  # no scores given


def test_valid_mask_and_accumulation_pool_pixels():
    truth = np.array([[1, 0], [0, 0]], bool)
    a = BinaryMetrics().update(truth, truth, valid=np.array([[1, 1], [0, 0]], bool))
    a.update(np.zeros(3, bool), np.array([1, 0, 0], bool))
    r = a.compute()
    assert (a.tp, a.fp, a.fn, a.tn) == (1, 0, 1, 3)
    assert r["recall"] == pytest.approx(0.5)


def test_auroc_matches_exact_rank_statistic():
    rng = np.random.default_rng(0)
    truth = rng.random(4000) < 0.3
    scores = np.clip(rng.normal(0.4 + 0.2 * truth, 0.15), 0, 1)
    got = BinaryMetrics().update(scores > 0.5, truth, scores=scores).compute()["auroc"]
    pos, neg = scores[truth], scores[~truth]
    exact = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert got == pytest.approx(exact, abs=2e-3)


def test_threshold_tuning_and_reading_off_histograms():
    truth = np.array([0, 0, 0, 1, 1], bool)
    scores = np.array([0.1, 0.2, 0.3, 0.7, 0.8])
    m = BinaryMetrics().update(scores >= 0.5, truth, scores=scores)
    thr, f1 = best_threshold(m.pos_hist, m.neg_hist)
    assert 0.3 < thr <= 0.7 and f1 == pytest.approx(1.0)
    direct = m.compute()
    assert m.at_threshold(0.5).compute()["f1"] == pytest.approx(direct["f1"])
    assert m.at_threshold(0.0).compute()["recall"] == 1.0


def test_a_tuned_threshold_is_never_zero():
    """Where nothing beats flagging everything (positives everywhere, or no signal), the best F1 sits at 0; a
    model shipped with 0 would flag identical dates whole, so the tuned threshold is the first edge."""
    m = BinaryMetrics().update(np.ones(6, bool), np.array([1, 1, 1, 1, 0, 0], bool),
                               scores=np.array([0.0, 0.0, 0.0005, 0.0, 0.0, 0.9]))
    assert best_threshold(m.pos_hist, m.neg_hist)[0] == 0.0
    assert tuned_threshold(m.pos_hist, m.neg_hist) == 1 / len(m.pos_hist)
    separable = BinaryMetrics().update(np.ones(4, bool), np.array([0, 0, 1, 1], bool),
                                       scores=np.array([0.1, 0.2, 0.7, 0.8]))
    assert tuned_threshold(separable.pos_hist, separable.neg_hist) == best_threshold(separable.pos_hist,
                                                                                        separable.neg_hist)[0]


def test_exact_auroc_matches_the_pairwise_count_with_ties():
    from cdtool.metrics import exact_auroc

    rng = np.random.default_rng(3)
    for scores in (rng.integers(0, 6, 400).astype(float), rng.normal(size=400) * 50):  # ties; unbounded scores
        labels = rng.random(400) < 0.25
        pairwise = np.mean([(a > b) + 0.5 * (a == b) for a in scores[labels] for b in scores[~labels]])
        assert exact_auroc(scores, labels) == pytest.approx(pairwise, abs=1e-12)
    assert exact_auroc(np.full(20, 0.3), np.arange(20) % 2) == 0.5
    assert np.isnan(exact_auroc(np.arange(5.0), np.zeros(5)))


def test_per_sample_metrics_keep_scores_for_the_exact_auroc():
    from cdtool.metrics import exact_auroc

    rng = np.random.default_rng(4)
    s, t = rng.random(300) * 5e-4, rng.random(300) < 0.5  # all within one histogram bin
    hist, exact = BinaryMetrics(), BinaryMetrics(exact=True)
    for m in (hist, exact):
        m.update(s > 2.5e-4, t, scores=s)
    assert hist.compute()["auroc"] == 0.5  # the histogram cannot tell them apart
    assert exact.compute()["auroc"] == pytest.approx(exact_auroc(s, t)) != 0.5
    assert exact.at_threshold(0.5).compute()["auroc"] == exact.compute()["auroc"]


def test_patch_pair_evaluation_reports_the_exact_auroc_of_each_pairs_own_score():
    """Training validates the bare net: a patch-only one is scored on each pair itself, and its scores, all
    inside one histogram bin here, still rank exactly."""
    import torch

    from cdtool.engine.evaluate import evaluate_labels
    from cdtool.metrics import exact_auroc
    from cdtool.models.base import ChangeModel

    class PatchOnly(ChangeModel):
        patch_only, patch_size = True, 28

        def forward(self, before, after):
            assert before.shape[-2:] == (28, 28)
            return 0.5 + 1e-5 * (after - before).mean((1, 2, 3))

    g = torch.Generator().manual_seed(5)
    images = torch.randn(40, 2, 3, 28, 28, generator=g)
    labels = (torch.rand(40, generator=g) < 0.5).long()
    images[:, 1] += 0.3 * labels.view(-1, 1, 1, 1) + 0.3 * torch.randn(40, 1, 1, 1, generator=g)
    labels[:3] = -1  # unlabelled: skipped
    loader = [{"image": images[i:i + 16], "label": labels[i:i + 16]} for i in range(0, 40, 16)]
    acc = evaluate_labels(PatchOnly(), loader, {"mode": "none"}, torch.device("cpu"), 0.5)
    scores = PatchOnly()(images[3:, 0], images[3:, 1]).numpy()
    want = exact_auroc(scores, labels[3:].numpy() > 0)
    assert acc.compute()["auroc"] == pytest.approx(want, abs=1e-12) and 0.6 < want < 1
    assert acc.tp + acc.fp + acc.fn + acc.tn == 37
