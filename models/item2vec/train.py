"""Item2vec training entry: sessions -> SGNS item vectors -> exported artifacts."""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

from feature_contract import feature_config as fc  # noqa: E402
from models import cli, inputs  # noqa: E402
from models.item2vec.config import Item2VecConfig  # noqa: E402
from models.item2vec.model import (MeanHistoryTower, NegativeSampler, SkipGram,  # noqa: E402
                                   normalize_rows, skipgram_pairs)
from models.recall import artifacts, data, metrics, training  # noqa: E402

MODEL_NAME = "item2vec"

_log = logging.getLogger(__name__)

# Below these Item2vec learns from too little to stand on its own: the seed
# drops click sequences shorter than 5, and a log of short sessions leaves few
# (the synthetic log's 200k events keep ~360). The run goes on (imputation and
# the popularity prior cover the rest) but says so in its stats and log.
FEW_SESSIONS = 1000
FEW_TRAINED_SHARE = 0.5


def data_warnings(session_stats: Mapping[str, int], min_len: int, trained_items: int,
                  num_items: int, imputed: bool = True) -> list[str]:
    """Warnings on what Item2vec trained from (empty when it had enough).

    Args:
      session_stats: skipgram_pairs' stats of the fit sessions ("sessions"
        kept, "short_sessions" dropped).
      min_len: the session length below which sessions were dropped.
      trained_items: items with a trained vector.
      num_items: the candidate items (the catalogue, else the vocabulary).
      imputed: whether the untrained ones get imputed vectors (impute_untrained).
    """
    kept, short = session_stats["sessions"], session_stats["short_sessions"]
    out = []
    if kept < FEW_SESSIONS:
        # The sessionize job already drops short sessions: usually none here.
        dropped = f" ({short} shorter ones dropped)" if short else ""
        out.append(f"only {kept} fit sessions of >= {min_len} clicks{dropped}; fewer than "
                   f"{FEW_SESSIONS} give noisy vectors (a lower min_session_len keeps more)")
    if num_items and trained_items < FEW_TRAINED_SHARE * num_items:
        # Floored: 496 of 1,000 must not read "50%" in a "fewer than half" warning.
        rest = ("are imputed (impute_untrained)" if imputed
                else "are never recommended (impute_untrained is off)")
        out.append(f"{trained_items} of {num_items} items "
                   f"({100 * trained_items // num_items}%) have trained vectors; "
                   f"the others {rest}")
    return out


@dataclasses.dataclass
class Item2VecResult:
    """A trained Item2vec: vectors of the trained catalogue items, then of the imputed ones.

    Rows [0, stats["trained_items"]) of item_vectors are trained (L2-normalized);
    the remaining stats["imputed_items"] rows are imputed (impute_vectors).
    With a popularity prior (stats["popularity_prior"]["weight"] > 0) every
    row carries one more column, beta * the item's scaled log clicks, and the
    user vectors carry 1 there (MeanHistoryTower.prior_column).
    """

    feature_config: fc.FeatureConfig
    config: Item2VecConfig
    vocabulary: list[str]
    item_ids: list[str]
    item_vectors: np.ndarray  # [N, dim (+1)]: trained rows L2-normalized, then imputed means
    tower: MeanHistoryTower
    stats: dict[str, Any]
    # [N] the scaled log clicks of the fit period (before validation), by row
    # of item_vectors: what the weight was chosen with. The served column uses
    # every training click, validation's included, so validation-time scoring
    # must use this one (validation_vectors).
    fit_prior: np.ndarray | None = None

    @property
    def prior_column(self) -> bool:
        """Whether item_vectors' last column is the popularity prior (the tower's layout)."""
        return bool(self.tower is not None and self.tower.prior_column)

    @property
    def similarity_vectors(self) -> np.ndarray:
        """item_vectors without the prior column, [N, dim]."""
        return self.item_vectors[:, :-1] if self.prior_column else self.item_vectors

    @property
    def validation_vectors(self) -> np.ndarray:
        """item_vectors with the prior column from fit-period clicks (no validation click)."""
        if not self.prior_column:
            return self.item_vectors
        weight = self.stats["popularity_prior"]["weight"]
        return with_prior(self.similarity_vectors, weight * self.fit_prior)

    def user_vectors(self, features: Mapping[str, np.ndarray],
                     batch_size: int = 4096) -> np.ndarray:
        """Mean of recent clicked item vectors, [B, width of item_vectors].

        Without the prior: zeros for a user with no known click. With it: 1 in
        the prior column, so such a user gets [0, ..., 0, 1] (the prior alone).
        """
        name = self.feature_config.history_feature.name
        history = features[name]
        return np.concatenate([self.tower({name: tf.constant(history[i:i + batch_size])}).numpy()
                               for i in range(0, len(history), batch_size)] or
                              [np.zeros((0, self.item_vectors.shape[1]), np.float32)])

    def similar_items(self, item_id: str, k: int) -> list[tuple[str, float]]:
        """Item-to-item recall: the k nearest items by cosine (no prior), itself excluded."""
        row = self.item_ids.index(item_id)
        vectors = self.similarity_vectors
        best = metrics.top_k(vectors[row:row + 1], vectors, k, exclude=[np.array([row])])[0]
        return [(self.item_ids[j], float(vectors[row] @ vectors[j])) for j in best if j >= 0]

    def export(self, export_dir: str, model_version: int | None = None) -> dict[str, str]:
        user_dir = os.path.join(export_dir, artifacts.USER_TOWER_DIR)
        item_dir = os.path.join(export_dir, artifacts.ITEM_EMBEDDINGS_DIR)
        artifacts.export_user_tower(self.tower, self.tower,
                                    data.serving_signature(self.feature_config), user_dir)
        imputed = self.stats["imputed_items"]
        # The first trained_items rows are trained; the rest are imputed means
        # (shorter than 1), so the artifact is normalized only without them
        # (and without the prior column).
        prior = self.stats["popularity_prior"]
        artifacts.write_item_embeddings(
            item_dir, self.item_ids, self.item_vectors, MODEL_NAME,
            normalized=imputed == 0 and not self.prior_column, model_version=model_version,
            extra={"recent_clicks": self.config.recent_clicks,
                   "prior_column": self.prior_column, "prior_weight": prior["weight"],
                   "trained_items": self.stats["trained_items"], "imputed_items": imputed,
                   "imputed_by": self.stats["imputed_by"]})
        return {"user_tower": user_dir, "item_embeddings": item_dir}


def sessions_to_ids(sessions: Sequence[Sequence], vocabulary: Sequence[str]) -> list[np.ndarray]:
    """Item-id sessions (bytes or str) -> model-id arrays (0 = OOV)."""
    index = data.item_vocab_index(vocabulary)
    return [np.array([index.get(x.decode() if isinstance(x, bytes) else x, 0) for x in s],
                     np.int64) for s in sessions]


def fit(feature_config: fc.FeatureConfig, sessions: Mapping[str, np.ndarray],
        vocabulary: Sequence[str], catalogue: data.Catalogue | None,
        config: Item2VecConfig) -> Item2VecResult:
    """Trains SGNS on click sessions, epoch by epoch until validation stops improving.

    The sessions starting in the latest `validation_fraction` of the time
    span are held out; after each epoch their next-item HR@50 (every click
    after a session's first retrieved by the earlier ones: next_item_queries
    with every_position) is measured with the current vectors at their
    best popularity-prior weight, and the best epoch's vectors are kept
    (models.recall.training.fit_epochs); the weight is chosen again on them.

    Args:
      feature_config: dataset config (history feature, roles, min_session_len).
      sessions: item2vec examples as column arrays (data.load_examples of
        kind item2vec): session_items (chronological item-id lists) and
        timestamp (the session start).
      vocabulary: item-id vocabulary (model id = line + 1).
      catalogue: item catalogue (click counts for the unigram table, the
        attribute of attribute-aware negatives and of imputation, the exported
        candidates); None uses session counts and exports the vocabulary.
      config: hyperparameters.
    Raises:
      models.validation.ValidationError: too few sessions to carve a
        validation split, or no validation session to query with.
      ValueError: no training pair, or an attribute role the config lacks.
    """
    start = time.time()
    rng = np.random.default_rng(config.seed)
    # Seeds Keras' initializers too (tf.random.set_seed alone leaves them to
    # Python's `random`): the same seed gives the same run.
    keras.utils.set_random_seed(config.seed)
    carve = training.carve_validation(sessions, config.validation_fraction, MODEL_NAME)
    vocabulary = list(vocabulary)
    num_rows = len(vocabulary) + 1
    id_sessions = sessions_to_ids(carve.fit[fc.SESSION_ITEMS_KEY], vocabulary)
    min_len = config.min_session_len or feature_config.min_session_len
    centers, contexts, stats = skipgram_pairs(id_sessions, config.window, min_len)
    if len(centers) == 0:
        raise ValueError(f"no skip-gram pairs from {len(id_sessions)} fit sessions "
                         f"(min_session_len {min_len})")
    clicks = np.bincount(np.concatenate(id_sessions), minlength=num_rows).astype(np.float64)
    # The prior's weight is chosen on validation with the clicks before it.
    fit_clicks = clicks.copy()
    attribute = None
    if catalogue is not None:
        rows = catalogue.rows_of(vocabulary)
        cat_clicks = np.where(rows >= 0, catalogue.clicks[np.maximum(rows, 0)], 0)
        clicks = np.maximum(clicks, np.concatenate([[0], cat_clicks]))
        if config.attribute_role:
            spec = feature_config.role(config.attribute_role)
            if spec is None:
                raise ValueError(f"attribute_role {config.attribute_role!r} is not set in the "
                                 f"feature config roles {dict(feature_config.roles)}")
            codes = catalogue.attribute_codes(spec.name)
            attribute = np.concatenate([[0], np.where(rows >= 0, codes[np.maximum(rows, 0)], 0)])
    clicks[0] = 0.0
    sampler = NegativeSampler(clicks, config.unigram_alpha, attribute,
                              config.attribute_negative_ratio)
    export_rows = _candidate_rows(centers, vocabulary, catalogue)
    item_ids = [vocabulary[r - 1] for r in export_rows]
    queries = next_item_queries(carve.validation[fc.SESSION_ITEMS_KEY], item_ids,
                                config.recent_clicks, every_position=True)
    training.check_validation_queries(len(queries), carve, MODEL_NAME)
    model = SkipGram(num_rows, config.dim)
    optimizer = keras.optimizers.Adam(config.learning_rate)

    @tf.function
    def step(c, x, n):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(model((c, x, n)))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    def train_epoch() -> float:
        order = rng.permutation(len(centers))
        if config.max_pairs_per_epoch:
            order = order[:config.max_pairs_per_epoch]
        negatives = np.zeros((len(centers), config.negatives_per_positive), np.int64)
        negatives[order] = sampler.sample(rng, contexts[order], config.negatives_per_positive)
        total, batches = 0.0, 0
        for i in range(0, len(order), config.batch_size):
            b = order[i:i + config.batch_size]
            total += float(step(tf.constant(centers[b]), tf.constant(contexts[b]),
                                tf.constant(negatives[b])))
            batches += 1
        return total / max(batches, 1)

    choices: list[tuple[float, dict[str, float]]] = []  # per epoch: (weight, curve)

    def validate() -> float:
        # The served score includes the prior, so epochs are compared at
        # their own best prior weight (a prior can rescue an epoch whose
        # similarity alone looks worse).
        vectors = normalize_rows(model.center.embeddings.numpy()[export_rows])
        choices.append(choose_prior_weight(queries, vectors, fit_clicks[export_rows],
                                           config.prior_weights))
        return max(choices[-1][1].values())

    history = training.fit_epochs(model, train_epoch, validate, config)
    trained = normalize_rows(model.center.embeddings.numpy()[export_rows])
    # fit_epochs put the best epoch's weights back: its choice is the kept one.
    weight, prior_curve = choices[history["early_stopping"]["best_epoch"] - 1]
    missing = untrained_items(item_ids, vocabulary, catalogue) if config.impute_untrained else []
    imputed, source, roles = _impute(feature_config, config, catalogue, item_ids, trained, missing)
    index = data.item_vocab_index(vocabulary)
    outside = np.zeros(len(missing))  # clicks of imputed items outside the vocabulary
    if catalogue is not None and missing:
        rows = catalogue.rows_of(missing)
        outside = np.where(rows >= 0, catalogue.clicks[np.maximum(rows, 0)], 0)

    def by_row(by_model_id: np.ndarray, not_in_vocab: np.ndarray) -> np.ndarray:
        """Counts of the exported rows (trained, then imputed) from model-id counts."""
        tail = [by_model_id[index[x]] if x in index else c for x, c in zip(missing, not_in_vocab)]
        return np.concatenate([by_model_id[export_rows], np.asarray(tail, np.float64)])

    item_vectors = np.concatenate([trained, imputed])
    if weight > 0:
        # Served prior: the catalogue's click counts (every training click, the
        # popularity peer's counts; without a catalogue the fit sessions'),
        # scaled like the chosen one.
        prior = scaled_log_clicks(by_row(clicks, outside))
        item_vectors = with_prior(item_vectors, weight * prior)
    # Vocabulary rows without a vector stay zero: an item that never was a
    # center keeps its random init, which must not look like a click in a
    # user's mean. Imputed items do count: their vector is an estimate.
    vectors = np.zeros((num_rows, item_vectors.shape[1]), np.float32)
    vectors[export_rows] = item_vectors[:len(item_ids)]
    in_vocab = [(index[x], i) for i, x in enumerate(missing) if x in index]
    if in_vocab:
        model_ids, rows = map(list, zip(*in_vocab))
        vectors[model_ids] = item_vectors[len(item_ids) + np.array(rows)]
    tower = MeanHistoryTower(vocabulary, vectors, feature_config.history_feature.name,
                             config.recent_clicks, prior_column=weight > 0)
    by = {name: int((source == j).sum()) for j, name in enumerate([*roles, GLOBAL_MEAN])}
    candidates = len(catalogue) if catalogue is not None else len(vocabulary)
    trainer_warnings = data_warnings(stats, min_len, len(export_rows), candidates,
                                     imputed=config.impute_untrained)
    for warning in trainer_warnings:
        _log.warning("item2vec: %s", warning)
    stats.update({**history, "num_items": int(len(export_rows) + len(missing)),
                  "trained_items": int(len(export_rows)), "imputed_items": len(missing),
                  "imputed_by": by, "warnings": trainer_warnings,
                  "untrained_vocab_items": int(num_rows - 1 - len(export_rows)),
                  "validation": {**carve.summary(), "validation_queries": len(queries)},
                  "popularity_prior": {"weight": weight, f"val_hr@{training.VALIDATION_K}":
                                       prior_curve},
                  "train_seconds": time.time() - start})
    fit_prior = scaled_log_clicks(by_row(fit_clicks, np.zeros(len(missing))))
    return Item2VecResult(feature_config, config, vocabulary, item_ids + missing, item_vectors,
                          tower, stats, fit_prior)


def scaled_log_clicks(clicks: np.ndarray) -> np.ndarray:
    """log(1 + clicks) / log(1 + max clicks): the prior in [0, 1], float32."""
    logs = np.log1p(np.maximum(np.asarray(clicks, np.float64), 0.0))
    top = logs.max() if len(logs) else 0.0
    return (logs / top if top > 0 else logs).astype(np.float32)


def with_prior(vectors: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """vectors [N, d] with the weighted prior [N] as column d, [N, d + 1] float32."""
    return np.concatenate([vectors, np.asarray(prior, np.float32)[:, None]],
                          axis=1).astype(np.float32)


def choose_prior_weight(queries: NextItemQueries, vectors: np.ndarray, clicks: np.ndarray,
                        weights: Sequence[float]) -> tuple[float, dict[str, float]]:
    """The prior weight with the best validation HR@K (ties: the first in `weights`).

    Args:
      queries: validation next-item queries (rows of `vectors`).
      vectors: [N, d] trained item vectors, no prior column.
      clicks: [N] click counts of the same rows, from before the validation period.
      weights: candidate weights, in order of preference.
    Returns:
      (weight, {str(weight): validation HR@K}).
    """
    prior = scaled_log_clicks(clicks)
    curve: dict[str, float] = {}
    best, best_value = float(weights[0]), -1.0
    for w in weights:
        items = with_prior(vectors, w * prior) if w > 0 else vectors
        value = next_item_hit_rate(queries, items, training.VALIDATION_K, prior_column=w > 0)
        curve[str(float(w))] = value
        if value > best_value:
            best, best_value = float(w), value
    return best, curve


def _candidate_rows(centers: np.ndarray, vocabulary: Sequence[str],
                    catalogue: data.Catalogue | None) -> np.ndarray:
    """Model ids that get a trained vector: trained as a center (and in the catalogue, if given)."""
    trained = np.zeros(len(vocabulary) + 1, bool)
    trained[np.unique(centers)] = True
    trained[0] = False
    if catalogue is not None:
        trained[1:] &= catalogue.rows_of(vocabulary) >= 0
    return np.flatnonzero(trained)


GLOBAL_MEAN = "global_mean"  # imputed_by key of items no role's group could serve


def untrained_items(trained_ids: Sequence[str], vocabulary: Sequence[str],
                    catalogue: data.Catalogue | None) -> list[str]:
    """Items that must be reachable but got no trained vector, in catalogue order.

    The catalogue's items (the vocabulary's without a catalogue) minus the
    trained ones: items never in a fit session of >= min_session_len clicks,
    new items, and items clicked only in the validation period.
    """
    trained = set(trained_ids)
    return [x for x in (catalogue.ids if catalogue is not None else vocabulary)
            if x not in trained]


def impute_vectors(trained_vectors: np.ndarray, trained_groups: np.ndarray,
                   missing_groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vectors of untrained items: the mean vector of the trained items sharing an attribute.

    Each untrained item takes the first attribute, in order, whose value it
    has (code > 0) and at least one trained item shares; the mean of all
    trained vectors serves the items no attribute can. The mean is not
    re-normalized on purpose: it is shorter the more its group's vectors
    disagree, so in inner-product retrieval an imputed item ranks below a
    trained item pointing the same way; its place is a guess.

    Args:
      trained_vectors: [M, d] trained item vectors, M >= 1.
      trained_groups: int [A, M]: per attribute, the trained items' codes
        (0 = missing; one attribute's codes share one numbering).
      missing_groups: int [A, U]: the same attributes' codes of the
        untrained items.
    Returns:
      vectors [U, d] float32, and source [U] int64: the index of the
      attribute used, A for the global mean.
    Raises:
      ValueError: no trained vector, or the group shapes disagree.
    """
    trained_vectors = np.asarray(trained_vectors, np.float64)
    if len(trained_vectors) == 0:
        raise ValueError("no trained vector to impute from")
    trained_groups = np.asarray(trained_groups, np.int64)
    missing_groups = np.asarray(missing_groups, np.int64)
    if (trained_groups.ndim != 2 or missing_groups.ndim != 2
            or trained_groups.shape[1] != len(trained_vectors)
            or len(missing_groups) != len(trained_groups)):
        raise ValueError(f"groups of shapes {trained_groups.shape} (trained) and "
                         f"{missing_groups.shape} (missing) for {len(trained_vectors)} "
                         f"trained vectors: want [A, M] and [A, U]")
    num_attributes, dim = len(trained_groups), trained_vectors.shape[1]
    source = np.full(missing_groups.shape[1], num_attributes, np.int64)
    out = np.repeat(trained_vectors.mean(axis=0, keepdims=True), len(source), axis=0)
    for j, (codes, wanted) in enumerate(zip(trained_groups, missing_groups)):
        size = int(max(codes.max(initial=0), wanted.max(initial=0))) + 1
        counts = np.bincount(codes, minlength=size)
        sums = np.zeros((size, dim), np.float64)
        np.add.at(sums, codes, trained_vectors)
        use = (source == num_attributes) & (wanted > 0) & (counts[wanted] > 0)
        out[use] = sums[wanted[use]] / counts[wanted[use], None]
        source[use] = j
    return out.astype(np.float32), source


def _impute(feature_config: fc.FeatureConfig, config: Item2VecConfig,
            catalogue: data.Catalogue | None, trained_ids: Sequence[str],
            trained_vectors: np.ndarray, missing: Sequence[str]
            ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """impute_vectors over the config's impute_roles that the feature config sets.

    Returns:
      (vectors [U, d], source [U], the roles used, in order).
    """
    roles = [r for r in config.impute_roles
             if catalogue is not None and feature_config.role(r) is not None]
    trained_groups = np.zeros((len(roles), len(trained_ids)), np.int64)
    missing_groups = np.zeros((len(roles), len(missing)), np.int64)
    if roles:
        trained_rows, missing_rows = catalogue.rows_of(trained_ids), catalogue.rows_of(missing)
        for j, role in enumerate(roles):
            codes = catalogue.attribute_codes(feature_config.role(role).name)
            trained_groups[j], missing_groups[j] = codes[trained_rows], codes[missing_rows]
    vectors, source = impute_vectors(trained_vectors, trained_groups, missing_groups)
    return vectors, source, roles


@dataclasses.dataclass
class NextItemQueries:
    """Next-item queries of sessions: the mean of the earlier clicks retrieves the next.

    Attributes:
      history: per query, candidate rows of the most recent earlier clicks
        (the user vector's inputs).
      targets: per query, the candidate row of the clicked item.
      seen: per query, candidate rows of every earlier click of the session,
        excluded from the top-K as serving excludes what the user has seen.
    """

    history: list[np.ndarray]
    targets: list[np.ndarray]
    seen: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.targets)


def next_item_queries(sessions: Sequence[Sequence], item_ids: Sequence[str],
                      recent_clicks: int, every_position: bool = False) -> NextItemQueries:
    """Next-click queries of sessions: a known target not clicked earlier in the
    session, and a known earlier click.

    every_position False: one query per session, for its last click (the
    eval_next_item metric). True: one per click after the first: the
    validation queries, many more than sessions, so that the prior weight and
    the epoch are chosen on more than a handful of hits. The user vector reads
    the `recent_clicks` latest earlier clicks; every earlier click is excluded
    from the top-K and a target among them is no query, so the query set does
    not depend on `recent_clicks` (choices of it compare on the same queries).
    """
    row = {item: i for i, item in enumerate(item_ids)}
    history, targets, seen = [], [], []
    for s in sessions:
        rows = [row.get(x.decode() if isinstance(x, bytes) else x, -1) for x in s]
        known: list[int] = []  # candidate rows of the clicks before `end`
        known_set: set[int] = set()
        for end, target in enumerate(rows):
            if (every_position or end == len(rows) - 1) and target >= 0 and known \
                    and target not in known_set:  # the top-K excludes what was seen
                history.append(np.array(known[-recent_clicks:], np.int64))
                targets.append(np.array([target], np.int64))
                seen.append(np.array(known, np.int64))
            if target >= 0:
                known.append(target)
                known_set.add(target)
    return NextItemQueries(history, targets, seen)


def next_item_top_k(queries: NextItemQueries, item_vectors: np.ndarray, k: int,
                    prior_column: bool = False) -> np.ndarray:
    """Top-k rows of item_vectors per query (user vector = mean of its history rows), [Q, k].

    prior_column: item_vectors' last column is the popularity prior; the
    user vector carries 1 there (MeanHistoryTower's rule).
    """
    users = np.stack([item_vectors[h].mean(axis=0) for h in queries.history])
    if prior_column:
        users[:, -1] = 1.0
    return metrics.top_k(users, item_vectors, k, queries.seen)


def next_item_hit_rate(queries: NextItemQueries, item_vectors: np.ndarray, k: int,
                       prior_column: bool = False) -> float:
    """HR@k of the queries (user vector = mean of the history rows of item_vectors)."""
    top = next_item_top_k(queries, item_vectors, k, prior_column)
    return metrics.evaluate(top, queries.targets, len(item_vectors), ks=(k,))[f"hr@{k}"]


def eval_next_item(result: Item2VecResult, sessions: Sequence[Sequence], k: int = 50
                   ) -> dict[str, float]:
    """Eval-session HR@k: the mean of the last item's earlier (recent) clicks must
    retrieve it; a session that clicked its last item earlier is no query (since d2bc0ce)."""
    queries = next_item_queries(sessions, result.item_ids, result.config.recent_clicks)
    if not len(queries):
        return {"eval_sessions": 0}
    kk = max(k, 1)
    return {"eval_sessions": len(queries),
            f"eval_next_item_hr@{kk}": next_item_hit_rate(queries, result.item_vectors, kk,
                                                          result.prior_column)}


def train(config_path: str, examples_dir: str, vocab_dir: str, items_pattern: str | None,
          hparams: Mapping[str, Any] | None, export_dir: str) -> dict[str, Any]:
    """Trains Item2vec on OUT/item2vec examples and exports both artifacts.

    Args:
      config_path: feature config YAML.
      examples_dir: directory with Split-train (and optionally Split-eval) of
        item2vec examples (one click session each).
      vocab_dir: OUT/vocab.
      items_pattern: item catalogue TFRecords glob (None: no catalogue).
      hparams: Item2VecConfig fields.
      export_dir: receives user_tower/ and item_embeddings/.
    Returns:
      training statistics (learning_curve, early_stopping, validation, ...)
      and eval-session next-item HR@50 (one evaluation, after training).
    """
    feature_config = fc.load(config_path)
    config = Item2VecConfig.from_hparams(hparams)
    vocabulary = inputs.read_vocab(vocab_dir, feature_config.item_id_feature.name)
    if not vocabulary:
        raise FileNotFoundError(f"no item vocabulary in {vocab_dir!r}")
    catalogue = data.load_catalogue(items_pattern, feature_config) if items_pattern else None
    train_arrays = data.load_examples(inputs.split_pattern(examples_dir, fc.TRAIN),
                                      feature_config, fc.ITEM2VEC)
    result = fit(feature_config, train_arrays, vocabulary, catalogue, config)
    out = dict(result.stats)
    if tf.io.gfile.glob(inputs.split_pattern(examples_dir, fc.EVAL)):
        eval_arrays = data.load_examples(inputs.split_pattern(examples_dir, fc.EVAL),
                                         feature_config, fc.ITEM2VEC)
        out.update(eval_next_item(result, eval_arrays[fc.SESSION_ITEMS_KEY]))
    out.update(result.export(export_dir))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """The command line of `train` (`python -m models.item2vec.train --help`)."""
    return cli.recall_trainer_main(train, MODEL_NAME, __doc__, fc.ITEM2VEC, cli.ITEMS_OPTIONAL,
                                   argv)


if __name__ == "__main__":
    sys.exit(main())
