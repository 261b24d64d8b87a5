"""Settings of the ranking models: one frozen dataclass, defaults per model.

Model names:
  lr               logistic regression on the same ids (first order only)
  nfm              NFM, He & Chua 2017 (Bi-Interaction + MLP), width 200
  nfwfm            Meitu's NFwFM (Field-wise Bi-Interaction + MLP), width 28
  multitask_nfwfm  NFwFM bottom shared by a click and a follow head
  deepfm           DeepFM (FM + DNN on the same embeddings)
  dcn              Deep & Cross Network (cross network + DNN)

The NFwFM width is 28 so that its parameters and per-example FLOPs stay under
1/6 of NFM-200's: both are dominated by the embedding tables and per-feature
vector work, which scale with the width. Parameters go as (d + 1) / 201, but
NFwFM does a little more work per width unit than NFM (the within-field FM
module), so 32 would give ~0.17 of NFM-200's FLOPs on both datasets; 28 gives
~0.15 (tests/models/test_ranking_complexity.py checks both configs).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from feature_contract import feature_config as fc
from models.layers.feature_embedding import MEAN, POOLINGS
from models.layers.field_wise_bi_interaction import PAIR_WEIGHT_FORMS, SCALAR
from models.validation import DEFAULT_VALIDATION_FRACTION

LR, NFM, NFWFM, MULTITASK_NFWFM, DEEPFM, DCN = (
    "lr", "nfm", "nfwfm", "multitask_nfwfm", "deepfm", "dcn")
MODEL_NAMES: tuple[str, ...] = (LR, NFM, NFWFM, MULTITASK_NFWFM, DEEPFM, DCN)

LOSS_SUM, LOSS_REWEIGHT, LOSS_UNCERTAINTY = "sum", "reweight", "uncertainty"
LOSS_MODES: tuple[str, ...] = (LOSS_SUM, LOSS_REWEIGHT, LOSS_UNCERTAINTY)


# How the follow head's probability is formed (multi-task click + follow).
FOLLOW_INDEPENDENT, FOLLOW_ESMM = "independent", "esmm"
FOLLOW_MODES: tuple[str, ...] = (FOLLOW_INDEPENDENT, FOLLOW_ESMM)

OPTIMIZERS: tuple[str, ...] = ("lazy_adam", "adam", "adagrad")

# The learning rates a run chooses from on validation (RankingConfig.learning_rates):
# the ranking bench's grid, so the pipeline tunes as the published figures were tuned.
TUNED_LEARNING_RATES: tuple[float, ...] = (0.001, 0.003, 0.01)


class RankingConfigError(ValueError):
    """Bad ranking settings; the message names the bad value."""


@dataclasses.dataclass(frozen=True)
class RankingConfig:
    """Settings of one ranking model.

    Attributes:
      model: one of MODEL_NAMES.
      tasks: labels the model predicts, each a head (click, follow).
      embedding_dim: width of every feature embedding.
      hidden_units: MLP on the interaction vector (NFM, NFwFM) or DNN part
        (DeepFM, DCN); shared by all heads of a multi-task model.
      mlp_dropout: inverted dropout between MLP layers.
      interaction_batch_norm: NFM and NFwFM family: batch normalization on
        the (Field-wise) Bi-Interaction vector before the MLP, as in the NFM
        paper (He & Chua 2017, section 3.3: it eases training of the MLP).
      task_towers: NFwFM family: each task gets its own MLP (hidden_units) on
        the shared Field-wise Bi-Interaction vector instead of one MLP shared
        by every head (shared bottom = embeddings + interaction layer only).
      use_fm_module: NFwFM: include the within-field FM module.
      use_interaction_dropout: NFwFM: Bernoulli dropout on the second-order
        vector (published, non-rescaled convention).
      keep_prob: beta, keep probability of that dropout.
      pair_weights: NFwFM family: "scalar" (one weight r per field pair and
        per field, Meitu's FwFM form) or "vector" (a d-vector r each, the FvFM
        form: a field pair weighs each embedding dimension on its own).
      cross_layers: DCN: number of cross layers.
      loss_mode: multi-task: sum, reweight or uncertainty.
      follow_mode: click + follow models: "independent" (the follow head
        predicts p(follow) directly) or "esmm" (Ma et al. 2018, "Entire
        Space Multi-Task Model": the follow head predicts p(follow | click)
        and the model outputs p(follow) = p(click) * p(follow | click),
        trained on every impression, so the rare follow task borrows the
        click head's signal instead of competing with it).
      follow_weight: reweight mode: click loss weight 1 + follow_weight * follow.
      click_weight: multi-task: weight of the click task's loss term, every
        mode (see models.ranking.losses.MultiTaskLoss for why).
      l2: L2 penalty on the embedding tables (a Keras regularizer on the
        whole tables: its gradient is dense, every row every step).
      lookup_l2: L2 penalty on the feature vectors a training batch looks up
        (mean over the batch of sum_i ||v_i||^2; pooled vectors for
        multi-valued features): only the rows in use are shrunk, in
        proportion to how often they occur (the mini-batch-aware
        regularizer of Zhou et al. 2018, "Deep Interest Network"), at the
        cost of the lookup, not of the table.
      pooling: how multi-valued features (tags, click history) are pooled
        into one vector: "mean", "sum" or "sqrtn" (sum / sqrt(count)).
      use_first_order: NFM, NFwFM family and DeepFM: include the first-order
        term S = sum_i x_i (1-wide tables) in every logit.
      optimizer: lazy_adam (default: Adam whose embedding updates touch only
        the looked-up rows; Keras Adam decays its moments over whole tables
        every step, 2-3x slower with a 100k-row user table), adam or adagrad.
      learning_rate: optimizer learning rate.
      learning_rates: learning rates to choose from on validation; empty
        (the default) trains once at learning_rate, which a grid ignores
        (the runners drop a profile's grid when --hparams fixes the rate).
        Given rates,
        models.ranking.train.train trains one model per rate, each with
        early stopping, and keeps the one with the best validation monitor
        (the rate it chose is then learning_rate). The rate that suits a
        dataset is not known in advance (bench/results/ranking.json chose
        0.001 for NFwFM on one built-in dataset, 0.01 on the other), so a
        profile that can afford the runs tunes it as the bench does.
      learning_rate_decay: the learning rate is multiplied by this after
        every training epoch (epoch k, 0-based, trains at learning_rate *
        decay^k); 1.0 keeps it constant.
      batch_size: training batch size.
      max_epochs: cap on passes over the fit split (training stops earlier
        when the validation metric stops improving).
      patience: epochs without a validation improvement before stopping.
      min_delta: smallest validation-metric gain that counts as improvement.
      validation_fraction: share of the training time span (the latest)
        held out as validation (models.validation).
      seed: weight initialization and shuffling seed.
    """

    model: str
    tasks: tuple[str, ...] = (fc.CLICK_LABEL,)
    embedding_dim: int = 16
    hidden_units: tuple[int, ...] = (64,)
    mlp_dropout: float = 0.0
    task_towers: bool = False
    interaction_batch_norm: bool = False
    use_fm_module: bool = True
    use_interaction_dropout: bool = True
    keep_prob: float = 0.8
    pair_weights: str = SCALAR
    cross_layers: int = 2
    loss_mode: str = LOSS_SUM
    follow_weight: float = 4.0
    click_weight: float = 1.0
    l2: float = 0.0
    lookup_l2: float = 0.0
    pooling: str = MEAN
    use_first_order: bool = True
    optimizer: str = "lazy_adam"
    learning_rate: float = 3e-3
    learning_rates: tuple[float, ...] = ()
    learning_rate_decay: float = 1.0
    batch_size: int = 512
    follow_mode: str = FOLLOW_INDEPENDENT
    max_epochs: int = 20
    patience: int = 2
    min_delta: float = 1e-4
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION
    seed: int = 0

    def __post_init__(self):
        if self.model not in MODEL_NAMES:
            raise RankingConfigError(f"model {self.model!r} not in {MODEL_NAMES}")
        if not self.tasks or any(t not in fc.LABEL_KEYS for t in self.tasks):
            raise RankingConfigError(f"tasks {self.tasks!r} must be a non-empty subset of "
                                     f"{fc.LABEL_KEYS}")
        if len(set(self.tasks)) != len(self.tasks):
            raise RankingConfigError(f"tasks {self.tasks!r} has duplicates")
        if self.embedding_dim < 1:
            raise RankingConfigError(f"embedding_dim must be >= 1, got {self.embedding_dim}")
        if any(int(h) < 1 for h in self.hidden_units):
            raise RankingConfigError(f"hidden_units {self.hidden_units!r} must be >= 1")
        if not 0.0 < self.keep_prob <= 1.0:
            raise RankingConfigError(f"keep_prob must be in (0, 1], got {self.keep_prob}")
        if not 0.0 <= self.mlp_dropout < 1.0:
            raise RankingConfigError(f"mlp_dropout must be in [0, 1), got {self.mlp_dropout}")
        if self.task_towers and (self.model not in (NFWFM, MULTITASK_NFWFM)
                                 or not self.hidden_units):
            raise RankingConfigError(f"task_towers needs model nfwfm or multitask_nfwfm and "
                                     f"hidden_units, got {self.model!r} {self.hidden_units!r}")
        if self.interaction_batch_norm and self.model not in (NFM, NFWFM, MULTITASK_NFWFM):
            raise RankingConfigError(f"interaction_batch_norm needs model nfm, nfwfm or "
                                     f"multitask_nfwfm, got {self.model!r}")
        if self.loss_mode not in LOSS_MODES:
            raise RankingConfigError(f"loss_mode {self.loss_mode!r} not in {LOSS_MODES}")
        if self.loss_mode == LOSS_REWEIGHT and fc.CLICK_LABEL not in self.tasks:
            raise RankingConfigError("loss_mode 'reweight' reweights the click loss: "
                                     "tasks must include click")
        if not self.click_weight > 0.0:
            raise RankingConfigError(f"click_weight must be > 0, got {self.click_weight}")
        if self.click_weight != 1.0 and fc.CLICK_LABEL not in self.tasks:
            raise RankingConfigError(f"click_weight {self.click_weight} needs the click task, "
                                     f"tasks are {self.tasks!r}")
        if not 0.0 <= self.lookup_l2 < float("inf"):
            raise RankingConfigError(f"lookup_l2 must be finite and >= 0, got {self.lookup_l2!r}")
        if self.pooling not in POOLINGS:
            raise RankingConfigError(f"pooling {self.pooling!r} not in {POOLINGS}")
        if self.pair_weights not in PAIR_WEIGHT_FORMS:
            raise RankingConfigError(f"pair_weights {self.pair_weights!r} not in "
                                     f"{PAIR_WEIGHT_FORMS}")
        if not self.use_first_order and self.model not in (NFM, NFWFM, MULTITASK_NFWFM, DEEPFM):
            raise RankingConfigError(f"use_first_order False needs a model with a first-order "
                                     f"term (nfm, nfwfm, multitask_nfwfm, deepfm), got "
                                     f"{self.model!r}")
        if not 0.0 < self.learning_rate_decay <= 1.0:
            raise RankingConfigError(f"learning_rate_decay must be in (0, 1], got "
                                     f"{self.learning_rate_decay!r}")
        if self.optimizer not in OPTIMIZERS:
            raise RankingConfigError(f"optimizer {self.optimizer!r} not in {OPTIMIZERS}")
        if self.cross_layers < 1:
            raise RankingConfigError(f"cross_layers must be >= 1, got {self.cross_layers}")
        if self.follow_mode not in FOLLOW_MODES:
            raise RankingConfigError(f"follow_mode {self.follow_mode!r} not in {FOLLOW_MODES}")
        if self.follow_mode == FOLLOW_ESMM and not {fc.CLICK_LABEL, fc.FOLLOW_LABEL} <= set(
                self.tasks):
            raise RankingConfigError(f"follow_mode 'esmm' forms p(follow) = p(click) * "
                                     f"p(follow | click): tasks must include click and follow, "
                                     f"got {self.tasks!r}")
        if any(isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 < r < float("inf")
               for r in self.learning_rates):
            raise RankingConfigError(f"learning_rates must be finite numbers > 0, got "
                                     f"{self.learning_rates!r}")
        if len(set(self.learning_rates)) != len(self.learning_rates):
            raise RankingConfigError(f"learning_rates {self.learning_rates!r} has duplicates")
        for name in ("learning_rate", "batch_size"):
            if getattr(self, name) <= 0:
                raise RankingConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("max_epochs", "patience"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise RankingConfigError(f"{name} must be an integer >= 1, got {value!r}")
        if not 0.0 <= self.min_delta < float("inf"):
            raise RankingConfigError(f"min_delta must be finite and >= 0, got {self.min_delta!r}")
        if not 0.0 < self.validation_fraction < 1.0:
            raise RankingConfigError(f"validation_fraction must be in (0, 1), got "
                                     f"{self.validation_fraction!r}")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["tasks"] = list(self.tasks)
        out["hidden_units"] = list(self.hidden_units)
        out["learning_rates"] = list(self.learning_rates)
        return out


# Per-model defaults on top of the dataclass defaults.
_DEFAULTS: dict[str, dict[str, Any]] = {
    LR: {"embedding_dim": 1, "hidden_units": ()},
    NFM: {"embedding_dim": 200, "hidden_units": (64,)},
    NFWFM: {"embedding_dim": 28, "hidden_units": (64,)},
    MULTITASK_NFWFM: {"embedding_dim": 28, "hidden_units": (64,),
                      "tasks": (fc.CLICK_LABEL, fc.FOLLOW_LABEL),
                      "loss_mode": LOSS_UNCERTAINTY},
    DEEPFM: {"embedding_dim": 16, "hidden_units": (64, 32)},
    DCN: {"embedding_dim": 16, "hidden_units": (64, 32)},
}


def make_config(model: str, hparams: Mapping[str, Any] | None = None) -> RankingConfig:
    """The model's defaults overridden by `hparams`.

    Raises:
      RankingConfigError: unknown model or hparam name, or a bad value.
    """
    if model not in _DEFAULTS:
        raise RankingConfigError(f"model {model!r} not in {MODEL_NAMES}")
    hparams = dict(hparams or {})
    if "epochs" in hparams:
        # Old profiles and --hparams pass a fixed epoch count; say what replaced it.
        raise RankingConfigError(
            f"hparam 'epochs' ({hparams['epochs']!r}) is no longer accepted: use 'max_epochs' "
            f"(a cap; training stops early when the validation metric stops improving, "
            f"see 'patience' and 'min_delta')")
    known = {f.name for f in dataclasses.fields(RankingConfig)} - {"model"}
    unknown = sorted(set(hparams) - known)
    if unknown:
        raise RankingConfigError(f"unknown hparams {unknown}; known: {sorted(known)}")
    values = {**_DEFAULTS[model], **hparams}
    for key in ("tasks", "hidden_units", "learning_rates"):
        if key in values:
            values[key] = tuple(values[key])
    return RankingConfig(model=model, **values)
