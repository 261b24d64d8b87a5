"""The online recommender over the embedded model server and real FAISS indexes."""
import gzip
import json
import os
import shutil
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import tensorflow as tf

from serving import toy_models
from serving.catalogue import ItemCatalogue, read_item_frequencies, read_user_profiles
from serving.indexes import IndexSet
from serving.recommender import (POPULAR, POPULAR_CITY, Recommender, RecommenderSettings,
                                 merge_round_robin)
from serving.serve import RecommenderHTTPServer
from serving.store import InMemoryStore

NOW = 1_700_000_000.0
CHANNELS = ["two_tower", "youtubenet", "item2vec"]


@pytest.fixture(scope="module")
def catalogue(world, config):
    return ItemCatalogue.from_table(world["items"], config,
                                    read_item_frequencies(world["item_frequencies"]))


@pytest.fixture
def recommender(world, config, client, catalogue, tmp_path):
    indexes_root = tmp_path / "indexes"
    shutil.copytree(os.path.join(world["root"], "indexes"), indexes_root)
    store = InMemoryStore(max_clicks=50)
    store.put_profiles(read_user_profiles(world["users"], config))
    return Recommender(config, client, store, IndexSet(str(indexes_root), CHANNELS), catalogue,
                       RecommenderSettings(num_candidates=120, per_channel=60,
                                           popular_fallback=20),
                       clock=lambda: NOW)


def test_catalogue_popularity_hand_checked(config, tmp_path):
    import gzip
    rows = [{"item_id": "a", "city": "c1"}, {"item_id": "b", "city": "c2"},
            {"item_id": "c", "city": "c1"}, {"item_id": "a", "city": "dup"}]
    path = tmp_path / "items.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    cat = ItemCatalogue.from_table(str(path), config, {"a": 1, "b": 9, "c": 5})
    assert cat.ids == ["a", "b", "c"] and cat.features["item_city"] == ["c1", "c2", "c1"]
    assert cat.popular_where(None, None, 2) == ["b", "c"]
    assert cat.popular_where("item_city", "c1", 5) == ["c", "a"]
    assert cat.popular_where("item_city", "c1", 5, exclude={"c"}) == ["a"]


def test_scores_are_one_batched_ranking_call(recommender, world, config, client):
    recommender.ingest({"user_id": "u1", "item_id": "i5"})
    recs = recommender.recommend("u1", {"network": "network_1"}, k=10)
    assert len(recs) == 10
    scores = [r.score for r in recs]
    assert scores == sorted(scores, reverse=True)
    # Oracle: the ranking SavedModel called in-process on the same raw features.
    row = recommender.user_features("u1", recommender.store.get_profile("u1"), ["i5"],
                                    {"network": "network_1"}, NOW)
    _, wanted = client.signature_inputs("ranking", "score_candidates")
    items = [r.item_id for r in recs]
    feeds = recommender._item_inputs(items, row, wanted, NOW)
    fn = tf.saved_model.load(world["ranking"]).signatures["score_candidates"]
    expected = fn(**{k: tf.constant(v) for k, v in feeds.items()})["click"].numpy()
    np.testing.assert_allclose(scores, expected, rtol=1e-5)
    # item_age_hours from the catalogue's creation time, by hand for the first item.
    first = recommender.catalogue.row[items[0]]
    assert feeds["item_age_hours"][0] == pytest.approx(
        (NOW - recommender.catalogue.created_ts[first]) / 3600.0, rel=1e-5)
    assert row["hour"] == str(int(NOW // 3600 % 24))


def test_candidates_merge_dedup_and_channels(recommender):
    for item in ["i1", "i2", "i3"]:
        recommender.ingest({"user_id": "u2", "item_id": item})
    profile = recommender.store.get_profile("u2")
    history = recommender.store.recent_clicks("u2")
    row = recommender.user_features("u2", profile, history, {}, NOW)
    merged = recommender.candidates("u2", row, history, profile)
    assert len(merged) == 120  # capped at num_candidates
    assert not set(merged) & {"i1", "i2", "i3"}  # already seen
    assert all(len(set(ch)) == len(ch) for ch in merged.values())
    used = {c for ch in merged.values() for c in ch}
    assert used == set(CHANNELS)


def test_merge_round_robin_by_hand():
    lists = [("a", ["x", "y", "z"]), ("b", ["y", "s", "w", "v"]), ("c", ["q"])]
    merged = merge_round_robin(lists, seen={"s"}, limit=4, known={"x", "y", "z", "s", "w", "q"})
    # rank 0: x(a) y(b) q(c); rank 1: y(a, joins), s seen; rank 2: z(a), w(b) over the limit;
    # rank 3: v unknown.
    assert merged == {"x": ["a"], "y": ["b", "a"], "q": ["c"], "z": ["a"]}


def test_ingest_changes_the_next_recommendation(recommender):
    before = recommender.recommend("u3", {}, k=20)
    clicked = before[0].item_id
    assert recommender.ingest({"user_id": "u3", "item_id": clicked}) is True
    after = recommender.recommend("u3", {}, k=20)
    assert clicked not in [r.item_id for r in after]  # seen-filter uses the live history
    assert any("item2vec" in r.channels for r in after)  # the click fed the item2vec channel
    assert [r.item_id for r in after] != [r.item_id for r in before]
    assert recommender.ingest({"user_id": "u3", "item_id": "i9", "event": "impression"}) is False
    with pytest.raises(ValueError, match="user_id and item_id"):
        recommender.ingest({"user_id": "u3"})
    with pytest.raises(ValueError, match="not in"):
        recommender.ingest({"user_id": "u3", "item_id": "i1", "event": "like"})


def test_cold_start_new_user(recommender, catalogue):
    recs = recommender.recommend("brand_new", {"city": "city_2"}, k=200)
    assert recs and recommender.stats["cold_start"] >= 1
    channels = {c for r in recs for c in r.channels}
    assert {POPULAR_CITY, POPULAR, "two_tower", "youtubenet"} <= channels
    assert "item2vec" not in channels  # no clicks, no item2vec mean
    city_items = [r.item_id for r in recs if POPULAR_CITY in r.channels]
    assert city_items and all(catalogue.features["item_city"][catalogue.row[i]] == "city_2"
                              for i in city_items)
    assert set(catalogue.popular_where("item_city", "city_2", 20)) == set(city_items)


def test_cold_start_without_recall_models(recommender, tmp_path):
    recommender.indexes = IndexSet(str(tmp_path / "empty"), CHANNELS)
    recs = recommender.recommend("u4", {}, k=5)
    assert len(recs) == 5 and all(POPULAR in r.channels or POPULAR_CITY in r.channels for r in recs)


def test_new_index_version_is_picked_up(recommender, config):
    root = recommender.indexes.root
    assert recommender.indexes.versions() == {c: 1 for c in CHANNELS}
    ids = recommender.indexes.get("item2vec").ids
    toy_models.write_index(os.path.join(root, "item2vec", "2"), ids,
                           np.eye(len(ids), 16, dtype=np.float32), "item2vec")
    assert recommender.indexes.refresh()["item2vec"] == 2
    recommender.ingest({"user_id": "u5", "item_id": "i7"})
    # With one-hot item vectors only i7's own direction scores above 0; i7 is seen,
    # so item2vec candidates are ties at 0, but the channel works on the new version.
    assert recommender.indexes.get("item2vec").mean_vector(["i7"])[0, 7] == 1.0
    assert recommender.recommend("u5", {}, k=3)


def _post(port, path, body):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_http_api(recommender):
    http = RecommenderHTTPServer(recommender, "127.0.0.1", 0)
    port = http.start()
    try:
        status, body = _post(port, "/recommend", {"user_id": "u6", "context": {}, "k": 4})
        assert status == 200 and len(body["items"]) == 4
        assert set(body["items"][0]) == {"item_id", "score", "channels"}
        top = body["items"][0]["item_id"]
        assert _post(port, "/ingest", {"user_id": "u6", "item_id": top}) == (
            200, {"history_changed": True})
        status, body = _post(port, "/recommend", {"user_id": "u6", "k": 4})
        assert top not in [i["item_id"] for i in body["items"]]
        assert _post(port, "/recommend", {"k": 4})[0] == 400
        assert _post(port, "/recommend", {"user_id": "u6", "k": 0})[0] == 400
        assert _post(port, "/ingest", {"user_id": "u6"})[0] == 400
        assert _post(port, "/nope", {})[0] == 404
    finally:
        http.stop()


def test_serve_finds_pipeline_outputs(tmp_path):
    from serving.serve import find_inputs, infer_dataset
    work = tmp_path / "work"
    serving_dir = work / "serving"
    serving_dir.mkdir(parents=True)
    assert infer_dataset(str(work)) == "synthetic"
    raw = work / "raw" / "movielens"
    raw.mkdir(parents=True)
    (raw / "items.jsonl.gz").write_bytes(b"")
    (raw / "users.jsonl.gz").write_bytes(b"")
    (raw / "events.jsonl.gz").write_bytes(b"")
    freq = work / "tfx" / "feedrec" / "ExampleGen" / "catalogue" / "7"
    freq.mkdir(parents=True)
    (freq / "item_frequencies.tsv").write_text("i1\t2\t1\n")
    assert infer_dataset(str(work)) == "movielens"
    found = find_inputs(str(serving_dir), str(work), "movielens")
    assert found == {"items": str(raw / "items.jsonl.gz"), "users": str(raw / "users.jsonl.gz"),
                     "events": str(raw / "events.jsonl.gz"),
                     "item_frequencies": str(freq / "item_frequencies.tsv")}
    (serving_dir / "items.csv").write_text("item_id\n")  # a deployment copy wins
    assert find_inputs(str(serving_dir), str(work), "movielens")["items"] == str(serving_dir / "items.csv")
    # A newer run on another dataset in the same work dir: its counts are not movielens's.
    (freq.parent.parent / "summary" / "7").mkdir(parents=True)
    (freq.parent.parent / "summary" / "7" / "summary.json").write_text('{"config": "movielens"}')
    other = work / "tfx" / "feedrec" / "ExampleGen" / "catalogue" / "9"
    other.mkdir(parents=True)
    (other / "item_frequencies.tsv").write_text("s1\t5\t3\n")
    (freq.parent.parent / "summary" / "9").mkdir(parents=True)
    (freq.parent.parent / "summary" / "9" / "summary.json").write_text('{"config": "synthetic"}')
    os.utime(other / "item_frequencies.tsv", (time.time() + 60, time.time() + 60))
    assert find_inputs(str(serving_dir), str(work), "movielens")["item_frequencies"] == str(
        freq / "item_frequencies.tsv")
    assert find_inputs(str(serving_dir), str(work), "synthetic")["item_frequencies"] == str(
        other / "item_frequencies.tsv")


def test_serve_finds_a_dataset_yamls_tables(tmp_path):
    from serving.serve import find_inputs
    serving_dir = tmp_path / "serving"
    serving_dir.mkdir()
    (tmp_path / "logs").mkdir()
    for name in ("events-2.csv", "events-1.csv", "notes.txt"):
        (tmp_path / "logs" / name).write_text("x\n")
    tables = {"events": str(tmp_path / "logs" / "events-*.csv"), "users": None,
              "items": str(tmp_path / "posts.jsonl")}
    (tmp_path / "posts.jsonl").write_text("{}\n")
    found = find_inputs(str(serving_dir), str(tmp_path / "work"), "mine", tables)
    assert found["events"] == [str(tmp_path / "logs" / "events-1.csv"),
                               str(tmp_path / "logs" / "events-2.csv")]  # sorted
    assert found["users"] is None and found["items"] == [str(tmp_path / "posts.jsonl")]
    (serving_dir / "items.csv").write_text("item_id\n")  # a deployment copy still wins
    assert find_inputs(str(serving_dir), str(tmp_path), "mine", tables)["items"] == \
        str(serving_dir / "items.csv")
    with pytest.raises(SystemExit, match=r"^users table: no file matches '.*/u\*\.csv'$"):
        find_inputs(str(serving_dir), str(tmp_path), "mine",
                    {**tables, "users": str(tmp_path / "u*.csv")})
    with pytest.raises(SystemExit, match=r"^events table 'gs://b/e\*\.csv': serving reads local"):
        find_inputs(str(serving_dir), str(tmp_path), "mine", {**tables, "events": "gs://b/e*.csv"})


def test_read_table_reads_a_tables_parts_in_order(tmp_path):
    from serving.catalogue import read_table
    (tmp_path / "a.csv").write_text("item_id,n\ni1,1\ni2,2\n")
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as f:
        f.write('{"item_id": "i3", "n": 3}\n')
    rows = list(read_table([str(tmp_path / "a.csv"), str(tmp_path / "b.jsonl.gz")]))
    assert rows == [{"item_id": "i1", "n": "1"}, {"item_id": "i2", "n": "2"},
                    {"item_id": "i3", "n": 3}]


def test_query_cli_against_the_http_api(recommender, capsys):
    from serving import query
    http = RecommenderHTTPServer(recommender, "127.0.0.1", 0)
    port = http.start()
    try:
        assert query.main(["--user", "u7", "--k", "3", "--click", "i1",
                           "--url", f"http://127.0.0.1:{port}"]) == 0
    finally:
        http.stop()
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and lines[0].split()[:2] == ["rank", "item_id"]
    assert recommender.store.recent_clicks("u7") == ["i1"]
    assert query.main(["--user", "u7", "--url", "http://127.0.0.1:9"]) == 2  # nothing listens


def test_item_vectors_reconstructed_without_embeddings_file(tmp_path):
    from serving.indexes import load_index
    vectors = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]], np.float32)
    directory = toy_models.write_index(str(tmp_path / "item2vec" / "3"), ["a", "b", "c"], vectors,
                                       "item2vec")
    os.remove(os.path.join(directory, "embeddings.npy"))
    index = load_index(directory)
    assert index.version == 3
    np.testing.assert_allclose(index.mean_vector(["a", "c", "zzz"]), [[0.5, 0, 0.5, 0]])
    assert index.mean_vector(["zzz"]) is None
    ids, _ = index.search(np.array([[0.1, 0.9, 0, 0]], np.float32), 2)
    assert ids == [["b", "a"]]


def test_item2vec_mean_uses_the_models_recent_clicks(tmp_path):
    from models.faiss_index import builder
    from models.recall import artifacts
    from serving.indexes import load_index
    vectors = np.eye(4, dtype=np.float32)
    embeddings = artifacts.write_item_embeddings(
        str(tmp_path / "emb"), ["a", "b", "c", "d"], vectors, "item2vec", normalized=True,
        extra={"recent_clicks": 2})
    index = load_index(builder.build_index(embeddings, str(tmp_path / "indexes"), "item2vec",
                                           version=1))
    assert index.metadata["recent_clicks"] == 2
    # Oldest first; "zzz" is unknown and skipped: the last two known are c and d.
    np.testing.assert_allclose(index.mean_vector(["a", "b", "zzz", "c", "d", "zzz"]),
                               [[0, 0, 0.5, 0.5]])
    np.testing.assert_allclose(index.mean_vector(["b"]), [[0, 1, 0, 0]])


def test_item2vec_prior_column_reaches_the_index_and_the_served_user_vector(tmp_path):
    from models.faiss_index import builder
    from models.recall import artifacts
    from serving.indexes import load_index
    # Last column: each item's weighted popularity prior.
    vectors = np.array([[1, 0, 0.1], [0, 1, 0.3], [0.6, 0.8, 0.9]], np.float32)
    embeddings = artifacts.write_item_embeddings(
        str(tmp_path / "emb"), ["a", "b", "c"], vectors, "item2vec", normalized=False,
        extra={"recent_clicks": 5, "prior_column": True, "prior_weight": 0.5})
    index = load_index(builder.build_index(embeddings, str(tmp_path / "indexes"), "item2vec",
                                           version=1))
    assert index.metadata["prior_column"] is True
    # Mean of a and b's similarity columns, and 1 (not the mean prior 0.2) in the last.
    user = index.mean_vector(["a", "b"])
    np.testing.assert_allclose(user, [[0.5, 0.5, 1.0]])
    # Scores 0.6, 0.8, 1.6: c wins on similarity plus its prior.
    ids, scores = index.search(user, 3)
    assert ids == [["c", "b", "a"]]
    np.testing.assert_allclose(scores[0], [1.6, 0.8, 0.6], rtol=1e-6)
    # No known item: the prior alone (c, b, a by popularity), not "no answer".
    np.testing.assert_allclose(index.mean_vector(["zzz"]), [[0.0, 0.0, 1.0]])


def test_new_ranking_version_is_used_without_restart(tmp_path, world, config, catalogue):
    from serving import config_files, model_server
    from serving.client import ModelServerClient
    from serving.servables import ModelManager
    from .conftest import MODELS_CONFIG
    models = tmp_path / "models"
    shutil.copytree(os.path.join(world["root"], "models"), models)
    manager = ModelManager(config_files.read_model_config(MODELS_CONFIG, str(models)))
    manager.poll_once()
    srv = model_server.ModelServer(manager)
    port, _ = srv.start("127.0.0.1", 0, None)
    try:
        with ModelServerClient(f"127.0.0.1:{port}") as c:
            rec = Recommender(config, c, InMemoryStore(), IndexSet(
                os.path.join(world["root"], "indexes"), CHANNELS), catalogue,
                RecommenderSettings(num_candidates=50, per_channel=50), clock=lambda: NOW)
            before = {r.item_id: r.score for r in rec.recommend("u1", {}, k=50)}
            toy_models.export_ranking(str(tmp_path / "staging"), config, scale=-1.0)
            os.rename(tmp_path / "staging", models / "ranking" / "2")
            manager.poll_once()  # what the poller thread does every interval
            after = {r.item_id: r.score for r in rec.recommend("u1", {}, k=50)}
    finally:
        srv.stop()
    assert set(before) == set(after)
    # The new version negates the logit: every score s becomes 1 - s.
    for item, score in before.items():
        assert after[item] == pytest.approx(1.0 - score, abs=1e-5)
    assert rec._signatures[("ranking", "score_candidates")][0] == 2


def test_ingest_through_redis_reaches_the_next_recommendation(redis_url, world, config, client,
                                                              catalogue):
    from serving.store import RedisStore
    store = RedisStore(redis_url, max_clicks=50)
    store.put_profiles(read_user_profiles(world["users"], config))
    indexes = IndexSet(os.path.join(world["root"], "indexes"), CHANNELS)
    settings = RecommenderSettings(num_candidates=80, per_channel=40)
    writer = Recommender(config, client, store, indexes, catalogue, settings, clock=lambda: NOW)
    before = writer.recommend("u8", {}, k=10)
    writer.ingest({"user_id": "u8", "item_id": before[0].item_id})
    # Another replica over the same Redis sees the click.
    reader = Recommender(config, client, RedisStore(redis_url, max_clicks=50), indexes, catalogue,
                         settings, clock=lambda: NOW)
    after = reader.recommend("u8", {}, k=10)
    assert before[0].item_id not in [r.item_id for r in after]
    assert any("item2vec" in r.channels for r in after)
