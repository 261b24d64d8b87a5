"""The final-list blend: features by hand, the listwise loss and its gradient, fitting, files,
and the Recommender ranking by it."""
import math
import os
import shutil

import numpy as np
import pytest

from serving import blend as bl
from serving.blend import Blend, Group, candidate_features, fit_blend, softmax_loss
from serving.catalogue import ItemCatalogue, read_item_frequencies, read_user_profiles
from serving.indexes import IndexSet
from serving.recommender import Recommender, RecommenderSettings, merge_rows
from serving.store import InMemoryStore

NOW = 1_700_000_000.0
CHANNELS = ["two_tower", "youtubenet", "item2vec"]


def test_features_by_hand_from_a_merge():
    # Round robin: rank 0 a:5 b:3, rank 1 a:3 (already in) b:9, rank 2 a:7 -> 5, 3, 9, 7.
    merged = merge_rows([("a", np.array([5, 3, 7])), ("b", np.array([3, 9]))],
                        np.zeros(0, np.int64), 10)
    assert merged.rows.tolist() == [5, 3, 9, 7]
    assert merged.pair_ranks.tolist() == [0, 0, 1, 1, 2]  # (5,a) (3,b) (3,a) (9,b) (7,a)
    feats = candidate_features(merged.pair_rows, merged.pair_channels, merged.pair_ranks,
                               merged.names, merged.rows, np.array([0.5, 0.9, 0.1, 0.2]),
                               np.array([0, 3, 7, 1]))
    assert feats["in:a"].tolist() == [1, 1, 0, 1]
    assert feats["in:b"].tolist() == [0, 1, 1, 0]
    np.testing.assert_allclose(feats["log_rank:a"], [0, math.log(2), 0, math.log(3)])
    np.testing.assert_allclose(feats["log_rank:b"], [0, 0, math.log(2), 0])
    np.testing.assert_allclose(feats["log_clicks"], [0, math.log(4), math.log(8), math.log(2)])
    np.testing.assert_allclose(feats["click_logit"],
                               [0, math.log(9), math.log(1 / 9), math.log(0.25)], atol=1e-12)
    assert "follow_logit" not in feats


def test_seen_rows_keep_their_channel_rank():
    # The seen row 4 takes rank 0 of channel a: row 6 is still a's rank 1.
    merged = merge_rows([("a", np.array([4, 6]))], np.array([4]), 10)
    assert merged.rows.tolist() == [6] and merged.pair_ranks.tolist() == [1]


def test_channel_order_scores_by_hand_and_reproduces_the_channel_list():
    # Merge of a = [5, 3, 7] and b = [3, 9, 2]: rows 5, 3, 9, 7, 2 (round robin).
    merged = merge_rows([("a", np.array([5, 3, 7])), ("b", np.array([3, 9, 2]))],
                        np.zeros(0, np.int64), 10)
    assert merged.rows.tolist() == [5, 3, 9, 7, 2]
    feats = candidate_features(merged.pair_rows, merged.pair_channels, merged.pair_ranks,
                               merged.names, merged.rows, None, np.zeros(5))
    order = bl.channel_order("b")
    assert dict(order.weights) == {"in:b": 100.0, "log_rank:b": -1.0}
    assert not order.uses_ranker
    # b's rows score 100 - log(1 + rank): 3 -> 100, 9 -> 100 - log 2, 2 -> 100 - log 3;
    # rows outside b score 0.
    np.testing.assert_allclose(order.score(feats),
                               [0.0, 100.0, 100 - math.log(2), 0.0, 100 - math.log(3)])
    ranked = merged.rows[np.argsort(-order.score(feats), kind="stable")]
    assert ranked.tolist() == [3, 9, 2, 5, 7]  # b's own list, then the rest in merge order


def test_score_weights_present_features_and_ignores_unknown_names():
    blend = Blend((("click_logit", 2.0), ("in:gone", 5.0), ("log_clicks", -1.0)))
    score = blend.score({"click_logit": np.array([1.0, 0.0]), "log_clicks": np.array([3.0, 1.0]),
                         "in:new": np.array([9.0, 9.0])})
    np.testing.assert_allclose(score, [-1.0, -1.0])


def test_loss_by_hand_and_gradient_by_finite_differences():
    # One group, two candidates, scores 0 and log 3: p = (1/4, 3/4); target the first.
    x = np.array([[0.0], [math.log(3)]])
    loss, grad = softmax_loss(np.array([1.0]), x, np.array([1.0, 0.0]), np.array([0]), 0.0)
    assert loss == pytest.approx(math.log(4))
    assert grad[0] == pytest.approx(0.75 * math.log(3))  # sum p x - x_target
    rng = np.random.default_rng(0)
    x = rng.normal(size=(9, 3))
    y = np.array([0, 1, 0, 0, 0.5, 0.5, 0, 0, 1.0])  # groups [0,4) [4,6) [6,9)
    w = rng.normal(size=3)
    _, grad = softmax_loss(w, x, y, np.array([0, 4, 6]), 0.1)
    for i in range(3):
        step = np.eye(3)[i] * 1e-6
        numeric = (softmax_loss(w + step, x, y, np.array([0, 4, 6]), 0.1)[0]
                   - softmax_loss(w - step, x, y, np.array([0, 4, 6]), 0.1)[0]) / 2e-6
        assert grad[i] == pytest.approx(numeric, rel=1e-5, abs=1e-8)


def test_fit_recovers_planted_weights():
    rng = np.random.default_rng(3)
    truth = np.array([1.5, -2.0, 0.0])
    groups = []
    for _ in range(3000):
        x = rng.normal(size=(20, 3)) * np.array([1.0, 0.5, 2.0]) + np.array([0.0, 3.0, 0.0])
        p = np.exp(x @ truth)
        target = rng.choice(20, p=p / p.sum())
        groups.append(Group({"f0": x[:, 0], "f1": x[:, 1], "f2": x[:, 2]},
                            np.arange(20) == target))
    groups.append(Group({"f0": np.zeros(3)}, np.zeros(3, bool)))  # no target: left out
    fitted = fit_blend(groups, ["f0", "f1", "f2"], l2=1e-4)
    np.testing.assert_allclose([w for _, w in fitted.weights], truth, atol=0.15)
    assert fitted.fitted["requests"] == 3001 and fitted.fitted["requests_used"] == 3000
    assert fitted.fitted["mean_log_likelihood"] > fitted.fitted["uniform_log_likelihood"]


def test_fit_without_a_usable_group_is_a_clear_error():
    with pytest.raises(ValueError, match=r"no request with its target among >= 2 candidates "
                                         r"\(of 1\)"):
        fit_blend([Group({"f": np.zeros(1)}, np.ones(1, bool))], ["f"])


def test_json_round_trip_and_bad_files(tmp_path):
    blend = Blend((("click_logit", 0.25), ("in:two_tower", 3.0)), {"requests": 7})
    path = tmp_path / "blend.json"
    path.write_text(blend.to_json())
    assert Blend.read(str(path)) == blend
    with pytest.raises(ValueError, match="blend file is not JSON"):
        Blend.from_json("{")
    with pytest.raises(ValueError, match=r'blend file needs \{"weights"'):
        Blend.from_json('{"weights": {"click_logit": "high"}}')
    with pytest.raises(ValueError, match="must be finite"):
        Blend((("click_logit", float("nan")),))


@pytest.fixture
def served(world, config, client, tmp_path):
    indexes_root = tmp_path / "indexes"
    shutil.copytree(os.path.join(world["root"], "indexes"), indexes_root)
    catalogue = ItemCatalogue.from_table(world["items"], config,
                                         read_item_frequencies(world["item_frequencies"]))

    def make(blend):
        store = InMemoryStore(max_clicks=50)
        store.put_profiles(read_user_profiles(world["users"], config))
        store.set_clicks("u1", ["i5", "i9"])
        return Recommender(config, client, store, IndexSet(str(indexes_root), CHANNELS),
                           catalogue, RecommenderSettings(num_candidates=120, per_channel=60,
                                                          blend=blend), clock=lambda: NOW)
    return make


def test_recommender_ranks_by_the_blend(served):
    plain = served(None).recommend("u1", {"network": "network_1"}, k=10)
    # The click logit alone keeps the ranker's order; its scores are the logits.
    logit_only = served(Blend((("click_logit", 1.0),))).recommend("u1", {"network": "network_1"},
                                                                 k=10)
    assert [r.item_id for r in logit_only] == [r.item_id for r in plain]
    np.testing.assert_allclose([r.score for r in logit_only],
                               bl.logit(np.array([r.score for r in plain])), rtol=1e-6)
    # Rank in the two-tower list alone: the final list is that channel's order.
    recommender = served(Blend((("log_rank:two_tower", -1.0), ("in:two_tower", 100.0))))
    recs = recommender.recommend("u1", {"network": "network_1"}, k=10)
    lists, seen = recommender._channel_lists(
        recommender.user_features("u1", recommender.store.get_profile("u1"), ["i5", "i9"],
                                  {"network": "network_1"}, NOW),
        ["i5", "i9"], recommender.store.get_profile("u1"))
    tower = dict(lists)["two_tower"]
    own = [recommender.catalogue.ids[r] for r in tower if r not in set(seen.tolist())][:10]
    assert [r.item_id for r in recs] == own
    assert all("two_tower" in r.channels for r in recs)


def test_uses_ranker_only_with_a_nonzero_ranker_weight():
    assert Blend((("click_logit", 0.5),)).uses_ranker
    assert Blend((("follow_logit", -0.1), ("in:two_tower", 1.0))).uses_ranker
    assert not Blend((("click_logit", 0.0), ("in:two_tower", 1.0))).uses_ranker
    assert not Blend((("log_clicks", 1.0), ("log_rank:two_tower", -1.0))).uses_ranker


class _AlwaysRank(Blend):
    """The same weights, but the recommender calls the ranker as before the skip."""

    @property
    def uses_ranker(self) -> bool:
        return True


def test_a_blend_without_ranker_weights_skips_the_ranking_predict(served):
    weights = (("in:two_tower", 5.1), ("in:youtubenet", 2.0), ("in:item2vec", 2.3),
               ("log_rank:two_tower", -0.8), ("log_rank:youtubenet", -0.4),
               ("log_rank:item2vec", -0.2), ("log_clicks", -0.7), ("click_logit", 0.0))
    called = served(_AlwaysRank(weights))
    skipped = served(Blend(weights))
    models = []
    predict_full = skipped.client.predict_full

    def recording(model, *args, **kwargs):
        models.append(model)
        return predict_full(model, *args, **kwargs)

    skipped.client = type("Recording", (), {"__getattr__": lambda _, name: getattr(
        called.client, name), "predict_full": staticmethod(recording)})()
    for user, context in (("u1", {"network": "network_1"}), ("new_user", {})):
        want = called.recommend(user, context, k=20)
        got = skipped.recommend(user, context, k=20)
        assert got == want  # same items, scores (bit for bit) and channels
    assert "ranking" not in models and models  # the towers were still asked
    assert skipped.stats["ranking_skipped"] == 2 and not called.stats["ranking_skipped"]


def test_readiness_checks_the_ranker_only_when_the_blend_weighs_it(served):
    without = served(Blend((("in:two_tower", 1.0), ("click_logit", 0.0)))).readiness()[1]
    with_ranker = served(Blend((("in:two_tower", 1.0), ("click_logit", 0.3)))).readiness()[1]
    no_blend = served(None).readiness()[1]
    assert "model:ranking" not in without
    assert with_ranker["model:ranking"] == no_blend["model:ranking"] == "ok"
    assert set(with_ranker) - set(without) == {"model:ranking"}


def test_serve_reads_the_serving_dirs_blend_or_a_named_one(tmp_path):
    from serving.serve import read_blend
    assert read_blend(None, str(tmp_path)) is None  # no blend.json: the ranker alone
    blend = Blend((("in:two_tower", 2.0),))
    (tmp_path / bl.BLEND_FILE).write_text(blend.to_json())
    assert read_blend(None, str(tmp_path)) == blend
    other = tmp_path / "other.json"
    other.write_text(Blend((("click_logit", 1.0),)).to_json())
    assert read_blend(str(other), str(tmp_path)).weights == (("click_logit", 1.0),)
    with pytest.raises(ValueError, match=r"--blend .*missing.json: no such file"):
        read_blend(str(tmp_path / "missing.json"), str(tmp_path))


def test_without_a_blend_or_a_pushed_ranker_serve_keeps_the_merge_order(tmp_path):
    import argparse
    from serving.serve import MERGE_ORDER, ranker_pushed, read_blend
    merge = read_blend(None, str(tmp_path), ranker_pushed=False)
    assert merge is MERGE_ORDER and merge.weights == () and not merge.uses_ranker
    # A blend file still wins; so does a ranker that was pushed.
    assert read_blend(None, str(tmp_path), ranker_pushed=True) is None
    (tmp_path / bl.BLEND_FILE).write_text(Blend((("in:two_tower", 2.0),)).to_json())
    assert read_blend(None, str(tmp_path), ranker_pushed=False).weights == (("in:two_tower", 2.0),)
    models = tmp_path / "models"
    local = argparse.Namespace(model_server=None, ranking_model="ranking")
    assert not ranker_pushed(local, str(models))  # no models folder
    (models / "ranking").mkdir(parents=True)
    assert not ranker_pushed(local, str(models))  # a folder without a version
    (models / "ranking" / "17").mkdir()
    assert not ranker_pushed(local, str(models))  # a version still being written
    (models / "ranking" / "17" / "saved_model.pb").write_bytes(b"")
    assert ranker_pushed(local, str(models))
    remote = argparse.Namespace(model_server="tfs:8500", ranking_model="ranking")
    assert ranker_pushed(remote, str(tmp_path / "none"))  # a remote server's models are not listed
