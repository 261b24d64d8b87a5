"""The trainers' command lines and models.recall.evaluate: flags, exit codes, a round trip."""

import contextlib
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from feature_contract import feature_config as fc
from models import cli, inputs
from models.item2vec import train as i2v_train
from models.ranking import config as rc
from models.ranking import train as ranking_train
from models.recall import artifacts, data, evaluate, protocols
from models.two_tower import train as tt_train
from models.youtubenet import train as ytn_train
from tests.models import recall_fixtures
from tests.models.test_recall_metrics import _arrays as example_arrays

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMMON = ["--config", "--examples", "--vocab", "--hparams", "--export_dir", "--out"]
TRAINERS = {
    "item2vec": (i2v_train.main, COMMON + ["--items"]),
    "youtubenet": (ytn_train.main, COMMON + ["--items"]),
    "two_tower": (tt_train.main, COMMON + ["--items"]),
    "ranking": (ranking_train.main, COMMON + ["--model"] + list(rc.MODEL_NAMES)),
}
TINY_TWO_TOWER = {"dim": 16, "embedding_dim": 8, "hidden_units": [32], "max_epochs": 1,
                  "batch_size": 128, "extra_negatives": 8}


def _exit_code(main, argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    return info.value.code


@pytest.mark.parametrize("name", sorted(TRAINERS))
def test_trainer_help_exits_0_and_names_its_flags(name, capsys):
    main, flags = TRAINERS[name]
    assert _exit_code(main, ["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m models.{name}.train ")
    for flag in flags:
        assert flag in out
    if name == "ranking":
        assert "--items" not in out  # the ranking trainer reads no catalogue


def test_evaluate_help_exits_0_and_names_its_flags(capsys):
    assert _exit_code(evaluate.main, ["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m models.recall.evaluate ")
    for flag in ("--model", "--config", "--examples", "--k", "--out"):
        assert flag in out


def test_help_from_the_shell():
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    run = subprocess.run([sys.executable, "-m", "models.two_tower.train", "--help"], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("usage: python -m models.two_tower.train ")
    assert "--items ITEMS" in run.stdout and "--export_dir EXPORT_DIR" in run.stdout


def _trainer_argv(tmp_path, **overrides):
    flags = {"--config": fc.builtin_config_path("synthetic"), "--examples": str(tmp_path),
             "--vocab": str(tmp_path), "--items": str(tmp_path / "*.gz"),
             "--export_dir": str(tmp_path / "export"), **overrides}
    return [x for kv in flags.items() for x in kv]


def test_hparams_not_a_json_object_exits_2(tmp_path, capsys):
    argv = _trainer_argv(tmp_path, **{"--hparams": "[3]"})
    assert _exit_code(tt_train.main, argv) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "python -m models.two_tower.train: error: argument --hparams: want a JSON object "
        "such as '{\"max_epochs\": 3}', got '[3]'")


def test_two_tower_requires_items_and_ranking_a_known_model(tmp_path, capsys):
    argv = _trainer_argv(tmp_path)
    assert _exit_code(tt_train.main, argv[:-4] + argv[-2:]) == 2  # --items dropped
    assert capsys.readouterr().err.splitlines()[-1] == (
        "python -m models.two_tower.train: error: the following arguments are required: "
        "--items")
    argv = [x for x in _trainer_argv(tmp_path) if not x.startswith(str(tmp_path / "*"))
            and x != "--items"] + ["--model", "gbdt"]
    assert _exit_code(ranking_train.main, argv) == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith(
        "python -m models.ranking.train: error: argument --model: invalid choice: 'gbdt'")


def test_bad_input_is_one_line_and_exit_1(tmp_path, capsys):
    missing = str(tmp_path / "nope.yaml")
    assert ytn_train.main(_trainer_argv(tmp_path, **{"--config": missing})) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (f"python -m models.youtubenet.train: error: FileNotFoundError: "
                            f"[Errno 2] No such file or directory: '{missing}'\n")
    argv = _trainer_argv(tmp_path, **{"--hparams": '{"epochs": 3}'})
    assert i2v_train.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(
        "python -m models.item2vec.train: error: Item2VecConfigError: ")
    assert "'max_epochs'" in err


def test_k_must_be_a_positive_integer(tmp_path, capsys):
    argv = ["--model", str(tmp_path), "--config", "c", "--examples", "e", "--k", "50", "0"]
    assert _exit_code(evaluate.main, argv) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "python -m models.recall.evaluate: error: argument --k: must be >= 1, got 0")


def test_evaluate_names_a_directory_that_is_no_export(tmp_path, capsys):
    argv = ["--model", str(tmp_path), "--config", fc.builtin_config_path("synthetic"),
            "--examples", str(tmp_path)]
    assert evaluate.main(argv) == 1
    user_dir = os.path.join(str(tmp_path), artifacts.USER_TOWER_DIR)
    assert capsys.readouterr().err == (
        f"python -m models.recall.evaluate: error: FileNotFoundError: '{tmp_path}' is not a "
        f"recall export: no '{user_dir}' (want user_tower/ and item_embeddings/)\n")


def test_leave_last_out_scores_only_clicks_the_trainer_never_saw():
    config, train = example_arrays([
        ("a", 1, "i1", [], 0), ("a", 2, "i2", ["i1"], 0), ("a", 3, "i3", ["i1", "i2"], 0),
        ("b", 1, "i1", [], 0), ("b", 2, "i2", ["i1"], 0),
        ("c", 1, "i4", [], 0)])
    _, evals = example_arrays([
        ("b", 5, "i4", ["i1", "i2"], 0),
        ("c", 6, "i1", ["i4"], 0)])
    queries, dropped = evaluate.leave_last_out_unseen(train, evals, config)
    # a's last click (ts 3) was trained on; c has 2 clicks (< 3): no query
    assert dropped == 1
    assert queries.targets == [["i4"]] and queries.history == [["i1", "i2"]]
    assert queries.features[fc.USER_KEY].tolist() == [b"b"]
    assert sorted(queries.features) == sorted(evals)  # the marker column is gone


def test_emit_writes_portable_json_to_the_file_before_stdout(tmp_path):
    result = {"auc": np.float32(0.5), "curve": np.array([1, 2]), "avg_position": float("nan"),
              "pair": (1, np.int64(2)), 3: "x"}
    out = tmp_path / "new_dir" / "m.json"
    closed = io.StringIO()
    closed.close()
    # A closed stdout (`| head`) fails the print: the file is written already.
    with contextlib.redirect_stdout(closed), pytest.raises(ValueError):
        cli.emit(result, str(out))
    assert json.loads(out.read_text()) == {"auc": 0.5, "curve": [1, 2], "avg_position": None,
                                           "pair": [1, 2], "3": "x"}


@pytest.fixture(scope="module")
def round_trip(tmp_path_factory):
    """A tiny two-tower trained by its command line, then evaluated by evaluate's."""
    root = tmp_path_factory.mktemp("cli")
    paths = recall_fixtures.write_dataset(str(root / "data"))
    export, train_json, eval_json = (str(root / n) for n in ("export", "train.json",
                                                             "eval.json"))
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert tt_train.main(["--config", paths["config"], "--examples", paths["retrieval"],
                              "--vocab", paths["vocab"], "--items", paths["items"],
                              "--hparams", json.dumps(TINY_TWO_TOWER), "--export_dir", export,
                              "--out", train_json]) == 0
    with open(train_json) as f:
        trained = json.load(f)
    assert json.loads(printed.getvalue()) == trained
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert evaluate.main(["--model", export, "--config", paths["config"],
                              "--examples", paths["retrieval"], "--k", "10", "500",
                              "--out", eval_json]) == 0
    with open(eval_json) as f:
        scored = json.load(f)
    assert json.loads(printed.getvalue()) == scored
    return paths, export, trained, scored


def test_trainer_cli_exports_and_reports(round_trip):
    _, export, trained, _ = round_trip
    assert trained["learning_curve"][0]["epoch"] == 1 and len(trained["learning_curve"]) == 1
    assert trained["validation"] == recall_fixtures.retrieval_validation()
    assert trained["user_tower"] == os.path.join(export, artifacts.USER_TOWER_DIR)
    emb = artifacts.read_item_embeddings(os.path.join(export, artifacts.ITEM_EMBEDDINGS_DIR))
    assert emb.metadata["model"] == "two_tower" and emb.embeddings.shape == (
        recall_fixtures.NUM_ITEMS, TINY_TWO_TOWER["dim"])


def test_time_split_of_the_export_equals_the_trainers_own_eval(round_trip):
    # The trainer scored its in-memory towers on Split-eval at 50 and 500;
    # evaluate scores the exported SavedModel and artifact: the same model, so
    # the same figures.
    _, _, trained, scored = round_trip
    time_split = scored[evaluate.TIME_SPLIT]
    assert time_split["queries"] == (recall_fixtures.RETURNING_USERS * recall_fixtures.EVAL_CLICKS
                                     + recall_fixtures.NEW_USERS
                                     * recall_fixtures.CLICKS_PER_USER)
    assert scored["ks"] == [10, 50, 500]  # 50: the new-user slice cutoff is always reported
    assert scored["num_items"] == recall_fixtures.NUM_ITEMS
    assert scored["model_name"] == "two_tower"
    shared = {k: v for k, v in time_split.items() if k in trained}
    assert sorted(set(time_split) - set(shared)) == [
        "coverage@10", "hr@10", "ndcg@10", "queries", "recall@10"]
    assert shared == pytest.approx({k: trained[k] for k in shared}, rel=1e-9)


def test_leave_last_out_equals_protocols_on_the_export(round_trip):
    paths, export, _, scored = round_trip
    config = fc.load(paths["config"])
    both = [data.load_examples(inputs.split_pattern(paths["retrieval"], split), config,
                               fc.RETRIEVAL) for split in (fc.TRAIN, fc.EVAL)]
    _, queries = protocols.leave_last_out(
        {k: np.concatenate([both[0][k], both[1][k]]) for k in both[0]}, config)
    # Every fixture user has 12 clicks, the last in Split-eval: all are queries.
    assert len(queries) == recall_fixtures.NUM_USERS
    serve = artifacts.load_user_tower(os.path.join(export, artifacts.USER_TOWER_DIR))
    users = serve(**{k: tf.constant(queries.features[k])
                     for k in data.serving_signature(config)})[artifacts.USER_EMBEDDING_KEY]
    emb = artifacts.read_item_embeddings(os.path.join(export, artifacts.ITEM_EMBEDDINGS_DIR))
    expected = protocols.evaluate_embeddings(queries, users.numpy(), emb.ids, emb.embeddings,
                                             ks=(10, 50, 500))
    llo = scored[evaluate.LEAVE_LAST_OUT]
    assert llo["queries"] == recall_fixtures.NUM_USERS and llo["trained_targets_dropped"] == 0
    reported = {k: v for k, v in llo.items() if k not in ("queries", "trained_targets_dropped")}
    assert reported == pytest.approx(expected, rel=1e-9)
