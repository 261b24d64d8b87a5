"""components.adapters.train_ranking: in process, or on a training cluster."""

from components import adapters
from models.distributed import train as distributed_train
from models.ranking import train as ranking_train


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
