"""components.adapters.train_ranking / train_recall: in process, or on a training cluster."""

import pytest

from components import adapters
from models.distributed import train as distributed_train
from models.distributed import two_tower as distributed_two_tower
from models.ranking import train as ranking_train
from models.two_tower import train as two_tower_train


def _recorder(calls, name):
    def record(*args, **kwargs):
        calls.append((name, args, kwargs))
        return {"trained_by": name}
    return record


def test_train_ranking_goes_to_the_cluster_only_when_one_is_given(monkeypatch):
    calls = []
    monkeypatch.setattr(ranking_train, "train", _recorder(calls, "in_process"))
    monkeypatch.setattr(distributed_train, "train", _recorder(calls, "distributed"))
    args = ("nfwfm", "c.yaml", "/ex", "/vocab", {"max_epochs": 2}, "/export")
    assert adapters.train_ranking(*args) == {"trained_by": "in_process"}
    assert adapters.train_ranking(*args, training_cluster="local:workers=2,ps=2") == {
        "trained_by": "distributed"}
    patterns = ("/ex/Split-train/*.gz", "/ex/Split-eval/*.gz")
    assert calls == [
        ("in_process", ("nfwfm", "c.yaml", *patterns, "/vocab", {"max_epochs": 2}, "/export"), {}),
        ("distributed", ("nfwfm", "c.yaml", *patterns, "/vocab", {"max_epochs": 2}, "/export"),
         {"training_cluster": "local:workers=2,ps=2"})]


def test_train_recall_takes_two_tower_to_the_cluster_only_when_one_is_given(monkeypatch):
    calls = []
    monkeypatch.setattr(two_tower_train, "train", _recorder(calls, "in_process"))
    monkeypatch.setattr(distributed_two_tower, "train", _recorder(calls, "distributed"))
    args = ("two_tower", "c.yaml", "/ex", "/vocab", "/items/*.gz", {"dim": 8}, "/export")
    assert adapters.train_recall(*args) == {"trained_by": "in_process"}
    assert adapters.train_recall(*args, training_cluster="local:workers=2,ps=1") == {
        "trained_by": "distributed"}
    same = ("c.yaml", "/ex", "/vocab", "/items/*.gz", {"dim": 8}, "/export")
    assert calls == [("in_process", same, {}),
                     ("distributed", same, {"training_cluster": "local:workers=2,ps=1"})]


@pytest.mark.parametrize("model_name", ["item2vec", "youtubenet"])
def test_train_recall_refuses_a_cluster_for_a_model_without_a_cluster_trainer(monkeypatch,
                                                                              model_name):
    calls = []
    monkeypatch.setattr(two_tower_train, "train", _recorder(calls, "in_process"))
    monkeypatch.setattr(distributed_two_tower, "train", _recorder(calls, "distributed"))
    with pytest.raises(ValueError) as raised:
        adapters.train_recall(model_name, "c.yaml", "/ex", "/vocab", None, {}, "/export",
                              training_cluster="tf_config")
    assert str(raised.value) == (f"{model_name} has no training_cluster path; "
                                 "only two_tower and the ranking models do")
    assert calls == []
