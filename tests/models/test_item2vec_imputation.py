"""Item2vec: every catalogue item gets a vector (issue 13 item 3)."""

import os

import numpy as np
import pytest

from feature_contract import feature_config as fc
from models import inputs
from models.item2vec import train as i2v_train
from models.item2vec.config import Item2VecConfig, Item2VecConfigError
from models.recall import artifacts, data
from tests.models import recall_fixtures


def test_impute_vectors_takes_the_first_shared_attribute_then_the_global_mean():
    trained = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    category = [1, 1, 2]  # trained items' codes, 0 = missing
    city = [1, 2, 2]
    # a: category 1 -> rows 0, 1; b: category 3 has no trained item, city 2
    # -> rows 1, 2; c: no category, city 3 has no trained item -> all rows.
    missing_category = [1, 3, 0]
    missing_city = [2, 2, 3]
    vectors, source = i2v_train.impute_vectors(trained, np.array([category, city]),
                                               np.array([missing_category, missing_city]))
    np.testing.assert_allclose(vectors, [[0.5, 0.5], [0.3, 0.9], [1.6 / 3, 1.8 / 3]],
                               rtol=1e-6)
    assert source.tolist() == [0, 1, 2]
    assert vectors.dtype == np.float32


def test_impute_vectors_without_attributes_is_the_global_mean():
    trained = np.array([[1.0, 2.0], [3.0, 0.0]])
    vectors, source = i2v_train.impute_vectors(trained, np.zeros((0, 2), np.int64),
                                               np.zeros((0, 3), np.int64))
    np.testing.assert_allclose(vectors, [[2.0, 1.0]] * 3)
    assert source.tolist() == [0, 0, 0]


def test_impute_vectors_rejects_bad_shapes():
    with pytest.raises(ValueError, match="no trained vector to impute from"):
        i2v_train.impute_vectors(np.zeros((0, 2)), np.zeros((1, 0)), np.zeros((1, 1)))
    with pytest.raises(ValueError, match=r"groups of shapes \(1, 2\) \(trained\) and \(2, 1\) "
                                         r"\(missing\) for 2 trained vectors"):
        i2v_train.impute_vectors(np.ones((2, 2)), np.ones((1, 2)), np.ones((2, 1)))


def test_untrained_items_are_the_catalogue_minus_the_trained_in_catalogue_order():
    catalogue = data.Catalogue(["a", "b", "c", "d"], {}, np.zeros(4, np.int64),
                               np.zeros(4, np.int64))
    assert i2v_train.untrained_items(["c", "a"], ["a", "c", "x"], catalogue) == ["b", "d"]
    assert i2v_train.untrained_items(["c", "a"], ["a", "c", "x"], None) == ["x"]


def test_config_rejects_an_unknown_impute_role_and_keeps_a_tuple():
    with pytest.raises(Item2VecConfigError,
                       match=r"impute_roles \['user_city'\] not in \('item_city', "
                             r"'item_category'\)"):
        Item2VecConfig(impute_roles=("item_category", "user_city"))
    config = Item2VecConfig.from_hparams({"impute_roles": ["item_city"]})
    assert config.impute_roles == ("item_city",)
    hash(config)


@pytest.fixture(scope="module")
def with_new_item(tmp_path_factory):
    """The recall fixture plus catalogue item "new3": in no session, category cat3."""
    root = str(tmp_path_factory.mktemp("i2v_impute"))
    paths = recall_fixtures.write_dataset(os.path.join(root, "data"))
    config = fc.load(paths["config"])
    catalogue = data.load_catalogue(paths["items"], config)
    row = catalogue.ids.index("i3")  # i3's item features: category cat3, city x0
    features = {name: np.concatenate([values, values[row:row + 1]])
                for name, values in catalogue.features.items()}
    features[config.item_id_feature.name][-1] = b"new3"
    catalogue = data.Catalogue(catalogue.ids + ["new3"], features,
                               np.append(catalogue.clicks, 0),
                               np.append(catalogue.impressions, 0))
    sessions = data.load_examples(inputs.split_pattern(paths["item2vec"], fc.TRAIN), config,
                                  fc.ITEM2VEC)
    result = i2v_train.fit(config, sessions, inputs.read_vocab(paths["vocab"], "item_id"),
                           catalogue, Item2VecConfig(dim=8, max_epochs=1, batch_size=256))
    return config, catalogue, result, root


def test_new_item_gets_the_mean_of_its_category_and_is_exported(with_new_item):
    config, catalogue, result, root = with_new_item
    trained = result.stats["trained_items"]
    assert "new3" not in result.item_ids[:trained] and "new3" in result.item_ids
    category = catalogue.features[config.role(fc.ROLE_ITEM_CATEGORY).name]
    of = dict(zip(catalogue.ids, category))
    same = [i for i, x in enumerate(result.item_ids[:trained]) if of[x] == b"cat3"]
    assert len(same) >= 2
    vectors = result.similarity_vectors
    expected = vectors[same].astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(vectors[result.item_ids.index("new3")], expected,
                               rtol=1e-6, atol=1e-7)
    # Every catalogue item is exported once; the count says which are imputed.
    assert sorted(result.item_ids) == sorted(catalogue.ids)
    assert result.stats["imputed_items"] == len(catalogue) - trained
    export = os.path.join(root, "export")
    result.export(export)
    emb = artifacts.read_item_embeddings(os.path.join(export, artifacts.ITEM_EMBEDDINGS_DIR))
    assert emb.ids == result.item_ids and "new3" in emb.ids
    assert emb.metadata["imputed_items"] == len(catalogue) - trained
    assert emb.metadata["trained_items"] == trained
    np.testing.assert_array_equal(emb.embeddings, result.item_vectors)


def test_an_imputed_vocabulary_item_counts_in_the_user_vector(with_new_item):
    config, _, result, _ = with_new_item
    trained = result.stats["trained_items"]
    vocab_untrained = [x for x in result.item_ids[trained:] if x in set(result.vocabulary)]
    assert vocab_untrained  # a vocabulary item clicked only in validation or too briefly
    item = vocab_untrained[0]
    history = config.history_feature.name
    user = result.user_vectors({history: np.array([[item.encode()] + [b""] * 49])})
    dim = result.similarity_vectors.shape[1]
    np.testing.assert_allclose(user[0, :dim],
                               result.similarity_vectors[result.item_ids.index(item)], rtol=1e-6)
    # With the popularity prior chosen, the user's prior weight is 1.
    assert user.shape[1] == dim + result.prior_column
    if result.prior_column:
        assert user[0, -1] == 1.0


def test_a_forced_prior_is_chosen_on_fit_clicks_and_exported_with_every_training_click(
        tmp_path, monkeypatch):
    """prior_weights=(1.0,): the served prior column is scaled log catalogue clicks; the
    weight was chosen with the fit period's clicks (no validation click); the exported
    tower, the index metadata and the validation vectors agree."""
    paths = recall_fixtures.write_dataset(str(tmp_path / "data"))
    config = fc.load(paths["config"])
    catalogue = data.load_catalogue(paths["items"], config)
    sessions = data.load_examples(inputs.split_pattern(paths["item2vec"], fc.TRAIN), config,
                                  fc.ITEM2VEC)
    vocabulary = inputs.read_vocab(paths["vocab"], "item_id")
    seen = []
    choose = i2v_train.choose_prior_weight

    def spy(queries, vectors, clicks, weights):
        seen.append(np.array(clicks))
        return choose(queries, vectors, clicks, weights)

    monkeypatch.setattr(i2v_train, "choose_prior_weight", spy)
    result = i2v_train.fit(config, sessions, vocabulary, catalogue,
                           Item2VecConfig(dim=8, max_epochs=1, batch_size=256,
                                          prior_weights=(1.0,)))
    assert result.prior_column and result.stats["popularity_prior"]["weight"] == 1.0
    trained = result.stats["trained_items"]
    # Every choice (one per epoch's validation; the kept epoch's is reused) saw the fit
    # clicks only.
    from models.recall import training
    carve = training.carve_validation(sessions, 0.1, "item2vec")
    ids = i2v_train.sessions_to_ids(carve.fit[fc.SESSION_ITEMS_KEY], vocabulary)
    fit_counts = np.bincount(np.concatenate(ids), minlength=len(vocabulary) + 1)
    rows = [vocabulary.index(x) + 1 for x in result.item_ids[:trained]]
    assert len(seen) == result.stats["early_stopping"]["epochs_run"] == 1
    for clicks in seen:
        np.testing.assert_array_equal(clicks, fit_counts[rows])
    all_counts = catalogue.clicks[catalogue.rows_of(result.item_ids)]
    assert (all_counts[:trained] > fit_counts[rows]).any()  # validation clicks exist
    # Served column: 1.0 x scaled log of every training click (the catalogue's).
    np.testing.assert_allclose(result.item_vectors[:, -1],
                               i2v_train.scaled_log_clicks(all_counts), rtol=1e-6)
    np.testing.assert_allclose(result.validation_vectors[:trained, -1],
                               i2v_train.scaled_log_clicks(
                                   np.concatenate([fit_counts[rows],
                                                   np.zeros(len(result.item_ids) - trained)]))
                               [:trained], rtol=1e-6)
    export = str(tmp_path / "export")
    result.export(export)
    emb = artifacts.read_item_embeddings(os.path.join(export, artifacts.ITEM_EMBEDDINGS_DIR))
    assert emb.metadata["prior_column"] is True and emb.metadata["prior_weight"] == 1.0
    assert emb.metadata["normalized"] is False and emb.embeddings.shape[1] == 9
    # The exported tower (SavedModel): similarity mean of the recent clicks, 1 in the prior column.
    import tensorflow as tf
    serve = artifacts.load_user_tower(os.path.join(export, artifacts.USER_TOWER_DIR))
    arrays = data.load_examples(os.path.join(paths["retrieval"], "Split-eval", "*.gz"), config,
                                fc.RETRIEVAL)
    request = {k: tf.constant(arrays[k][:5]) for k in data.serving_signature(config)}
    served = serve(**request)["user_embedding"].numpy()
    assert served.shape == (5, 9)
    np.testing.assert_array_equal(served[:, -1], np.ones(5))
    row = {x: i for i, x in enumerate(emb.ids)}
    hist = data.history_lists(arrays[config.history_feature.name][:5])
    expected = np.stack([emb.embeddings[[row[x] for x in h if x in row][-5:], :8].mean(0)
                         if any(x in row for x in h) else np.zeros(8) for h in hist])
    np.testing.assert_allclose(served[:, :8], expected, atol=1e-5)
