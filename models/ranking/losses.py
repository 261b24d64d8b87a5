"""Single- and multi-task ranking losses: sum, follow-aware reweight, uncertainty.

References:
  Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty to Weigh
  Losses for Scene Geometry and Semantics", CVPR 2018.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

from feature_contract import feature_config as fc  # noqa: E402
from models.ranking import config as rc  # noqa: E402


@keras.utils.register_keras_serializable(package="feedrec")
class MultiTaskLoss(keras.layers.Layer):
    """Combines per-task binary cross-entropies into one training loss.

    Modes (L_k the mean log loss of task k, c_k the task weight: click_weight
    for click, 1 for the others):
      sum:          sum_k c_k L_k.
      reweight:     the click loss weights each example by 1 + w * follow, so
                    clicks that led to a follow count more; then as sum.
      uncertainty:  sum_k c_k exp(-s_k) * L_k / 2 + s_k / 2, with s_k = log
                    sigma_k^2 learned per task (Kendall et al. 2018).

    click_weight in sum / reweight mode is a plain task weight. In
    uncertainty mode it only shapes the transient: c exp(-s) L / 2 + s / 2 is
    minimised at s = log(c L), where the data term's weight c exp(-s) / 2 =
    1 / (2 L) no longer depends on c (it acts like starting s_click at
    -log c). Uncertainty weighting drives every task towards weight
    1 / (2 L_k), so a rare task with a tiny loss (follow, ~0.03 vs click's
    ~0.34) ends up weighted ~10x the click task however c is set; the
    benchmark's multi-task click AUC drop on the synthetic data is
    consistent with that (bench/results/ranking.json).

    The form sum_k L_k / (2 sigma_k^2) + log(sigma_c^2 sigma_f^2), i.e.
    sum_k exp(-t_k) L_k / 2 + t_k with t_k = log sigma_k^2 (a regularizer
    twice Kendall's log sigma_k), is not a separate mode: with s_k = t_k +
    log 2 it equals 2 * (this loss at c = 1) - K log 2 (K tasks). Adam and
    LazyAdam are invariant to a constant gradient scale, so training it is
    training this mode with every s_k started at log 2 instead of 0; the
    optimum weights tasks the same (1 / L_k up to one common factor) and
    only the reported sigma^2 halves (tests/models/test_ranking_metrics.py).

    Args:
      tasks: task (label) names, each with a logit.
      mode: sum, reweight or uncertainty.
      follow_weight: w of the reweight mode.
      click_weight: c of the click task, > 0.
    Call:
      labels: task -> float [B] (reweight also reads labels["follow"]).
      logits: task -> float [B].
    Returns:
      (total scalar, {task: L_k scalar}).
    """

    def __init__(self, tasks: Sequence[str], mode: str = rc.LOSS_SUM,
                 follow_weight: float = 4.0, click_weight: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        if mode not in rc.LOSS_MODES:
            raise ValueError(f"mode {mode!r} not in {rc.LOSS_MODES}")
        if not click_weight > 0.0:
            raise ValueError(f"click_weight must be > 0, got {click_weight}")
        if not tasks:
            raise ValueError("tasks is empty")
        self.tasks = list(tasks)
        self.mode = mode
        self.follow_weight = float(follow_weight)
        self.click_weight = float(click_weight)

    def build(self, input_shape=None):
        if self.mode == rc.LOSS_UNCERTAINTY:
            # s_k = 0: every task starts with weight 1/2, as in the paper.
            self.log_variances = self.add_weight(
                name="log_variances", shape=(len(self.tasks),), initializer="zeros")
        super().build(input_shape)

    def call(self, labels: Mapping[str, tf.Tensor], logits: Mapping[str, tf.Tensor]):
        per_task = {}
        for task in self.tasks:
            y = tf.cast(tf.reshape(labels[task], [-1]), tf.float32)
            bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=logits[task])
            if self.mode == rc.LOSS_REWEIGHT and task == fc.CLICK_LABEL:
                follow = tf.cast(tf.reshape(labels[fc.FOLLOW_LABEL], [-1]), tf.float32)
                weights = 1.0 + self.follow_weight * follow
                per_task[task] = tf.reduce_sum(weights * bce) / tf.reduce_sum(weights)
            else:
                per_task[task] = tf.reduce_mean(bce)
        weight = {t: self.click_weight if t == fc.CLICK_LABEL else 1.0 for t in self.tasks}
        if self.mode == rc.LOSS_UNCERTAINTY:
            s = self.log_variances
            total = tf.add_n([weight[t] * tf.exp(-s[k]) * per_task[t] / 2.0 + s[k] / 2.0
                              for k, t in enumerate(self.tasks)])
        else:
            total = tf.add_n([weight[t] * per_task[t] for t in self.tasks])
        return total, per_task

    def sigmas(self) -> dict[str, float]:
        """Learned sigma_k = exp(s_k / 2) per task (uncertainty mode), else {}."""
        if self.mode != rc.LOSS_UNCERTAINTY or not self.built:
            return {}
        return {t: float(math.exp(float(s) / 2.0))
                for t, s in zip(self.tasks, self.log_variances.numpy())}

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "tasks": self.tasks, "mode": self.mode,
                "follow_weight": self.follow_weight, "click_weight": self.click_weight}
