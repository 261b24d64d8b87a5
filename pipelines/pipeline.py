"""create_pipeline: the feedrec TFX pipeline as a pure factory.

    ClickLogExampleGen (Beam sessionize job)
      -> DataValidator (per-split statistics; anomalies incl. drift vs the
           previous data's statistics) -> blocks every ServingValidator below
      -> ranking: RankingTrainer(nfm baseline), RankingTrainer(nfwfm candidate)
           -> Evaluator (TFMA gate: AUC floor + within auc_tolerance of the
              baseline, 95% jackknife intervals, sliced overall and by is_new_user)
           -> RankingGate (AND of the Evaluators + every head evaluable) -> ModelBlessing
           -> ServingValidator (model server + real Predict) -> InfraBlessing
           -> Pusher <serving_dir>/models/ranking/<version>/ (both blessings needed)
         multi-task NFwFM (optional): one Evaluator per head (click vs baseline,
           follow floor) joined by RankingGate -> models/ranking_multitask/
      -> recall (optional, per model): RecallTrainer -> ServingValidator(user tower)
           -> Pusher <serving_dir>/models/user_tower_<name>/<version>/
           -> FaissIndexBuilder <serving_dir>/indexes/<name>/<version>/
      -> BlendFitter (after every push; items table given, recall on): replays
           validation-period requests through the served models and publishes
           the final-list blend <serving_dir>/blend.json (serving.blend)
      -> PipelineReporter <serving_dir>/reports/<time>/report.md

Nothing here reads the environment or builds a path from a convention other
than serving_dir's layout: runners own settings (pipelines/*_runner.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from ml_metadata.proto import metadata_store_pb2
from tfx.components.evaluator.component import Evaluator
from tfx.components.pusher.component import Pusher
from tfx.orchestration import pipeline as tfx_pipeline
from tfx.proto import pusher_pb2

from feature_contract import feature_config as fc
from feature_contract.dataset import Dataset
from components import eval_config
from components.blend_fitter import BlendFitter
from components.blessing import RankingGate
from components.example_gen import ClickLogExampleGen
from components.faiss_builder import FaissIndexBuilder
from components.report import PipelineReporter
from components.serving_validator import RANKING, USER_TOWER, ServingValidator
from components.statistics import (COMPONENT_ID as DATA_VALIDATOR_ID, STATISTICS_KEY,
                                   DataValidator, ValidationConfig, previous_statistics_resolver)
from components.trainer import RankingTrainer, RecallTrainer

RECALL_MODELS: tuple[str, ...] = ("item2vec", "youtubenet", "two_tower")
# Served model names (serving_configs/models.config).
RANKING_SERVED_NAME = "ranking"
MULTITASK_SERVED_NAME = "ranking_multitask"
USER_TOWER_PREFIX = "user_tower_"
# What DataValidator's drift check compares with (create_pipeline's drift_baseline).
PREVIOUS_DATA, PREVIOUS_RUN = "previous_data", "previous_run"
DRIFT_BASELINES: tuple[str, ...] = (PREVIOUS_DATA, PREVIOUS_RUN)


@dataclasses.dataclass(frozen=True)
class RankingSettings:
    """The ranking stage.

    Attributes:
      baseline: baseline model name (models.ranking), the gate's reference.
      candidate: candidate model name, gated and pushed.
      multitask: multi-task model name, or None to skip it.
      hparams: model name -> RankingConfig overrides.
      min_auc: absolute click-AUC floor of the candidate(s).
      min_follow_auc: absolute follow-AUC floor of the multi-task model.
      slice_features: Evaluator slices besides overall.
      auc_tolerance: how far below the baseline's click AUC a candidate's may
        be and still be blessed: AUC_c - AUC_b >= -auc_tolerance (>= 0).
      allow_unevaluable_heads: bless although a gated head's eval split has
        no positives (or no negatives), i.e. has no AUC; off by default, such
        a head refuses the model.
      confidence_intervals: the Evaluators compute 95% jackknife intervals
        (reported, not gated on).
      enabled: build the ranking stage (trainers, gates, serving checks,
        pushes). Off for a log without impressions, which has no ranking
        examples: the run then trains, checks and pushes the recall models
        only, and serving orders by the recall channels (no ranker pushed).
    """

    baseline: str = "nfm"
    candidate: str = "nfwfm"
    multitask: str | None = "multitask_nfwfm"
    hparams: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    min_auc: float = 0.5
    min_follow_auc: float = 0.5
    slice_features: tuple[str, ...] = (fc.NEW_USER_KEY,)
    auc_tolerance: float = eval_config.DEFAULT_AUC_TOLERANCE
    allow_unevaluable_heads: bool = False
    confidence_intervals: bool = True
    enabled: bool = True

    def hparams_json(self, model: str) -> str:
        # Sorted keys: the same settings give the same string, so caching holds.
        return json.dumps(dict(self.hparams.get(model, {})), sort_keys=True)


@dataclasses.dataclass(frozen=True)
class RecallSettings:
    """The recall stage.

    Attributes:
      models: recall models to train, push and index (subset of RECALL_MODELS).
      hparams: model name -> model config overrides.
    """

    models: tuple[str, ...] = RECALL_MODELS
    hparams: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)

    def hparams_json(self, model: str) -> str:
        return json.dumps(dict(self.hparams.get(model, {})), sort_keys=True)


def _push_to(serving_dir: str, served_name: str) -> pusher_pb2.PushDestination:
    return pusher_pb2.PushDestination(filesystem=pusher_pb2.PushDestination.Filesystem(
        base_directory=os.path.join(serving_dir, "models", served_name)))


def create_pipeline(pipeline_name: str, pipeline_root: str, dataset: Dataset, serving_dir: str,
                    ranking: RankingSettings = RankingSettings(),
                    recall: RecallSettings = RecallSettings(),
                    metadata_connection_config: metadata_store_pb2.ConnectionConfig | None = None,
                    beam_pipeline_args: Sequence[str] = (),
                    enable_cache: bool = True,
                    validation_examples: int = 64,
                    data_checks: ValidationConfig | None = ValidationConfig(),
                    drift_baseline: str = PREVIOUS_DATA,
                    training_cluster: str = "",
                    blend_requests: int = 3000,
                    blend_min_requests: int = 100,
                    funnel_results: str = "",
                    funnel_sha256: str = "") -> tfx_pipeline.Pipeline:
    """Builds the pipeline.

    Args:
      pipeline_name: MLMD context name.
      pipeline_root: where artifacts are written.
      dataset: the feature config (as YAML text) and the raw table globs
        (README "Raw click-log format"; beam_jobs.datasets.resolve makes one
        from a built-in name or a dataset YAML).
      serving_dir: receives models/<name>/<version>/, indexes/<name>/<version>/
        and reports/<time>/.
      ranking: ranking stage settings.
      recall: recall stage settings.
      metadata_connection_config: MLMD connection (None: the orchestrator's).
      beam_pipeline_args: for ExampleGen's sessionize job and the Evaluator.
      enable_cache: reuse the outputs of unchanged executions.
      validation_examples: Predict batch of each serving check.
      data_checks: thresholds of DataValidator, whose blocking anomalies make
        every ServingValidator refuse (so nothing is pushed); None: no data checks.
      drift_baseline: what drift is measured against: PREVIOUS_DATA (the
        statistics of the last other examples; an unchanged re-run stays
        cached) or PREVIOUS_RUN (the last run's statistics: the only form the
        Kubeflow V2 compiler takes).
      training_cluster: "" trains every model in its component's process;
        "local:workers=<n>,ps=<m>" (processes on this machine) or "tf_config"
        (the cluster in TF_CONFIG) trains the ranking models and the two_tower
        recall model under ParameterServerStrategy with sharded embedding
        tables (item2vec and youtubenet have no cluster trainer and stay in
        process).
      blend_requests: validation requests BlendFitter replays at most to fit
        the final-list blend.
      blend_min_requests: fewest usable validation requests it publishes a
        blend from.
      funnel_results: an offline funnel replay's JSON (bench.funnel_bench);
        the report draws its figures for this dataset (dataset.name) beside
        the run's own blend validation. "": no replay rows.
      funnel_sha256: the hash of that JSON's bytes (the runner's): part of
        the report step's parameters, hence of its cache key, since a path
        alone would let a re-run reuse a report drawn from an older file.

    Returns:
      The tfx Pipeline.

    Raises:
      ValueError: an unknown recall model or a candidate equal to the baseline.
    """
    unknown = sorted(set(recall.models) - set(RECALL_MODELS))
    if unknown:
        raise ValueError(f"unknown recall models {unknown}; want a subset of {RECALL_MODELS}")
    if not ranking.enabled and not recall.models:
        raise ValueError("nothing to train: the ranking stage is off (no impressions) and no "
                         "recall model is asked for")
    if ranking.enabled and ranking.candidate == ranking.baseline:
        raise ValueError(f"candidate and baseline are both {ranking.candidate!r}")
    example_gen = ClickLogExampleGen(feature_config=dataset.config_yaml, events=dataset.events,
                                     users=dataset.users, items=dataset.items)
    ranking_examples = example_gen.outputs["ranking_examples"]
    vocabulary = example_gen.outputs["vocabulary"]
    components: list = [example_gen]
    report_inputs: dict[str, Any] = {"summary": example_gen.outputs["summary"]}
    if ranking.enabled:
        report_inputs["ranking_examples"] = ranking_examples
    data_verdict: dict[str, Any] = {}
    if data_checks is not None and ranking.enabled:
        # On the ranking examples: the only kind carrying every feature and the labels
        # (a recall-only run has none to check).
        if drift_baseline not in DRIFT_BASELINES:
            raise ValueError(f"drift_baseline {drift_baseline!r} not in {DRIFT_BASELINES}")
        previous = previous_statistics_resolver(
            ranking_examples if drift_baseline == PREVIOUS_DATA else None)
        data_validator = DataValidator(
            examples=ranking_examples, vocabulary=vocabulary,
            baseline_statistics=previous.outputs[STATISTICS_KEY],
            validation_config=data_checks.to_json()).with_id(DATA_VALIDATOR_ID)
        components.extend([previous, data_validator])
        data_verdict["data_anomalies"] = data_validator.outputs["anomalies"]
        report_inputs.update(data_verdict)

    def ranking_trainer(model: str) -> RankingTrainer:
        return RankingTrainer(examples=ranking_examples, vocabulary=vocabulary, model_name=model,
                              hparams=ranking.hparams_json(model),
                              training_cluster=training_cluster
                              ).with_id(f"RankingTrainer.{model}")

    def gate(role: str, model: str, trainer, configs: Mapping[str, tuple], served_name: str
             ) -> None:
        """Evaluators (one per config) + serving check + Pusher for one trainer."""
        evaluators = {}
        for head, (config, needs_baseline) in configs.items():
            suffix = "" if len(configs) == 1 else f".{head}"
            evaluators[head] = Evaluator(
                examples=ranking_examples, model=trainer.outputs["model"],
                baseline_model=baseline.outputs["model"] if needs_baseline else None,
                eval_config=config, example_splits=[fc.EVAL]).with_id(f"Evaluator.{model}{suffix}")
        components.extend([trainer, *evaluators.values()])
        if len(evaluators) not in (1, 2):
            raise ValueError(f"{model}: {len(evaluators)} gates; 1 or 2 are supported")
        first, *rest = evaluators.values()
        second = {"second_evaluation": rest[0].outputs["evaluation"],
                  "second_blessing": rest[0].outputs["blessing"]} if rest else {}
        joined = RankingGate(evaluation=first.outputs["evaluation"],
                             evaluator_blessing=first.outputs["blessing"],
                             allow_unevaluable_heads=ranking.allow_unevaluable_heads,
                             **second).with_id(f"RankingGate.{model}")
        components.append(joined)
        model_blessing = joined.outputs["blessing"]
        validator = ServingValidator(model=trainer.outputs["model"], examples=ranking_examples,
                                     vocabulary=vocabulary, model_name=served_name,
                                     model_kind=RANKING, num_examples=validation_examples,
                                     **data_verdict).with_id(f"ServingValidator.{model}")
        pusher = Pusher(model=trainer.outputs["model"], model_blessing=model_blessing,
                        infra_blessing=validator.outputs["blessing"],
                        push_destination=_push_to(serving_dir, served_name)).with_id(f"Pusher.{model}")
        components.extend([validator, pusher])
        evaluations = [e.outputs["evaluation"] for e in evaluators.values()]
        report_inputs.update({f"{role}_model": trainer.outputs["model"],
                              f"{role}_metrics": trainer.outputs["metrics"],
                              f"{role}_evaluation": evaluations[0],
                              f"{role}_blessing": model_blessing,
                              f"{role}_infra": validator.outputs["blessing"],
                              f"{role}_pushed": pusher.outputs["pushed_model"]})
        if len(evaluations) == 2:
            report_inputs[f"{role}_second_evaluation"] = evaluations[1]

    if ranking.enabled:
        baseline = ranking_trainer(ranking.baseline)
        components.append(baseline)
        report_inputs.update({"baseline_model": baseline.outputs["model"],
                              "baseline_metrics": baseline.outputs["metrics"]})
        gate("candidate", ranking.candidate, ranking_trainer(ranking.candidate),
             {fc.CLICK_LABEL: (eval_config.ranking_gate(
                 ranking.min_auc, slice_features=ranking.slice_features,
                 auc_tolerance=ranking.auc_tolerance,
                 confidence_intervals=ranking.confidence_intervals), True)},
             RANKING_SERVED_NAME)
        if ranking.multitask:
            gate("multitask", ranking.multitask, ranking_trainer(ranking.multitask),
                 eval_config.multitask_gates({fc.CLICK_LABEL: ranking.min_auc,
                                              fc.FOLLOW_LABEL: ranking.min_follow_auc},
                                             slice_features=ranking.slice_features,
                                             auc_tolerance=ranking.auc_tolerance,
                                             confidence_intervals=ranking.confidence_intervals),
                 MULTITASK_SERVED_NAME)

    for model in recall.models:
        kind_examples = example_gen.outputs[
            "item2vec_examples" if model == "item2vec" else "retrieval_examples"]
        # Only two_tower has a cluster trainer; adapters.train_recall refuses
        # a training_cluster for the others rather than ignore it.
        trainer = RecallTrainer(examples=kind_examples, vocabulary=vocabulary,
                                catalogue=example_gen.outputs["catalogue"], model_name=model,
                                hparams=recall.hparams_json(model),
                                training_cluster=training_cluster if model == "two_tower" else ""
                                ).with_id(f"RecallTrainer.{model}")
        served_name = USER_TOWER_PREFIX + model
        validator = ServingValidator(model=trainer.outputs["model"],
                                     examples=example_gen.outputs["retrieval_examples"],
                                     vocabulary=vocabulary, model_name=served_name,
                                     model_kind=USER_TOWER, num_examples=validation_examples,
                                     **data_verdict).with_id(f"ServingValidator.{model}")
        pusher = Pusher(model=trainer.outputs["model"], infra_blessing=validator.outputs["blessing"],
                        push_destination=_push_to(serving_dir, served_name)).with_id(f"Pusher.{model}")
        index = FaissIndexBuilder(item_embeddings=trainer.outputs["item_embeddings"],
                                  infra_blessing=validator.outputs["blessing"],
                                  index_base_dir=os.path.join(serving_dir, "indexes"),
                                  index_name=model).with_id(f"FaissIndexBuilder.{model}")
        components.extend([trainer, validator, pusher, index])
        report_inputs.update({f"{model}_metrics": trainer.outputs["metrics"],
                              f"{model}_infra": validator.outputs["blessing"],
                              f"{model}_pushed": pusher.outputs["pushed_model"],
                              f"{model}_index": index.outputs["pushed_index"]})

    if recall.models and dataset.items:
        # After every push: the blend is fitted to what is served now.
        blend_fitter = BlendFitter(
            retrieval_examples=example_gen.outputs["retrieval_examples"], vocabulary=vocabulary,
            serving_dir=serving_dir, items=dataset.items, users=dataset.users or "",
            num_requests=blend_requests, min_requests=blend_min_requests,
            # A recall-only run must not call a ranker an earlier run pushed.
            use_ranker=int(ranking.enabled),
            ranking_pushed=report_inputs.get("candidate_pushed"),
            **{f"{model}_index": report_inputs[f"{model}_index"] for model in recall.models})
        components.append(blend_fitter)
        report_inputs["final_blend"] = blend_fitter.outputs["blend"]
    components.append(PipelineReporter(publish_dir=os.path.join(serving_dir, "reports"),
                                       funnel_results=funnel_results,
                                       funnel_sha256=funnel_sha256,
                                       funnel_dataset=dataset.name, **report_inputs))
    return tfx_pipeline.Pipeline(
        pipeline_name=pipeline_name, pipeline_root=pipeline_root, components=components,
        enable_cache=enable_cache, metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=list(beam_pipeline_args))
