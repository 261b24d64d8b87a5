"""A wrong vocab_dir fails loudly instead of training an AUC-0.5 model (#12 part 5)."""

import os
import shutil

import pytest

from feature_contract import feature_config as fc
from models.layers.feature_embedding import (VocabularyError, check_vocabulary_coverage,
                                             load_vocabularies, oov_rates)
from models.ranking import synthetic_examples, train

CONFIG_PATH = fc.builtin_config_path("movielens")
FEATURES = fc.load(CONFIG_PATH)


def test_oov_rates_count_non_empty_values_outside_the_vocabulary():
    vocabularies = {"a": ["x", "y"], "b": ["p"], "unused": ["q"]}
    batch = {"a": [b"x", b"z", b""], "b": [["p", ""], ["r", "s"]]}
    # a: z of {x, z} -> 1/2; b: r, s of {p, r, s} -> 2/3; padding "" is not a value.
    assert oov_rates(vocabularies, batch) == {"a": 0.5, "b": 2 / 3}


def test_all_features_out_of_vocabulary_fail_and_one_does_not():
    vocabularies = {"a": ["x"], "b": ["p"]}
    assert check_vocabulary_coverage(vocabularies, {"a": ["z"], "b": ["p"]}, "v") == {
        "a": 1.0, "b": 0.0}  # one cold feature is allowed
    with pytest.raises(VocabularyError) as err:
        check_vocabulary_coverage(vocabularies, {"a": ["z"], "b": ["r"]}, "v")
    assert str(err.value) == ("every feature of the training data is out of the vocabularies "
                              "in 'v' (OOV rate a 1.000, b 1.000): vocabularies of other data?")


def test_a_vocab_dir_without_vocabularies_fails(tmp_path):
    with pytest.raises(VocabularyError, match=r"holds no vocabulary of .*: a wrong path\?"):
        load_vocabularies(FEATURES, str(tmp_path / "nowhere"))
    # No vocab_dir at all: every feature empty (all-OOV on purpose, as some tests want).
    assert load_vocabularies(FEATURES, None) == {f.name: [] for f in FEATURES.vocab_features}


def test_training_with_another_datas_vocabularies_fails(tmp_path):
    data = synthetic_examples.write_ranking_examples(str(tmp_path / "data"), FEATURES,
                                                     num_train=200, num_eval=50)
    wrong = str(tmp_path / "wrong_vocab")
    shutil.copytree(data["vocab_dir"], wrong)
    for name in os.listdir(wrong):  # same features, other data's values
        with open(os.path.join(wrong, name)) as f:
            words = [w.strip() for w in f if w.strip()]
        with open(os.path.join(wrong, name), "w") as f:
            f.write("".join(f"other_{w}\n" for w in words))
    with pytest.raises(VocabularyError, match="every feature of the training data is out of"):
        train.train("nfm", CONFIG_PATH, data["train_pattern"], data["eval_pattern"], wrong,
                    {"max_epochs": 1}, None)
