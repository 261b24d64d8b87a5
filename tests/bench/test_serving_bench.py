"""bench.serving_bench: the JSON's `_run` records the commit and date of the run."""
import datetime
import os
import subprocess

from bench import serving_bench

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_run_record_has_the_commit_of_head_and_the_date():
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, check=True,
                          capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                           check=True, capture_output=True, text=True).stdout.strip()
    run = serving_bench.run_record(["--workers", "2"])
    assert run["commit"] == head + ("-dirty" if dirty else "")
    assert run["command"] == "python -m bench.serving_bench --workers 2"
    date = datetime.datetime.fromisoformat(run["date"])
    assert date.tzinfo is not None
    assert abs((datetime.datetime.now(datetime.timezone.utc) - date).total_seconds()) < 600
