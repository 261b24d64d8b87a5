"""Analytic parameter and per-example inference FLOP counts of the ranking models.

FLOP convention (documented so figures are comparable across models): every
elementwise multiply, add, subtract or divide of the forward pass is one
FLOP; a dense layer in -> out is 2 * in * out (multiply-accumulates, bias
included); lookups, ReLU, the final sigmoid and the id mapping are free.
Concretely, with d the width, F features, M fields and P = M(M-1)/2 pairs:

  pooling a multi-valued feature of length L:   2 * L * d + d   (mask, sum, mean)
  first-order sum S:                            F (+ pooling of 1-wide tables)
  NFM Bi-Interaction:                           3 * F * d + 3 * d
  NFwFM field sums:                             F * d
  NFwFM MF module:                              3 * P * d       (product, * r, sum;
                                                                 scalar or vector r alike)
  NFwFM FM module:                              2 * F * d + 5 * M * d
  NFwFM MF + FM, dropout scaling:               2 * d
  DeepFM FM part:                               3 * F * d + 3 * d + d + 1
  DCN cross layer on D = F * d:                 5 * D
  batch norm on the interaction (inference):    2 * d           (folded scale, shift)
  head (per task):                              2 * in + 1      (Dense(1) + S)
"""

from __future__ import annotations

from collections.abc import Mapping

from feature_contract import feature_config as fc
from models.layers.feature_embedding import ordered_feature_names
from models.ranking import config as rc
from models.ranking.model import uses_linear


def _table_owners(features: fc.FeatureConfig, names: list[str]) -> list[str]:
    owners = []
    for name in names:
        spec = features.feature(name)
        owner = spec.of if spec.type == fc.SEQUENCE and spec.of in names else name
        if owner not in owners:
            owners.append(owner)
    return owners


def _mlp_params(width: int, hidden: tuple[int, ...]) -> tuple[int, int]:
    """(params, output width) of the ReLU MLP."""
    params = 0
    for h in hidden:
        params += width * h + h
        width = h
    return params, width


def _mlp_flops(width: int, hidden: tuple[int, ...]) -> tuple[int, int]:
    flops = 0
    for h in hidden:
        flops += 2 * width * h
        width = h
    return flops, width


def _field_counts(features: fc.FeatureConfig, names: list[str]) -> tuple[int, int, int]:
    """(F, M, P)."""
    fields = list(dict.fromkeys(features.feature(n).field for n in names))
    m = len(fields)
    return len(names), m, m * (m - 1) // 2


def count_params(config: rc.RankingConfig, features: fc.FeatureConfig,
                 num_rows: Mapping[str, int], include_training_only: bool = True) -> int:
    """Weights of the model `config` builds (model.count_params()).

    Args:
      config: ranking settings.
      features: the dataset's feature config.
      num_rows: embedding rows per feature (FeatureIds.num_rows).
      include_training_only: count the uncertainty loss's log variances,
        which exist only for training.
    """
    names = ordered_feature_names(features)
    n_feat, n_fields, n_pairs = _field_counts(features, names)
    d = config.embedding_dim
    rows = sum(num_rows[o] for o in _table_owners(features, names))
    params = rows * d + (rows if uses_linear(config.model) else 0)
    n_tasks = len(config.tasks)
    if config.model == rc.LR:
        params += n_tasks
    elif config.model in (rc.NFM, rc.NFWFM, rc.MULTITASK_NFWFM):
        mlp, width = _mlp_params(d, config.hidden_units)
        params += mlp * (n_tasks if config.task_towers else 1) + n_tasks * (width + 1)
        # gamma, beta and the moving mean and variance (model.count_params counts all four).
        params += 4 * d if config.interaction_batch_norm else 0
        if config.model != rc.NFM:
            # r: one scalar per field pair (and per field with the FM module),
            # or a d-vector each with pair_weights "vector".
            per_weight = d if config.pair_weights == "vector" else 1
            params += per_weight * (n_pairs + (n_fields if config.use_fm_module else 0))
    elif config.model == rc.DEEPFM:
        mlp, width = _mlp_params(n_feat * d, config.hidden_units)
        params += mlp + n_tasks * (width + 1)
    elif config.model == rc.DCN:
        flat = n_feat * d
        mlp, width = _mlp_params(flat, config.hidden_units)
        params += 2 * flat * config.cross_layers + mlp + n_tasks * (flat + width + 1)
    if include_training_only and config.loss_mode == rc.LOSS_UNCERTAINTY:
        params += n_tasks
    return int(params)


def flops_per_example(config: rc.RankingConfig, features: fc.FeatureConfig) -> int:
    """Inference FLOPs for one example (convention in the module docstring)."""
    names = ordered_feature_names(features)
    n_feat, n_fields, n_pairs = _field_counts(features, names)
    d = config.embedding_dim
    multi_lens = [features.feature(n).max_len for n in names
                  if features.feature(n).type in (fc.TAGS, fc.SEQUENCE)]
    flops = sum(2 * length * d + d for length in multi_lens)
    if uses_linear(config.model):
        flops += sum(2 * length + 1 for length in multi_lens) + n_feat
    n_tasks = len(config.tasks)
    if config.model == rc.LR:
        return int(flops + n_feat + n_tasks)
    if config.model == rc.NFM:
        mlp, width = _mlp_flops(d, config.hidden_units)
        flops += 3 * n_feat * d + 3 * d + mlp
        flops += 2 * d if config.interaction_batch_norm else 0
    elif config.model in (rc.NFWFM, rc.MULTITASK_NFWFM):
        mlp, width = _mlp_flops(d, config.hidden_units)
        mlp *= n_tasks if config.task_towers else 1
        flops += n_feat * d + 3 * n_pairs * d + d + mlp
        if config.use_fm_module:
            flops += 2 * n_feat * d + 5 * n_fields * d
        flops += d  # dropout scaling by beta (or the zero FM add when disabled)
        flops += 2 * d if config.interaction_batch_norm else 0
    elif config.model == rc.DEEPFM:
        mlp, width = _mlp_flops(n_feat * d, config.hidden_units)
        flops += 3 * n_feat * d + 3 * d + d + 1 + mlp
    elif config.model == rc.DCN:
        flat = n_feat * d
        mlp, width = _mlp_flops(flat, config.hidden_units)
        flops += 5 * flat * config.cross_layers + mlp
        width += flat
    else:
        raise rc.RankingConfigError(f"no FLOP count for model {config.model!r}")
    return int(flops + n_tasks * (2 * width + 1))
