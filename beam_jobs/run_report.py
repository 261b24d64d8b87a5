"""What a finished sessionize run tells its user: the stop rules and the printed summary.

`check_summary` turns a summary.json that says the data is unfit into an
error (an empty table; more dead letters than `max_dead_letter_fraction`;
`check_impressions`, a pipeline's rule: no impression though the config
maps some),
so a bad run ends with a message and a non-zero exit code instead of rc 0
and a model trained on what little was left. `format_summary` is the few
lines the CLI prints at the end.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from feature_contract import feature_config as fc

EVENTS, USERS, ITEMS = "events", "users", "items"


class DataQualityError(ValueError):
    """The raw data failed a stop rule; the message names the table and reasons."""


def _dead_letter_message(table: str, block: Mapping[str, Any], limit: float) -> str:
    dead = {reason: n for reason, n in block["dead_letter"].items() if n}
    total, read = sum(dead.values()), block["read"]
    reasons = ", ".join(f"{reason} {n}" for reason, n in
                        sorted(dead.items(), key=lambda rn: (-rn[1], rn[0])))
    return (f"{100.0 * total / read:.1f}% of the {table} rows were dead-lettered ({total} of "
            f"{read}), more than max_dead_letter_fraction {limit}: {reasons}")


def check_summary(summary: Mapping[str, Any], tables: Mapping[str, str | None],
                  dead_letter_dir: str = "dead_letter/") -> None:
    """Raises when a run's summary shows unusable input.

    Rules, in order: the events table has no rows; a side table that was
    given has no rows; in any table, the share of dead-lettered rows is
    above the summary's `max_dead_letter_fraction` (every table checked,
    one message).

    Args:
      summary: the job's summary (`sessionize.summarize`).
      tables: table -> the glob it was read from (None: not given).
      dead_letter_dir: where the dead-letter records are, for the message.

    Raises:
      DataQualityError: naming the table (and glob) or the reasons with counts.
    """
    for table in (EVENTS, USERS, ITEMS):
        pattern = tables.get(table)
        if pattern is not None and summary[table]["read"] == 0:
            raise DataQualityError(f"{table} table {pattern!r} has no rows")
    limit = summary["max_dead_letter_fraction"]
    over = [_dead_letter_message(t, summary[t], limit) for t in (EVENTS, USERS, ITEMS)
            if summary[t]["read"] and sum(summary[t]["dead_letter"].values())
            > limit * summary[t]["read"]]
    if over:
        raise DataQualityError(
            "; ".join(over) + f". The records and reasons are in {dead_letter_dir}; fix the "
            "data or the feature config (column names, timestamp_unit: s, ms, iso8601 or a "
            "strptime format such as '%m/%d/%Y %I:%M:%S %p', min_timestamp / max_timestamp), "
            "or raise max_dead_letter_fraction")


def check_impressions(summary: Mapping[str, Any], event_values: Mapping[str, str],
                      dead_letter_dir: str = "dead_letter/") -> None:
    """Raises when the config maps raw values to impressions but no accepted event is one.

    A pipeline builds its ranking stage from such a config (one example per
    impression), which would then stop at its first trainer with no example;
    the likely causes are an event value missing from event_values (its rows
    dead-lettered as unknown_event) or a log that has no impressions at all
    (views or clicks only), which the recall stage alone serves. Not a rule of
    the standalone job: its other outputs are still what the config asks for.

    Raises:
      DataQualityError: with the accepted events by type and the fixes.
    """
    mapped = sorted(raw for raw, kind in event_values.items() if kind == fc.IMPRESSION)
    events = summary[EVENTS]
    by_split = events["accepted_by_split"]
    if not mapped or not events["accepted"] or sum(
            by_split[s].get(fc.IMPRESSION, 0) for s in by_split):
        return
    accepted = {kind: sum(by_split[s].get(kind, 0) for s in by_split) for kind in fc.EVENT_TYPES}
    unknown = events["dead_letter"].get("unknown_event", 0)
    raise DataQualityError(
        f"none of the {events['accepted']} accepted events is an impression ("
        + ", ".join(f"{kind} {n}" for kind, n in accepted.items() if n)
        + f"), though event_values maps {mapped} to impression: the ranking stage would have "
        "no example. "
        + (f"{unknown} events were dead-lettered as unknown_event (their raw values are in "
           f"{dead_letter_dir}): map the log's impression value in event_values. "
           if unknown else "")
        + "For a log without impressions (views or clicks only), map no value to impression "
          "in event_values: the run then trains the recall stage alone")


def format_summary(summary: Mapping[str, Any]) -> str:
    """A few lines with the key counts of a run (what the CLI prints)."""
    events = summary["events"]
    dead = {r: n for r, n in events["dead_letter"].items() if n}
    lines = [
        f"events: read {events['read']}, accepted {events['accepted']}, dead-lettered "
        f"{sum(dead.values())}"
        + (f" ({', '.join(f'{r} {n}' for r, n in sorted(dead.items()))})" if dead else "")
        + f", duplicates {events['filtered'].get('duplicate', 0)}",
    ]
    for table in (USERS, ITEMS):
        block = summary[table]
        if block.get("table", True):
            lines.append(f"{table}: read {block['read']}, accepted {block['accepted']}, "
                         f"dead-lettered {sum(block['dead_letter'].values())}")
        else:
            lines.append(f"{table}: no table (ids from the events)")
    split = summary["split"]
    lines.append(f"split: {split['mode']}, split_timestamp {summary['split_timestamp']}, "
                 f"validation_fraction {split['validation_fraction']}")
    for kind in fc.EXAMPLE_KINDS:
        sizes = split["sizes"][kind]
        lines.append(f"  {kind}: train {sizes['train']}, validation {sizes['validation']}, "
                     f"eval {sizes['eval']}")
    lines.append(f"items in the catalogue: {summary['examples'][ITEMS]}")
    vocab = ", ".join(f"{name} {v['size']}" for name, v in summary["vocabularies"].items())
    if vocab:
        lines.append(f"vocabularies: {vocab}")
    failed = [name for name, ok in summary["checks"].items() if not ok]
    # The job's own bookkeeping (counts reconcile); a stop rule is reported apart.
    lines.append("consistency checks: " + ("all pass" if not failed
                                           else "FAILED " + ", ".join(failed)))
    return "\n".join(lines)
