"""NFM's Bi-Interaction pooling.

References:
  He & Chua, "Neural Factorization Machines for Sparse Predictive Analytics",
  SIGIR 2017, eq. (4).
"""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402


@keras.utils.register_keras_serializable(package="feedrec")
class BiInteraction(keras.layers.Layer):
    """Sum of all pairwise element-wise products of the feature vectors.

    f_BI = sum_{i<j} v_i * v_j = 0.5 * ((sum_i v_i)^2 - sum_i v_i^2),
    computed in O(F * d) instead of O(F^2 * d).

    Call:
      embeddings: [B, F, d] one vector per feature.
    Returns:
      [B, d].
    """

    def call(self, embeddings: tf.Tensor) -> tf.Tensor:
        if embeddings.shape.rank != 3:
            raise ValueError(f"BiInteraction wants [B, F, d], got shape {embeddings.shape}")
        summed = tf.reduce_sum(embeddings, axis=1)
        return 0.5 * (tf.square(summed) - tf.reduce_sum(tf.square(embeddings), axis=1))

    def compute_output_shape(self, input_shape):
        return tf.TensorShape([input_shape[0], input_shape[2]])

    def get_config(self) -> dict[str, Any]:
        return super().get_config()
