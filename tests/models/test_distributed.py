"""Multi-worker training with sharded embeddings (models.distributed), on local processes.

The end-to-end tests start 2 worker + 2 PS servers as subprocesses on
loopback and train under ParameterServerStrategy:
  NFwFM: eval AUC within 0.005 of single-process training (same data,
    hparams, seed, epochs and steps per epoch);
  two-tower: validation HR@50 within TWO_TOWER_HR_TOLERANCE of
    single-process training (same data, hparams, seed, batches and steps);
and check the item table split over both PS tasks, the export's signatures
and scores, and that no server outlives the test.
"""
import faulthandler
import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tensorflow as tf

from feature_contract import feature_config as fc
from models import inputs
from models.distributed import cluster as cl
from models.distributed import train as dt
from models.distributed import two_tower as dtt
from models.layers.feature_embedding import load_vocabularies
from models.ranking import export, synthetic_examples
from models.ranking import train as ranking_train
from models.recall import artifacts, data, training
from models.two_tower import train as tt_train
from models.two_tower.config import TwoTowerConfig
from tests.models import recall_fixtures

# The columns and sessionization both tiny contracts of this file share.
TINY_CONTRACT_HEADER = textwrap.dedent("""\
    timestamp_column: timestamp
    user_column: user_id
    item_column: item_id
    event_column: event
    timestamp_unit: s
    event_values: {impression: impression, click: click, follow: follow}
    users_key: user_id
    items_key: item_id
    session_gap_seconds: 1800
    min_session_len: 5
    history_max_len: 10
    eval_fraction: 0.2
    """)
# A small contract whose click signal is all pairwise (user x genre): the
# context is numeric, so synthetic_examples' context-parity term is constant
# and both trainers converge to the same optimum within a few epochs, which is
# what makes a 0.005 AUC tolerance meaningful. The history shares the item
# table, so the sharded table is also read with [B, L] ids.
TINY_CONFIG = "name: tiny\n" + TINY_CONTRACT_HEADER + textwrap.dedent("""\
    roles:
      item_category: genre
    features:
      - {name: user_id, field: user, type: categorical, source: users, vocab_size: 1000}
      - {name: clicked_item_list, field: user, type: sequence, source: history, of: item_id,
         max_len: 10}
      - {name: item_id, field: item, type: categorical, source: items, vocab_size: 2000}
      - {name: genre, field: item, type: categorical, source: items, vocab_size: 32}
      - {name: dwell, field: context, type: numeric, source: events, boundaries: [1.0, 2.0, 3.0]}
    """)
HPARAMS = {"embedding_dim": 4, "hidden_units": (16,), "batch_size": 256, "max_epochs": 4,
           "learning_rate": 0.01, "use_interaction_dropout": False, "seed": 0}
# The item table is 101 rows x 4 x 4 bytes = 1616 bytes: two shards. The next
# largest variable, the item linear table (101 x 1 x 4 = 404 bytes), stays whole.
MIN_SHARD_BYTES = 700
PS0, PS1 = "/job:ps/replica:0/task:0/device:CPU:0", "/job:ps/replica:0/task:1/device:CPU:0"
# Past this the test process dumps its stacks and exits: a hung cluster fails
# the run instead of stalling it (the servers exit with their parent).
HANG_GUARD_S = 600


def _alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# ---- flags, TF_CONFIG, ports --------------------------------------------------------
def test_cluster_flag_parses_and_names_a_bad_value():
    assert cl.parse_cluster_flag("local:workers=2,ps=2") == cl.ClusterShape(workers=2, ps=2)
    assert cl.parse_cluster_flag(" local:workers=3,ps=1 ") == cl.ClusterShape(3, 1)
    with pytest.raises(cl.ClusterError, match="training cluster 'workers=2' is not of the form "
                                              "'local:workers=<n>,ps=<m>'"):
        cl.parse_cluster_flag("workers=2")
    with pytest.raises(cl.ClusterError, match="ps must be an integer >= 1, got 0"):
        cl.parse_cluster_flag("local:workers=2,ps=0")


def test_local_cluster_spec_and_tf_config():
    spec = cl.local_cluster_spec(cl.ClusterShape(2, 3))
    addresses = spec["worker"] + spec["ps"]
    assert (len(spec["worker"]), len(spec["ps"])) == (2, 3)
    assert len(set(addresses)) == 5 and all(a.startswith("127.0.0.1:") for a in addresses)
    config = json.loads(cl.tf_config(spec, "ps", 1))
    assert config == {"cluster": spec, "task": {"type": "ps", "index": 1}}


def test_coordinator_reads_tf_config(monkeypatch):
    spec = {"chief": ["chief:2222"], "worker": ["w0:2222", "w1:2222"], "ps": ["ps0:2222"]}
    monkeypatch.setenv("TF_CONFIG", cl.tf_config(spec, "chief", 0))
    resolver = cl.cluster_resolver()
    assert resolver.cluster_spec().as_dict() == spec
    assert (resolver.task_type, resolver.task_id) == ("chief", 0)
    monkeypatch.setenv("TF_CONFIG", cl.tf_config({"worker": ["w0:2222"]}, "chief", 0))
    with pytest.raises(cl.ClusterError, match="TF_CONFIG must describe 'worker' and 'ps' jobs, "
                                              "got \\['worker'\\]"):
        cl.cluster_resolver()
    monkeypatch.delenv("TF_CONFIG")
    with pytest.raises(cl.ClusterError, match="got no TF_CONFIG"):
        cl.cluster_resolver()


# ---- server processes never outlive their owner ---------------------------------------
def test_servers_are_stopped_when_the_cluster_fails_to_come_up():
    # No time to listen: __enter__ raises, and must not leave the servers running.
    local = cl.LocalCluster(cl.ClusterShape(1, 1), start_timeout_s=0.0)
    with pytest.raises(cl.ClusterError, match=r"ps task 0 \(127\.0\.0\.1:\d+\) not listening "
                                              r"after 0 s"):
        with local:
            pass
    pids = local.pids
    assert len(pids) == 2
    assert [p.poll() is not None for p in local.processes.values()] == [True, True]
    assert not any(_alive(p) for p in pids)


def test_servers_exit_when_their_parent_is_killed():
    # A parent that starts servers and dies without cleanup (SIGKILL-like exit).
    parent = textwrap.dedent("""\
        import os
        from models.distributed import cluster as cl
        local = cl.LocalCluster(cl.ClusterShape(1, 1))
        local.start(wait=False)
        print(" ".join(map(str, local.pids)), flush=True)
        os._exit(9)
        """)
    out = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 9, out.stderr
    pids = [int(p) for p in out.stdout.split()]
    assert len(pids) == 2
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(p) for p in pids)


# ---- 2 workers + 2 PS against one process -------------------------------------------
@pytest.fixture(name="tiny_data")
def fixture_tiny_data(tmp_path):
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(TINY_CONFIG, encoding="utf-8")
    data = synthetic_examples.write_ranking_examples(
        str(tmp_path / "data"), fc.load(str(config_path)), num_train=6000, num_eval=3000,
        num_users=8, num_items=100, values_per_feature=2, seed=0)
    return {**data, "config_path": str(config_path)}


def test_two_workers_two_ps_match_single_process_and_shard_the_item_table(tiny_data, tmp_path):
    faulthandler.dump_traceback_later(HANG_GUARD_S, exit=True)
    local = cl.LocalCluster(cl.ClusterShape(workers=2, ps=2))
    try:
        # The servers boot (import TensorFlow) while the baseline trains.
        local.start(wait=False)
        args = ("nfwfm", tiny_data["config_path"], tiny_data["train_pattern"],
                tiny_data["eval_pattern"], tiny_data["vocab_dir"], HPARAMS)
        single = ranking_train.train(*args, None)
        with local:
            strategy = dt.make_strategy(local.resolver(), num_ps=2,
                                        min_shard_bytes=MIN_SHARD_BYTES)
            result = dt.train_with_strategy(strategy, *args, str(tmp_path / "export"))
    finally:
        local.stop()
        faulthandler.cancel_dump_traceback_later()
    assert not any(_alive(p) for p in local.pids)

    # Same quality as one process, and a model that learnt the signal.
    assert single["click"]["auc"] > 0.84
    print("eval AUC distributed", result["click"]["auc"], "single", single["click"]["auc"])
    assert abs(result["click"]["auc"] - single["click"]["auc"]) <= 0.005, (
        result["click"]["auc"], single["click"]["auc"])
    # Same epoch budget: both ran at most max_epochs, with the same carve.
    assert result["validation"] == single["validation"]
    assert len(result["learning_curve"]) <= HPARAMS["max_epochs"]

    # The item table (also read by the history) is split over both PS tasks;
    # the small variables stay whole.
    placement = result["variable_placement"]
    sharded = {name: devices for name, devices in placement.items() if len(devices) > 1}
    assert sharded == {"ranking_nfwfm/field_embedding/item_id_embedding": [PS0, PS1]}
    assert {d for devices in placement.values() for d in devices} == {PS0, PS1}
    assert set(result["params_per_ps"]) == {PS0, PS1}
    # Every weight of the model is on one PS or the other, once: as many
    # scalars as the exported model's weights (101 x 4 item table included).
    saved = {n: s for n, s in tf.train.list_variables(
        os.path.join(result["export_dir"], "variables", "variables"))
        if n.startswith("model/variables/")}
    assert [101, 4] in saved.values()
    assert sum(result["params_per_ps"].values()) == sum(int(np.prod(s)) for s in saved.values())

    # The export is the single-process one: same signatures, loadable without
    # any cluster, and it scores like the trained model.
    loaded = export.load(result["export_dir"])
    assert set(loaded.signatures) == {export.SERVING_DEFAULT, export.SCORE_CANDIDATES}
    records = [r.numpy() for r in tf.data.TFRecordDataset(
        tf.io.gfile.glob(tiny_data["eval_pattern"]), compression_type="GZIP")]
    served = loaded.signatures[export.SERVING_DEFAULT](
        examples=tf.constant(records))["click"].numpy()
    features = fc.load(tiny_data["config_path"])
    labels = inputs.parse_examples(tf.constant(records), features, fc.RANKING)["click"].numpy()
    from models.ranking import metrics  # noqa: PLC0415
    assert metrics.auc(labels, served) == pytest.approx(result["click"]["auc"], abs=1e-6)


def test_field_embedding_reads_a_sharded_table_in_id_order():
    # What a worker does with the item table split over 2 PS tasks: rows 0..2
    # in one shard, 3..4 in the other, ids out of order and repeated.
    from tensorflow.python.distribute import sharded_variable  # noqa: PLC0415
    from models.layers.feature_embedding import FieldEmbedding  # noqa: PLC0415
    rows = np.arange(10, dtype=np.float32).reshape(5, 2)
    table = sharded_variable.ShardedVariable([tf.Variable(rows[:3]), tf.Variable(rows[3:])])
    layer = FieldEmbedding(fc.load(fc.builtin_config_path("movielens")).to_dict(),
                           {"item_id": 5}, dim=2, feature_names=["item_id"])
    # In a tf.function, as in a training step: there tf.gather(table, ids)
    # would give the rows grouped by shard, [0, 1, 4, 3, 4].
    ids = tf.constant([4, 0, 3, 1, 4], tf.int32)
    looked_up = tf.function(lambda: layer._lookup(table, ids))()
    np.testing.assert_array_equal(looked_up.numpy(), rows[[4, 0, 3, 1, 4]])
    # [B, L] ids (a history): masked mean of the non-zero ids' rows, per row.
    history = tf.constant([[4, 1, 0], [3, 0, 0]], tf.int32)
    pooled = tf.function(lambda: layer._lookup(table, history))()
    np.testing.assert_allclose(pooled.numpy(), [(rows[4] + rows[1]) / 2, rows[3]])


def test_cluster_strategy_names_a_bad_cluster_before_starting_anything(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(cl.ClusterError, match="training cluster 'local:2' is not of the form"):
        with dt.cluster_strategy("local:2"):
            pytest.fail("a bad flag must not yield a strategy")
    with pytest.raises(cl.ClusterError, match="got no TF_CONFIG"):
        with dt.cluster_strategy(dt.FROM_TF_CONFIG):
            pytest.fail("no TF_CONFIG must not yield a strategy")


def test_cli_two_tower_needs_items_and_export_dir(capsys):
    with pytest.raises(SystemExit) as info:
        dt.main(["--model", "two_tower", "--config", "c.yaml", "--examples", "ex",
                 "--vocab", "vocab", "--export_dir", "out"])
    assert info.value.code == 2
    assert "--model two_tower needs --items and --export_dir" in capsys.readouterr().err


def test_assign_trained_joins_shards_in_part_order_and_names_a_mismatch():
    # Shards listed out of order: part_1 (rows 3..4) before part_0 (rows 0..2).
    rows = np.arange(10, dtype=np.float32).reshape(5, 2)
    trained = [tf.Variable(rows[3:], name="tower/table/part_1"),
               tf.Variable(rows[:3], name="tower/table/part_0"),
               tf.Variable([7.0], name="tower/bias")]
    copy = [tf.Variable(np.zeros((5, 2), np.float32), name="tower/table"),
            tf.Variable([0.0], name="tower/bias")]
    dt.assign_trained(copy, trained)
    np.testing.assert_array_equal(copy[0].numpy(), rows)
    assert copy[1].numpy().tolist() == [7.0]
    with pytest.raises(ValueError, match=r"variable 'tower/table': trained shape \(5, 2\), "
                                         r"copy's \(4, 2\)"):
        dt.assign_trained([tf.Variable(np.zeros((4, 2), np.float32), name="tower/table")],
                          trained)
    with pytest.raises(ValueError, match="the trained model has no variable 'tower/other'"):
        dt.assign_trained([tf.Variable([0.0], name="tower/other")], trained)


# ---- two-tower: 2 workers + 2 PS against one process --------------------------------
# A small retrieval contract (the recall fixture's data follows any config):
# few features keep the step's trace short; item_category and item_city give
# the per-query hard negatives; the history reads item ids, so the user tower
# holds an item-id table too.
TINY_RECALL_CONFIG = "name: tiny_recall\n" + TINY_CONTRACT_HEADER + textwrap.dedent("""\
    roles:
      item_category: category
      item_city: item_city
      user_tags: interest_tags
    features:
      - {name: user_id, field: user, type: categorical, source: users, vocab_size: 1000}
      - {name: interest_tags, field: user, type: tags, source: users, vocab_size: 16, max_len: 2}
      - {name: clicked_item_list, field: user, type: sequence, source: history, of: item_id,
         max_len: 10}
      - {name: item_id, field: item, type: categorical, source: items, vocab_size: 1000}
      - {name: category, field: item, type: categorical, source: items, vocab_size: 16}
      - {name: item_city, field: item, type: categorical, source: items, column: city,
         vocab_size: 4}
      - {name: tab, field: context, type: categorical, source: events, vocab_size: 4}
    """)
# 684 fit examples / 38 = 18 equal batches an epoch (one trace); 3 epochs with
# patience 2 cannot stop early, so both runs take the same 54 steps on the
# same batches and negatives (the numpy sampler's seed).
# One recent_clicks and one share_item_embedding choice: the placement and
# parameter checks below are of that model (a choice made on asynchronous
# updates could differ between runs). No dropout: its masks come from each
# process's own random ops, so the two runs would differ by their masks (a
# 0.08 HR@50 gap on these 48 queries, measured) rather than by the strategy.
TWO_TOWER_HPARAMS = {"dim": 16, "embedding_dim": 8, "hidden_units": [32], "attention_units": 0,
                     "extra_negatives": 16, "hard_negatives": 1, "batch_size": 38,
                     "learning_rate": 0.01, "max_epochs": 3, "patience": 2, "seed": 0,
                     "recent_clicks": [0], "share_item_embedding": [False], "dropout": 0.0}
# Each item-id table is 201 rows x 8 x 4 bytes = 6432 bytes: two shards; the
# largest other variable (a 24 x 32 hidden kernel, 3072 bytes) stays whole.
TWO_TOWER_MIN_SHARD_BYTES = 4000
# HR@50 over the fixture's 48 validation queries moves in steps of 1/48; the
# order in which 2 workers' asynchronous updates land moves the distributed
# run's by up to 2 of them between runs (seen: 0, +1 and -2 against one
# process), so 3 queries is the tolerance.
TWO_TOWER_HR_TOLERANCE = 3 / 48


def _signatures(export_dir: str) -> dict[str, tuple]:
    """Signature name -> (input specs, output specs) of a SavedModel."""
    loaded = tf.saved_model.load(export_dir)
    return {name: (fn.structured_input_signature, fn.structured_outputs)
            for name, fn in loaded.signatures.items()}


def test_two_tower_on_two_workers_two_ps_matches_single_process(tmp_path):
    faulthandler.dump_traceback_later(HANG_GUARD_S, exit=True)
    local = cl.LocalCluster(cl.ClusterShape(workers=2, ps=2))
    try:
        local.start(wait=False)
        config_path = tmp_path / "tiny_recall.yaml"
        config_path.write_text(TINY_RECALL_CONFIG, encoding="utf-8")
        paths = recall_fixtures.write_dataset(str(tmp_path / "data"), str(config_path))
        args = (paths["config"], paths["retrieval"], paths["vocab"], paths["items"],
                TWO_TOWER_HPARAMS)
        single = tt_train.train(*args, str(tmp_path / "single"))
        with local:
            strategy = dt.make_strategy(local.resolver(), num_ps=2,
                                        min_shard_bytes=TWO_TOWER_MIN_SHARD_BYTES)
            result = dtt.train_with_strategy(strategy, *args, str(tmp_path / "distributed"))
    finally:
        local.stop()
        faulthandler.cancel_dump_traceback_later()
    assert not any(_alive(p) for p in local.pids)

    # Same steps, same validation carve; a model that learnt the user's
    # category (random vectors: HR@50 ~ 0.26), as good as one process.
    for run in (single, result):
        assert run["early_stopping"]["epochs_run"] == 3
        assert run["validation"] == recall_fixtures.retrieval_validation()
        assert run["validation"]["validation_queries"] == 48
    best = {name: run["early_stopping"]["best_value"]
            for name, run in (("distributed", result), ("single", single))}
    print("validation HR@50", best, "eval HR@50",
          {name: run["hr@50"] for name, run in (("distributed", result), ("single", single))})
    assert best["single"] > 0.85 and best["distributed"] > 0.85
    assert abs(best["distributed"] - best["single"]) <= TWO_TOWER_HR_TOLERANCE + 1e-9, best

    # Both item-id tables (the item tower's and the history's) are split over
    # both PS tasks; every other variable stays whole, on one PS or the other,
    # and every weight of the model is on a PS once.
    placement = result["variable_placement"]
    sharded = {name: sorted(devices) for name, devices in placement.items() if len(devices) > 1}
    assert sharded == {"item_tower/field_embedding/item_id_embedding": [PS0, PS1],
                       "user_tower/field_embedding/item_id_embedding": [PS0, PS1]}
    assert {d for devices in placement.values() for d in devices} == {PS0, PS1}
    features = fc.load(paths["config"])
    model, _, _ = tt_train.build_model(features, load_vocabularies(features, paths["vocab"]),
                                       TwoTowerConfig.from_hparams(TWO_TOWER_HPARAMS))
    arrays = data.load_examples(inputs.split_pattern(paths["retrieval"], fc.TRAIN), features,
                                fc.RETRIEVAL)
    catalogue = data.load_catalogue(paths["items"], features)
    model.user_tower(training.tensors(arrays, model.user_tower.feature_names, np.arange(1)))
    model.item_tower(training.tensors(catalogue.features, model.item_tower.feature_names,
                                      np.arange(1)))
    assert [201, 8] in [v.shape.as_list() for v in model.item_tower.variables]
    assert sum(result["params_per_ps"].values()) == sum(
        int(np.prod(v.shape)) for v in model.variables)

    # The export is the single-process one: same signatures, loadable and
    # serving without any cluster; the exported user tower and item vectors
    # score the validation queries to the best epoch's HR@50 (a user tower
    # copied with its table's shards out of order would not).
    assert _signatures(result["user_tower"]) == _signatures(single["user_tower"])
    serve = artifacts.load_user_tower(result["user_tower"])
    queries = training.validation_queries(
        training.carve_validation(arrays, TwoTowerConfig().validation_fraction, "two_tower"),
        features, "two_tower")
    served = serve(**{k: tf.constant(queries.features[k])
                      for k in data.serving_signature(features)})["user_embedding"].numpy()
    embeddings = artifacts.read_item_embeddings(result["item_embeddings"])
    assert embeddings.ids == artifacts.read_item_embeddings(single["item_embeddings"]).ids
    assert training.validation_hit_rate(queries, served, embeddings.ids,
                                        embeddings.embeddings) == best["distributed"]
