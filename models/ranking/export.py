"""SavedModel export of a ranking model for TFMA and TF Serving.

Two signatures:
  serving_default   examples: string [B] serialized tf.Example (the ranking
                    examples' encoding) -> click [B] (+ follow [B]).
  score_candidates  raw feature tensors (models.inputs.raw_signature): user
                    and context features with batch 1, item features with
                    batch N -> click [N] (+ follow [N]); the user's and
                    context's embeddings are computed once and broadcast to
                    the N candidates.
The vocabularies live inside the model (FeatureIds holds them as constants),
so the SavedModel needs no side files.
"""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402

from feature_contract import feature_config as fc  # noqa: E402
from models import inputs  # noqa: E402
from models.ranking.model import RankingModel  # noqa: E402

SERVING_DEFAULT = "serving_default"
SCORE_CANDIDATES = "score_candidates"
EXAMPLES_INPUT = "examples"


class _Exporter(tf.Module):
    def __init__(self, model: RankingModel):
        super().__init__()
        self.model = model
        self.features = fc.from_dict(model.feature_config)
        self.item_names = [f.name for f in self.features.field_features(fc.ITEM)]

    def serve_examples(self, examples: tf.Tensor) -> dict[str, tf.Tensor]:
        features = inputs.parse_examples(examples, self.features, fc.RANKING)
        return dict(self.model(features, training=False))

    def score_candidates(self, **raw: tf.Tensor) -> dict[str, tf.Tensor]:
        model = self.model
        ids = model.feature_ids({n: raw[n] for n in model.feature_names})
        with tf.control_dependencies(self._batch_one_check(ids)):
            logits = model.candidate_logits(ids, self.item_names)
        return {t: tf.sigmoid(v) for t, v in logits.items()}

    def _batch_one_check(self, ids: dict[str, tf.Tensor]) -> list[tf.Operation]:
        """One assertion that every user/context feature has batch 1, naming
        the first that does not (one check per feature cost ~60 graph ops on
        every serving call)."""
        names = [n for n in self.model.feature_names if n not in self.item_names]
        if not names:
            return []
        batch_is_one = tf.equal(tf.stack([tf.shape(ids[n])[0] for n in names]), 1)
        first_bad = tf.gather(tf.constant(names), tf.argmin(tf.cast(batch_is_one, tf.int32)))
        return [tf.debugging.Assert(tf.reduce_all(batch_is_one), [tf.strings.join(
            ["score_candidates: user/context feature ", first_bad, " must have batch 1"])])]


def export(model: RankingModel, export_dir: str) -> str:
    """Writes the SavedModel with both signatures; returns export_dir.

    Args:
      model: a built (trained) RankingModel.
      export_dir: target directory (created; must not hold another model).
    """
    exporter = _Exporter(model)
    serve = tf.function(exporter.serve_examples).get_concrete_function(
        tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT))
    specs = inputs.raw_signature([exporter.features.feature(n) for n in model.feature_names])
    score = tf.function(exporter.score_candidates).get_concrete_function(**specs)
    tf.saved_model.save(exporter, export_dir,
                        signatures={SERVING_DEFAULT: serve, SCORE_CANDIDATES: score})
    return export_dir


def load(export_dir: str) -> Any:
    """The loaded SavedModel (use `.signatures[...]`)."""
    return tf.saved_model.load(export_dir)
