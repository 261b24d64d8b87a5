"""serving.replay's validation blend fit, and the BlendFitter component that publishes it.

The toy world serves real SavedModels and FAISS indexes. Its validation
requests' clicked item is planted as each request's two-tower rank-0
candidate, so a correct fit must rank that item first (validation HR@10 of
the blend 1.0) by weighting the two-tower rank, and the published file must
be the fitted blend.
"""
import json
import os
import shutil

import numpy as np
import pytest

from components import blend_fitter
from components.artifacts import FeatureVocabulary, FinalBlend
from feature_contract import feature_config as fc
from serving import replay as rp
from serving.blend import BLEND_FILE, Blend, Group, channel_order
from serving.recommender import RecommenderSettings
from tests.components.helpers import executor_fn, new_artifact

T0 = 1_700_000_000
HISTORY = ("i1", "i2")
CONTEXT = {"network": "network_1", "os": "os_1", "tab": "tab_1"}


@pytest.fixture
def serving_dir(world, tmp_path):
    out = tmp_path / "serving"
    for part in ("models", "indexes"):
        shutil.copytree(os.path.join(world["root"], part), out / part)
    return str(out)


def _arrays(users, items, times, config):
    n = len(users)
    hist = np.array([[h.encode() for h in HISTORY]] * n, dtype=object)
    out = {fc.USER_KEY: np.array([u.encode() for u in users], object),
           config.item_id_feature.name: np.array([i.encode() for i in items], object),
           fc.TIMESTAMP_KEY: np.array(times, np.int64),
           config.history_feature.name: hist}
    for name, value in CONTEXT.items():
        out[name] = np.array([value.encode()] * n, object)
    return out


@pytest.fixture
def planted(config, world, serving_dir):
    """40 fit clicks (t < T0 + 900) and 20 validation clicks whose item is the
    request's two-tower rank-0 candidate."""
    fit_users = [f"u{k % 20}" for k in range(40)]
    fit_items = [f"i{3 + k % 7}" for k in range(40)]
    fit_times = [T0 + 20 * k for k in range(40)]  # up to T0 + 780
    val_users = [f"u{k}" for k in range(20)]
    val_times = [T0 + 901 + 5 * k for k in range(20)]  # the span's last 10% starts at T0 + 900
    recommender = rp.build_recommender(config, serving_dir, world["items"], world["users"], None,
                                       RecommenderSettings(blend=rp.RANKER_ONLY))
    targets = []
    for user, ts in zip(val_users, val_times):
        got = rp.replay(recommender, rp.Request(user, HISTORY, {**CONTEXT, fc.TIMESTAMP_KEY: ts}))
        targets.append(recommender.catalogue.ids[got.channels["two_tower"][0]])
    val_times[-1] = T0 + 1000  # the span ends at T0 + 1000
    return _arrays(fit_users + val_users, fit_items + targets, fit_times + val_times, config)


def test_click_counts_from_the_fit_period_by_hand(config, tmp_path):
    arrays = _arrays(["u0", "u1", "u0"], ["i3", "i3", "i4"], [1, 2, 3], config)
    path = rp.write_click_counts(arrays, config, str(tmp_path / "counts.tsv"))
    assert open(path).read() == "item_id\timpressions\tclicks\ni3\t0\t2\ni4\t0\t1\n"


def test_fit_ranks_the_planted_two_tower_item_first(config, world, serving_dir, planted,
                                                    tmp_path):
    blend, record = rp.fit_validation_blend(planted, config, serving_dir, world["items"],
                                            world["users"], str(tmp_path), 100, 0)
    assert record["validation_cutoff"] == pytest.approx(T0 + 900)
    assert record["requests"] == 20 and record["requests_used"] == 20
    figures = record["validation_hr@10"]
    assert figures["blend_in_sample"] == 1.0 and figures["channel:two_tower"] == 1.0
    # Every toy candidate is in the two-tower list (its in: feature is constant,
    # weight 0); a better rank there must raise the score.
    weights = record["fitted_weights"]
    assert weights["log_rank:two_tower"] < -1.0 and weights["in:two_tower"] == 0.0
    # Held out, the blend can at best tie the two-tower list (1.0): a tie
    # serves the channel's own order, which finds every planted click too.
    assert figures["blend_held_out"] == 1.0
    assert record["chosen"] == "channel:two_tower"
    assert blend.weights == channel_order("two_tower").weights
    assert record["weights"] == {"in:two_tower": 100.0, "log_rank:two_tower": -1.0}
    assert blend.fitted["chosen"] == "channel:two_tower"
    assert figures["chosen"] == 1.0 and figures["channel_order:two_tower"] == 1.0
    assert record["mean_log_likelihood"] > record["uniform_log_likelihood"]
    # Popularity came from the 40 fit clicks: i3..i9, 5 or 6 clicks each.
    counts = open(tmp_path / "fit_item_frequencies.tsv").read().splitlines()
    assert counts[1:] == [f"i{3 + k}\t0\t{6 if k < 5 else 5}" for k in range(7)]


def test_choose_final_order_serves_the_blend_only_when_it_beats_every_channel_held_out():
    fitted = Blend((("log_rank:a", -1.0),))
    channels = {"a": 0.30, "b": 0.31, "c": 0.31}
    assert rp.choose_final_order(fitted, 0.311, channels) == (fitted, "blend")
    # A tie with the best channel serves the channel; of tied channels the
    # first name in sorted order.
    assert rp.choose_final_order(fitted, 0.31, channels) == (channel_order("b"), "channel:b")
    assert rp.choose_final_order(fitted, 0.2, channels) == (channel_order("b"), "channel:b")
    assert rp.choose_final_order(fitted, 0.0, {}) == (fitted, "blend")
    # Tied served orders: the channel whose own list scores higher wins the tie
    # (here "c", though "b" sorts first); no own figure counts as 0.
    own = {"a": 0.5, "b": 0.02, "c": 0.30}
    assert rp.choose_final_order(fitted, 0.31, channels, own) == (channel_order("c"), "channel:c")
    assert rp.choose_final_order(fitted, 0.31, channels, {"b": 0.1}) == \
        (channel_order("b"), "channel:b")
    assert rp.choose_final_order(fitted, 0.312, channels, own) == (fitted, "blend")
    # The channel order carries the provenance of the blend it was preferred to.
    fitted = Blend((("log_rank:a", -1.0),), {"requests": 7})
    assert rp.choose_final_order(fitted, 0.0, channels)[0].fitted == {"requests": 7}


def _toy_replayed(f: list[float]) -> rp.Replayed:
    merged = np.arange(len(f))
    return rp.Replayed(merged, [], {}, merged, {"f": np.asarray(f, np.float64)})


def test_cross_validated_lists_rank_each_request_by_a_blend_fitted_without_it():
    # Request 0's click is its f = 1 candidate (row 0), request 1's its f = 0
    # candidate (row 0 too, f reversed). Fitted on request 0 alone the weight
    # of f is positive, on request 1 alone negative: held out, each request is
    # ranked by the other's blend and its click falls to second place (a
    # blend fitted on both weighs f about 0 and keeps the merge order, which
    # ranks both clicks first: in sample would say 1.0).
    replayed = [_toy_replayed([1.0, 0.0]), _toy_replayed([0.0, 1.0])]
    groups = [Group(r.features, np.array([True, False])) for r in replayed]
    lists = rp.cross_validated_lists(replayed, groups, ["f"], folds=2, seed=0)
    assert [rows.tolist() for rows in lists] == [[1, 0], [1, 0]]
    assert rp.hr_at(lists, [np.array([0]), np.array([0])], k=1) == 0.0
    # One request, two folds: the other fold has nothing to fit on, so the
    # request keeps its merge order.
    alone = rp.cross_validated_lists(replayed[:1], groups[:1], ["f"], folds=2, seed=0)
    assert alone[0].tolist() == [0, 1]
    with pytest.raises(ValueError, match="cross-validation needs folds >= 2, got 1"):
        rp.cross_validated_lists(replayed, groups, ["f"], folds=1, seed=0)


def _run_fitter(planted, config, world, serving_dir, tmp_path, monkeypatch, items=None,
                min_requests=20, use_ranker=1):
    monkeypatch.setattr("models.recall.data.load_examples", lambda *a, **k: planted)
    vocab = new_artifact(FeatureVocabulary, str(tmp_path), "vocab")
    with open(os.path.join(vocab.uri, "feature_config.yaml"), "w") as f:
        f.write(config.to_yaml())
    examples = new_artifact(FeatureVocabulary, str(tmp_path), "examples")
    out = new_artifact(FinalBlend, str(tmp_path), "blend")
    executor_fn(blend_fitter.BlendFitter)(
        retrieval_examples=examples, vocabulary=vocab, blend=out, serving_dir=serving_dir,
        items=items or world["items"], users=world["users"], num_requests=100,
        min_requests=min_requests, seed=0, use_ranker=use_ranker)
    return out


def test_component_publishes_the_fitted_blend(config, world, serving_dir, planted, tmp_path,
                                              monkeypatch):
    out = _run_fitter(planted, config, world, serving_dir, tmp_path, monkeypatch)
    assert out.get_int_custom_property("published") == 1
    published = os.path.join(serving_dir, BLEND_FILE)
    assert out.get_string_custom_property("published_path") == published
    assert Blend.read(published) == Blend.read(os.path.join(out.uri, BLEND_FILE))
    fit = json.load(open(os.path.join(out.uri, blend_fitter.FIT_FILE)))
    assert fit["validation_hr@10"]["blend_in_sample"] == 1.0


def test_component_fits_without_the_ranker_when_none_is_served(config, world, serving_dir,
                                                               planted, tmp_path, monkeypatch):
    shutil.rmtree(os.path.join(serving_dir, "models", "ranking"))
    out = _run_fitter(planted, config, world, serving_dir, tmp_path, monkeypatch)
    assert out.get_int_custom_property("published") == 1
    assert out.get_string_custom_property("reason") == (
        "published without the ranker's features: no ranking model served under "
        f"{serving_dir}/models/ranking")
    blend = Blend.read(os.path.join(serving_dir, BLEND_FILE))
    assert "click_logit" not in dict(blend.weights)
    fit = json.load(open(os.path.join(out.uri, blend_fitter.FIT_FILE)))
    # Without a ranker the "ranker order" is the merge order.
    figures = fit["validation_hr@10"]
    assert figures["ranker_only"] == figures["merge_order"]
    assert figures["blend_in_sample"] == 1.0


def test_a_run_without_a_ranking_stage_does_not_call_a_pushed_ranker(
        config, world, serving_dir, planted, tmp_path, monkeypatch):
    """A recall-only run (a log without impressions) in a serving dir where an earlier run
    pushed a ranker: that ranker was trained on other data, so the blend is fitted without it."""
    with_ranker = _run_fitter(planted, config, world, serving_dir, tmp_path / "a", monkeypatch)
    fit = json.load(open(os.path.join(with_ranker.uri, blend_fitter.FIT_FILE)))
    assert fit["ranker_scored_requests"] == 20 and fit["use_ranker"] is True
    assert with_ranker.get_string_custom_property("reason") == "published"
    out = _run_fitter(planted, config, world, serving_dir, tmp_path / "b", monkeypatch,
                      use_ranker=0)
    assert out.get_string_custom_property("reason") == (
        "published without the ranker's features: the run has no ranking stage (use_ranker 0)")
    fit = json.load(open(os.path.join(out.uri, blend_fitter.FIT_FILE)))
    assert fit["ranker_scored_requests"] == 0 and fit["use_ranker"] is False
    assert "click_logit" not in fit["fitted_weights"]
    figures = fit["validation_hr@10"]
    assert figures["ranker_only"] == figures["merge_order"]
    assert os.path.isdir(os.path.join(serving_dir, "models", "ranking"))  # left as it was


def test_a_run_without_a_ranking_stage_replaces_a_ranker_blend_it_cannot_refit(
        config, world, serving_dir, planted, tmp_path, monkeypatch):
    """Refused (too few requests) in a recall-only run: the earlier blend, which orders by the
    ranker, must not keep serving; merge order does. With a ranking stage the earlier stays."""
    path = os.path.join(serving_dir, BLEND_FILE)
    earlier = Blend((("click_logit", 1.0), ("log_clicks", 0.5)))
    blend_fitter.publish(earlier.to_json(), path)
    kept = _run_fitter(planted, config, world, serving_dir, tmp_path / "a", monkeypatch,
                       min_requests=1000)
    assert kept.get_int_custom_property("published") == 0 and Blend.read(path) == earlier
    out = _run_fitter(planted, config, world, serving_dir, tmp_path / "b", monkeypatch,
                      min_requests=1000, use_ranker=0)
    assert out.get_int_custom_property("published") == 1
    assert out.get_string_custom_property("reason") == (
        "merge order published (only 20 validation requests have their click among the "
        "candidates (min_requests 1000): too few to fit the blend's weights on): the run has no "
        "ranking stage and what was served would order by a ranker (use_ranker 0)")
    served = Blend.read(path)
    assert served.weights == () and not served.uses_ranker
    assert served.fitted["chosen"] == "merge_order"
    # A served blend that weighs no ranker is left as it is.
    no_ranker = Blend((("log_clicks", 1.0),))
    blend_fitter.publish(no_ranker.to_json(), path)
    _run_fitter(planted, config, world, serving_dir, tmp_path / "c", monkeypatch,
                min_requests=1000, use_ranker=0)
    assert Blend.read(path) == no_ranker


def test_component_refuses_too_few_usable_requests(config, world, serving_dir, planted, tmp_path,
                                                    monkeypatch):
    out = _run_fitter(planted, config, world, serving_dir, tmp_path, monkeypatch, min_requests=21)
    assert out.get_int_custom_property("published") == 0
    assert out.get_string_custom_property("reason") == (
        "only 20 validation requests have their click among the candidates (min_requests 21): "
        "too few to fit the blend's weights on")
    assert not os.path.exists(os.path.join(serving_dir, BLEND_FILE))


def _sharded_items(world, tmp_path):
    """The toy items table copied into two files; returns the glob matching both."""
    for k in range(2):
        shutil.copy(world["items"], tmp_path / f"items-{k}.jsonl.gz")
    return str(tmp_path / "items-*.jsonl.gz")


def test_component_reads_a_sharded_items_table_and_refuses_an_empty_glob(
        config, world, serving_dir, planted, tmp_path, monkeypatch):
    single = _run_fitter(planted, config, world, serving_dir, tmp_path / "one", monkeypatch)
    # The same catalogue in two files (duplicate ids keep their first row): the same blend.
    pattern = _sharded_items(world, tmp_path)
    out = _run_fitter(planted, config, world, serving_dir, tmp_path / "two", monkeypatch,
                      items=pattern)
    assert out.get_int_custom_property("published") == 1
    assert Blend.read(os.path.join(out.uri, BLEND_FILE)) == \
        Blend.read(os.path.join(single.uri, BLEND_FILE))
    missing = str(tmp_path / "nothing-*.jsonl.gz")
    out = _run_fitter(planted, config, world, serving_dir, tmp_path / "none", monkeypatch,
                      items=missing)
    assert out.get_int_custom_property("published") == 0
    assert out.get_string_custom_property("reason") == (
        f"the items glob {missing!r} matches no file")


def test_report_shows_the_published_blend_and_its_validation_figures(
        config, world, serving_dir, planted, tmp_path, monkeypatch):
    from components import report
    from components.artifacts import PipelineReport
    out = _run_fitter(planted, config, world, serving_dir, tmp_path, monkeypatch)
    fit = json.load(open(os.path.join(out.uri, blend_fitter.FIT_FILE)))
    rows = report.blend_rows(fit)
    assert [(r["list"], r["kind"], r["hr@10"]) for r in rows][:3] == [
        ("final (channel:two_tower)", "final", 1.0), ("blend, in sample", "blend", 1.0),
        ("blend, held out", "blend", 1.0)]
    assert [(r["list"], r["kind"]) for r in rows][3:5] == [
        ("merged, ranker order", "merged"), ("merged, merge order", "merged")]
    assert {r["list"] for r in rows[5:]} == {"item2vec", "two_tower", "youtubenet"}
    # A served blend's final row is its in-sample figure, labelled so.
    served = {"chosen": "blend", "validation_hr@10": {
        "chosen": 0.4, "blend_in_sample": 0.4, "blend_held_out": 0.35, "channel:a": 0.3}}
    assert [(r["list"], r["kind"], r["hr@10"]) for r in report.blend_rows(served)] == [
        ("final (blend, in sample)", "final", 0.4), ("blend, in sample", "blend", 0.4),
        ("blend, held out", "blend", 0.35), ("a", "channel", 0.3)]
    # A fit.json from before the held-out check: the blend was what served.
    old = {"validation_hr@10": {"blend_in_sample": 0.5, "merge_order": 0.25}}
    assert [(r["list"], r["hr@10"]) for r in report.blend_rows(old)] == [
        ("final (blend, in sample)", 0.5), ("merged, merge order", 0.25)]
    artifact = new_artifact(PipelineReport, str(tmp_path), "report")
    executor_fn(report.PipelineReporter)(report=artifact, publish_dir=str(tmp_path / "pub"),
                                         final_blend=out)
    text = open(os.path.join(artifact.uri, "report.md")).read()
    assert f"- published to {serving_dir}/blend.json" in text
    assert "- fitted on 20 of 20 validation requests" in text
    assert ("| this run (validation requests) | final (channel:two_tower) | 1.0000 | - | - | - |"
            in text)
    assert ("- serving: channel:two_tower (the blend is served only when its held-out "
            "validation HR@10 beats every channel's order)") in text
    assert "- fitted blend (not served): " in text and "- weights: in:two_tower 100" in text
    assert ("| this run (validation requests) | two_tower | 1.0000 | - | - | - |" in text)
    with open(os.path.join(artifact.uri, "funnel_hr_at_10.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_report_says_why_no_blend_was_published(config, world, serving_dir, planted, tmp_path,
                                                monkeypatch):
    from components import report
    from components.artifacts import PipelineReport
    pattern = str(tmp_path / "nothing-*.jsonl.gz")
    out = _run_fitter(planted, config, world, serving_dir, tmp_path, monkeypatch, items=pattern)
    artifact = new_artifact(PipelineReport, str(tmp_path), "report")
    executor_fn(report.PipelineReporter)(report=artifact, publish_dir=str(tmp_path / "pub"),
                                         final_blend=out)
    text = open(os.path.join(artifact.uri, "report.md")).read()
    assert f"- not published: the items glob {pattern!r} matches no file" in text
    assert "this run (validation requests)" not in text
