"""Small ranking-example sets with a learnable signal, for tests and fallbacks.

Writes the sessionize job's layout (README, "Examples written by the
sessionize job") for any feature config, without running Beam:

  out/ranking/Split-{train,eval}/data-00000-of-00001.tfrecord.gz
  out/vocab/<feature>.txt          most frequent first

The hidden click model: each user prefers one value of the item "anchor"
(the first categorical item feature that is not the item id) and one parity
of the context anchor; a follow needs a click and a user/item parity match.
So user x item and item x context interactions carry the signal, which is
what the field-wise models should pick up.
"""

from __future__ import annotations

import collections
import os
from typing import Any

import numpy as np
import tensorflow as tf

from feature_contract import feature_config as fc


def _value_pool(spec: fc.FeatureSpec, size: int) -> list[str]:
    return [f"{spec.name}_{k}" for k in range(size)]


def _anchor(features: fc.FeatureConfig, field: str, skip: str | None = None) -> fc.FeatureSpec:
    for spec in features.field_features(field):
        if spec.type == fc.CATEGORICAL and spec.name != skip:
            return spec
    return features.field_features(field)[0]


def _bytes(values: list[str]) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.encode() for v in values]))


def _int(value: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def write_ranking_examples(out_dir: str, features: fc.FeatureConfig, num_train: int = 400,
                           num_eval: int = 200, num_users: int = 16, num_items: int = 40,
                           values_per_feature: int = 4, seed: int = 0) -> dict[str, Any]:
    """Writes train/eval ranking examples and vocabularies under out_dir.

    Returns:
      {"train_pattern", "eval_pattern", "vocab_dir", "click_rate", "follow_rate"}.
    """
    rng = np.random.default_rng(seed)
    item_id = features.item_id_feature
    item_anchor = _anchor(features, fc.ITEM, skip=item_id.name)
    ctx_anchor = _anchor(features, fc.CONTEXT)
    k = values_per_feature

    def draw(spec: fc.FeatureSpec, n: int) -> list:
        if spec.type == fc.NUMERIC:
            lo, hi = spec.boundaries[0] - 1.0, spec.boundaries[-1] + 1.0
            return list(rng.uniform(lo, hi, n))
        pool = _value_pool(spec, k)
        if spec.type == fc.TAGS:
            return [list(rng.choice(pool, size=rng.integers(0, min(spec.max_len, k) + 1), replace=False))
                    for _ in range(n)]
        return list(rng.choice(pool, size=n))

    users = {s.name: draw(s, num_users) for s in features.field_features(fc.USER)
             if s.type != fc.SEQUENCE}
    for s in features.field_features(fc.USER):
        if s.raw_column == features.users_key and s.type == fc.CATEGORICAL:
            users[s.name] = [f"u{u}" for u in range(num_users)]
    items = {s.name: draw(s, num_items) for s in features.field_features(fc.ITEM)}
    items[item_id.name] = [f"i{i}" for i in range(num_items)]
    anchor_index = {v: i for i, v in enumerate(_value_pool(item_anchor, k))}
    ctx_index = {v: i for i, v in enumerate(_value_pool(ctx_anchor, k))}
    preferred = rng.integers(0, k, num_users)
    parity = rng.integers(0, 2, num_users)
    history: dict[int, list[str]] = collections.defaultdict(list)

    def example(u: int, i: int, ts: int) -> tuple[tf.train.Example, int, int]:
        context = {s.name: draw(s, 1)[0] for s in features.field_features(fc.CONTEXT)}
        a = anchor_index.get(items[item_anchor.name][i], 0) if item_anchor.type == fc.CATEGORICAL else 0
        c = ctx_index.get(context.get(ctx_anchor.name), 0)
        logit = -2.5 + 4.0 * (a == preferred[u]) + 2.0 * ((c + a) % 2 == parity[u])
        click = int(rng.random() < 1.0 / (1.0 + np.exp(-logit)))
        follow = int(click and rng.random() < (0.7 if a % 2 == parity[u] else 0.1))
        feats: dict[str, tf.train.Feature] = {}
        for spec in features.features:
            if spec.type == fc.SEQUENCE:
                value = history[u][-spec.max_len:]
            elif spec.field == fc.USER:
                value = users[spec.name][u]
            elif spec.field == fc.ITEM:
                value = items[spec.name][i]
            else:
                value = context[spec.name]
            if spec.type == fc.NUMERIC:
                feats[spec.name] = tf.train.Feature(float_list=tf.train.FloatList(value=[value]))
            else:
                feats[spec.name] = _bytes(value if isinstance(value, list) else [value])
        feats[fc.CLICK_LABEL] = _int(click)
        feats[fc.FOLLOW_LABEL] = _int(follow)
        feats[fc.TIMESTAMP_KEY] = _int(ts)
        feats[fc.NEW_USER_KEY] = _int(0)
        feats[fc.USER_KEY] = _bytes([f"u{u}"])
        if click:
            history[u].append(items[item_id.name][i])
        return tf.train.Example(features=tf.train.Features(feature=feats)), click, follow

    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    clicks = follows = 0
    out = {}
    for split, n in ((fc.TRAIN, num_train), (fc.EVAL, num_eval)):
        directory = os.path.join(out_dir, fc.RANKING, f"Split-{split}")
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, "data-00000-of-00001.tfrecord.gz")
        with tf.io.TFRecordWriter(path, options="GZIP") as writer:
            for j in range(n):
                ex, click, follow = example(int(rng.integers(num_users)),
                                            int(rng.integers(num_items)), 1_700_000_000 + j)
                clicks += click
                follows += follow
                writer.write(ex.SerializeToString())
                if split == fc.TRAIN:
                    for spec in features.vocab_features:
                        counts[spec.name].update(
                            v.decode() for v in ex.features.feature[spec.name].bytes_list.value)
        out[f"{split}_pattern"] = os.path.join(directory, "*.gz")
    vocab_dir = os.path.join(out_dir, "vocab")
    os.makedirs(vocab_dir, exist_ok=True)
    for spec in features.vocab_features:
        with open(os.path.join(vocab_dir, f"{spec.name}.txt"), "w", encoding="utf-8") as f:
            for value, _ in counts[spec.name].most_common(spec.vocab_size):
                if value:
                    f.write(value + "\n")
    total = num_train + num_eval
    return {**out, "vocab_dir": vocab_dir, "click_rate": clicks / total,
            "follow_rate": follows / total}
