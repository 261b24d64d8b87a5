"""bench.funnel_bench: a hand-computed funnel and a round trip against Recommender.recommend."""
import copy
import math
import os

import numpy as np
import pytest
import tensorflow as tf

from bench import funnel_bench as fb
from bench import stats
from components import report
from components.artifacts import PipelineReport
from feature_contract import feature_config as fc
from models.recall import protocols
from serving import toy_models
from serving.catalogue import ItemCatalogue, read_user_profiles
from serving.client import PredictResult, TensorInfo
from serving.indexes import IndexSet
from serving.recommender import Channel, Recommender, RecommenderSettings
from serving.store import InMemoryStore
from tests.components.helpers import executor_fn, new_artifact
from tests.serving.conftest import config, world  # noqa: F401 - the serving tests' toy world

NOW = 1_700_000_000
IDS = ["a", "b", "c", "d", "e", "f", "g", "h"]
# The ranking model's click score per item (a fake model server answers with these).
CLICK = {"a": 0.0, "b": 0.2, "c": 0.5, "d": 0.7, "e": 0.0, "f": 0.0, "g": 0.1, "h": 0.9}


class FakeModelServer:
    """The two calls the Recommender makes: the tower's fixed user vector [1, 0] and
    the ranking model's CLICK score of each candidate id."""

    def signature_inputs(self, model, signature="serving_default"):
        if model == "ranking":
            return 1, {"item_id": TensorInfo(tf.string, (None,))}
        return 1, {}

    def predict_full(self, model, inputs, signature="serving_default"):
        if model == "ranking":
            ids = [x.decode() for x in inputs["item_id"]]
            return PredictResult({"click": np.array([CLICK[i] for i in ids], np.float32)}, 1)
        return PredictResult({"user_embedding": np.array([[1.0, 0.0]], np.float32)}, 1)

    def available_versions(self, model):
        return [1]


@pytest.fixture
def hand_recommender(config, tmp_path):
    # Channel "tower" orders by the first coordinate: a b c d e f g h.
    tower = np.array([[8 - i, 0.0] for i in range(8)], np.float32)
    # Channel "i2v" (mean of the history's vectors; history = [a], so a's vector
    # [0, 1]) orders by the second coordinate: a h g b f e d c.
    i2v = np.array([[0, y] for y in (1.0, 0.6, 0.1, 0.2, 0.3, 0.4, 0.7, 0.8)], np.float32)
    root = str(tmp_path / "indexes")
    toy_models.write_index(os.path.join(root, "tower", "1"), IDS, tower, "tower")
    toy_models.write_index(os.path.join(root, "i2v", "1"), IDS, i2v, "i2v")
    catalogue = ItemCatalogue(list(IDS), {}, None, np.zeros(len(IDS), np.int64))
    settings = RecommenderSettings(num_candidates=5, per_channel=3,
                                   channels=(Channel("tower", "user_tower_x"),
                                             Channel("i2v", None)))
    return fb.FunnelRecommender(config, FakeModelServer(), InMemoryStore(), IndexSet(
        root, ["tower", "i2v"]), catalogue, settings)


def hand_queries(targets, is_new):
    n = len(targets)
    return protocols.Queries(
        features={fc.USER_KEY: np.array([b"u1"] * n, object),
                  fc.TIMESTAMP_KEY: np.array([NOW + i for i in range(n)], np.int64),
                  "network": np.array([b"wifi"] * n, object)},
        targets=[[t] for t in targets], history=[["a"]] * n, is_new=np.array(is_new, bool))


def test_hand_computed_funnel(config, hand_recommender, tmp_path):
    queries = hand_queries(["c", "g"], [False, True])
    requests = fb.requests_of(queries, config)
    assert requests[1] == fb.Request("u1", ("a",), {"network": "wifi",
                                                   fc.TIMESTAMP_KEY: NOW + 1})
    replayed = [fb.replay(hand_recommender, r) for r in requests]
    row = {x: i for i, x in enumerate(IDS)}
    first = replayed[0]
    # Each channel asks per_channel + |history| = 4 rows: tower a b c d, i2v a h g b;
    # a is seen. Round robin by rank: b(tower) h(i2v) | c g | d, b(i2v joins b): 5 admitted.
    assert [IDS[r] for r in first.channels["tower"]] == ["b", "c", "d"]
    assert [IDS[r] for r in first.channels["i2v"]] == ["h", "g", "b"]
    assert [IDS[r] for r in first.merged] == ["b", "h", "c", "g", "d"]
    # Ranked by CLICK: h .9, d .7, c .5, b .2, g .1.
    assert [IDS[r] for r in first.final] == ["h", "d", "c", "b", "g"]
    assert first.final_channels == [("i2v",), ("tower",), ("tower",), ("tower", "i2v"),
                                    ("i2v",)]
    assert hand_recommender.store.recent_clicks("u1") == ["a"]

    als = np.full((2, fb.FINAL_K), -1, np.int64)
    als[0, :2] = [row["c"], row["b"]]  # hits request 1 at rank 1
    als[1, :2] = [row["b"], row["d"]]  # misses request 2
    figures = fb.funnel_figures(replayed, queries, IDS, {"als": als}, ["tower", "i2v"], 5)
    final = figures["final"]
    # Request 1: c at rank 3 -> 1/log2(4); request 2: g at rank 5 -> 1/log2(6).
    assert final["all"]["hr@10"] == 1.0 and final["all"]["hr@50"] == 1.0
    assert final["all"]["ndcg@10"] == pytest.approx((1 / math.log2(4) + 1 / math.log2(6)) / 2)
    assert final["returning_users"]["ndcg@10"] == pytest.approx(0.5)
    assert final["new_users"]["ndcg@10"] == pytest.approx(1 / math.log2(6))
    tower, i2v = figures["channels"]["tower"], figures["channels"]["i2v"]
    # tower: c at rank 2 for request 1, g absent; i2v: c absent, g at rank 2.
    assert tower["all"]["hr@10"] == 0.5 and i2v["all"]["hr@10"] == 0.5
    assert tower["all"]["ndcg@10"] == pytest.approx(1 / math.log2(3) / 2)
    assert i2v["new_users"]["ndcg@10"] == pytest.approx(1 / math.log2(3))
    assert i2v["returning_users"]["hr@10"] == 0.0
    # Final top 5: tower retrieved d c b (3/5), alone d c (2/5); i2v h b g, alone h g.
    assert tower["share_of_final@10"] == pytest.approx(0.6)
    assert tower["only_share_of_final@10"] == pytest.approx(0.4)
    assert i2v["share_of_final@10"] == pytest.approx(0.6)
    assert tower["served_requests"] == 2
    # The merge order before ranking (b h c g d): c at rank 3, g at rank 4; all 5 candidates
    # make up the whole merged set, so its HR at max(num_candidates, FINAL_K) is 1.
    merged = figures["merged_candidates"]["all"]
    assert merged["ndcg@10"] == pytest.approx((1 / math.log2(4) + 1 / math.log2(5)) / 2)
    assert merged["hr@50"] == 1.0
    assert figures["references"]["als"]["all"]["hr@10"] == 0.5
    check_report(figures, str(tmp_path))
    best = figures["_targets"]["final_hr@10_ge_best_channel"]
    assert (best["b"], best["met"], best["mean_difference"], best["n"]) == ("tower", True,
                                                                            0.5, 2)
    versus_als = figures["_targets"]["final_hr@10_ge_als"]
    assert versus_als["final_hr@10"] == 1.0 and versus_als["b_hr@10"] == 0.5
    assert versus_als["met"] is True


def check_report(figures, root):
    """The pipeline report draws the replay's JSON: table rows, targets and the plot."""
    results = {"handmade": figures, "_run": {"commit": "x"}}
    rows = report.funnel_rows(results)["handmade"]
    assert [(r["list"], r["kind"]) for r in rows] == [
        ("final", "final"), ("merged candidates", "merged"), ("tower", "channel"),
        ("i2v", "channel"), ("als", "reference")]
    assert rows[2]["hr@10"] == 0.5 and rows[2]["share"] == pytest.approx(0.6)
    path = os.path.join(root, "funnel.json")
    stats.write_report(path, results)
    artifact = new_artifact(PipelineReport, root, "report")
    executor_fn(report.PipelineReporter)(report=artifact, publish_dir=os.path.join(root, "pub"),
                                         funnel_results=path)
    with open(os.path.join(artifact.uri, "funnel_hr_at_10.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    text = open(os.path.join(artifact.uri, "report.md")).read()
    assert "| handmade | tower | 0.5000 | 0.3155 | 0.5000 | 0.6000 |" in text
    assert "| handmade | final | 1.0000 | 0.4434 | 1.0000 | - |" in text
    assert ("- handmade final_hr@10_ge_als: met (final 1.0000 vs als 0.5000, paired over "
            "requests: tie)") in text
    # A pipeline names its own dataset: another dataset's replay in the same JSON is left
    # out, and a JSON without this dataset leaves the section out.
    other = copy.deepcopy(figures)
    other["channels"]["tower"]["all"]["hr@10"] = 0.25
    two = {"handmade": figures, "other": other, "_run": {"commit": "x"}}
    assert list(report.funnel_rows(two, "other")) == ["other"]
    assert [line.split(" ")[0] for line in report.funnel_targets(two, "other")] == ["other"] * 2
    assert list(report.funnel_rows(two)) == ["handmade", "other"]
    stats.write_report(path, two)
    for dataset, shown in (("other", True), ("missing", False)):
        artifact = new_artifact(PipelineReport, root, f"report-{dataset}")
        executor_fn(report.PipelineReporter)(report=artifact,
                                             publish_dir=os.path.join(root, "pub"),
                                             funnel_results=path, funnel_dataset=dataset,
                                             funnel_sha256="0123456789abcdef")
        text = open(os.path.join(artifact.uri, "report.md")).read()
        assert ("| other | tower | 0.2500 | 0.3155 | 0.5000 | 0.6000 |" in text) is shown
        assert "| handmade |" not in text
        assert (f"- replay figures from {path} (written at commit x, sha256 0123456789ab): the "
                "bench's own trained models, not this run's" in text) is shown
        assert os.path.exists(os.path.join(artifact.uri, "funnel_hr_at_10.png")) is shown


def test_popularity_reference_excludes_the_history(config):
    # Training clicks: c three times, a twice, b once; the request has clicked c.
    clicks = ["c", "c", "c", "a", "a", "b"]
    train = {fc.USER_KEY: np.array([f"u{i}".encode() for i in range(6)], object),
             "item_id": np.array([x.encode() for x in clicks], object)}
    queries = protocols.Queries({}, [["a"]], [["c"]], np.array([False]))
    top = fb.reference_topk(train, queries, config, IDS, 0, names=("most_popular",))
    assert top["most_popular"].shape == (1, fb.FINAL_K)
    assert [IDS[r] for r in top["most_popular"][0, :2]] == ["a", "b"]


def test_shares_skip_empty_lists_and_count_each_channel():
    out = fb.shares([[("x",), ("x", "y")], []], ["x", "y", "z"], top=10)
    assert out["x"] == {"share_of_final@10": 1.0, "only_share_of_final@10": 0.5}
    assert out["y"] == {"share_of_final@10": 0.5, "only_share_of_final@10": 0.0}
    assert out["z"]["share_of_final@10"] == 0.0


@pytest.mark.parametrize("user, history, context", [
    ("u1", ("i5", "i7", "i9"), {"network": "network_1"}),
    ("never_seen", (), {"city": "city_2"}),  # cold start: popular channels join
])
def test_replay_final_list_equals_recommend(config, world, user, history, context):
    settings = RecommenderSettings(num_candidates=120, per_channel=60, popular_fallback=20)
    replayer = fb.build_recommender(config, world["root"], world["items"],
                                    world["users"], world["item_frequencies"], settings)
    context = {**context, fc.TIMESTAMP_KEY: NOW}
    replayed = fb.replay(replayer, fb.Request(user, history, dict(context)))

    # The plain serving Recommender over its own model-server client and store.
    client, _ = fb.serving_client(world["root"])
    store = InMemoryStore()
    store.put_profiles(read_user_profiles(world["users"], config))
    store.set_clicks(user, list(history))
    plain = Recommender(config, client, store, IndexSet(
        os.path.join(world["root"], "indexes"), [c.name for c in settings.channels]),
        replayer.catalogue, settings)
    served = plain.recommend(user, dict(context), k=fb.FINAL_K)
    assert len(served) == fb.FINAL_K
    assert [replayer.catalogue.ids[r] for r in replayed.final] == [r.item_id for r in served]
    assert replayed.final_channels == [r.channels for r in served]
    profile = store.get_profile(user) or {}
    row = plain.user_features(user, profile, list(history), context, NOW)
    assert [replayer.catalogue.ids[r] for r in replayed.merged] == list(
        plain.candidates(user, row, list(history), profile))
    if not history:
        assert {"popular", "popular_city"} <= set(replayed.channels)
    else:
        assert set(replayed.channels) == {"two_tower", "youtubenet", "item2vec"}
        seen = {replayer.catalogue.row[i] for i in history}
        assert not any(seen & set(rows.tolist()) for rows in replayed.channels.values())


def test_ranker_learning_rate_is_the_validation_winner_of_the_pipelines_grid(tmp_path):
    """The replayed ranker's learning rate is chosen on validation from the pipeline's grid."""
    from models.layers.feature_embedding import load_vocabularies
    from models.ranking import config as rc
    from models.ranking import export, synthetic_examples
    features = fc.load(fc.builtin_config_path("movielens"))
    data = synthetic_examples.write_ranking_examples(str(tmp_path), features, num_train=600,
                                                     num_eval=10, seed=0)
    out = fb.train_ranker(str(tmp_path), features, load_vocabularies(features, data["vocab_dir"]),
                          seed=0, max_epochs=2, max_train=None,
                          export_dir=str(tmp_path / "export"))
    tuning = out["learning_rate_tuning"]
    assert [row["learning_rate"] for row in tuning] == list(rc.TUNED_LEARNING_RATES)
    (chosen,) = [row for row in tuning if row["chosen"]]
    assert out["learning_rate"] == chosen["learning_rate"]
    assert out["best_validation"] == chosen["validation"] == max(r["validation"] for r in tuning)
    assert out["fit_examples"] + out["validation_examples"] == 600
    # The export is the winner at its best epoch: it scores validation as it did.
    from models.ranking import metrics as ranking_metrics
    records = [r.numpy() for r in tf.data.TFRecordDataset(
        tf.io.gfile.glob(data["train_pattern"]), compression_type="GZIP")]
    parsed = [tf.train.Example.FromString(r).features.feature for r in records]
    held_out = [r for r, f in zip(records, parsed)
                if f[fc.TIMESTAMP_KEY].int64_list.value[0] >= out["validation_cutoff"]]
    labels = [f[fc.CLICK_LABEL].int64_list.value[0] for f in parsed
              if f[fc.TIMESTAMP_KEY].int64_list.value[0] >= out["validation_cutoff"]]
    assert len(held_out) == out["validation_examples"]
    scores = export.load(str(tmp_path / "export")).signatures["serving_default"](
        examples=tf.constant(held_out))["click"].numpy()
    assert ranking_metrics.auc(labels, scores) == pytest.approx(out["best_validation"], abs=1e-6)
