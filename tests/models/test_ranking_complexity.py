"""Parameter and FLOP counts: analytic vs built models and hand-computed values."""
import pytest
import tensorflow as tf

from feature_contract import feature_config as fc
from models import inputs
from models.ranking import complexity
from models.ranking import config as rc
from models.ranking.model import RankingModel

TINY = fc.from_dict({
    "name": "tiny",
    "features": [
        {"name": "user_id", "field": "user", "type": "categorical", "source": "users", "vocab_size": 10},
        {"name": "tags", "field": "user", "type": "tags", "source": "users", "vocab_size": 5, "max_len": 2},
        {"name": "history", "field": "user", "type": "sequence", "source": "history", "of": "item_id",
         "max_len": 3},
        {"name": "item_id", "field": "item", "type": "categorical", "source": "items", "vocab_size": 10},
        {"name": "category", "field": "item", "type": "categorical", "source": "items", "vocab_size": 4},
        {"name": "hour", "field": "context", "type": "numeric", "source": "events",
         "boundaries": [6, 12, 18]},
    ]})
VOCABS = {"user_id": ["u1", "u2", "u3", "u4"], "tags": ["a", "b", "c"],
          "item_id": ["i1", "i2", "i3", "i4", "i5"], "category": ["x", "y"]}
# Table rows: user_id 5, tags 4, item_id 6 (shared by history), category 3, hour 3 + 2 = 5.
ROWS = 5 + 4 + 6 + 3 + 5


def _batch():
    return {"user_id": tf.constant(["u1"]), "tags": tf.constant([["a", ""]]),
            "history": tf.constant([["i1", "i2", ""]]), "item_id": tf.constant(["i3"]),
            "category": tf.constant(["x"]), "hour": tf.constant([7.0])}


def _model(name, **hparams):
    model = RankingModel(rc.make_config(name, hparams).to_dict(), TINY.to_dict(), VOCABS)
    model.build_from_example(_batch())
    return model


@pytest.mark.parametrize("name,hparams", [
    ("lr", {}),
    ("nfm", {"embedding_dim": 3, "hidden_units": (4,)}),
    ("nfwfm", {"embedding_dim": 2, "hidden_units": (3,)}),
    ("nfwfm", {"embedding_dim": 2, "hidden_units": (), "use_fm_module": False}),
    ("multitask_nfwfm", {"embedding_dim": 2, "hidden_units": (3, 2)}),
    ("multitask_nfwfm", {"embedding_dim": 2, "loss_mode": "reweight"}),
    ("multitask_nfwfm", {"embedding_dim": 2, "hidden_units": (3, 2), "task_towers": True}),
    ("nfwfm", {"embedding_dim": 2, "hidden_units": (3,), "interaction_batch_norm": True}),
    ("nfm", {"embedding_dim": 3, "hidden_units": (4,), "interaction_batch_norm": True}),
    ("deepfm", {"embedding_dim": 2, "hidden_units": (4,)}),
    ("dcn", {"embedding_dim": 2, "hidden_units": (4,), "cross_layers": 3}),
])
def test_analytic_params_match_built_model(name, hparams):
    model = _model(name, **hparams)
    assert complexity.count_params(model.ranking_config, TINY, model.num_rows) == model.count_params()


def test_params_hand_computed_tiny_nfwfm():
    model = _model("nfwfm", embedding_dim=2, hidden_units=(3,))
    # tables 2 * rows + linear rows; r: 3 pairs + 3 fields; MLP 2*3+3; head 3+1.
    expected = 2 * ROWS + ROWS + 6 + 9 + 4
    assert expected == 88
    assert model.count_params() == expected


def test_params_hand_computed_vector_pair_weights():
    config = rc.make_config("nfwfm", {"embedding_dim": 2, "hidden_units": (3,),
                                      "pair_weights": "vector"})
    model = _model("nfwfm", embedding_dim=2, hidden_units=(3,), pair_weights="vector")
    # As the scalar model, with r a 2-vector for each of 3 pairs and 3 fields: 6 -> 12.
    expected = 2 * ROWS + ROWS + 12 + 9 + 4
    assert expected == 94
    assert complexity.count_params(config, TINY, model.num_rows) == expected
    assert model.count_params() == expected
    # Same FLOPs as the scalar form: a product by r either way.
    scalar = rc.make_config("nfwfm", {"embedding_dim": 2, "hidden_units": (3,)})
    assert complexity.flops_per_example(config, TINY) == complexity.flops_per_example(
        scalar, TINY) == 149
    with pytest.raises(rc.RankingConfigError, match="pair_weights 'matrix' not in"):
        rc.make_config("nfwfm", {"pair_weights": "matrix"})


def test_params_hand_computed_uncertainty_counts_log_variances():
    config = rc.make_config("multitask_nfwfm", {"embedding_dim": 2, "hidden_units": (3,)})
    model = _model("multitask_nfwfm", embedding_dim=2, hidden_units=(3,))
    inference = 2 * ROWS + ROWS + 6 + 9 + 2 * 4
    assert complexity.count_params(config, TINY, model.num_rows, include_training_only=False) == inference
    assert model.count_params() == inference + 2


def test_flops_hand_computed_tiny_nfwfm():
    config = rc.make_config("nfwfm", {"embedding_dim": 2, "hidden_units": (3,)})
    d, f, m, p = 2, 6, 3, 3
    pooling = (2 * 2 * d + d) + (2 * 3 * d + d)  # tags (L=2) and history (L=3)
    linear = (2 * 2 + 1) + (2 * 3 + 1) + f
    field_sums, mf = f * d, 3 * p * d
    fm = 2 * f * d + 5 * m * d
    add_and_dropout = 2 * d
    mlp, head = 2 * d * 3, 2 * 3 + 1
    expected = pooling + linear + field_sums + mf + fm + add_and_dropout + mlp + head
    assert expected == 149
    assert complexity.flops_per_example(config, TINY) == expected


def test_flops_hand_computed_tiny_nfm_and_lr():
    nfm = rc.make_config("nfm", {"embedding_dim": 3, "hidden_units": (4,)})
    d = 3
    expected = ((2 * 2 * d + d) + (2 * 3 * d + d) + (5 + 7 + 6) + 3 * 6 * d + 3 * d
                + 2 * d * 4 + 2 * 4 + 1)
    assert complexity.flops_per_example(nfm, TINY) == expected
    lr = rc.make_config("lr", {})
    assert complexity.flops_per_example(lr, TINY) == (2 * 2 + 1) + (2 * 3 + 1) + 6 + 1


@pytest.mark.parametrize("dataset", ["synthetic", "movielens"])
def test_default_nfwfm_within_a_sixth_of_nfm_200(dataset):
    features = fc.load(fc.builtin_config_path(dataset))
    names = [f.name for f in features.features]
    rows = {}
    for spec in features.features:
        source = features.feature(spec.of) if spec.type == fc.SEQUENCE else spec
        rows[spec.name] = (len(spec.boundaries) + 2 if spec.type == fc.NUMERIC
                           else (source.hash_buckets or source.vocab_size) + 1)
    assert len(rows) == len(names)
    nfm, nfwfm = rc.make_config("nfm"), rc.make_config("nfwfm")
    assert nfm.embedding_dim == 200
    assert (complexity.count_params(nfwfm, features, rows)
            <= complexity.count_params(nfm, features, rows) / 6)
    assert (complexity.flops_per_example(nfwfm, features)
            <= complexity.flops_per_example(nfm, features) / 6)
    mt = rc.make_config("multitask_nfwfm")
    assert (complexity.flops_per_example(mt, features)
            <= complexity.flops_per_example(nfm, features) / 6)


def test_make_config_errors_name_the_bad_value():
    with pytest.raises(rc.RankingConfigError, match="'xgboost'"):
        rc.make_config("xgboost")
    with pytest.raises(rc.RankingConfigError, match="embeding_dim"):
        rc.make_config("nfm", {"embeding_dim": 3})
    with pytest.raises(rc.RankingConfigError, match="keep_prob"):
        rc.make_config("nfwfm", {"keep_prob": 1.5})
    with pytest.raises(rc.RankingConfigError, match="tasks"):
        rc.make_config("nfwfm", {"tasks": ["like"]})
    with pytest.raises(rc.RankingConfigError, match="reweight"):
        rc.make_config("nfwfm", {"tasks": ["follow"], "loss_mode": "reweight"})


def test_params_and_flops_hand_computed_task_towers_and_batch_norm():
    # Towers: one MLP (2*3+3) per task instead of one shared; heads 3+1 each.
    towers = _model("multitask_nfwfm", embedding_dim=2, hidden_units=(3,), task_towers=True)
    assert towers.count_params() == 2 * ROWS + ROWS + 6 + 2 * 9 + 2 * 4 + 2
    # Batch norm on the d=2 interaction: gamma, beta, moving mean, variance.
    bn = _model("nfwfm", embedding_dim=2, hidden_units=(3,), interaction_batch_norm=True)
    assert bn.count_params() == 88 + 4 * 2
    # FLOPs: the folded scale and shift are 2 * d on top of the 149 above.
    config = rc.make_config("nfwfm", {"embedding_dim": 2, "hidden_units": (3,),
                                      "interaction_batch_norm": True})
    assert complexity.flops_per_example(config, TINY) == 149 + 2 * 2
    # Towers: two MLPs (2 * 2 * 3) and two heads (2 * 3 + 1) instead of one each.
    mt = rc.make_config("multitask_nfwfm", {"embedding_dim": 2, "hidden_units": (3,),
                                            "task_towers": True})
    assert complexity.flops_per_example(mt, TINY) == 149 + 2 * 2 * 3 + 2 * 3 + 1


def test_new_settings_errors_name_the_bad_value():
    with pytest.raises(rc.RankingConfigError, match="task_towers needs .* 'nfm'"):
        rc.make_config("nfm", {"task_towers": True})
    with pytest.raises(rc.RankingConfigError, match="task_towers needs"):
        rc.make_config("multitask_nfwfm", {"task_towers": True, "hidden_units": ()})
    with pytest.raises(rc.RankingConfigError, match="interaction_batch_norm needs .* 'dcn'"):
        rc.make_config("dcn", {"interaction_batch_norm": True})
    with pytest.raises(rc.RankingConfigError, match="click_weight must be > 0, got 0"):
        rc.make_config("multitask_nfwfm", {"click_weight": 0.0})
    with pytest.raises(rc.RankingConfigError, match="click_weight 2.0 needs the click task"):
        rc.make_config("nfwfm", {"tasks": ["follow"], "click_weight": 2.0})
