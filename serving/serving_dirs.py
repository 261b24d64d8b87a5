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

Moving needs <serving_dir>.lock exclusively; runs (for their whole length,
whatever their pipeline name) and `make serve` (while it serves) hold it
shared, so no dir moves under a run's pushers or a live server's pollers: a
switch is refused with a message instead. Real TF Serving started on
work/serving/models is not a holder: stop it before switching datasets.

A dir without a stamp (written before stamps existed) is taken as the
running dataset's, as runs did before. Only local paths: a deployment on a
cluster gives each dataset its own serving path.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import re
import tempfile
import time
from typing import IO

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


def lock_path(serving_dir: str) -> str:
    """The lock file beside the serving dir (it stays in place when the dir moves)."""
    return os.path.normpath(serving_dir) + ".lock"


def _open_lock(serving_dir: str) -> IO[str]:
    path = lock_path(serving_dir)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    return open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held until the caller closes it


def _lock_shared(f: IO[str], serving_dir: str, tries: int = 100) -> None:
    """A shared hold; a claim holds the lock exclusively only while it moves folders."""
    for _ in range(tries):
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            time.sleep(0.05)
    f.close()
    raise ServingDirError(f"{serving_dir} is being switched to another dataset by a run "
                          f"(lock {lock_path(serving_dir)}); try again once that run has started")


def hold(serving_dir: str) -> IO[str]:
    """A shared hold on the work dir's serving dirs for as long as the file stays open.

    `make serve` and the runners hold it: while any holder lives, no claim
    moves a serving dir from under it (a running server polls its paths and
    would load the other dataset's models into its own catalogue and store).
    """
    f = _open_lock(serving_dir)
    _lock_shared(f, serving_dir)
    return f


@dataclasses.dataclass(frozen=True)
class _Plan:
    park: str | None  # where the dir in place goes
    take_back: str | None  # the dataset's own parked dir to move into place
    drop_stamp: bool  # another dataset's stamp on a dir with nothing else in it


def _plan(serving_dir: str, stamp: Stamp) -> _Plan:
    """What claim must move; every refusal is raised here, before anything moves."""
    current = read_stamp(serving_dir)
    other = current is not None and current.dataset != stamp.dataset
    park = parked(serving_dir, current.dataset) if (
        other and not _holds_only_the_stamp(serving_dir)) else None
    own = parked(serving_dir, stamp.dataset)
    take_back = own if (current is None or other) and os.path.isdir(own) else None
    if park and os.path.exists(park):
        raise ServingDirError(
            f"{serving_dir} serves {current.dataset!r}, and {park}, where it would be kept "
            f"while {stamp.dataset!r} runs, exists already: move one of them away")
    if take_back:
        own_stamp = read_stamp(own)
        if own_stamp is None or own_stamp.dataset != stamp.dataset:
            raise ServingDirError(f"{own} should hold the serving dir of {stamp.dataset!r} but its "
                                  f"stamp says {own_stamp.dataset if own_stamp else 'nothing'}")
        if current is None and not _is_empty(serving_dir):
            # An unstamped dir in place: its dataset is unknown, so it is
            # neither overwritten nor guessed at.
            raise ServingDirError(
                f"{serving_dir} has no {STAMP_FILE} (its dataset is unknown) and {own} holds "
                f"the serving dir of {stamp.dataset!r}: move one of them away")
    return _Plan(park, take_back, other and park is None)


def claim(serving_dir: str, stamp: Stamp) -> tuple[list[str], IO[str]]:
    """Makes serving_dir the given dataset's before its run pushes there.

    Another dataset's dir is moved to parked(serving_dir, its dataset); this
    dataset's parked dir, if any, is moved back into place; the stamp is
    (re)written, so it also records the latest --data. Moving needs the lock
    (lock_path) exclusively: refused while a server or another run holds it.

    Returns:
      (one line per move made, empty when none was needed; the lock file,
      held shared: the run keeps it open until it ends).
    Raises:
      ServingDirError: something is in the way or the dir is in use (the
        message names it); checked before anything moves, so a refused
        claim changes nothing.
    """
    f = _open_lock(serving_dir)
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        exclusive = True
    except BlockingIOError:
        exclusive = False
    try:
        plan = _plan(serving_dir, stamp)
    except ServingDirError:
        f.close()
        raise
    if (plan.park or plan.take_back or plan.drop_stamp) and not exclusive:
        f.close()
        current = read_stamp(serving_dir)
        raise ServingDirError(
            f"{serving_dir} serves {current.dataset if current else 'another dataset'!r} and is "
            f"in use (`make serve` or another run holds {lock_path(serving_dir)}): switching it "
            f"to {stamp.dataset!r} would pull its models from under them. Stop them first, or "
            "run in another --work_dir")
    moves = []
    if plan.park:
        current = read_stamp(serving_dir)
        os.replace(serving_dir, plan.park)
        moves.append(f"{serving_dir} held the models of {current.dataset!r}: kept aside as "
                     f"{plan.park}")
    elif plan.drop_stamp:
        os.remove(os.path.join(serving_dir, STAMP_FILE))  # a run that pushed nothing
    if plan.take_back:
        if os.path.isdir(serving_dir):
            os.rmdir(serving_dir)
        os.replace(plan.take_back, serving_dir)
        moves.append(f"the models of {stamp.dataset!r} from an earlier run are back in "
                     f"place: {plan.take_back} -> {serving_dir}")
    if read_stamp(serving_dir) != stamp:
        write_stamp(serving_dir, stamp)
    if exclusive:
        fcntl.flock(f, fcntl.LOCK_SH)  # moves done: other holders may join
    else:
        _lock_shared(f, serving_dir)
    return moves, f


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
