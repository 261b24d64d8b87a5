"""Ranking metrics and losses against hand-computed values."""
import math

import numpy as np
import pytest
import tensorflow as tf

from models.ranking import metrics
from models.ranking.losses import MultiTaskLoss


def test_auc_hand_computed_with_ties():
    # Positives 0.8, 0.4; negatives 0.4, 0.1, 0.3: pairs won = 3 + (0.5 + 1 + 1) = 5.5 of 6.
    labels = [1, 1, 0, 0, 0]
    scores = [0.8, 0.4, 0.4, 0.1, 0.3]
    assert metrics.auc(labels, scores) == pytest.approx(5.5 / 6)
    assert metrics.auc([0, 1], [0.9, 0.1]) == 0.0
    assert math.isnan(metrics.auc([1, 1], [0.2, 0.3]))
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.auc([1, 0], [0.1])


def test_logloss_hand_computed():
    expected = -(math.log(0.8) + math.log(1 - 0.4)) / 2
    assert metrics.logloss([1, 0], [0.8, 0.4]) == pytest.approx(expected)
    assert np.isfinite(metrics.logloss([1], [0.0]))  # clipped, not inf


def test_gauc_weights_users_by_impressions_and_skips_one_class_users():
    labels = [1, 0, 0, 1, 0, 1, 1]
    scores = [0.9, 0.1, 0.5, 0.2, 0.3, 0.4, 0.6]
    users = ["a", "a", "b", "b", "b", "c", "c"]
    # a: AUC 1 (2 impressions); b: pos 0.2 vs neg 0.5, 0.3 -> 0 (3); c: one class, skipped.
    assert metrics.gauc(labels, scores, users) == pytest.approx((1.0 * 2 + 0.0 * 3) / 5)
    assert math.isnan(metrics.gauc([1, 1], [0.1, 0.2], ["a", "b"]))


def test_calibration_and_task_metrics():
    # mean predicted 0.5 / observed 0.25.
    assert metrics.calibration([1, 0, 0, 0], [0.5, 0.5, 0.5, 0.5]) == pytest.approx(2.0)
    assert math.isnan(metrics.calibration([0, 0], [0.1, 0.2]))
    out = metrics.evaluate({"click": np.array([1, 0])}, {"click": np.array([0.7, 0.2])},
                           np.array([b"u", b"u"]))
    assert out["click"]["auc"] == 1.0 and out["click"]["gauc"] == 1.0
    assert out["click"]["positives"] == 1 and out["click"]["examples"] == 2


def _bce(y, z):
    p = 1 / (1 + math.exp(-z))
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


LABELS = {"click": tf.constant([1.0, 0.0]), "follow": tf.constant([1.0, 0.0])}
LOGITS = {"click": tf.constant([0.5, -1.0]), "follow": tf.constant([2.0, 0.3])}
L_CLICK = (_bce(1, 0.5) + _bce(0, -1.0)) / 2
L_FOLLOW = (_bce(1, 2.0) + _bce(0, 0.3)) / 2


def test_sum_and_reweight_losses():
    total, parts = MultiTaskLoss(["click", "follow"], "sum")(LABELS, LOGITS)
    assert float(total) == pytest.approx(L_CLICK + L_FOLLOW, rel=1e-5)
    assert float(parts["click"]) == pytest.approx(L_CLICK, rel=1e-5)
    # Example 0 followed: weight 1 + 3 * 1 = 4; example 1 weight 1.
    total, parts = MultiTaskLoss(["click", "follow"], "reweight", follow_weight=3.0)(LABELS, LOGITS)
    reweighted = (4 * _bce(1, 0.5) + 1 * _bce(0, -1.0)) / 5
    assert float(parts["click"]) == pytest.approx(reweighted, rel=1e-5)
    assert float(total) == pytest.approx(reweighted + L_FOLLOW, rel=1e-5)


def test_uncertainty_loss_hand_computed_and_gradients_reach_log_variances():
    loss = MultiTaskLoss(["click", "follow"], "uncertainty")
    loss.build()
    s = np.array([0.4, -1.2], np.float32)
    loss.log_variances.assign(s)
    with tf.GradientTape() as tape:
        total, _ = loss(LABELS, LOGITS)
    expected = (math.exp(-0.4) * L_CLICK / 2 + 0.4 / 2
                + math.exp(1.2) * L_FOLLOW / 2 - 1.2 / 2)
    assert float(total) == pytest.approx(expected, rel=1e-5)
    grad = tape.gradient(total, loss.log_variances).numpy()
    # d/ds_k = -exp(-s_k) L_k / 2 + 1/2.
    np.testing.assert_allclose(grad, [-math.exp(-0.4) * L_CLICK / 2 + 0.5,
                                      -math.exp(1.2) * L_FOLLOW / 2 + 0.5], rtol=1e-5)
    assert loss.sigmas() == pytest.approx({"click": math.exp(0.2), "follow": math.exp(-0.6)})


def test_log_sigma_squared_regularizer_form_is_the_uncertainty_mode_shifted_by_log_2():
    # sum_k L_k / (2 sigma_k^2) + log(sigma_c^2 sigma_f^2), t_k = log sigma_k^2, by hand ...
    t = np.array([0.4, -1.2])
    paper = (math.exp(-t[0]) * L_CLICK / 2 + math.exp(-t[1]) * L_FOLLOW / 2 + t[0] + t[1])
    # ... equals 2 * (uncertainty mode at s = t + log 2) - 2 log 2, and so do the
    # gradients in t (times 2): no separate loss mode (see MultiTaskLoss).
    loss = MultiTaskLoss(["click", "follow"], "uncertainty")
    loss.build()
    loss.log_variances.assign((t + math.log(2.0)).astype(np.float32))
    with tf.GradientTape() as tape:
        total, _ = loss(LABELS, LOGITS)
    assert 2 * float(total) - 2 * math.log(2.0) == pytest.approx(paper, rel=1e-5)
    grad = 2 * tape.gradient(total, loss.log_variances).numpy()
    np.testing.assert_allclose(grad, [-math.exp(-t[0]) * L_CLICK / 2 + 1,
                                      -math.exp(-t[1]) * L_FOLLOW / 2 + 1], rtol=1e-5)


def test_click_weight_scales_the_click_term_in_every_mode():
    total, parts = MultiTaskLoss(["click", "follow"], "sum", click_weight=4.0)(LABELS, LOGITS)
    assert float(total) == pytest.approx(4 * L_CLICK + L_FOLLOW, rel=1e-5)
    assert float(parts["click"]) == pytest.approx(L_CLICK, rel=1e-5)  # reported unweighted
    loss = MultiTaskLoss(["click", "follow"], "uncertainty", click_weight=4.0)
    loss.build()
    loss.log_variances.assign([0.4, -1.2])
    total, _ = loss(LABELS, LOGITS)
    # Only the data term is weighted: c exp(-s) L / 2 + s / 2.
    expected = (4 * math.exp(-0.4) * L_CLICK / 2 + 0.4 / 2
                + math.exp(1.2) * L_FOLLOW / 2 - 1.2 / 2)
    assert float(total) == pytest.approx(expected, rel=1e-5)
    assert loss.get_config()["click_weight"] == 4.0


def test_loss_errors():
    with pytest.raises(ValueError, match="click_weight must be > 0, got -1"):
        MultiTaskLoss(["click"], "sum", click_weight=-1.0)
    with pytest.raises(ValueError, match="mode 'max'"):
        MultiTaskLoss(["click"], "max")
    with pytest.raises(ValueError, match="empty"):
        MultiTaskLoss([], "sum")
