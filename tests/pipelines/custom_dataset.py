"""A tiny dataset unlike the built-in ones, written as a user would write theirs.

Made from a small synthetic log, re-shaped: events as CSV with renamed
columns and values and ISO-8601 times, items as JSON Lines under a renamed key,
no users table at all, and a feature config without a single vocab_size.
The dataset YAML sits in its own folder and names the tables relative to it.
"""

from __future__ import annotations

import csv
import datetime
import gzip
import json
import os

from beam_jobs import synthetic

CONFIG = """\
name: my_clicks
timestamp_column: when
user_column: member
item_column: post
event_column: action
timestamp_unit: iso8601
event_values: {view: impression, tap: click, like: follow}
items_key: post_id
session_gap_seconds: 1800
min_session_len: 2
history_max_len: 20
eval_fraction: 0.2
roles: {item_category: category, item_city: post_city}
features:
  - {name: member, field: user, type: categorical, source: events}
  - {name: clicked_posts, field: user, type: sequence, source: history, of: post_id, max_len: 20}
  - {name: post_id, field: item, type: categorical, source: items}
  - {name: category, field: item, type: categorical, source: items}
  - {name: post_city, field: item, type: categorical, source: items, column: city}
  - {name: net, field: context, type: categorical, source: events}
  - {name: hour, field: context, type: categorical, source: derived, derive: hour_of_day}
data:
  events: logs/events-*.csv
  items: posts.jsonl
"""
EVENT_NAMES = {"impression": "view", "click": "tap", "follow": "like"}
EVENTS_FILE = os.path.join("logs", "events-0.csv")


def _iso(ts: int) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).isoformat()


def write_events(synthetic_dir: str, path: str, click_only: bool = False) -> int:
    """The synthetic events as CSV with this dataset's columns; returns the row count.

    click_only: clicks alone (a log without impressions or follows)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rows = 0
    with gzip.open(os.path.join(synthetic_dir, synthetic.EVENTS_FILE), "rt") as src, \
            open(path, "w", newline="", encoding="utf-8") as dst:
        writer = csv.writer(dst)
        writer.writerow(["when", "member", "post", "action", "net"])
        for line in src:
            event = json.loads(line)
            if click_only and event["event"] != "click":
                continue
            writer.writerow([_iso(event["timestamp"]), event["user_id"], event["item_id"],
                             EVENT_NAMES[event["event"]], event["network"]])
            rows += 1
    return rows


def write(folder: str, num_events: int, seed: int = 0, click_only: bool = False) -> str:
    """Writes the dataset (YAML + tables) into folder; returns the YAML's path.

    click_only: the events are the clicks alone and the config maps no event
    to an impression (a click log such as a view log)."""
    source = os.path.join(folder, "_synthetic")
    synthetic.generate(source, num_events, seed=seed)
    write_events(source, os.path.join(folder, EVENTS_FILE), click_only)
    with gzip.open(os.path.join(source, synthetic.ITEMS_FILE), "rt") as src, \
            open(os.path.join(folder, "posts.jsonl"), "w", encoding="utf-8") as dst:
        for line in src:
            item = json.loads(line)
            dst.write(json.dumps({"post_id": item["item_id"], "category": item["category"],
                                  "city": item["city"]}) + "\n")
    path = os.path.join(folder, "my_clicks.yaml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(CONFIG.replace("event_values: {view: impression, tap: click, like: follow}",
                               "event_values: {tap: click}") if click_only else CONFIG)
    return path
