"""Ranking models on one shared input layer: LR, NFM, NFwFM (+ multi-task), DeepFM, DCN.

Every model reads raw feature tensors (models.inputs conventions), maps them
to ids (FeatureIds, vocabularies inside the model) and to one vector per
feature grouped by field (FieldEmbedding). A model-specific body turns those
into a first-order logit [B] and a representation [B, h]; each task head is
Dense(1) on the representation plus the first-order logit:

  logit_k = w0_k + S + h_k^T rep

NFM and the NFwFM family may batch-normalize the interaction vector before
the MLP (`interaction_batch_norm`, as in the NFM paper); a multi-task NFwFM
may give each task its own MLP on the shared interaction vector
(`task_towers`). With `follow_mode="esmm"` the follow head predicts
p(follow | click) and the model's follow output is p(click) * p(follow |
click) (ESMM), trained on every impression. `candidate_logits` (the
score_candidates signature) scores one user's N candidates from per-field
sums, without building [N, F, d].

References:
  He & Chua, "Neural Factorization Machines for Sparse Predictive Analytics",
  SIGIR 2017; Meitu NFwFM (see models/layers/field_wise_bi_interaction.py);
  Guo et al., "DeepFM", IJCAI 2017; Wang et al., "Deep & Cross Network",
  ADKDD 2017; Ma et al., "Entire Space Multi-Task Model", SIGIR 2018.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

from feature_contract import feature_config as fc  # noqa: E402
from models.layers.bi_interaction import BiInteraction  # noqa: E402
from models.layers.cross_network import CrossNetwork  # noqa: E402
from models.layers.feature_embedding import (FeatureIds, FieldEmbedding,  # noqa: E402
                                             ordered_feature_names)
from models.layers.field_wise_bi_interaction import FieldWiseBiInteraction  # noqa: E402
from models.ranking import config as rc  # noqa: E402
from models.ranking.losses import MultiTaskLoss  # noqa: E402

# Bodies that use FieldEmbedding's first-order tables.
_WITH_LINEAR = (rc.NFM, rc.NFWFM, rc.MULTITASK_NFWFM, rc.DEEPFM)
_NFWFM_FAMILY = (rc.NFWFM, rc.MULTITASK_NFWFM)


def uses_linear(model: str, use_first_order: bool = True) -> bool:
    """Whether the model builds FieldEmbedding's 1-wide first-order tables."""
    return model in _WITH_LINEAR and use_first_order


def split_embedded(embedded) -> tuple[tf.Tensor, tf.Tensor]:
    """FieldEmbedding output -> (embeddings [B, F, d], first-order logit S [B]).

    S is 0 when the model has no first-order tables (use_first_order False).
    """
    if isinstance(embedded, tuple):
        embeddings, linear = embedded
        return embeddings, tf.reduce_sum(linear, axis=1)
    return embedded, tf.zeros(tf.shape(embedded)[:1], embedded.dtype)


def esmm_follow_logit(click_logit: tf.Tensor, follow_given_click_logit: tf.Tensor) -> tf.Tensor:
    """Logit of p(click) * p(follow | click), from the two heads' logits.

    With a = sigmoid(x), b = sigmoid(y): ab / (1 - ab) = 1 / (e^-x + e^-y +
    e^-(x+y)), so logit(ab) = -logsumexp(-x, -y, -x-y). Staying in logits
    keeps the loss's sigmoid_cross_entropy_with_logits stable (a product of
    probabilities near 0 or 1 would need clipping) and leaves every caller of
    the task logits (loss, call, score_candidates) unchanged.

    Args:
      click_logit: [B] logit of p(click).
      follow_given_click_logit: [B] logit of p(follow | click).
    Returns:
      [B] logit of p(follow).
    """
    x, y = click_logit, follow_given_click_logit
    return -tf.reduce_logsumexp(tf.stack([-x, -y, -x - y]), axis=0)


class EpochDecay(keras.callbacks.Callback):
    """Sets the optimizer's learning rate to base * decay^k before the model's epoch k.

    k counts every epoch the model has trained (model.epochs_trained), across
    fit calls, so training one epoch per fit call (train.fit_with_early_stopping)
    decays exactly as one fit over many epochs.
    """

    def __init__(self, base: float, decay: float):
        super().__init__()
        self.base, self.decay = float(base), float(decay)

    def on_epoch_begin(self, epoch, logs=None):
        self.model.optimizer.learning_rate = self.base * self.decay ** self.model.epochs_trained

    def on_epoch_end(self, epoch, logs=None):
        self.model.epochs_trained += 1


@keras.utils.register_keras_serializable(package="feedrec")
class RankingModel(keras.Model):
    """One ranking model; which one is `ranking_config["model"]`.

    Args:
      ranking_config: RankingConfig.to_dict().
      feature_config: FeatureConfig.to_dict() of the dataset.
      vocabularies: feature name -> vocabulary list (most frequent first).
    Call:
      features: dict name -> raw tensors (models.inputs dense conventions);
        extra keys (labels, user_key, ...) are ignored.
    Returns:
      dict task -> probability [B].
    """

    def __init__(self, ranking_config: Mapping[str, Any], feature_config: Mapping[str, Any],
                 vocabularies: Mapping[str, Sequence[str]], **kwargs):
        super().__init__(**kwargs)
        self.ranking_config = rc.make_config(
            ranking_config["model"], {k: v for k, v in ranking_config.items() if k != "model"})
        self.feature_config = dict(feature_config)
        self.vocabularies = {k: list(v) for k, v in vocabularies.items()}
        cfg = self.ranking_config
        features = fc.from_dict(self.feature_config)
        self.feature_names = ordered_feature_names(features)
        self.feature_ids = FeatureIds(self.feature_config, self.vocabularies,
                                      self.feature_names, name="feature_ids")
        self.num_rows = {n: self.feature_ids.num_rows(n) for n in self.feature_names}
        self.embedding = FieldEmbedding(
            self.feature_config, self.num_rows, cfg.embedding_dim, self.feature_names,
            with_linear=uses_linear(cfg.model, cfg.use_first_order), l2=cfg.l2,
            pooling=cfg.pooling, name="field_embedding")
        if cfg.task_towers:
            # One MLP per task on the shared interaction vector (applied in head_logits).
            self.mlp = []
            self.towers = {t: [keras.layers.Dense(h, activation="relu", name=f"{t}_mlp_{i}")
                               for i, h in enumerate(cfg.hidden_units)] for t in cfg.tasks}
        else:
            self.mlp = [keras.layers.Dense(h, activation="relu", name=f"mlp_{i}")
                        for i, h in enumerate(cfg.hidden_units)]
            self.towers = {}
        self.mlp_dropout = ([keras.layers.Dropout(cfg.mlp_dropout, seed=cfg.seed)
                             for _ in cfg.hidden_units] if cfg.mlp_dropout else [])
        if cfg.model == rc.NFM or cfg.model == rc.DEEPFM:
            self.bi_interaction = BiInteraction(name="bi_interaction")
        if cfg.model in _NFWFM_FAMILY:
            self.field_wise = FieldWiseBiInteraction(
                self.embedding.field_of(), use_fm_module=cfg.use_fm_module,
                use_dropout=cfg.use_interaction_dropout, keep_prob=cfg.keep_prob,
                seed=cfg.seed, pair_weights=cfg.pair_weights, name="field_wise_bi_interaction")
        # Affine at inference (moving statistics), so the candidate path may
        # apply it to the broadcast [N, d] interaction.
        self.interaction_bn = (keras.layers.BatchNormalization(name="interaction_bn")
                               if cfg.interaction_batch_norm else None)
        if cfg.model == rc.DCN:
            self.cross = CrossNetwork(cfg.cross_layers, name="cross_network")
        if cfg.model == rc.LR:
            self.biases = {t: self.add_weight(name=f"{t}_bias", shape=(), initializer="zeros")
                           for t in cfg.tasks}
        else:
            self.heads = {t: keras.layers.Dense(1, name=f"{t}_head") for t in cfg.tasks}
        # Offline training on ids precomputed with self.feature_ids (same
        # mapping, done once instead of every step); serving always maps raw.
        self.train_on_ids = False
        # Epochs trained so far (EpochDecay's k), across fit calls.
        self.epochs_trained = 0
        self.task_loss = MultiTaskLoss(cfg.tasks, cfg.loss_mode, cfg.follow_weight,
                                       cfg.click_weight, name="task_loss")
        self._make_epoch_means(["loss"] + [f"{t}_loss" for t in cfg.tasks])

    @tf.__internal__.tracking.no_automatic_dependency_tracking
    def _make_epoch_means(self, names: Sequence[str]) -> None:
        """Running means of the train_step losses, reset by Keras every epoch.

        Keras logs what train_step returns as is, so raw batch losses would
        make the epoch's logged loss the last batch's; Mean metrics (listed
        in `metrics`, which Keras resets at each epoch start) make it the
        mean over the epoch's batches. Created untracked so their counters
        stay out of weights, count_params and the SavedModel.
        """
        self._epoch_means = {n: keras.metrics.Mean(name=n) for n in names}

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        return super().metrics + list(self._epoch_means.values())

    @property
    def tasks(self) -> tuple[str, ...]:
        return self.ranking_config.tasks

    # ---- forward ------------------------------------------------------------
    def _interaction_to_rep(self, x: tf.Tensor, training) -> tf.Tensor:
        """(Field-wise) Bi-Interaction vector [B, d] -> batch norm (optional) -> MLP."""
        if self.interaction_bn is not None:
            x = self.interaction_bn(x, training=training)
        return self._run_mlp(x, training)

    def _run_mlp(self, x: tf.Tensor, training, layers=None) -> tf.Tensor:
        for i, layer in enumerate(self.mlp if layers is None else layers):
            x = layer(x)
            if self.mlp_dropout:
                x = self.mlp_dropout[i](x, training=training)
        return x

    def body(self, ids: Mapping[str, tf.Tensor], training=None) -> tuple[tf.Tensor, tf.Tensor | None]:
        """ids -> (first-order logit [B], representation [B, h] or None for LR)."""
        return self.body_from_embedded(self.embedding(ids), training=training)

    def body_from_embedded(self, embedded, training=None) -> tuple[tf.Tensor, tf.Tensor | None]:
        """FieldEmbedding output ([B, F, d] or ([B, F, d], [B, F])) -> body outputs."""
        model = self.ranking_config.model
        if model == rc.LR:
            return tf.reduce_sum(embedded[:, :, 0], axis=1), None
        if model == rc.DCN:
            flat = tf.reshape(embedded, [-1, len(self.feature_names) * self.ranking_config.embedding_dim])
            return (tf.zeros_like(flat[:, 0]),
                    tf.concat([self.cross(flat), self._run_mlp(flat, training)], axis=1))
        embeddings, first_order = split_embedded(embedded)
        if model == rc.NFM:
            return first_order, self._interaction_to_rep(self.bi_interaction(embeddings), training)
        if model == rc.DEEPFM:
            fm = tf.reduce_sum(self.bi_interaction(embeddings), axis=1)
            flat = tf.reshape(embeddings, [-1, len(self.feature_names) * self.ranking_config.embedding_dim])
            return first_order + fm, self._run_mlp(flat, training)
        _, interaction = self.field_wise(embeddings, training=training)
        return first_order, self._interaction_to_rep(interaction, training)

    def head_logits(self, first_order: tf.Tensor, rep: tf.Tensor | None,
                    training=None) -> dict[str, tf.Tensor]:
        """Body outputs -> task -> logit [B] of that task's label.

        Under follow_mode "esmm" the follow logit is composed from the click
        head and the p(follow | click) head (esmm_follow_logit).
        """
        logits = self.tower_logits(first_order, rep, training=training)
        if self.ranking_config.follow_mode == rc.FOLLOW_ESMM:
            logits[fc.FOLLOW_LABEL] = esmm_follow_logit(logits[fc.CLICK_LABEL],
                                                        logits[fc.FOLLOW_LABEL])
        return logits

    def tower_logits(self, first_order: tf.Tensor, rep: tf.Tensor | None,
                     training=None) -> dict[str, tf.Tensor]:
        """Body outputs -> head -> logit [B] (task towers, if any, run here).

        Each head's own logit: under ESMM the follow head's is p(follow | click).
        """
        if rep is None:
            return {t: first_order + self.biases[t] for t in self.tasks}
        if self.towers:
            return {t: first_order + tf.squeeze(
                self.heads[t](self._run_mlp(rep, training, self.towers[t])), axis=1)
                for t in self.tasks}
        return {t: first_order + tf.squeeze(self.heads[t](rep), axis=1) for t in self.tasks}

    def logits(self, features: Mapping[str, tf.Tensor], training=None) -> dict[str, tf.Tensor]:
        """Raw features -> task -> logit [B]."""
        ids = self.feature_ids({n: features[n] for n in self.feature_names})
        return self.logits_from_ids(ids, training=training)

    def logits_from_ids(self, ids: Mapping[str, tf.Tensor], training=None) -> dict[str, tf.Tensor]:
        first_order, rep = self.body(ids, training=training)
        return self.head_logits(first_order, rep, training=training)

    def candidate_logits(self, ids: Mapping[str, tf.Tensor], item_names: Sequence[str],
                         ) -> dict[str, tf.Tensor]:
        """One user's N candidates: user/context ids batch 1, item ids batch N.

        The user and context features are embedded (and multi-valued ones
        pooled) once. NFM and the NFwFM family never build the [N, F, d]
        tensor: their second-order terms need only per-field sums (and sums
        of squares), so the user's and context's are computed at batch 1 and
        broadcast against the items' [N, d] ones (the user x context term is
        computed once). Other models broadcast the user's embeddings to N.

        Returns:
          task -> logit [N].
        """
        items = [n for n in self.feature_names if n in item_names]
        shared = [n for n in self.feature_names if n not in item_names]
        num = tf.shape(ids[items[0]])[0]
        one = self.embedding.embed(ids, shared)
        many = self.embedding.embed(ids, items)
        model = self.ranking_config.model
        if model in _NFWFM_FAMILY or model == rc.NFM:
            (emb_one, first_one), (emb_many, first_many) = map(split_embedded, (one, many))
            # [1] + [N] -> [N].
            first_order = first_one + first_many
            if model == rc.NFM:
                total = tf.reduce_sum(emb_one, axis=1) + tf.reduce_sum(emb_many, axis=1)
                squares = (tf.reduce_sum(tf.square(emb_one), axis=1)
                           + tf.reduce_sum(tf.square(emb_many), axis=1))
                interaction = 0.5 * (tf.square(total) - squares)
            else:
                interaction = self._candidate_field_wise(emb_one, shared, emb_many, items)
            interaction = tf.broadcast_to(
                interaction, tf.stack([num, tf.shape(interaction)[1]]))
            rep = self._interaction_to_rep(interaction, False)
            return self.head_logits(first_order, rep, training=False)
        # Back to feature_names order: position of each feature in shared + items.
        order = [(shared + items).index(n) for n in self.feature_names]

        def merge(a, b):
            a = tf.broadcast_to(a, tf.concat([[num], tf.shape(a)[1:]], axis=0))
            return tf.gather(tf.concat([a, b], axis=1), order, axis=1)

        if isinstance(one, tuple):
            embedded = (merge(one[0], many[0]), merge(one[1], many[1]))
        else:
            embedded = merge(one, many)
        first_order, rep = self.body_from_embedded(embedded, training=False)
        return self.head_logits(first_order, rep, training=False)

    def _candidate_field_wise(self, emb_one: tf.Tensor, shared: Sequence[str],
                              emb_many: tf.Tensor, items: Sequence[str]) -> tf.Tensor:
        """Field-wise B of N candidates from [1, Fs, d] and [N, Fi, d] -> [N or 1, d]."""
        position = {n: i for i, n in enumerate(self.feature_names)}
        layer = self.field_wise
        stats = layer.field_statistics(emb_one, [position[n] for n in shared])
        for m, (total, squares) in layer.field_statistics(
                emb_many, [position[n] for n in items]).items():
            if m in stats:  # a field with both user-side and item features
                old_total, old_squares = stats[m]
                total = old_total + total
                squares = None if squares is None else old_squares + squares
            stats[m] = (total, squares)
        return layer.finish(*layer.parts_from_statistics(stats), training=False)

    def call(self, features: Mapping[str, tf.Tensor], training=None) -> dict[str, tf.Tensor]:
        return {t: tf.sigmoid(v) for t, v in self.logits(features, training=training).items()}

    # ---- training -----------------------------------------------------------
    def fit(self, *args, **kwargs):
        """keras.Model.fit, plus EpochDecay when learning_rate_decay < 1."""
        cfg = self.ranking_config
        if cfg.learning_rate_decay != 1.0:
            kwargs["callbacks"] = [*(kwargs.get("callbacks") or []),
                                   EpochDecay(cfg.learning_rate, cfg.learning_rate_decay)]
        return super().fit(*args, **kwargs)

    def train_step(self, data):
        features, labels = data
        with tf.GradientTape() as tape:
            ids = features if self.train_on_ids else self.feature_ids(
                {n: features[n] for n in self.feature_names})
            embedded = self.embedding(ids)
            first_order, rep = self.body_from_embedded(embedded, training=True)
            logits = self.head_logits(first_order, rep, training=True)
            total, per_task = self.task_loss(labels, logits)
            if self.ranking_config.lookup_l2:
                total = total + self.lookup_penalty(embedded)
            if self.losses:
                total = total + tf.add_n(self.losses)
        variables = self.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(total, variables), variables))
        out = {}
        for name, value in {"loss": total, **{f"{t}_loss": v for t, v in per_task.items()}}.items():
            self._epoch_means[name].update_state(value)
            out[name] = self._epoch_means[name].result()
        # Log-variances are state, not a per-batch quantity: the epoch's last value.
        if self.ranking_config.loss_mode == rc.LOSS_UNCERTAINTY:
            for k, t in enumerate(self.tasks):
                out[f"{t}_log_variance"] = self.task_loss.log_variances[k]
        return out

    def lookup_penalty(self, embedded) -> tf.Tensor:
        """lookup_l2 * mean over the batch of sum_i ||v_i||^2 (scalar).

        Only the feature vectors the batch uses are penalized (the first-order
        weights are not), so the cost is the lookup's, and a row is shrunk in
        proportion to how often it occurs in training batches.
        """
        embeddings, _ = split_embedded(embedded)
        return self.ranking_config.lookup_l2 * tf.reduce_mean(
            tf.reduce_sum(tf.square(embeddings), axis=[1, 2]))

    def build_from_example(self, features: Mapping[str, tf.Tensor]) -> None:
        """Creates every weight (including the loss's) from one batch."""
        # Through __call__ so Keras marks the model built (count_params, save).
        probs = self(features, training=False)
        zeros = tf.zeros_like(next(iter(probs.values())))
        self.task_loss({k: zeros for k in fc.LABEL_KEYS}, {t: zeros for t in self.tasks})

    def get_config(self) -> dict[str, Any]:
        return {"ranking_config": self.ranking_config.to_dict(),
                "feature_config": self.feature_config, "vocabularies": self.vocabularies,
                "name": self.name}
