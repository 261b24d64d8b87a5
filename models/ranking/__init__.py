"""Ranking models: NFM baseline, NFwFM, multi-task NFwFM, LR / DeepFM / DCN baselines.

config.py (RankingConfig, per-model defaults), model.py (RankingModel),
losses.py (sum / reweight / uncertainty), optimizers.py (LazyAdam),
complexity.py (params, FLOPs), metrics.py (AUC, log loss, gAUC, calibration),
export.py (SavedModel: serving_default + score_candidates), train.py (the
`train(...)` entry), synthetic_examples.py (small example sets for tests).
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
