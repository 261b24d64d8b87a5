"""bench-ranking, bench-recall and bench-funnel on a user's dataset YAML, at a tiny size.

The same YAML as the pipeline's acceptance test (renamed columns, ISO times,
no users table, no vocab_size); each bench writes its JSON under its
--work_dir (not bench/results/), keyed by the dataset's name, and reports
exactly the examples the sessionize job wrote.
"""

import json
import os

import numpy as np
import pytest

from bench import funnel_bench, parallel, ranking_bench, recall_bench
from feature_contract import feature_config as fc
from models import inputs
from models.recall import data, protocols
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


def _run(main, name: str, work: str, *argv: str) -> dict:
    """Runs a bench's main at one seed and epoch; returns the JSON `name` it wrote under work."""
    before = _results_mtimes()
    assert main([*argv, "--seeds", "1", "--max_epochs", "1", "--jobs", "1",
                 "--work_dir", work]) == 0
    assert _results_mtimes() == before  # bench/results/ untouched
    with open(os.path.join(work, name), encoding="utf-8") as f:
        return json.load(f)


# LR: an untuned model, trained once. NFwFM would be tuned over the
# learning-rate grid first (three trainings) and timed; what this test checks
# is the bench's data path on a dataset YAML, and NFwFM on this YAML is
# trained by tests/pipelines/test_custom_dataset.py.
RANKING_MODEL = "lr"


def test_ranking_bench_on_a_dataset_yaml(my_clicks, tmp_path):
    # --quick: a smoke run's JSON is named so (parallel.default_out's partial).
    report = _run(ranking_bench.main, "ranking-quick-my_clicks.json", str(tmp_path / "work"),
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
    # Two of the models: a subset's JSON is named so (recall_bench.parse_args).
    report = _run(recall_bench.main, "recall-models-my_clicks.json", str(tmp_path / "work"),
                  "--datasets", my_clicks, "--models", "most_popular,two_tower")
    data = report["my_clicks"]["_data"]
    written = _summary(data["sessionized"])["examples"]["retrieval"]
    assert (data["train_examples"], data["eval_examples"]) == (written["train"], written["eval"])
    assert report["my_clicks"]["time_split"]["_queries"]["num_queries"] == written["eval"]
    time_split = report["my_clicks"]["time_split"]
    bounds = _popularity_bounds(data["sessionized"])
    for metric, (low, high) in bounds.items():
        assert low <= time_split["most_popular"][metric] <= high, (metric, low, high)
    assert bounds["ndcg@50"][1] < 0.9  # the ranks matter: not every target on top
    two_tower = time_split["two_tower"]
    assert two_tower["hr@50"] == two_tower["runs"][0]["hr@50"]
    assert two_tower["runs"][0]["num_users"] == time_split["most_popular"]["runs"][0]["num_users"]
    assert os.path.basename(os.path.dirname(os.path.dirname(data["sessionized"]))) == "work"


def test_funnel_bench_on_a_dataset_yaml(my_clicks, tmp_path):
    # The replay a held-out dataset gets: every model trained on the YAML's own logs, pushed,
    # served and replayed; the JSON goes under --work_dir, keyed by the dataset's name.
    work = str(tmp_path / "work")
    before = _results_mtimes()
    assert funnel_bench.main(["--datasets", my_clicks, "--quick", "--jobs", "1",
                              "--work_dir", work]) == 0
    assert _results_mtimes() == before
    with open(os.path.join(work, "funnel-my_clicks.json"), encoding="utf-8") as f:
        report = json.load(f)
    figures = report["my_clicks"]
    examples = figures["_data"]["sessionized"]
    config = fc.load(os.path.join(examples, parallel.CONFIG_FILE))
    evals = data.load_examples(inputs.split_pattern(os.path.join(examples, fc.RETRIEVAL), fc.EVAL),
                               config, fc.RETRIEVAL)
    # Every time-split eval click whose item is not in the user's history is one request
    # (fewer than the quick cap of 300); this log re-clicks a lot, so that is not every click.
    queries = protocols.time_split(evals, config)
    with_target = sum(1 for targets in queries.targets if targets)
    assert figures["_data"]["requests"] == with_target
    assert 0 < with_target < len(queries)
    assert figures["final"]["all"]["num_users"] == figures["_data"]["requests"]
    assert set(figures["channels"]) >= {"item2vec", "youtubenet", "two_tower"}
    assert set(figures["_targets"]) == {"final_hr@10_ge_best_channel", "final_hr@10_ge_als"}
    assert all(0.0 <= figures[k]["all"]["hr@10"] <= figures[k]["all"]["hr@50"] <= 1.0
               for k in ("final", "merged_candidates"))
    # The blend `make serve` would read is the one the JSON reports.
    with open(os.path.join(work, "quick", "my_clicks", "serving", "blend.json"),
              encoding="utf-8") as f:
        assert json.load(f)["weights"] == figures["_blend"]["weights"]


def _popularity_bounds(examples_dir: str, k: int = 50) -> dict[str, tuple[float, float]]:
    """HR@k and NDCG@k of "clicked by most users in Split-train" on time-split queries.

    Among the catalogue items outside a query's history, the target ranks
    after the `above` items with more training clickers and somewhere among the
    `tied` ones with as many (itself included): rank in [above + 1, above +
    tied]. Ties may break either way, so each figure is bounded (equal bounds
    when no tie straddles the cut).
    """
    config = fc.load(os.path.join(examples_dir, parallel.CONFIG_FILE))
    item_ids = list(data.load_catalogue(os.path.join(examples_dir, "items", "*.gz"), config).ids)
    retrieval = os.path.join(examples_dir, fc.RETRIEVAL)
    train = data.load_examples(inputs.split_pattern(retrieval, fc.TRAIN), config, fc.RETRIEVAL)
    evals = data.load_examples(inputs.split_pattern(retrieval, fc.EVAL), config, fc.RETRIEVAL)
    # Popularity = distinct users who clicked the item (the peer's binary click matrix).
    clickers: dict[str, set[bytes]] = {}
    for user, x in zip(train[fc.USER_KEY], train[config.item_id_feature.name]):
        clickers.setdefault(x.decode(), set()).add(user)
    clicks = {x: len(users) for x, users in clickers.items()}
    sure = maybe = scored = 0
    gain_low = gain_high = 0.0
    catalogue = set(item_ids)
    queries = protocols.time_split(evals, config)
    for targets, history in zip(queries.targets, queries.history):
        if not targets:
            continue  # its target is in its history: the metric skips the query
        scored += 1
        if targets[0] not in catalogue:
            continue  # never a candidate: always a miss
        seen = set(history)
        counts = np.array([clicks.get(x, 0) for x in item_ids if x not in seen])
        target = clicks.get(targets[0], 0)
        above, tied = int((counts > target).sum()), int((counts == target).sum())
        if above + tied <= k:
            sure += 1
        elif above < k:
            maybe += 1
        best, worst = above + 1, above + tied
        gain_high += 1.0 / np.log2(best + 1) if best <= k else 0.0
        gain_low += 1.0 / np.log2(worst + 1) if worst <= k else 0.0
    assert scored > 0
    return {"hr@50": (sure / scored, (sure + maybe) / scored),
            "ndcg@50": (gain_low / scored, gain_high / scored)}
