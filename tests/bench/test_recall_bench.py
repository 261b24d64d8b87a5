"""bench.recall_bench: leave-last-out sessions, comparisons and targets, flags (no training)."""
import dataclasses
import json
import os
import math

import numpy as np
import pytest

from feature_contract import feature_config as fc
from bench import recall_bench as rb
from bench import stats
from models.item2vec.config import Item2VecConfig
from models.recall import training
from models.two_tower.config import TwoTowerConfig

T_975_4 = 2.7764451051977987  # Student t, 97.5% quantile, 4 degrees of freedom


def _config(gap: int = 100, min_len: int = 2) -> fc.FeatureConfig:
    config = fc.load(fc.builtin_config_path("synthetic"))
    return dataclasses.replace(config, session_gap_seconds=gap, min_session_len=min_len)


def _examples(config: fc.FeatureConfig, rows) -> dict[str, np.ndarray]:
    """Retrieval-example columns of (user, timestamp, item) rows, in the given order."""
    return {fc.USER_KEY: np.array([u.encode() for u, _, _ in rows], object),
            fc.TIMESTAMP_KEY: np.array([t for _, t, _ in rows], np.int64),
            config.item_id_feature.name: np.array([x.encode() for _, _, x in rows], object)}


# ---- leave-last-out sessions ---------------------------------------------------

def test_sessions_from_examples_cuts_by_user_and_gap_and_keeps_first_click_time():
    config = _config(gap=100, min_len=2)
    rows = [("u2", 50, "c"), ("u1", 201, "z"), ("u2", 10, "a"), ("u1", 0, "x"),
            ("u3", 5, "q"),                      # one click: shorter than min_session_len
            ("u1", 100, "y"),                    # gap exactly 100: same session as x
            ("u2", 20, "b"), ("u1", 250, "w"),   # z at 201: 101 s after y, a new session
            ("u1", 300, "p"), ("u1", 300, "o")]  # same second: input order kept
    out = rb.sessions_from_examples(_examples(config, rows), config)
    assert sorted(out) == [fc.SESSION_ITEMS_KEY, fc.TIMESTAMP_KEY]
    assert out[fc.SESSION_ITEMS_KEY].dtype == object and out[fc.SESSION_ITEMS_KEY].ndim == 1
    assert list(out[fc.SESSION_ITEMS_KEY]) == [[b"x", b"y"], [b"z", b"w", b"p", b"o"],
                                               [b"a", b"b", b"c"]]
    assert out[fc.TIMESTAMP_KEY].dtype == np.int64
    assert out[fc.TIMESTAMP_KEY].tolist() == [0, 201, 10]
    assert rb.decoded_sessions(out) == [["x", "y"], ["z", "w", "p", "o"], ["a", "b", "c"]]


def test_sessions_from_examples_drops_sessions_below_min_session_len():
    config = _config(gap=100, min_len=3)
    rows = [("u1", 0, "x"), ("u1", 100, "y"), ("u1", 201, "z"), ("u1", 250, "w"),
            ("u1", 300, "p"), ("u2", 10, "a"), ("u2", 20, "b"), ("u2", 50, "c")]
    out = rb.sessions_from_examples(_examples(config, rows), config)
    assert list(out[fc.SESSION_ITEMS_KEY]) == [[b"z", b"w", b"p"], [b"a", b"b", b"c"]]
    assert out[fc.TIMESTAMP_KEY].tolist() == [201, 10]


def test_sessions_from_examples_of_nothing_is_empty():
    config = _config()
    out = rb.sessions_from_examples(_examples(config, []), config)
    assert len(out[fc.SESSION_ITEMS_KEY]) == 0 and out[fc.TIMESTAMP_KEY].tolist() == []


def test_rebuilt_sessions_carve_like_item2vec_examples_by_session_start():
    # The layout Item2vec's fit takes: its carve splits on the session start.
    config = _config(gap=100, min_len=2)
    rows = [("u1", 0, "x"), ("u1", 100, "y"), ("u1", 201, "z"), ("u1", 250, "w"),
            ("u2", 10, "a"), ("u2", 20, "b")]
    carve = training.carve_validation(rb.sessions_from_examples(_examples(config, rows), config),
                                      0.5, "item2vec")
    # span [0, 201]: cutoff 201 - 0.5 * 201 = 100.5; only the session starting at 201 is later.
    assert carve.cutoff == pytest.approx(100.5)
    assert list(carve.validation[fc.SESSION_ITEMS_KEY]) == [[b"z", b"w"]]
    assert list(carve.fit[fc.SESSION_ITEMS_KEY]) == [[b"x", b"y"], [b"a", b"b"]]


# ---- summaries, comparisons, targets ---------------------------------------------

def _runs(values, learned: bool = False):
    out = []
    for seed, v in enumerate(values):
        run = {"seed": seed, "hr@50": v, "recall@50": v / 2, "ndcg@50": v / 4,
               "train_seconds": 1.0 + seed}
        if learned:
            run.update({"best_epoch": seed + 1, "epochs_run": seed + 3,
                        "stopped_early": seed < 4})
        out.append(run)
    return out


def _summary(itemcf: float = 0.25):
    runs = {"item2vec": _runs([0.20, 0.21, 0.22, 0.23, 0.24], learned=True),
            "youtubenet": _runs([0.14, 0.16, 0.15, 0.13, 0.18], learned=True),
            "two_tower": _runs([0.30, 0.31, 0.33, 0.30, 0.31], learned=True),
            "most_popular": _runs([0.10]), "itemcf": _runs([itemcf]),
            "als": _runs([0.26, 0.27, 0.25, 0.26, 0.26]),
            "bpr": _runs([0.20, 0.20, 0.20, 0.20, 0.20])}
    return {name: rb.summarize(r) for name, r in runs.items()}


def test_summarize_keeps_per_seed_values_and_stopping_epochs():
    s = rb.summarize(_runs([0.20, 0.21, 0.22, 0.23, 0.24], learned=True))
    assert s["hr@50"] == pytest.approx(0.22)
    assert s["train_seconds"] == pytest.approx(3.0)
    assert s["seeds"] == [0, 1, 2, 3, 4]
    assert s["values"]["hr@50"] == [0.20, 0.21, 0.22, 0.23, 0.24]
    assert s["std"]["hr@50"] == pytest.approx(math.sqrt(2.5e-4))  # ddof 1
    assert s["best_epochs"] == [1, 2, 3, 4, 5]
    assert s["epochs_run"] == [3, 4, 5, 6, 7]
    assert s["stopped_early"] == [True, True, True, True, False]
    one = rb.summarize(_runs([0.10]))
    assert one["std"]["hr@50"] is None and "best_epochs" not in one


def test_compare_pairs_seeds_and_broadcasts_deterministic_peers():
    cmp = rb.compare(_summary())
    assert sorted(cmp) == sorted(
        ["best_learned_vs_best_classic", "two_tower_vs_item2vec"]
        + [f"{m}_vs_most_popular" for m in rb.LEARNED]
        + [f"{m}_vs_1.5x_most_popular" for m in rb.LEARNED])

    # two-tower (mean 0.31) vs ALS (0.26, above ItemCF's 0.25): d = .04 .04 .08 .04 .05,
    # mean 0.05, sd sqrt(3e-4), half-width t * sd / sqrt(5).
    best = cmp["best_learned_vs_best_classic"]
    assert (best["a"], best["b"], best["n"]) == ("two_tower", "als", 5)
    half = T_975_4 * math.sqrt(3e-4) / math.sqrt(5)
    assert best["mean"] == pytest.approx(0.05)
    assert best["ci_low"] == pytest.approx(0.05 - half)
    assert best["ci_high"] == pytest.approx(0.05 + half)
    assert best["verdict"] == stats.WIN

    # d = .10 .10 .11 .07 .07: mean 0.09, sd sqrt(3.5e-4).
    tt = cmp["two_tower_vs_item2vec"]
    assert tt["mean"] == pytest.approx(0.09)
    assert tt["ci_low"] == pytest.approx(0.09 - T_975_4 * math.sqrt(3.5e-4) / math.sqrt(5))
    assert tt["verdict"] == stats.WIN

    # Popularity ran once (0.10): each Item2vec seed minus 0.10 = .10 ... .14.
    pop = cmp["item2vec_vs_most_popular"]
    assert (pop["b"], pop["n"], pop["mean"]) == ("most_popular", 5, pytest.approx(0.12))
    assert pop["ci_low"] == pytest.approx(0.12 - T_975_4 * math.sqrt(2.5e-4) / math.sqrt(5))
    # Against 1.5 x 0.10 = 0.15: YouTubeNet's seeds .14 .16 .15 .13 .18 straddle it;
    # d = -.01 .01 0 -.02 .03, mean 0.002, sd sqrt(3.7e-4).
    margin = cmp["youtubenet_vs_1.5x_most_popular"]
    assert margin["b"] == "1.5 x most_popular"
    assert margin["mean"] == pytest.approx(0.002)
    assert margin["ci_low"] == pytest.approx(0.002 - T_975_4 * math.sqrt(3.7e-4) / math.sqrt(5))
    assert margin["verdict"] == stats.TIE
    assert cmp["item2vec_vs_1.5x_most_popular"]["mean"] == pytest.approx(0.07)


def test_compare_picks_a_deterministic_best_classic_and_reports_a_loss():
    cmp = rb.compare(_summary(itemcf=0.40))
    best = cmp["best_learned_vs_best_classic"]
    assert (best["a"], best["b"]) == ("two_tower", "itemcf")
    # .30 .31 .33 .30 .31 - 0.40: mean -0.09, sd sqrt(1.5e-4) (same spread as two-tower).
    assert best["mean"] == pytest.approx(-0.09)
    assert best["std"] == pytest.approx(math.sqrt(1.5e-4))
    assert best["verdict"] == stats.LOSS


def test_compare_with_one_seed_is_a_tie_without_interval():
    summary = {"two_tower": rb.summarize(_runs([0.30], learned=True)),
               "item2vec": rb.summarize(_runs([0.20], learned=True))}
    out = rb.compare(summary)
    assert sorted(out) == ["two_tower_vs_item2vec"]  # no classic peer, no popularity
    tt = out["two_tower_vs_item2vec"]
    assert (tt["n"], tt["ci_low"], tt["verdict"]) == (1, None, stats.TIE)
    assert tt["mean"] == pytest.approx(0.10)


def test_check_targets_reads_the_comparisons():
    protocol = _summary()
    protocol["_comparisons"] = rb.compare(protocol)
    results = {"movielens": {rb.TIME_SPLIT: protocol},
               "synthetic": {rb.LEAVE_LAST_OUT: protocol}, "_run": {}}
    checks = rb.check_targets(results)
    assert sorted(checks) == sorted(
        [f"movielens/time_split/{m}_hr50_ge_1.5x_popular" for m in rb.LEARNED]
        + [f"{p}/{m}_ge_popular" for p in ("movielens/time_split", "synthetic/leave_last_out")
           for m in rb.LEARNED]
        + ["movielens/time_split/best_learned_ge_best_classic",
           "movielens/time_split/two_tower_ge_item2vec",
           "synthetic/leave_last_out/two_tower_ge_item2vec"])
    i2v = checks["synthetic/leave_last_out/item2vec_ge_popular"]
    assert (i2v["b"], i2v["met"], i2v["mean"]) == ("most_popular", True, pytest.approx(0.12))
    yt = checks["movielens/time_split/youtubenet_hr50_ge_1.5x_popular"]
    assert yt["ratio"] == pytest.approx(1.52)
    assert yt["met"] is True and yt["verdict"] == stats.TIE  # mean 1.52x: met, not shown
    tt = checks["movielens/time_split/two_tower_hr50_ge_1.5x_popular"]
    assert tt["ratio"] == pytest.approx(3.1) and tt["verdict"] == stats.WIN
    best = checks["movielens/time_split/best_learned_ge_best_classic"]
    assert (best["a"], best["b"], best["met"]) == ("two_tower", "als", True)
    assert best["ci"][0] == pytest.approx(0.05 - T_975_4 * math.sqrt(3e-4) / math.sqrt(5))

    protocol = _summary(itemcf=0.40)
    protocol["_comparisons"] = rb.compare(protocol)
    lost = rb.check_targets({"movielens": {rb.TIME_SPLIT: protocol}})
    best = lost["movielens/time_split/best_learned_ge_best_classic"]
    assert (best["met"], best["verdict"], best["mean"]) == (False, stats.LOSS,
                                                            pytest.approx(-0.09))
    assert "unreachable_targets" not in best


def test_targets_of_a_protocol_with_many_unreachable_targets_carry_the_share():
    flagged, clean = _summary(), _summary()
    for protocol, share in ((flagged, 0.6), (clean, rb.UNREACHABLE_FLAG)):
        protocol["_comparisons"] = rb.compare(protocol)
        protocol["_queries"] = {"unreachable_targets": share}
    checks = rb.check_targets({"synthetic": {rb.LEAVE_LAST_OUT: flagged, rb.TIME_SPLIT: clean}})
    for key, check in checks.items():
        if key.startswith("synthetic/leave_last_out/"):
            assert check["unreachable_targets"] == 0.6, key
        else:
            assert "unreachable_targets" not in check, key
    assert any(k.startswith("synthetic/time_split/") for k in checks)


# ---- seeds, configs, flags ---------------------------------------------------------

def test_deterministic_peers_run_one_seed_others_all():
    assert rb.seeds_of("most_popular", [0, 1, 2]) == [0]
    assert rb.seeds_of("itemcf", [3, 4]) == [3]
    for name in rb.LEARNED + ("als", "bpr", "word2vec"):
        assert rb.seeds_of(name, [0, 1, 2]) == [0, 1, 2]


def test_learned_configs_are_the_defaults_with_seed_and_cap():
    config = rb.learned_config("two_tower", 3, max_epochs=7)
    assert config == dataclasses.replace(TwoTowerConfig(), seed=3, max_epochs=7)
    assert rb.learned_config("item2vec", 0) == Item2VecConfig()
    for name in rb.LEARNED:
        assert rb.learned_config(name, 1).max_epochs == rb.CONFIGS[name]().max_epochs


def test_parse_args_defaults_and_quick():
    args = rb.parse_args([])
    assert (args.seeds, args.seed_list, args.max_epochs) == (5, [0, 1, 2, 3, 4], None)
    assert args.model_list == list(rb.MODELS)
    assert args.dataset_list == ["synthetic", "movielens"]
    assert args.out == rb.RESULTS and not args.quick
    assert (args.jobs, args.threads) == (2, 0)
    quick = rb.parse_args(["--quick"])
    assert (quick.seed_list, quick.max_epochs) == ([0, 1], 3)
    mine = rb.parse_args(["--quick", "--seeds", "3", "--max_epochs", "5",
                          "--models", "two_tower,itemcf", "--datasets", "movielens"])
    assert (mine.seed_list, mine.max_epochs) == ([0, 1, 2], 5)
    assert (mine.model_list, mine.dataset_list) == (["two_tower", "itemcf"], ["movielens"])
    # Only a full run replaces the recorded JSON; a smoke run or some of the models go under
    # the work dir.
    work = os.path.join("work", "bench_recall")
    assert quick.out == os.path.join(work, "recall-quick-synthetic+movielens.json")
    assert mine.out == os.path.join(work, "recall-quick-movielens.json")
    assert rb.parse_args(["--models", "item2vec"]).out == os.path.join(
        work, "recall-models-synthetic+movielens.json")
    assert rb.parse_args(["--datasets", "movielens"]).out == os.path.join(
        work, "recall-movielens.json")
    record = rb.protocol_record(mine)
    assert record["schedules"]["two_tower"]["max_epochs"] == 5
    assert record["seeds"]["learned_and_seeded_peers"] == [0, 1, 2]


def test_hparams_override_a_learned_models_defaults_in_every_child():
    args = rb.parse_args(["--hparams", '{"two_tower": {"share_item_embedding": false}}',
                          "--datasets", "synthetic,movielens"])
    assert args.hparams == {"two_tower": {"share_item_embedding": False}}
    config = rb.learned_config("two_tower", 2, None, args.hparams)
    assert config == dataclasses.replace(TwoTowerConfig(), seed=2, share_item_embedding=(False,))
    assert rb.learned_config("item2vec", 0, None, args.hparams) == Item2VecConfig()
    cmd = rb.child_command(args, "movielens", "/tmp/x/movielens.json", threads=1)
    assert json.loads(cmd[cmd.index("--hparams") + 1]) == args.hparams
    record = rb.protocol_record(args)
    assert record["hparams"]["overrides"]["two_tower"] == {"share_item_embedding": False}
    assert "--hparams" not in rb.child_command(rb.parse_args([]), "movielens", "/o", 1)
    # An ablation is not the recorded result: its JSON goes under work_dir.
    assert args.out == os.path.join(args.work_dir, "recall-hparams-synthetic+movielens.json")


def test_parse_args_takes_a_dataset_yaml_and_writes_outside_bench_results(tmp_path):
    import yaml

    from feature_contract import feature_config as fc
    with open(fc.builtin_config_path("synthetic"), encoding="utf-8") as f:
        raw = yaml.safe_load(f)
    yaml_path = tmp_path / "mine.yaml"
    # parse_args loads the YAML (a bad one is a usage error), not its tables.
    yaml_path.write_text(yaml.safe_dump({**raw, "name": "mine", "data": {"events": "e.jsonl"}}))
    args = rb.parse_args(["--datasets", f"movielens,{yaml_path}", "--work_dir", "/w",
                          "--out", "/o.json"])
    assert args.dataset_list == ["movielens", str(yaml_path)] and args.out == "/o.json"
    cmd = rb.child_command(args, str(yaml_path), "/tmp/x/mine.json", threads=1)
    assert cmd[cmd.index("--datasets") + 1] == str(yaml_path)


@pytest.mark.parametrize("argv, message", [
    (["--models", "two_tower,foo"], "unknown models ['foo']"),
    (["--models", ","], "no models given"),
    (["--datasets", "netflix"], "unknown dataset 'netflix': want one of"),
    (["--datasets", "/no/such.yaml"], "/no/such.yaml: no such dataset file"),
    (["--seeds", "0"], "--seeds must be >= 1, got 0"),
    (["--max_epochs", "0"], "--max_epochs must be >= 1, got 0"),
    (["--seeds", "two"], "invalid int value: 'two'"),
    (["--jobs", "0"], "--jobs must be >= 1 and --threads >= 0, got 0 / 0"),
    (["--hparams", "{two"], "--hparams is not JSON"),
    (["--hparams", '{"two_tower": 3}'], "--hparams must be a JSON object of objects"),
    (["--hparams", '{"als": {}}'], "--hparams names ['als'], not learned models"),
    (["--hparams", '{"two_tower": {"share_item_embedding": "yes"}}'],
     "--hparams for two_tower: share_item_embedding must be true, false"),
    (["--hparams", '{"two_tower": {"dim": "x"}}'], "--hparams for two_tower: "),
    (["--hparams", '{"two_tower": {"seed": 7}}'],
     "--hparams for two_tower: the seed is set by --seeds"),
    (["--quick", "--hparams", '{"youtubenet": {"max_epochs": 7}}'],
     "--hparams sets max_epochs, which --max_epochs (or --quick) overrides"),
])
def test_parse_args_rejects_bad_flags(argv, message, capsys):
    with pytest.raises(SystemExit) as err:
        rb.parse_args(argv)
    assert err.value.code == 2
    assert message in capsys.readouterr().err


def test_child_command_carries_the_resolved_settings():
    args = rb.parse_args(["--quick", "--models", "two_tower,itemcf", "--work_dir", "/w"])
    cmd = rb.child_command(args, "movielens", "/tmp/x/movielens.json", threads=1)
    assert cmd[1:] == ["-m", "bench.recall_bench", "--datasets", "movielens", "--seeds", "2",
                       "--models", "two_tower,itemcf", "--work_dir", "/w",
                       "--num_events", "200000", "--out", "/tmp/x/movielens.json",
                       "--jobs", "1", "--threads", "1", "--max_epochs", "3", "--quick"]
    child = rb.parse_args(cmd[3:])
    assert (child.seed_list, child.max_epochs, child.jobs, child.threads) == ([0, 1], 3, 1, 1)
    full = rb.child_command(rb.parse_args([]), "synthetic", "o.json", threads=2)
    assert "--max_epochs" not in full and "--quick" not in full
    assert full[full.index("--seeds") + 1] == "5"


def test_training_record_keeps_the_stopping_epochs_and_curve():
    curve = [{"epoch": 1, "train_loss": 2.0, "val_hr@50": 0.3},
             {"epoch": 2, "train_loss": 1.5, "val_hr@50": 0.2}]
    record = rb.training_record({
        "learning_curve": curve, "validation": {"validation_queries": 7}, "pairs": 10,
        "early_stopping": {"best_epoch": 1, "best_value": 0.3, "epochs_run": 3,
                           "stopped_early": True, "monitor": "val_hr@50"}})
    assert record == {"best_epoch": 1, "epochs_run": 3, "stopped_early": True,
                      "best_val_hr@50": 0.3, "learning_curve": curve,
                      "validation": {"validation_queries": 7}}
