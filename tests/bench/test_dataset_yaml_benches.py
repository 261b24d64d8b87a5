"""bench-ranking and bench-recall on a user's dataset YAML, at a tiny size.

The same YAML as the pipeline's acceptance test (renamed columns, ISO times,
no users table, no vocab_size); each bench writes its JSON under its
--work_dir (not bench/results/), keyed by the dataset's name, and reports
exactly the examples the sessionize job wrote.
"""

import json
import os

import pytest

from bench import ranking_bench, recall_bench
from tests.pipelines import custom_dataset

RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "bench", "results")


@pytest.fixture(scope="module")
def my_clicks(tmp_path_factory) -> str:
    return custom_dataset.write(str(tmp_path_factory.mktemp("my_clicks")), 3000)


def _results_mtimes() -> dict[str, float]:
    return {n: os.path.getmtime(os.path.join(RESULTS, n)) for n in os.listdir(RESULTS)}


def _summary(examples_dir: str) -> dict:
    with open(os.path.join(examples_dir, "summary.json"), encoding="utf-8") as f:
        return json.load(f)


def _run(main, bench: str, work: str, *argv: str) -> dict:
    """Runs a bench's main at one seed and epoch; returns the JSON it wrote under work."""
    before = _results_mtimes()
    assert main([*argv, "--seeds", "1", "--max_epochs", "1", "--jobs", "1",
                 "--work_dir", work]) == 0
    assert _results_mtimes() == before  # bench/results/ untouched
    with open(os.path.join(work, f"{bench}-my_clicks.json"), encoding="utf-8") as f:
        return json.load(f)


# LR: an untuned model, trained once. NFwFM would be tuned over the
# learning-rate grid first (three trainings) and timed; what this test checks
# is the bench's data path on a dataset YAML, and NFwFM on this YAML is
# trained by tests/pipelines/test_custom_dataset.py.
RANKING_MODEL = "lr"


def test_ranking_bench_on_a_dataset_yaml(my_clicks, tmp_path):
    report = _run(ranking_bench.main, "ranking", str(tmp_path / "work"),
                  "--datasets", my_clicks, "--models", RANKING_MODEL, "--quick")
    meta = report["my_clicks"]["_meta"]
    written = _summary(meta["examples_dir"])["examples"]["ranking"]
    assert meta["fit_examples"] + meta["validation_examples"] == written["train"]
    assert meta["eval_examples"] == written["eval"]
    model = report["my_clicks"][RANKING_MODEL]
    assert model["seeds"] == 1 and len(model["runs"]) == 1
    assert model["click_auc_mean"] == model["runs"][0]["click"]["auc"]
    assert model["runs"][0]["click"]["examples"] == meta["eval_examples"]


def test_recall_bench_on_a_dataset_yaml(my_clicks, tmp_path):
    report = _run(recall_bench.main, "recall", str(tmp_path / "work"),
                  "--datasets", my_clicks, "--models", "most_popular,two_tower")
    data = report["my_clicks"]["_data"]
    written = _summary(data["sessionized"])["examples"]["retrieval"]
    assert (data["train_examples"], data["eval_examples"]) == (written["train"], written["eval"])
    assert report["my_clicks"]["time_split"]["_queries"]["num_queries"] == written["eval"]
    for model in ("most_popular", "two_tower"):
        assert 0.0 <= report["my_clicks"]["time_split"][model]["hr@50"] <= 1.0
    assert os.path.basename(os.path.dirname(os.path.dirname(data["sessionized"]))) == "work"
