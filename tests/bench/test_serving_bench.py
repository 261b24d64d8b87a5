"""bench.serving_bench: the JSON's `_run` records the commit and date of the run."""
import datetime
import os
import subprocess

import pytest

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


def _pushed_recall_only(root):
    """work/serving with a pushed user tower and index, no ranking model."""
    tower = os.path.join(root, "serving", "models", "user_tower_two_tower", "7")
    os.makedirs(tower)
    with open(os.path.join(tower, "saved_model.pb"), "wb") as f:
        f.write(b"tower")
    os.makedirs(os.path.join(root, "serving", "indexes", "two_tower", "7"))
    ranker = os.path.join(root, "candidate")
    os.makedirs(os.path.join(ranker, "variables"))
    with open(os.path.join(ranker, "saved_model.pb"), "wb") as f:
        f.write(b"pb")
    return ranker


def test_a_refused_ranker_is_served_from_the_private_copy_only(tmp_path):
    from feature_contract import feature_config as fc
    config = fc.load(fc.builtin_config_path("synthetic"))
    work = str(tmp_path / "work")
    ranker = _pushed_recall_only(work)
    out, info = serving_bench.prepare(work, str(tmp_path / "scratch"), config, ranker)
    assert info["toy"] is False and info["ranker"]["source"] == ranker
    assert info["ranker"]["pushed"] is False
    assert info["versions"] == {"ranking": [1], "user_tower_two_tower": [7]}
    with open(os.path.join(out, "models", "ranking", "1", "saved_model.pb"), "rb") as f:
        assert f.read() == b"pb"
    # work/serving itself is left alone.
    assert not os.path.exists(os.path.join(work, "serving", "models", "ranking"))
    assert "blend" not in info["ranker"]


@pytest.mark.parametrize("weights, kept", [
    ({"in:two_tower": 3.0, "log_clicks": -0.1}, False),   # fitted without a ranker
    ({"in:two_tower": 3.0, "click_logit": 0.4}, True),
])
def test_a_blend_that_ignores_the_added_ranker_is_left_out_of_the_copy(tmp_path, weights, kept):
    from feature_contract import feature_config as fc
    from serving.blend import Blend
    config = fc.load(fc.builtin_config_path("synthetic"))
    work = str(tmp_path / "work")
    ranker = _pushed_recall_only(work)
    with open(os.path.join(work, "serving", "blend.json"), "w", encoding="utf-8") as f:
        f.write(Blend(tuple(sorted(weights.items()))).to_json())
    out, info = serving_bench.prepare(work, str(tmp_path / "scratch"), config, ranker)
    assert os.path.exists(os.path.join(out, "blend.json")) is kept
    assert ("blend" in info["ranker"]) is not kept
    assert os.path.exists(os.path.join(work, "serving", "blend.json"))  # work/ untouched


def test_without_a_ranker_a_recall_only_push_falls_back_to_toy_models(tmp_path, monkeypatch):
    from feature_contract import feature_config as fc
    config = fc.load(fc.builtin_config_path("synthetic"))
    work = str(tmp_path / "work")
    ranker = _pushed_recall_only(work)
    calls = []
    monkeypatch.setattr(serving_bench.toy_models, "write_toy_world",
                        lambda out, *a, **k: (calls.append(out),
                                              os.makedirs(os.path.join(out, "models"))))
    _, info = serving_bench.prepare(work, str(tmp_path / "scratch"), config)
    assert info["toy"] is True and len(calls) == 1
    with pytest.raises(ValueError, match="holds no saved_model.pb"):
        serving_bench.prepare(work, str(tmp_path / "scratch2"), config,
                              os.path.join(ranker, "variables"))


def test_the_bench_builds_requests_with_the_config_of_the_stamped_dataset(tmp_path):
    """The serve child reads the copy's stamp; the bench's own requests must use that config."""
    from bench.serving_bench import bench_config
    from serving import serving_dirs
    serving = tmp_path / "serving"
    assert bench_config(str(tmp_path), None).name == "synthetic"  # nothing run: the toy world's
    serving_dirs.write_stamp(str(serving), serving_dirs.Stamp("movielens", "movielens"))
    assert bench_config(str(tmp_path), None).name == "movielens"
    assert bench_config(str(tmp_path), "synthetic").name == "synthetic"  # the flag wins
