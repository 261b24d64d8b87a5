"""Custom artifact types of the feedrec pipeline.

Standard TFX types are used where their layout fits (Examples, Model,
ModelBlessing, InfraBlessing, PushedModel, ModelEvaluation); these types cover
what the sessionize job and the recall trainers write that TFX has no type for.
"""

from __future__ import annotations

from tfx.types import artifact


class FeatureVocabulary(artifact.Artifact):
    """Vocabularies of the train split plus the feature config they belong to.

    Layout: <uri>/vocab/<feature>.txt (most frequent first) and
    <uri>/feature_config.yaml (a copy, so downstream steps read the exact
    config the examples were written with).
    """

    TYPE_NAME = "feedrec.FeatureVocabulary"


class ItemCatalogue(artifact.Artifact):
    """The item catalogue: <uri>/items/*.tfrecord.gz and <uri>/item_frequencies.tsv."""

    TYPE_NAME = "feedrec.ItemCatalogue"


class SessionizeSummary(artifact.Artifact):
    """Counts of the sessionize job: <uri>/summary.json and <uri>/dead_letter/."""

    TYPE_NAME = "feedrec.SessionizeSummary"


class ItemEmbeddings(artifact.Artifact):
    """A recall model's item vectors: ids.txt, embeddings.npy, metadata.json
    (models.recall.artifacts layout)."""

    TYPE_NAME = "feedrec.ItemEmbeddings"


class TrainingMetrics(artifact.Artifact):
    """A trainer's own evaluation: <uri>/metrics.json (AUC, recall@K, sigmas)."""

    TYPE_NAME = "feedrec.TrainingMetrics"


class PushedIndex(artifact.Artifact):
    """A published FAISS index; custom properties `pushed` (0/1),
    `pushed_destination` (the version dir) and `reason` when not pushed."""

    TYPE_NAME = "feedrec.PushedIndex"


class PipelineReport(artifact.Artifact):
    """The run report: <uri>/report.md plus PNG plots; `published_path` names
    the copy next to the pushed models."""

    TYPE_NAME = "feedrec.PipelineReport"


class DataStatistics(artifact.Artifact):
    """Per-feature statistics of an Examples artifact (components.statistics):
    <uri>/Split-<split>/statistics.json (beam_jobs.statistics layout);
    custom properties `split_names` (JSON list) and `num_examples_<split>`."""

    TYPE_NAME = "feedrec.DataStatistics"


class DataAnomalies(artifact.Artifact):
    """Data checks of a DataStatistics (components.statistics): <uri>/anomalies.json;
    `blessed` (1: pushes may go), `num_anomalies`, `num_blocking`, `reason`."""

    TYPE_NAME = "feedrec.DataAnomalies"


class FinalBlend(artifact.Artifact):
    """The final-list blend (serving.blend): <uri>/blend.json and <uri>/fit.json;
    custom properties `published` (0/1), `published_path` (<serving_dir>/blend.json)
    and `reason`."""

    TYPE_NAME = "feedrec.FinalBlend"
