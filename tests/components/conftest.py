"""Shared fixtures: a tiny synthetic click log sessionized by ClickLogExampleGen.

The raw log is generated (deterministically, ~1 s) rather than checked in,
and the example-gen executor runs once per session over it; every component
test builds on those real artifacts.
"""

import apache_beam as beam
import pytest
from tfx.types import standard_artifacts

from beam_jobs import datasets
from components.artifacts import FeatureVocabulary, ItemCatalogue, SessionizeSummary
from components.example_gen import ClickLogExampleGen
from tests.components.helpers import executor_fn, new_artifact

NUM_EVENTS = 3000


@pytest.fixture(scope="session")
def raw_dataset(tmp_path_factory) -> datasets.RawDataset:
    return datasets.prepare("synthetic", str(tmp_path_factory.mktemp("work")),
                            num_events=NUM_EVENTS)


@pytest.fixture(scope="session")
def sessionized(raw_dataset, tmp_path_factory) -> dict:
    root = str(tmp_path_factory.mktemp("example_gen"))
    outputs = {
        "ranking_examples": new_artifact(standard_artifacts.Examples, root, "ranking"),
        "retrieval_examples": new_artifact(standard_artifacts.Examples, root, "retrieval"),
        "item2vec_examples": new_artifact(standard_artifacts.Examples, root, "item2vec"),
        "vocabulary": new_artifact(FeatureVocabulary, root, "vocabulary"),
        "catalogue": new_artifact(ItemCatalogue, root, "catalogue"),
        "summary": new_artifact(SessionizeSummary, root, "summary"),
    }
    executor_fn(ClickLogExampleGen)(
        **outputs, config_path=raw_dataset.config_path, events=raw_dataset.events,
        users=raw_dataset.users, items=raw_dataset.items,
        # Named: DirectRunner would first try to download the Prism runner binary.
        beam_pipeline=beam.Pipeline(runner="FnApiRunner"))
    return outputs


@pytest.fixture(scope="session")
def ranking_model(sessionized, tmp_path_factory):
    """A trained (briefly) NFwFM Model artifact and its metrics."""
    from components.artifacts import TrainingMetrics
    from components.trainer import RankingTrainer
    root = str(tmp_path_factory.mktemp("ranking_trainer"))
    model = new_artifact(standard_artifacts.Model, root, "model")
    metrics = new_artifact(TrainingMetrics, root, "metrics")
    executor_fn(RankingTrainer)(
        examples=sessionized["ranking_examples"], vocabulary=sessionized["vocabulary"],
        model=model, metrics=metrics, model_name="nfwfm",
        # Two epochs: on this tiny log one epoch at any rate scores below an
        # untrained model on validation (first-order weights of the items seen
        # in fit fall before the bias catches up); the second is well above it.
        hparams='{"max_epochs": 2, "batch_size": 256, "embedding_dim": 4, '
                '"learning_rates": [1e-9, 0.01]}')
    return model, metrics


@pytest.fixture(scope="session")
def recall_model(sessionized, tmp_path_factory):
    """A trained (briefly) two-tower user tower + item embeddings + metrics."""
    from components.artifacts import ItemEmbeddings, TrainingMetrics
    from components.trainer import RecallTrainer
    root = str(tmp_path_factory.mktemp("recall_trainer"))
    model = new_artifact(standard_artifacts.Model, root, "model")
    embeddings = new_artifact(ItemEmbeddings, root, "item_embeddings")
    metrics = new_artifact(TrainingMetrics, root, "metrics")
    executor_fn(RecallTrainer)(
        examples=sessionized["retrieval_examples"], vocabulary=sessionized["vocabulary"],
        catalogue=sessionized["catalogue"], model=model, item_embeddings=embeddings,
        metrics=metrics, model_name="two_tower",
        hparams='{"max_epochs": 1, "batch_size": 128, "dim": 8, "embedding_dim": 4, '
                '"hidden_units": [16], "attention_units": 4, "extra_negatives": 8}')
    return model, embeddings, metrics
