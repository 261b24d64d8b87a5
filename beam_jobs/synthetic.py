"""Synthetic feed click logs in the raw format of `configs/synthetic.yaml`.

The generator imitates the logs the Meitu and 58.com papers describe, with a
hidden click model so that the ranking and recall models have something real
to learn:

* users and items live in cities (a few dozen, Zipf-sized); users mostly see
  items of their own city; items belong to one of 30 categories with tags;
* item popularity and user activity are heavy-tailed (Zipf / Pareto);
* a user's events come in sessions separated by idle gaps longer than
  `SESSION_GAP_SECONDS`; impressions within a session are seconds apart and
  session starts follow a diurnal cycle;
* every click follows an impression of the same item by a few seconds and
  every follow follows a click; click probability is
  `sigmoid(bias + user x item + user x context + item x context + context)`,
  the bias calibrated to `target_ctr`, the follow bias to `follow_rate`;
* about `new_user_fraction` of the users active in the evaluation period (the
  last `eval_fraction` of the time span) have their first event in it.

Output: `events.jsonl.gz`, `users.jsonl.gz`, `items.jsonl.gz` in `out_dir`.
Events are generated and written in chunks of sessions, so memory is bounded
by the session schedule (about a tenth of the events), not by the events.
The same arguments give the same bytes (numpy PCG64 streams, gzip mtime 0).

CLI: `python -m beam_jobs.synthetic --out_dir D --num_events N --seed S`.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import io
import json
import os
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import orjson

EVENTS_FILE, USERS_FILE, ITEMS_FILE = "events.jsonl.gz", "users.jsonl.gz", "items.jsonl.gz"
SUMMARY_FILE = "generator_summary.json"
# Must match `session_gap_seconds` of configs/synthetic.yaml.
SESSION_GAP_SECONDS = 1800
DEFAULT_START_TS = 1767225600  # 2026-01-01T00:00:00Z

# 58.com-style cities (pinyin) and categories; sizes follow Zipf.
CITIES: tuple[str, ...] = (
    "beijing", "shanghai", "guangzhou", "shenzhen", "chengdu", "hangzhou", "wuhan",
    "chongqing", "nanjing", "tianjin", "suzhou", "xian", "changsha", "zhengzhou",
    "dongguan", "qingdao", "shenyang", "ningbo", "kunming", "dalian", "xiamen",
    "hefei", "foshan", "fuzhou", "harbin", "jinan", "wenzhou", "changchun",
    "shijiazhuang", "changzhou", "quanzhou", "nanning", "guiyang", "nanchang",
    "taiyuan", "wuxi", "urumqi", "lanzhou", "haikou", "hohhot")
CATEGORIES: tuple[str, ...] = (
    "rent", "second_hand_housing", "new_homes", "shop_rental", "office_rental",
    "full_time_jobs", "part_time_jobs", "used_cars", "new_cars", "car_services",
    "second_hand_goods", "phones", "computers", "furniture", "appliances", "pets",
    "home_services", "moving", "cleaning", "repairs", "education", "training",
    "wedding", "travel", "food", "beauty", "health", "local_news", "entertainment",
    "business_services")
TAGS_PER_CATEGORY = 5
GENERIC_TAGS: tuple[str, ...] = (
    "hot", "new", "discount", "verified", "nearby", "urgent", "premium", "popular",
    "recommended", "limited")
AGES: tuple[str, ...] = ("<18", "18-24", "25-29", "30-34", "35-39", "40-49", "50+")
AGE_P = (0.04, 0.22, 0.24, 0.19, 0.13, 0.12, 0.06)
GENDERS: tuple[str, ...] = ("m", "f", "unknown")
GENDER_P = (0.52, 0.44, 0.04)
DEVICE_OS: tuple[str, ...] = ("android", "ios", "other")
DEVICE_OS_P = (0.68, 0.3, 0.02)
NETWORKS: tuple[str, ...] = ("wifi", "4g", "5g", "3g")
NETWORK_P = (0.55, 0.3, 0.12, 0.03)
NETWORK_LOGIT = (0.0, -0.05, 0.05, -0.3)
TABS: tuple[str, ...] = ("recommend", "local", "video")
TAB_P = (0.65, 0.2, 0.15)
TAB_LOGIT = (0.0, 0.15, 0.1)
MEDIA_TYPES: tuple[str, ...] = ("text", "image", "video")
MEDIA_P = (0.3, 0.45, 0.25)
EVENT_NAMES: tuple[str, ...] = ("impression", "click", "follow")
BAD_KINDS: tuple[str, ...] = (
    "malformed_json", "unknown_event", "missing_user_id", "missing_item_id",
    "bad_timestamp", "duplicate")


@dataclasses.dataclass(frozen=True)
class ClickModel:
    """Weights of the hidden click model (logit terms), see module docstring."""

    user_bias_std: float = 0.7
    item_quality_std: float = 0.5
    category_match: float = 1.1  # item category is one of the user's two preferred
    tag_overlap: float = 0.3  # per shared tag between interest_tags and item tags
    latent_scale: float = 1.0  # dot of 4-d user and item vectors
    same_city: float = 0.4
    user_wifi_std: float = 0.5  # user x network: some users click more on wifi
    user_evening_std: float = 0.5  # user x hour: some users click more 19-23h
    video_wifi: float = 0.6  # item x context: video +x on wifi, -x elsewhere
    category_hour_amplitude: float = 0.6  # item x hour: category peak hours
    freshness: float = 0.15  # -x * log1p(item age in days)
    follow_match: float = 1.0  # follow logit: category match
    follow_user_std: float = 0.8  # follow logit: user propensity


@dataclasses.dataclass(frozen=True)
class _Tables:
    """User and item attribute arrays (indices into the vocabularies above)."""

    user_city: np.ndarray  # [U] int
    user_age: np.ndarray
    user_gender: np.ndarray
    user_os: np.ndarray
    user_pref: np.ndarray  # [U, 2] preferred categories
    user_tags: np.ndarray  # [U, 5] interest tag ids, -1 padded
    user_bias: np.ndarray  # [U] float
    user_vec: np.ndarray  # [U, 4]
    user_wifi: np.ndarray
    user_evening: np.ndarray
    user_follow: np.ndarray
    item_city: np.ndarray  # [I] int
    item_cat: np.ndarray
    item_tags: np.ndarray  # [I, 4] tag ids, -1 padded
    item_media: np.ndarray
    item_author: np.ndarray
    item_created: np.ndarray  # [I] int64 unix seconds
    item_quality: np.ndarray
    item_vec: np.ndarray  # [I, 4]
    category_peak: np.ndarray  # [C] hour
    category_amp: np.ndarray  # [C]


def deterministic_gzip(path: str, compresslevel: int = 3) -> gzip.GzipFile:
    """Opens `path` for binary gzip writing with byte-identical output.

    The header carries no file name and mtime 0, so equal content gives equal
    bytes. Close the returned file (it owns the underlying file object).
    """
    raw = open(path, "wb")  # noqa: SIM115 - owned by the GzipFile below
    gz = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0,
                       compresslevel=compresslevel)
    gz.myfileobj = raw  # GzipFile closes myfileobj on close()
    return gz


def write_jsonl_gz(path: str, rows: Iterable[dict[str, Any]]) -> int:
    """Writes dict rows as gzipped JSON Lines (key order kept); returns rows."""
    count = 0
    with deterministic_gzip(path) as out:
        buf = io.BytesIO()
        for row in rows:
            buf.write(orjson.dumps(row))
            buf.write(b"\n")
            count += 1
            if buf.tell() > 1 << 20:
                out.write(buf.getvalue())
                buf = io.BytesIO()
        out.write(buf.getvalue())
    return count


def _tag_names() -> list[str]:
    return [f"{c}:{k}" for c in CATEGORIES for k in range(TAGS_PER_CATEGORY)] + list(GENERIC_TAGS)


def _zipf_weights(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Zipf weights over n ranks, randomly assigned to the n entities."""
    w = 1.0 / np.arange(1, n + 1) ** exponent
    return rng.permutation(w / w.sum())


def _make_tables(rng: np.random.Generator, num_users: int, num_items: int,
                 num_cities: int, start_ts: int, end_ts: int,
                 model: ClickModel) -> _Tables:
    n_cat, n_spec = len(CATEGORIES), len(CATEGORIES) * TAGS_PER_CATEGORY
    city_w = 1.0 / np.arange(1, num_cities + 1) ** 0.8
    city_w /= city_w.sum()
    cat_w = _zipf_weights(n_cat, 0.7, rng)
    # Items: the first num_cities items cover every city so none is empty.
    item_city = rng.choice(num_cities, size=num_items, p=city_w)
    item_city[:num_cities] = np.arange(min(num_cities, num_items))
    item_cat = rng.choice(n_cat, size=num_items, p=cat_w)
    item_cat[:n_cat] = np.arange(min(n_cat, num_items))
    # 2-3 tags of the item's category plus, half the time, a generic tag.
    own = item_cat[:, None] * TAGS_PER_CATEGORY + np.argsort(
        rng.random((num_items, TAGS_PER_CATEGORY)), axis=1)[:, :3]
    own[rng.random(num_items) < 0.5, 2] = -1
    generic = np.where(rng.random(num_items) < 0.5,
                       n_spec + rng.integers(0, len(GENERIC_TAGS), num_items), -1)
    item_tags = np.concatenate([own, generic[:, None]], axis=1)
    num_authors = max(1, num_items // 4)
    item_author = rng.choice(num_authors, size=num_items, p=_zipf_weights(num_authors, 1.0, rng))
    span = end_ts - start_ts
    # Half the catalogue predates the log; the rest appears during it.
    legacy = rng.random(num_items) < 0.5
    item_created = np.where(
        legacy, start_ts - rng.integers(3600, 30 * 86400, num_items),
        start_ts + rng.integers(0, max(span - 3600, 1), num_items)).astype(np.int64)
    item_created[:max(1, num_cities)] = start_ts - 86400  # legacy city seeds

    user_city = rng.choice(num_cities, size=num_users, p=city_w)
    pref = np.stack([rng.choice(n_cat, size=num_users, p=cat_w),
                     rng.choice(n_cat, size=num_users, p=cat_w)], axis=1)
    # 1-5 interest tags, drawn from the tags of the preferred categories.
    n_tags = rng.integers(1, 6, num_users)
    pick = pref[np.arange(num_users)[:, None], rng.integers(0, 2, (num_users, 5))]
    user_tags = pick * TAGS_PER_CATEGORY + rng.integers(0, TAGS_PER_CATEGORY, (num_users, 5))
    user_tags = np.where(np.arange(5)[None, :] < n_tags[:, None], user_tags, -1)
    # Same tag drawn twice: keep one (the row stays -1 padded).
    dup = np.zeros_like(user_tags, dtype=bool)
    for j in range(1, 5):
        dup[:, j] = (user_tags[:, j:j + 1] == user_tags[:, :j]).any(axis=1) & (user_tags[:, j] >= 0)
    user_tags[dup] = -1
    return _Tables(
        user_city=user_city,
        user_age=rng.choice(len(AGES), size=num_users, p=AGE_P),
        user_gender=rng.choice(len(GENDERS), size=num_users, p=GENDER_P),
        user_os=rng.choice(len(DEVICE_OS), size=num_users, p=DEVICE_OS_P),
        user_pref=pref, user_tags=user_tags,
        user_bias=rng.normal(0, model.user_bias_std, num_users),
        user_vec=rng.normal(0, 0.5, (num_users, 4)),
        user_wifi=rng.normal(0, model.user_wifi_std, num_users),
        user_evening=rng.normal(0, model.user_evening_std, num_users),
        user_follow=rng.normal(0, model.follow_user_std, num_users),
        item_city=item_city, item_cat=item_cat, item_tags=item_tags,
        item_media=rng.choice(len(MEDIA_TYPES), size=num_items, p=MEDIA_P),
        item_author=item_author, item_created=item_created,
        item_quality=rng.normal(0, model.item_quality_std, num_items),
        item_vec=rng.normal(0, 0.5, (num_items, 4)),
        category_peak=rng.integers(0, 24, n_cat),
        category_amp=rng.uniform(0, model.category_hour_amplitude, n_cat))


class _ItemSampler:
    """Draws items by Zipf popularity: globally, within a city or a category."""

    def __init__(self, rng: np.random.Generator, t: _Tables):
        n = len(t.item_city)
        self.popularity = _zipf_weights(n, 0.9, rng)
        # Fallback for impressions drawn before an item existed: the oldest half.
        self.legacy = np.argsort(t.item_created, kind="stable")[: max(1, n // 2)]
        self.global_cum = np.cumsum(self.popularity)
        self.global_cum /= self.global_cum[-1]
        self.by_city = self._segments(t.item_city)
        self.by_cat = self._segments(t.item_cat)

    def _segments(self, group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Items sorted by group; key g + u (u in [0,1)) falls into segment g
        # of the sorted array of g + cumulative within-group popularity.
        order = np.argsort(group, kind="stable")
        g = group[order]
        p = self.popularity[order]
        totals = np.bincount(g, weights=p, minlength=g.max() + 1)
        starts = np.concatenate([[0], np.cumsum(np.bincount(g))[:-1]])
        cum = np.cumsum(p)
        before = np.concatenate([[0.0], cum])[starts[g]]
        keys = g + (cum - before) / np.where(totals[g] > 0, totals[g], 1)
        keys[np.r_[starts[1:] - 1, len(g) - 1][np.bincount(g) > 0]] = (
            np.flatnonzero(np.bincount(g) > 0) + 1.0)  # exact segment ends
        return keys, order

    def draw(self, rng: np.random.Generator, n: int, segments=None,
             group: np.ndarray | None = None) -> np.ndarray:
        u = rng.random(n)
        if segments is None:
            return np.minimum(np.searchsorted(self.global_cum, u, side="right"),
                              len(self.global_cum) - 1)
        keys, order = segments
        idx = np.searchsorted(keys, group + u, side="right")
        return order[np.minimum(idx, len(order) - 1)]


def _group_exclusive_cumsum(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Exclusive cumsum of `values` restarting at each group of `counts`."""
    total = np.cumsum(values)
    ends = np.cumsum(counts)
    base = np.concatenate([[0], total])[ends - counts]
    return total - values - np.repeat(base, counts)


@dataclasses.dataclass
class _Schedule:
    user: np.ndarray  # [S] int, grouped by user
    start: np.ndarray  # [S] float wall-clock unix seconds
    n_imp: np.ndarray  # [S] int impressions
    network: np.ndarray  # [S] int
    tab: np.ndarray  # [S] int


class _Clock:
    """Diurnal activity clock: sessions are spread evenly in activity time.

    Activity time advances at intensity(hour) = 1 + 0.5 cos(2 pi (h - 21) / 24)
    (evening peak), normalized so both clocks span the same seconds. A gap of
    g activity seconds is at least g / max_ratio wall seconds.
    """

    def __init__(self, start_ts: int, end_ts: int):
        self.wall = np.arange(start_ts, end_ts + 60, 60, dtype=np.float64)
        hours = (self.wall % 86400) / 3600.0
        intensity = 1.0 + 0.5 * np.cos(2 * np.pi * (hours - 21.0) / 24.0)
        act = np.concatenate([[0.0], np.cumsum(intensity[:-1]) * 60.0])
        norm = (self.wall[-1] - self.wall[0]) / act[-1]
        self.act = act * norm
        self.max_ratio = float(intensity.max() / (1.0 / norm)) * 1.001

    def to_act(self, wall: np.ndarray | float) -> np.ndarray:
        return np.interp(wall, self.wall, self.act)

    def to_wall(self, act: np.ndarray) -> np.ndarray:
        return np.interp(act, self.act, self.wall)


# Upper bound of a session's wall duration: impressions are at most
# MAX_STEP seconds apart, a click/follow at most 2 * MAX_DELAY after it.
MAX_STEP, MAX_DELAY, MAX_SESSION_IMPRESSIONS = 30, 20, 200


def _schedule(rng: np.random.Generator, activity: np.ndarray, is_new: np.ndarray,
              scale: float, clock: _Clock, split_ts: int, end_ts: int) -> _Schedule:
    num_users = len(activity)
    # New users arrive in the eval period: fewer sessions in a shorter window.
    rate = scale * activity * np.where(is_new, 0.3, 1.0)
    sessions = 1 + rng.poisson(rate)
    user = np.repeat(np.arange(num_users), sessions)
    n = len(user)
    n_imp = 1 + np.minimum(np.floor(rng.lognormal(np.log(10.0), 0.9, n)),
                           MAX_SESSION_IMPRESSIONS - 1).astype(np.int64)
    bound = n_imp * MAX_STEP + 2 * MAX_DELAY + 10
    need = (bound + SESSION_GAP_SECONDS + 60) * clock.max_ratio  # activity secs
    split_a, end_a = float(clock.to_act(split_ts)), float(clock.to_act(end_ts))
    arrival = rng.uniform(0.0, split_a * 0.98, num_users)
    lo = np.where(is_new, split_a, arrival)
    room = end_a - lo
    # Drop the sessions that no longer fit in the user's window.
    used = _group_exclusive_cumsum(need, sessions) + need
    keep = used <= np.repeat(room, sessions)
    keep[np.r_[0, np.cumsum(sessions)[:-1]]] = True  # a user keeps >= 1 session
    user, n_imp, need = user[keep], n_imp[keep], need[keep]
    sessions = np.bincount(user, minlength=num_users)
    slack = np.maximum(room - np.bincount(user, weights=need, minlength=num_users), 0.0)
    # Dirichlet split of the slack: a lead-in (new users only) + gap after each.
    after = rng.exponential(1.0, len(user))
    lead = rng.exponential(1.0, num_users) * is_new
    denom = np.bincount(user, weights=after, minlength=num_users) + lead
    share = slack / np.where(denom > 0, denom, 1.0)
    step = need + after * share[user]
    start_a = lo[user] + (lead * share)[user] + _group_exclusive_cumsum(step, sessions)
    start = np.minimum(clock.to_wall(start_a), end_ts - 1)
    m = len(user)
    return _Schedule(user=user, start=start, n_imp=n_imp,
                     network=rng.choice(len(NETWORKS), size=m, p=NETWORK_P),
                     tab=rng.choice(len(TABS), size=m, p=TAB_P))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclasses.dataclass
class _Impressions:
    session: np.ndarray  # index into the chunk's schedule (grouped by user)
    ts: np.ndarray
    user: np.ndarray
    item: np.ndarray
    network: np.ndarray
    os: np.ndarray
    tab: np.ndarray
    click_logit: np.ndarray  # without the calibrated bias
    follow_logit: np.ndarray  # without the calibrated bias


def _impressions(rng: np.random.Generator, s: _Schedule, t: _Tables,
                 sampler: _ItemSampler, model: ClickModel) -> _Impressions:
    sess = np.repeat(np.arange(len(s.user)), s.n_imp)
    n = len(sess)
    steps = 2.0 + np.minimum(rng.exponential(6.0, n), MAX_STEP - 2.0)
    offsets = _group_exclusive_cumsum(steps, s.n_imp)
    ts = np.floor(s.start[sess] + offsets).astype(np.int64)
    user = s.user[sess]
    # Where the feed draws from: the user's interests, own city, or anywhere.
    mode = rng.random(n)
    item = sampler.draw(rng, n)
    city = mode < 0.65
    item[city] = sampler.draw(rng, int(city.sum()), sampler.by_city, t.user_city[user[city]])
    interest = mode >= 0.85
    cat = t.user_pref[user[interest], rng.integers(0, 2, int(interest.sum()))]
    item[interest] = sampler.draw(rng, int(interest.sum()), sampler.by_cat, cat)
    # An item is only shown after it exists.
    for _ in range(3):
        early = np.flatnonzero(t.item_created[item] > ts - 60)
        if not len(early):
            break
        item[early] = sampler.draw(rng, len(early))
    early = np.flatnonzero(t.item_created[item] > ts - 60)
    item[early] = sampler.legacy[rng.integers(0, len(sampler.legacy), len(early))]

    network, tab = s.network[sess], s.tab[sess]
    os_ = np.where(rng.random(n) < 0.05, rng.integers(0, len(DEVICE_OS), n), t.user_os[user])
    hour = (ts // 3600) % 24
    icat = t.item_cat[item]
    match = (icat == t.user_pref[user, 0]) | (icat == t.user_pref[user, 1])
    ut, it = t.user_tags[user], t.item_tags[item]
    overlap = ((ut[:, :, None] == it[:, None, :]) & (ut[:, :, None] >= 0)).sum(axis=(1, 2))
    wifi = network == 0
    video = t.item_media[item] == 2
    age_days = np.maximum(ts - t.item_created[item], 0) / 86400.0
    logit = (t.user_bias[user] + t.item_quality[item]
             + model.category_match * match + model.tag_overlap * overlap
             + model.latent_scale * np.einsum("nd,nd->n", t.user_vec[user], t.item_vec[item])
             + model.same_city * (t.item_city[item] == t.user_city[user])
             + t.user_wifi[user] * wifi
             + t.user_evening[user] * ((hour >= 19) & (hour <= 23))
             + model.video_wifi * video * np.where(wifi, 1.0, -1.0)
             + t.category_amp[icat] * np.cos(2 * np.pi * (hour - t.category_peak[icat]) / 24.0)
             + np.asarray(NETWORK_LOGIT)[network] + np.asarray(TAB_LOGIT)[tab]
             - model.freshness * np.log1p(age_days))
    follow_logit = model.follow_match * match + t.user_follow[user]
    return _Impressions(session=sess, ts=ts, user=user, item=item, network=network, os=os_, tab=tab,
                        click_logit=logit, follow_logit=follow_logit)


def _solve_bias(logits: np.ndarray, weights: np.ndarray, target: float) -> float:
    """Bias b with weighted mean sigmoid(b + logits) == target (bisection)."""
    lo, hi = -30.0, 30.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if np.average(_sigmoid(mid + logits), weights=weights) < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


@dataclasses.dataclass
class _Events:
    session: np.ndarray
    ts: np.ndarray
    user: np.ndarray
    item: np.ndarray
    event: np.ndarray  # 0 impression, 1 click, 2 follow
    network: np.ndarray
    os: np.ndarray
    tab: np.ndarray

    def take(self, idx: np.ndarray | slice) -> "_Events":
        return _Events(*(getattr(self, f.name)[idx] for f in dataclasses.fields(self)))


def _events(rng: np.random.Generator, imp: _Impressions, click_bias: float,
            follow_bias: float) -> _Events:
    n = len(imp.ts)
    click = np.flatnonzero(rng.random(n) < _sigmoid(click_bias + imp.click_logit))
    click_ts = imp.ts[click] + 1 + np.minimum(rng.geometric(0.3, len(click)), MAX_DELAY - 1)
    fol = rng.random(len(click)) < _sigmoid(follow_bias + imp.follow_logit[click])
    follow = click[fol]
    follow_ts = click_ts[fol] + 1 + np.minimum(rng.geometric(0.2, len(follow)), MAX_DELAY - 1)
    idx = np.concatenate([np.arange(n), click, follow])
    ev = _Events(session=imp.session[idx], ts=np.concatenate([imp.ts, click_ts, follow_ts]),
                 user=imp.user[idx], item=imp.item[idx],
                 event=np.repeat(np.arange(3, dtype=np.int64), [n, len(click), len(follow)]),
                 network=imp.network[idx], os=imp.os[idx], tab=imp.tab[idx])
    # Time order within a chunk (stable: ties keep impression < click < follow).
    return ev.take(np.lexsort((ev.event, ev.ts)))


class _Formatter:
    """Formats event rows as JSON lines by string templates (no json encoder)."""

    def __init__(self, num_users: int, num_items: int):
        self.users = [f"u{i}" for i in range(num_users)]
        self.items = [f"i{i}" for i in range(num_items)]
        self.tails = [
            f'"event":"{e}","network":"{n}","os":"{o}","tab":"{t}"}}'
            for e in EVENT_NAMES for n in NETWORKS for o in DEVICE_OS for t in TABS]

    def _tail_index(self, ev: _Events) -> np.ndarray:
        combo = (ev.event * len(NETWORKS) + ev.network) * len(DEVICE_OS) + ev.os
        return combo * len(TABS) + ev.tab

    def lines(self, ev: _Events) -> list[str]:
        users, items, tails = self.users, self.items, self.tails
        return [f'{{"timestamp":{ts},"user_id":"{users[u]}","item_id":"{items[i]}",{tails[k]}'
                for ts, u, i, k in zip(ev.ts.tolist(), ev.user.tolist(), ev.item.tolist(),
                                       self._tail_index(ev).tolist())]

    def bad_line(self, kind: str, ev: _Events, j: int, good: str) -> str:
        """A corrupted copy of event j (its good line is `good`)."""
        ts, u, i = int(ev.ts[j]), self.users[ev.user[j]], self.items[ev.item[j]]
        ctx = (f'"network":"{NETWORKS[ev.network[j]]}","os":"{DEVICE_OS[ev.os[j]]}",'
               f'"tab":"{TABS[ev.tab[j]]}"}}')
        name = EVENT_NAMES[ev.event[j]]
        if kind == "malformed_json":
            return good[: len(good) // 2]
        if kind == "unknown_event":
            return f'{{"timestamp":{ts},"user_id":"{u}","item_id":"{i}","event":"share",{ctx}'
        if kind == "missing_user_id":
            return f'{{"timestamp":{ts},"item_id":"{i}","event":"{name}",{ctx}'
        if kind == "missing_item_id":
            return f'{{"timestamp":{ts},"user_id":"{u}","item_id":"","event":"{name}",{ctx}'
        if kind == "bad_timestamp":
            # Alternately unparseable and out of the accepted range (> 2100).
            bad = '"yesterday"' if j % 2 else "5000000000"
            return f'{{"timestamp":{bad},"user_id":"{u}","item_id":"{i}","event":"{name}",{ctx}'
        if kind == "duplicate":
            return good
        raise ValueError(f"unknown bad-row kind {kind!r}; want one of {BAD_KINDS}")


def _user_rows(t: _Tables, tag_names: Sequence[str]) -> Iterable[dict[str, Any]]:
    for u in range(len(t.user_city)):
        yield {"user_id": f"u{u}", "age": AGES[t.user_age[u]], "gender": GENDERS[t.user_gender[u]],
               "city": CITIES[t.user_city[u]], "device_os": DEVICE_OS[t.user_os[u]],
               "interest_tags": [tag_names[k] for k in t.user_tags[u].tolist() if k >= 0]}


def _item_rows(t: _Tables, tag_names: Sequence[str]) -> Iterable[dict[str, Any]]:
    for i in range(len(t.item_city)):
        yield {"item_id": f"i{i}", "author": f"a{t.item_author[i]}",
               "category": CATEGORIES[t.item_cat[i]], "city": CITIES[t.item_city[i]],
               "tags": [tag_names[k] for k in t.item_tags[i].tolist() if k >= 0],
               "media_type": MEDIA_TYPES[t.item_media[i]], "created_ts": int(t.item_created[i])}


def _choose_new_users(rng: np.random.Generator, old_active: np.ndarray,
                      target: float) -> np.ndarray:
    """Marks the fewest users new so that new / (new + old active) >= target.

    Users are taken in random order; a user turned new no longer counts as an
    old active one.
    """
    perm = rng.permutation(len(old_active))
    k = np.arange(len(perm) + 1)
    remaining_old = old_active.sum() - np.concatenate([[0], np.cumsum(old_active[perm])])
    frac = k / np.maximum(k + remaining_old, 1)
    reach = np.flatnonzero(frac >= target)
    n_new = int(reach[0]) if len(reach) else len(perm)
    is_new = np.zeros(len(old_active), dtype=bool)
    is_new[perm[:n_new]] = True
    return is_new


def generate(out_dir: str, num_events: int, seed: int = 0, num_users: int | None = None,
             num_items: int | None = None, start_ts: int = DEFAULT_START_TS,
             num_days: float = 14.0, num_cities: int = len(CITIES),
             target_ctr: float = 0.075, follow_rate: float = 0.01,
             new_user_fraction: float = 0.30, eval_fraction: float = 0.2,
             bad_fraction: float = 0.0, chunk_impressions: int = 250_000,
             model: ClickModel = ClickModel()) -> dict[str, Any]:
    """Generates a synthetic click log into `out_dir`.

    Args:
      out_dir: directory for events/users/items `.jsonl.gz` (created).
      num_events: number of valid events (impressions + clicks + follows)
        written, exactly; bad rows come on top. Only when num_users cannot
        hold that many sessions in num_days are fewer written (the summary's
        num_events says how many).
      seed: seed of every random stream; same arguments -> same bytes.
      num_users: users (default num_events // 40, at least 50).
      num_items: items (default num_events // 100 in [50, 50000]).
      start_ts: first second of the log (unix seconds).
      num_days: length of the log.
      num_cities: cities used (at most len(CITIES)).
      target_ctr: clicks / impressions the click bias is calibrated to.
      follow_rate: follows / clicks the follow bias is calibrated to.
      new_user_fraction: share of users active in the eval period (the last
        `eval_fraction` of the span) whose first event is in that period.
      eval_fraction: as in the feature config.
      bad_fraction: expected bad rows per valid row (malformed json, unknown
        event, missing ids, bad timestamps, exact duplicates), counted in
        the summary under `bad_rows`.
      chunk_impressions: impressions generated per chunk (memory bound).
      model: hidden click model weights.

    Returns:
      Summary dict: counts per event type, bad rows per kind, users/items,
      new-user share among eval-period users, time span, CTR, speed.

    Raises:
      ValueError: on arguments out of range.
    """
    if num_events < 1:
        raise ValueError(f"num_events must be >= 1, got {num_events}")
    if not 0.0 <= bad_fraction < 1.0:
        raise ValueError(f"bad_fraction must be in [0, 1), got {bad_fraction}")
    if not 0.0 < target_ctr < 1.0 or not 0.0 < follow_rate < 1.0:
        raise ValueError(f"target_ctr {target_ctr} and follow_rate {follow_rate} must be in (0, 1)")
    if not 0.0 <= new_user_fraction < 1.0 or not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"new_user_fraction {new_user_fraction} / eval_fraction "
                         f"{eval_fraction} out of range")
    num_cities = min(max(1, num_cities), len(CITIES))
    num_users = num_users or max(50, num_events // 40)
    num_items = num_items or int(np.clip(num_events // 100, 50, 50_000))
    if num_users < 1 or num_items < 1:
        raise ValueError(f"num_users {num_users} and num_items {num_items} must be >= 1")
    began = time.perf_counter()
    os.makedirs(out_dir, exist_ok=True)
    streams = [np.random.Generator(np.random.PCG64(s))
               for s in np.random.SeedSequence(seed).spawn(6)]
    rng_tables, rng_sched, rng_pilot, rng_events, rng_bad, rng_new = streams

    end_ts = int(start_ts + num_days * 86400)
    split_ts = int(end_ts - eval_fraction * (end_ts - start_ts))
    tables = _make_tables(rng_tables, num_users, num_items, num_cities, start_ts, end_ts, model)
    sampler = _ItemSampler(rng_tables, tables)
    clock = _Clock(start_ts, end_ts)
    activity = np.minimum(rng_tables.pareto(1.5, num_users) + 0.2, 50.0)

    # Sessions: scale activity so the schedule holds ~5% more events than
    # asked (the surplus is cut), then turn users new until the target share.
    events_per_imp = 1.0 + target_ctr * (1.0 + follow_rate)
    want_imps = num_events / events_per_imp * 1.05 + 20
    mean_imps = 1 + np.exp(np.log(10.0) + 0.9 ** 2 / 2)
    scale = max(want_imps / mean_imps / num_users - 1.0, 0.0) / activity.mean()
    for _ in range(8):
        # Every user scheduled both ways; each user keeps one of the two.
        old = _schedule(rng_sched, activity, np.zeros(num_users, bool), scale, clock,
                        split_ts, end_ts)
        new = _schedule(rng_sched, activity, np.ones(num_users, bool), scale, clock,
                        split_ts, end_ts)
        old_active = np.bincount(old.user[old.start >= split_ts], minlength=num_users) > 0
        is_new = _choose_new_users(rng_new, old_active, new_user_fraction)
        keep_old, keep_new = ~is_new[old.user], is_new[new.user]
        order = np.argsort(np.concatenate([old.user[keep_old], new.user[keep_new]]),
                           kind="stable")
        sched = _Schedule(*(np.concatenate([getattr(old, f.name)[keep_old],
                                            getattr(new, f.name)[keep_new]])[order]
                            for f in dataclasses.fields(_Schedule)))
        have = sched.n_imp.sum()
        if have >= want_imps:
            break
        # Too few sessions (users saturated or a small draw): scale up, retry.
        scale = scale * want_imps / have * 1.02 + 1e-3
    # Calibrate the click and follow biases on a pilot sample of sessions.
    pick = np.sort(rng_pilot.choice(len(sched.user), size=min(len(sched.user), 5000),
                                    replace=False))
    pilot_sched = _Schedule(*(getattr(sched, f.name)[pick] for f in dataclasses.fields(sched)))
    pilot = _impressions(rng_pilot, pilot_sched, tables, sampler, model)
    click_bias = _solve_bias(pilot.click_logit, np.ones(len(pilot.click_logit)), target_ctr)
    p_click = _sigmoid(click_bias + pilot.click_logit)
    follow_bias = _solve_bias(pilot.follow_logit, p_click, follow_rate)

    formatter = _Formatter(num_users, num_items)
    counts = np.zeros(3, dtype=np.int64)
    bad_counts = dict.fromkeys(BAD_KINDS, 0)
    first_ts = np.full(num_users, np.iinfo(np.int64).max)
    last_ts = np.full(num_users, np.iinfo(np.int64).min)
    written = 0
    bounds = np.searchsorted(np.cumsum(sched.n_imp), np.arange(
        chunk_impressions, sched.n_imp.sum() + chunk_impressions, chunk_impressions))
    with deterministic_gzip(os.path.join(out_dir, EVENTS_FILE)) as out:
        lo = 0
        for hi in np.unique(np.minimum(bounds + 1, len(sched.user))):
            if written >= num_events or hi <= lo:
                continue
            part = _Schedule(*(getattr(sched, f.name)[lo:hi] for f in dataclasses.fields(sched)))
            lo = hi
            ev = _events(rng_events, _impressions(rng_events, part, tables, sampler, model),
                         click_bias, follow_bias)
            if len(ev.ts) > num_events - written:
                # Cut the surplus at the end of the session order (sessions are
                # grouped by user, users in random order), so whole users go and
                # the span and the eval period keep their shape; a prefix of a
                # session keeps each click's impression and each follow's click.
                by_session = np.lexsort((ev.event, ev.ts, ev.session))
                ev = ev.take(np.sort(by_session[: num_events - written]))
            written += len(ev.ts)
            counts += np.bincount(ev.event, minlength=3)
            np.minimum.at(first_ts, ev.user, ev.ts)
            np.maximum.at(last_ts, ev.user, ev.ts)
            lines = formatter.lines(ev)
            if bad_fraction > 0:
                lines = _inject_bad_rows(rng_bad, lines, ev, formatter, bad_fraction, bad_counts)
            out.write(("\n".join(lines) + "\n").encode())
    write_jsonl_gz(os.path.join(out_dir, USERS_FILE), _user_rows(tables, _tag_names()))
    write_jsonl_gz(os.path.join(out_dir, ITEMS_FILE), _item_rows(tables, _tag_names()))
    seconds = time.perf_counter() - began

    seen = first_ts != np.iinfo(np.int64).max
    t_min, t_max = int(first_ts[seen].min()), int(last_ts[seen].max())
    eval_start = t_min + (1.0 - eval_fraction) * (t_max - t_min)
    eval_users = seen & (last_ts >= eval_start)
    new_users = eval_users & (first_ts >= eval_start)
    summary = {
        "out_dir": out_dir, "seed": seed, "requested_events": num_events,
        "num_events": int(written),
        "impressions": int(counts[0]), "clicks": int(counts[1]), "follows": int(counts[2]),
        "ctr": float(counts[1] / max(counts[0], 1)),
        "follows_per_click": float(counts[2] / max(counts[1], 1)),
        "bad_rows": bad_counts, "bad_rows_total": int(sum(bad_counts.values())),
        "num_users": num_users, "num_items": num_items, "users_with_events": int(seen.sum()),
        "sessions": int(len(sched.user)), "min_timestamp": t_min, "max_timestamp": t_max,
        "eval_start_ts": float(eval_start), "eval_period_users": int(eval_users.sum()),
        "new_users_in_eval": int(new_users.sum()),
        "new_user_fraction": float(new_users.sum() / max(eval_users.sum(), 1)),
        "click_bias": click_bias, "follow_bias": follow_bias,
        "seconds": seconds, "events_per_second": written / seconds if seconds > 0 else 0.0,
    }
    with open(os.path.join(out_dir, SUMMARY_FILE), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    return summary


def _inject_bad_rows(rng: np.random.Generator, lines: list[str], ev: _Events,
                     formatter: _Formatter, fraction: float,
                     bad_counts: dict[str, int]) -> list[str]:
    n_bad = int(rng.binomial(len(lines), fraction))
    if not n_bad:
        return lines
    src = rng.integers(0, len(lines), n_bad)
    kinds = rng.integers(0, len(BAD_KINDS), n_bad)
    bad = []
    for j, k in zip(src.tolist(), kinds.tolist()):
        bad.append(formatter.bad_line(BAD_KINDS[k], ev, j, lines[j]))
        bad_counts[BAD_KINDS[k]] += 1
    # Bad row after its source row: key j + 0.5 sorts between j and j + 1.
    keys = np.concatenate([np.arange(len(lines), dtype=np.float64), src + 0.5])
    merged = lines + bad
    return [merged[i] for i in np.argsort(keys, kind="stable").tolist()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("--num_events", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_users", type=int, default=None)
    parser.add_argument("--num_items", type=int, default=None)
    parser.add_argument("--num_days", type=float, default=14.0)
    parser.add_argument("--bad_fraction", type=float, default=0.0)
    args = parser.parse_args(argv)
    summary = generate(args.out_dir, args.num_events, seed=args.seed, num_users=args.num_users,
                       num_items=args.num_items, num_days=args.num_days,
                       bad_fraction=args.bad_fraction)
    json.dump(summary, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
