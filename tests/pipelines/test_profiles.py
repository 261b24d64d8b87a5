"""The pipeline profiles' training schedules."""

import pytest

from models.item2vec.config import Item2VecConfig
from models.two_tower.config import TwoTowerConfig
from models.youtubenet.config import YouTubeNetConfig
from pipelines import profiles

RECALL_CONFIGS = {"item2vec": Item2VecConfig, "two_tower": TwoTowerConfig,
                  "youtubenet": YouTubeNetConfig}


@pytest.mark.parametrize("data", ["synthetic", "movielens"])
def test_default_profile_trains_recall_on_each_configs_own_schedule(data):
    """make run's recall models train as the recall bench trains them (cap 20,
    each config's own patience), not to a cap that binds before validation HR@50 peaks."""
    hparams = profiles.get(profiles.DEFAULT, data).recall.hparams
    assert set(hparams) == set(RECALL_CONFIGS)
    for name, cls in RECALL_CONFIGS.items():
        config = cls.from_hparams(hparams[name])
        assert (config.max_epochs, config.patience) == (cls().max_epochs, cls().patience) \
            == (20, 2 if name == "two_tower" else 5), name
