"""Run profiles: data size and model settings of a run, per dataset.

The runners pick a profile; `default` is what `make run` trains (its time on
2 cores, most of it the Evaluators' confidence intervals and the ranking
trainers' learning-rate choice, is in bench/results/make_run.json), `tiny` is the
test-suite run (a few thousand events, a handful of training steps).

Every model trains with early stopping on a validation split carved from the
end of its training split (models/validation.py): `max_epochs` is a cap,
`patience` the epochs without a validation gain before stopping.
"""

from __future__ import annotations

import dataclasses

from models.ranking import config as rc
from pipelines.pipeline import RankingSettings, RecallSettings

DEFAULT, TINY = "default", "tiny"
PROFILES: tuple[str, ...] = (DEFAULT, TINY)


@dataclasses.dataclass(frozen=True)
class Profile:
    num_events: int
    ranking: RankingSettings
    recall: RecallSettings


def _ranking_hparams(max_epochs: int, patience: int, batch_size: int, dim: int | None = None,
                     learning_rates: tuple[float, ...] = ()) -> dict[str, dict]:
    """Same schedule for every ranking model; dim None keeps each model's own
    default width (models.ranking.config: NFM 200, NFwFM 28), so the baseline
    is not handicapped by a width chosen for the candidate. learning_rates
    (RankingConfig.learning_rates) tunes the candidates and the baseline
    alike, each on its own validation AUC."""
    common = {"max_epochs": max_epochs, "patience": patience, "batch_size": batch_size}
    if dim is not None:
        common["embedding_dim"] = dim
    if learning_rates:
        common["learning_rates"] = list(learning_rates)
    return {name: dict(common) for name in ("nfm", "nfwfm", "multitask_nfwfm")}


# Item2vec in the default profile: the config's defaults, the seed's settings
# (dim 128, window 64, 2 negatives per positive, sessions >= 5, unigram^0.75
# negatives, 200k pairs per epoch), which bench/results/item2vec_ablation.json
# (acf7c57) found no variant to beat on validation HR@50 (dim 32 and 64 and
# 58.com's same-category negatives tied, same-city negatives lost; 5 seeds,
# 95% intervals), so nothing overrides them. The attribute-aware negatives
# are one switch away: attribute_role "item_category" or "item_city" (a role
# the dataset's feature config sets).
ITEM2VEC_DEFAULT: dict[str, object] = {"attribute_role": None}


def _recall_hparams(max_epochs: int, batch_size: int) -> dict[str, dict]:
    """The recall models' cap and batch size (patience: each config's own).

    Patience was chosen on validation per model (Item2vec and YouTubeNet 5,
    two-tower 2: bench/results/recall_patience5.json).
    """
    schedule = {"max_epochs": max_epochs}
    return {"item2vec": {**schedule, **ITEM2VEC_DEFAULT},
            "youtubenet": {**schedule, "batch_size": batch_size},
            "two_tower": {**schedule, "batch_size": batch_size}}


def get(name: str, data: str) -> Profile:
    """The profile `name` for dataset `data`.

    Raises:
      ValueError: unknown profile.
    """
    if name == DEFAULT:
        # MovieLens-100k has 100k ratings; the synthetic log is sized to match
        # the make-run budget with all six models. Ranking: the learning rate
        # is chosen on validation from the bench's grid (a rate that suits one
        # dataset overfits another by its second epoch), each rate trained
        # until validation AUC stops improving: patience 2, as the ranking
        # bench trains (with patience 1 one noisy epoch ends a run: the
        # multi-task model monitors the mean of click and follow AUC, the
        # latter on few validation follows); cap 10, so a log that needs 8
        # epochs gets them.
        # Recall: the recall bench's schedule, each config's own (cap 20;
        # patience 5 for Item2vec and YouTubeNet, 2 for two-tower). The cap of
        # 3 with patience 1 this profile had bound before convergence:
        # two-tower's and YouTubeNet's validation HR@50 still rose at epoch 3
        # (their bench runs peak at epochs 3-5 and 7-17), and these models
        # train in seconds to a minute here.
        return Profile(num_events=200_000,
                       ranking=RankingSettings(hparams=_ranking_hparams(
                           10, 2, 512, learning_rates=rc.TUNED_LEARNING_RATES),
                                               min_auc=0.55, min_follow_auc=0.55),
                       recall=RecallSettings(hparams=_recall_hparams(20, 512)))
    if name == TINY:
        return Profile(num_events=4000,
                       # At most 3 short epochs (patience 1): ~0.65 eval AUC on 6k
                       # events, far from an untrained model's ~0.53, so the e2e gate
                       # tests are not coin flips.
                       # No confidence intervals: TFMA 0.52's jackknife took an
                       # Evaluator from ~10 to 40-55 CPU-s on this eval split
                       # (measured), and this is the test suite's run;
                       # tests/components/test_gate.py checks the intervals.
                       ranking=RankingSettings(hparams=_ranking_hparams(3, 1, 128, 8),
                                               min_auc=0.0, min_follow_auc=0.0,
                                               confidence_intervals=False),
                       recall=RecallSettings(hparams={
                           "item2vec": {"max_epochs": 1, "patience": 1, "dim": 8,
                                        "batch_size": 256},
                           "youtubenet": {"max_epochs": 1, "patience": 1, "batch_size": 128,
                                          "dim": 8, "embedding_dim": 4, "hidden_units": [16],
                                          "num_sampled": 16},
                           "two_tower": {"max_epochs": 1, "patience": 1, "batch_size": 128,
                                         "dim": 8, "embedding_dim": 4, "hidden_units": [16],
                                         "attention_units": 4, "extra_negatives": 8}}))
    raise ValueError(f"unknown profile {name!r}; want one of {PROFILES}")
