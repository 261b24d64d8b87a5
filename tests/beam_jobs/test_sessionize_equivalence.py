"""The batched paths of the job write exactly the per-user / per-batch path's files.

BuildExamples buffers a bundle's examples and emits one list per example kind
and split (`sessionize.EXAMPLE_FLUSH_SIZE`); with the size 0 it emits each
user's lists at once, the path the job had before. ParseEvents holds parsed
events per user until `sessionize.GROUP_FLUSH_EVENTS` are pending; with 0 it
emits one blob per user and input batch, as before. PickItemRow emits item
rows in lists of `sessionize.ITEM_ROWS_PER_LIST`; with 1, one per item, as
the item catalogue was written before. All runs read the same
synthetic log (with bad rows, so dead letters are compared too) and must
leave byte-identical output trees: examples, items, vocabularies, item
frequencies, summary.json and dead letters.
"""

import dataclasses
import gzip
import json
import os

import apache_beam as beam
import pytest
from apache_beam.transforms import userstate

from feature_contract import feature_config as fc
from beam_jobs import sessionize, synthetic


def run_job(raw, config_path, out, monkeypatch, flush_size, group_flush=0, item_rows=1):
    monkeypatch.setattr(sessionize, "EXAMPLE_FLUSH_SIZE", flush_size)
    monkeypatch.setattr(sessionize, "GROUP_FLUSH_EVENTS", group_flush)
    monkeypatch.setattr(sessionize, "ITEM_ROWS_PER_LIST", item_rows)
    sessionize.run(["--config", str(config_path),
                    "--events", str(raw / "events.jsonl.gz"),
                    "--users", str(raw / "users.jsonl.gz"),
                    "--items", str(raw / "items.jsonl.gz"),
                    "--output_dir", str(out), "--batch_size", "700"])


def tree(out):
    """relative path -> file bytes (gzip files also decompressed, for the message)."""
    files = {}
    for root, _, names in os.walk(out):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, out)] = f.read()
    return files


@pytest.fixture(scope="module")
def raw_log(tmp_path_factory):
    base = tmp_path_factory.mktemp("equivalence")
    raw = base / "raw"
    synthetic.generate(str(raw), 4000, seed=11, bad_fraction=0.02)
    config_path = base / "synthetic.yaml"
    config_path.write_text(dataclasses.replace(
        fc.load(fc.builtin_config_path("synthetic")), max_dead_letter_fraction=0.05).to_yaml())
    return raw, config_path


def test_batched_outputs_equal_the_per_user_path_byte_for_byte(raw_log, tmp_path,
                                                               monkeypatch):
    raw, config_path = raw_log
    run_job(raw, config_path, tmp_path / "per_user", monkeypatch, 0)
    # 500 examples / 1,500 events flush several times inside a bundle (the
    # input batches hold 700 records); the defaults flush at the end.
    run_job(raw, config_path, tmp_path / "small", monkeypatch, 500, 1_500, 7)
    run_job(raw, config_path, tmp_path / "default", monkeypatch, 16_384, 262_144, 4_096)
    reference = tree(tmp_path / "per_user")
    assert any(p.startswith(f"{fc.RANKING}/") for p in reference)
    assert any(p.startswith("dead_letter/") for p in reference)
    summary = json.loads(reference["summary.json"])
    events = summary["events"]
    # Reconciliation: every read event is accepted, dead-lettered or filtered.
    assert events["read"] == (events["accepted"] + sum(events["dead_letter"].values())
                              + sum(events["filtered"].values()))
    assert sum(events["dead_letter"].values()) > 0
    assert summary["examples"]["items"] > 2 * 7  # several lists of 7 item rows
    for name in ("small", "default"):
        got = tree(tmp_path / name)
        assert sorted(got) == sorted(reference), name
        for path, data in reference.items():
            if path.endswith(".gz") and got[path] != data:
                # The records first: a clearer message than two gzip blobs.
                assert gzip.decompress(got[path]) == gzip.decompress(data), (name, path)
            assert got[path] == data, (name, path)


class _Stateful(beam.DoFn):
    COUNT = userstate.ReadModifyWriteStateSpec("count", beam.coders.VarIntCoder())

    def process(self, element, count=beam.DoFn.StateParam(COUNT)):
        yield element


class _WithInstanceMethod:
    STATE = userstate.ReadModifyWriteStateSpec("seen", beam.coders.VarIntCoder())

    def keep(self, element, seen=beam.DoFn.StateParam(STATE)):
        yield element


def test_memoized_dofn_specs_answers_like_beam_per_class_and_restores_it():
    original = userstate.get_dofn_specs
    plain = beam.Map(len).dofn
    # A CallableWrapperDoFn holding a bound method with a state parameter:
    # its answer must not be the cached one of another Map's wrapper.
    bound = beam.ParDo(_WithInstanceMethod().keep).fn
    with sessionize._memoized_dofn_specs():
        assert userstate.get_dofn_specs is not original
        for _ in range(2):  # the second round is served from the cache
            assert userstate.get_dofn_specs(_Stateful()) == ({_Stateful.COUNT}, set())
            assert userstate.get_dofn_specs(plain) == (set(), set())
            assert userstate.get_dofn_specs(bound) == ({_WithInstanceMethod.STATE}, set())
        assert userstate.is_stateful_dofn(_Stateful())
        assert not userstate.is_stateful_dofn(beam.Map(str).dofn)
        # Callers get copies: changing one never changes the next answer.
        userstate.get_dofn_specs(_Stateful())[0].clear()
        assert userstate.get_dofn_specs(_Stateful()) == ({_Stateful.COUNT}, set())
    assert userstate.get_dofn_specs is original


def test_the_job_never_weighs_side_inputs_and_restores_the_runners_cache(raw_log, tmp_path,
                                                                       monkeypatch):
    # The embedded worker's side-input cache weighs each value it caches with
    # objsize (a walk of every module's globals); the job turns the cache off.
    from apache_beam.runners.portability.fn_api_runner import worker_handlers
    from apache_beam.runners.worker import statecache

    weighed = []
    real = statecache.get_deep_size
    monkeypatch.setattr(statecache, "get_deep_size",
                        lambda *objs: weighed.append(len(objs)) or real(*objs))
    before = worker_handlers.STATE_CACHE_SIZE_MB
    assert before > 0
    with sessionize._no_embedded_state_cache():
        assert worker_handlers.STATE_CACHE_SIZE_MB == 0
    assert worker_handlers.STATE_CACHE_SIZE_MB == before
    raw, config_path = raw_log
    run_job(raw, config_path, tmp_path / "out", monkeypatch, 0)
    assert weighed == []
    assert worker_handlers.STATE_CACHE_SIZE_MB == before
    # The same pipeline on Beam's own setting weighs its side inputs (the
    # check above can fail).
    with beam.Pipeline(runner="FnApiRunner") as p:
        side = p | "Side" >> beam.Create([3])
        _ = (p | beam.Create([1, 2])
             | beam.Map(lambda x, s: x + s, s=beam.pvalue.AsSingleton(side)))
    assert weighed


def test_the_job_samples_bundles_with_a_short_period_and_restores_beams_sampler(
        raw_log, tmp_path, monkeypatch):
    # Ending a bundle joins its sampler thread, which may be inside a sleep
    # of up to Beam's 200 ms; during a run the samplers sleep 10 ms at most.
    from apache_beam.runners.worker import statesampler

    original = statesampler.StateSampler
    periods = []
    real_init = original.__init__

    def spy(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        periods.append(self.sampling_period_ms)

    monkeypatch.setattr(original, "__init__", spy)
    raw, config_path = raw_log
    run_job(raw, config_path, tmp_path / "out", monkeypatch, 0)
    assert statesampler.StateSampler is original
    assert len(periods) > 10  # one sampler per bundle processor
    assert set(periods) == {sessionize._SAMPLER_PERIOD_MS} == {10}
    # Beam's own default, outside the run (the check above can fail).
    periods.clear()
    statesampler.StateSampler("stage", None)
    assert periods == [200]


def test_group_by_user_values_split_by_side_in_order():
    # Events values are (all known, blob) pairs, users-table rows bytes.
    values = [(True, b"e1"), b"row1", (False, b"e2"), b"row2", (True, b"")]
    assert sessionize._split_grouped(values) == (
        [(True, b"e1"), (False, b"e2"), (True, b"")], [b"row1", b"row2"])
    assert sessionize._split_grouped(iter([])) == ([], [])
