"""Which dataset a serving dir serves, and one serving dir per dataset in a work dir.

Why: <work_dir>/serving holds what was pushed last (the ranker, the user
towers, the indexes, blend.json), and every run in a work dir pushes there.
Runs on two datasets would mix them: a ranker the second dataset's gate
refused, a recall model it does not train, or a ranker in a run without a
ranking stage would stay, and the recommender would feed one dataset's
requests to the other's models (their vocabularies turn the ids into OOV:
scores without meaning, and no error).

So a serving dir carries a stamp, `dataset.json` (the dataset's name and the
--data it was run with). A run on another dataset parks the dir beside it as
<serving_dir>.<dataset> and takes back its own parked dir when there is one:
switching datasets in one work dir keeps each one's serving state and
deletes nothing. `make serve` finds the dir of the dataset it is asked for
(`find`), and with no --data serves the stamped one.

A dir without a stamp (written before stamps existed) is taken as the
running dataset's, as runs did before. Only local paths: a deployment on a
cluster gives each dataset its own serving path.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile

STAMP_FILE = "dataset.json"


class ServingDirError(ValueError):
    """A serving dir cannot be claimed or found; the message says what is in the way."""


@dataclasses.dataclass(frozen=True)
class Stamp:
    """Whose models a serving dir holds.

    Attributes:
      dataset: the feature config's name (what the runs key on).
      data: the --data the run was given: a built-in name or the dataset
        YAML's absolute path (serve loads the config and tables from it).
    """

    dataset: str
    data: str


def read_stamp(serving_dir: str) -> Stamp | None:
    """The dir's stamp; None when it has none (or the dir does not exist)."""
    path = os.path.join(serving_dir, STAMP_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
        return Stamp(str(raw["dataset"]), str(raw["data"]))
    except (ValueError, KeyError, TypeError) as err:
        raise ServingDirError(f"{path}: not a serving-dir stamp ({err}); remove it to let the "
                              "next run write a new one") from None


def write_stamp(serving_dir: str, stamp: Stamp) -> None:
    """Writes the stamp atomically (a reader sees the old one or the new one)."""
    os.makedirs(serving_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=serving_dir, prefix=".dataset-")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(dataclasses.asdict(stamp), f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, os.path.join(serving_dir, STAMP_FILE))


def parked(serving_dir: str, dataset: str) -> str:
    """Where a dataset's serving dir waits while another dataset's is in place."""
    return f"{os.path.normpath(serving_dir)}.{re.sub(r'[^A-Za-z0-9_.-]', '_', dataset)}"


def _is_empty(path: str) -> bool:
    return not os.path.isdir(path) or not os.listdir(path)


def claim(serving_dir: str, stamp: Stamp) -> list[str]:
    """Makes serving_dir the given dataset's before its run pushes there.

    Another dataset's dir is moved to parked(serving_dir, its dataset); this
    dataset's parked dir, if any, is moved back into place; the stamp is
    (re)written, so it also records the latest --data.

    Returns:
      one line per move made (empty when none was needed).
    Raises:
      ServingDirError: something is in the way (the message names it); checked
        before anything moves, so a refused claim changes nothing.
    """
    current = read_stamp(serving_dir)
    other = current is not None and current.dataset != stamp.dataset
    park = other and not _holds_only_the_stamp(serving_dir)
    target = parked(serving_dir, current.dataset) if park else None
    own = parked(serving_dir, stamp.dataset)
    take_back = (current is None or other) and os.path.isdir(own)
    # Every check before the first move: a refused claim changes nothing.
    if park and os.path.exists(target):
        raise ServingDirError(
            f"{serving_dir} serves {current.dataset!r}, and {target}, where it would be kept "
            f"while {stamp.dataset!r} runs, exists already: move one of them away")
    if take_back:
        own_stamp = read_stamp(own)
        if own_stamp is None or own_stamp.dataset != stamp.dataset:
            raise ServingDirError(f"{own} should hold {stamp.dataset!r}'s serving dir but its "
                                  f"stamp says {own_stamp.dataset if own_stamp else 'nothing'}")
        if current is None and not _is_empty(serving_dir):
            # An unstamped dir in place: its dataset is unknown, so it is
            # neither overwritten nor guessed at.
            raise ServingDirError(
                f"{serving_dir} has no {STAMP_FILE} (its dataset is unknown) and {own} holds "
                f"{stamp.dataset!r}'s serving dir: move one of them away")
    moves = []
    if park:
        os.replace(serving_dir, target)
        moves.append(f"{serving_dir} held {current.dataset!r}'s models: kept aside as {target}")
    elif other:
        os.remove(os.path.join(serving_dir, STAMP_FILE))  # a run that pushed nothing
    if take_back:
        if os.path.isdir(serving_dir):
            os.rmdir(serving_dir)
        os.replace(own, serving_dir)
        moves.append(f"{stamp.dataset!r}'s models from an earlier run are back in place: "
                     f"{own} -> {serving_dir}")
    write_stamp(serving_dir, stamp)
    return moves


def _holds_only_the_stamp(serving_dir: str) -> bool:
    return set(os.listdir(serving_dir)) <= {STAMP_FILE}


def find(serving_dir: str, dataset: str) -> str | None:
    """The serving dir of `dataset` in serving_dir's place or parked beside it.

    serving_dir itself when it is stamped with `dataset` or has no stamp
    (written before stamps existed); else its parked dir when that is
    stamped with `dataset`; else None.
    """
    stamp = read_stamp(serving_dir)
    if stamp is None or stamp.dataset == dataset:
        return serving_dir
    own = parked(serving_dir, dataset)
    own_stamp = read_stamp(own) if os.path.isdir(own) else None
    return own if own_stamp is not None and own_stamp.dataset == dataset else None
