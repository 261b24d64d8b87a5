"""DCN's cross network (the DCN baseline of the ranking comparison).

References:
  Wang et al., "Deep & Cross Network for Ad Click Predictions", ADKDD 2017,
  eq. (3): x_{l+1} = x_0 * (x_l . w_l) + b_l + x_l.
"""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402


@keras.utils.register_keras_serializable(package="feedrec")
class CrossNetwork(keras.layers.Layer):
    """`num_layers` vector cross layers (2 * D parameters each).

    Args:
      num_layers: number of cross layers, >= 1.
    Call:
      x0: [B, D].
    Returns:
      [B, D].
    """

    def __init__(self, num_layers: int = 2, **kwargs):
        super().__init__(**kwargs)
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.num_layers = int(num_layers)

    def build(self, input_shape):
        width = int(input_shape[-1])
        self.kernels = [self.add_weight(name=f"kernel_{i}", shape=(width,),
                                        initializer="glorot_uniform")
                        for i in range(self.num_layers)]
        self.biases = [self.add_weight(name=f"bias_{i}", shape=(width,), initializer="zeros")
                       for i in range(self.num_layers)]
        super().build(input_shape)

    def call(self, x0: tf.Tensor) -> tf.Tensor:
        x = x0
        for kernel, bias in zip(self.kernels, self.biases):
            x = x0 * tf.reduce_sum(x * kernel, axis=-1, keepdims=True) + bias + x
        return x

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "num_layers": self.num_layers}
