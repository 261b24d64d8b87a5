"""Tiny sessionize-style output for the recall tests.

Layout and encoding: README, "Examples written by the sessionize job".

Users click items of one preferred category, so a working model learns
something measurable in a few hundred examples. Values are generated from the
feature config's specs, so the fixture follows the config, not column names.
"""

from __future__ import annotations

import collections
import os

import numpy as np
import tensorflow as tf

from beam_jobs import feature_config as fc

NUM_ITEMS, NUM_USERS, NUM_CATEGORIES, NUM_CITIES = 60, 40, 5, 3
CLICKS_PER_USER, EVAL_CLICKS, NEW_USERS = 12, 3, 4
START_TS = 1767225600


def item_value(config: fc.FeatureConfig, spec: fc.FeatureSpec, k: int):
    if spec.name == config.item_id_feature.name:
        return f"i{k}"
    if config.roles.get(fc.ROLE_ITEM_CATEGORY) == spec.name:
        return f"cat{k % NUM_CATEGORIES}"
    if config.roles.get(fc.ROLE_ITEM_CITY) == spec.name:
        return f"x{k % NUM_CITIES}"
    if spec.type == fc.TAGS:
        return [f"t{k % NUM_CATEGORIES}", "common"]
    if spec.type == fc.NUMERIC:
        return float(k % 10)
    return f"{spec.name}_{k % 4}"


def user_value(config: fc.FeatureConfig, spec: fc.FeatureSpec, u: int):
    if spec.raw_column == config.users_key:
        return f"u{u}"
    if config.roles.get(fc.ROLE_USER_CITY) == spec.name:
        return f"x{u % NUM_CITIES}"
    if spec.type == fc.TAGS:
        return [f"t{u % NUM_CATEGORIES}"]
    if spec.type == fc.NUMERIC:
        return float(20 + u % 30)
    return f"{spec.name}_{u % NUM_CATEGORIES}"


def context_value(spec: fc.FeatureSpec, step: int):
    return float(step % 24) if spec.type == fc.NUMERIC else f"{spec.name}_{step % 2}"


def _feature(value) -> tf.train.Feature:
    if isinstance(value, float):
        return tf.train.Feature(float_list=tf.train.FloatList(value=[value]))
    if isinstance(value, int):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
    values = [value] if isinstance(value, str) else list(value)
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.encode() for v in values]))


def _write(path: str, rows: list[dict]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path, options="GZIP") as w:
        for row in rows:
            w.write(tf.train.Example(features=tf.train.Features(
                feature={k: _feature(v) for k, v in row.items()})).SerializeToString())


def user_clicks(seed: int = 0) -> dict[int, list[int]]:
    """User -> clicked item indices: mostly the user's category (u % 5)."""
    rng = np.random.default_rng(seed)
    out = {}
    for u in range(NUM_USERS):
        own = [k for k in range(NUM_ITEMS) if k % NUM_CATEGORIES == u % NUM_CATEGORIES]
        picks = rng.choice(own, CLICKS_PER_USER, replace=True)
        noise = rng.random(CLICKS_PER_USER) < 0.1
        picks[noise] = rng.integers(0, NUM_ITEMS, noise.sum())
        out[u] = [int(p) for p in picks]
    return out


def write_dataset(out_dir: str, config_path: str | None = None, seed: int = 0) -> dict[str, str]:
    """Writes item2vec/, retrieval/, items/, vocab/ and item_frequencies.tsv.

    Returns:
      paths: config, item2vec, retrieval, items (glob), vocab.
    """
    config_path = config_path or fc.builtin_config_path("synthetic")
    config = fc.load(config_path)
    user_specs = [f for f in config.field_features(fc.USER) if f.type != fc.SEQUENCE]
    item_specs = [f for f in config.field_features(fc.ITEM)]
    ctx_specs = config.field_features(fc.CONTEXT)
    hist = config.history_feature
    clicks = user_clicks(seed)
    vocab_counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    retrieval = {fc.TRAIN: [], fc.EVAL: []}
    sessions = {fc.TRAIN: [], fc.EVAL: []}
    click_count = collections.Counter()
    for u, items in clicks.items():
        new = u < NEW_USERS
        for p, k in enumerate(items):
            split = fc.EVAL if new or p >= CLICKS_PER_USER - EVAL_CLICKS else fc.TRAIN
            row = {fc.USER_KEY: f"u{u}", fc.TIMESTAMP_KEY: START_TS + 3600 * p + u,
                   fc.NEW_USER_KEY: int(new)}
            for spec in user_specs:
                row[spec.name] = user_value(config, spec, u)
            for spec in item_specs:
                row[spec.name] = item_value(config, spec, k)
            for spec in ctx_specs:
                row[spec.name] = context_value(spec, p)
            row[hist.name] = [f"i{x}" for x in items[:p]][-hist.max_len:]
            retrieval[split].append(row)
            if split == fc.TRAIN:
                click_count[k] += 1
                for spec in user_specs + item_specs + list(ctx_specs):
                    if spec in config.vocab_features:
                        v = row[spec.name]
                        vocab_counts[spec.name].update([v] if isinstance(v, str) else v)
        train_items = [x for p, x in enumerate(items)
                       if not new and p < CLICKS_PER_USER - EVAL_CLICKS]
        eval_items = items if new else items[CLICKS_PER_USER - EVAL_CLICKS:]
        for split, seq in ((fc.TRAIN, train_items), (fc.EVAL, eval_items)):
            if seq:
                sessions[split].append({fc.SESSION_ITEMS_KEY: [f"i{x}" for x in seq],
                                        fc.USER_KEY: f"u{u}", fc.TIMESTAMP_KEY: START_TS + u})
    items_rows = []
    for k in range(NUM_ITEMS):
        row = {spec.name: item_value(config, spec, k) for spec in item_specs
               if spec.source == fc.SOURCE_ITEMS}
        row[fc.ITEM_CLICKS_KEY] = int(click_count[k])
        row[fc.ITEM_IMPRESSIONS_KEY] = int(click_count[k] * 5)
        items_rows.append(row)
        for spec in item_specs:
            if spec.source == fc.SOURCE_ITEMS and spec in config.vocab_features:
                v = row[spec.name]
                vocab_counts[spec.name].update([v] if isinstance(v, str) else v)
    for split in fc.SPLITS:
        _write(os.path.join(out_dir, fc.RETRIEVAL, f"Split-{split}", "data-00000.tfrecord.gz"),
               retrieval[split])
        _write(os.path.join(out_dir, fc.ITEM2VEC, f"Split-{split}", "data-00000.tfrecord.gz"),
               sessions[split])
    _write(os.path.join(out_dir, "items", "data-00000.tfrecord.gz"), items_rows)
    vocab_dir = os.path.join(out_dir, "vocab")
    os.makedirs(vocab_dir, exist_ok=True)
    for name, counter in vocab_counts.items():
        with open(os.path.join(vocab_dir, f"{name}.txt"), "w") as f:
            f.write("".join(f"{v}\n" for v, _ in sorted(counter.items(),
                                                       key=lambda kv: (-kv[1], kv[0])) if v))
    with open(os.path.join(out_dir, "item_frequencies.tsv"), "w") as f:
        f.write("item_id\timpressions\tclicks\n")
        for k in range(NUM_ITEMS):
            f.write(f"i{k}\t{click_count[k] * 5}\t{click_count[k]}\n")
    return {"config": config_path, "item2vec": os.path.join(out_dir, fc.ITEM2VEC),
            "retrieval": os.path.join(out_dir, fc.RETRIEVAL),
            "items": os.path.join(out_dir, "items", "*.gz"), "vocab": vocab_dir}
