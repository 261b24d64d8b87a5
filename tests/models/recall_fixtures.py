"""Tiny sessionize-style output for the recall tests.

Layout and encoding: README, "Examples written by the sessionize job".

Users click items of one preferred category, so a working model learns
something measurable in a few hundred examples. Values are generated from the
feature config's specs, so the fixture follows the config, not column names.

Sized so that HR@50, the early-stopping monitor, can tell a trained model
from an untrained one: 200 items in 10 categories of 20, so a model that
knows the user's category hits ~0.9 of targets in its top 50 while random
vectors hit ~50/200. Timestamps are hand-known for the validation carve
(models.validation, fraction 0.1):

* retrieval: user u's p-th click at START_TS + 3600 p + u; returning users
  (u >= NEW_USERS) train on p < TRAIN_CLICKS, so the carve keeps
  p = TRAIN_CLICKS - 1 (one example per returning user) as validation.
* item2vec: each returning user's train clicks form two sessions (the
  first FIRST_SESSION_CLICKS, then the rest), stamped with their first
  click; the carve keeps every second session as validation, every first
  one as fit.
"""

from __future__ import annotations

import collections
import os

import numpy as np
import tensorflow as tf

from feature_contract import feature_config as fc

NUM_ITEMS, NUM_USERS, NUM_CATEGORIES, NUM_CITIES = 200, 80, 10, 3
CLICKS_PER_USER, EVAL_CLICKS, NEW_USERS = 12, 2, 4
TRAIN_CLICKS = CLICKS_PER_USER - EVAL_CLICKS
FIRST_SESSION_CLICKS = 7  # of the TRAIN_CLICKS; the rest form a second session
RETURNING_USERS = NUM_USERS - NEW_USERS
START_TS = 1767225600


def click_ts(user: int, position: int) -> int:
    """Timestamp of a user's position-th click (0-based)."""
    return START_TS + 3600 * position + user


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
    """User -> clicked item indices: mostly the user's category (u % NUM_CATEGORIES)."""
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
            split = fc.EVAL if new or p >= TRAIN_CLICKS else fc.TRAIN
            row = {fc.USER_KEY: f"u{u}", fc.TIMESTAMP_KEY: click_ts(u, p),
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
        # (split, first click position, clicks) of each session
        if new:
            spans = [(fc.EVAL, 0, items)]
        else:
            spans = [(fc.TRAIN, 0, items[:FIRST_SESSION_CLICKS]),
                     (fc.TRAIN, FIRST_SESSION_CLICKS, items[FIRST_SESSION_CLICKS:TRAIN_CLICKS]),
                     (fc.EVAL, TRAIN_CLICKS, items[TRAIN_CLICKS:])]
        for split, first, seq in spans:
            sessions[split].append({fc.SESSION_ITEMS_KEY: [f"i{x}" for x in seq],
                                    fc.USER_KEY: f"u{u}", fc.TIMESTAMP_KEY: click_ts(u, first)})
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


# ---- expected values, from the fixture's own clicks ---------------------------
# The carve arithmetic (models.validation, fraction 0.1): validation =
# timestamp >= max - 0.1 * (max - min) over the train split.

def retrieval_validation(seed: int = 0) -> dict[str, float]:
    """The "validation" entry a tower model reports on this fixture's train split.

    Train clicks run from click_ts(NEW_USERS, 0) to click_ts(NUM_USERS - 1,
    TRAIN_CLICKS - 1); the cutoff falls inside the last train hour, so every
    returning user's last train click is validation and nothing else is.
    A validation query counts when its target is not already in its history.
    """
    lo, hi = click_ts(NEW_USERS, 0), click_ts(NUM_USERS - 1, TRAIN_CLICKS - 1)
    clicks = user_clicks(seed)
    last = TRAIN_CLICKS - 1
    return {"cutoff": hi - 0.1 * (hi - lo),
            "fit_examples": RETURNING_USERS * last,
            "validation_examples": RETURNING_USERS,
            "validation_queries": sum(clicks[u][last] not in clicks[u][:last]
                                      for u in range(NEW_USERS, NUM_USERS))}


def item2vec_candidates(seed: int = 0) -> set[str]:
    """Items Item2vec trains on this fixture: those of a fit session (a returning
    user's first session) with another distinct item to pair with."""
    clicks = user_clicks(seed)
    out: set[str] = set()
    for u in range(NEW_USERS, NUM_USERS):
        first = clicks[u][:FIRST_SESSION_CLICKS]
        if len(set(first)) >= 2:
            out.update(f"i{k}" for k in first)
    return out


def next_item_query_count(sessions: list[list[int]], candidates: set[str],
                          every_position: bool = False) -> int:
    """Clicks eval_next_item can query (the last of each session; every_position:
    every click after the first): the click and an earlier one are candidates,
    and the click is not among the session's earlier candidates (all of them
    are excluded from the top-K, not only the recent ones the user vector
    reads)."""
    count = 0
    for s in sessions:
        for end in (range(1, len(s)) if every_position else [len(s) - 1]):
            earlier = [f"i{k}" for k in s[:end] if f"i{k}" in candidates]
            count += (end >= 1 and f"i{s[end]}" in candidates and bool(earlier)
                      and f"i{s[end]}" not in earlier)
    return count


def item2vec_validation(seed: int = 0) -> dict[str, float]:
    """The "validation" entry Item2vec reports on this fixture's train sessions.

    Sessions are stamped with their first click: first sessions from
    click_ts(NEW_USERS, 0), second ones up to click_ts(NUM_USERS - 1,
    FIRST_SESSION_CLICKS); the cutoff falls inside the second sessions' hour.
    """
    lo, hi = click_ts(NEW_USERS, 0), click_ts(NUM_USERS - 1, FIRST_SESSION_CLICKS)
    clicks = user_clicks(seed)
    second = [clicks[u][FIRST_SESSION_CLICKS:TRAIN_CLICKS] for u in range(NEW_USERS, NUM_USERS)]
    return {"cutoff": hi - 0.1 * (hi - lo), "fit_examples": RETURNING_USERS,
            "validation_examples": RETURNING_USERS,
            "validation_queries": next_item_query_count(second, item2vec_candidates(seed),
                                                        every_position=True)}


def item2vec_eval_sessions(seed: int = 0) -> list[list[int]]:
    """The eval split's sessions: a new user's clicks, a returning user's last EVAL_CLICKS."""
    clicks = user_clicks(seed)
    return [clicks[u] if u < NEW_USERS else clicks[u][TRAIN_CLICKS:] for u in range(NUM_USERS)]
