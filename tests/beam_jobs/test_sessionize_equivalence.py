"""The batched BuildExamples output path writes exactly the per-user path's files.

BuildExamples buffers a bundle's examples and emits one list per example kind
and split (`sessionize.EXAMPLE_FLUSH_SIZE`); with the size 0 it emits each
user's lists at once, the path the job had before. Both runs read the same
synthetic log (with bad rows, so dead letters are compared too) and must
leave byte-identical output trees: examples, items, vocabularies, item
frequencies, summary.json and dead letters.
"""

import dataclasses
import gzip
import json
import os

import pytest

from feature_contract import feature_config as fc
from beam_jobs import sessionize, synthetic


def run_job(raw, config_path, out, monkeypatch, flush_size):
    monkeypatch.setattr(sessionize, "EXAMPLE_FLUSH_SIZE", flush_size)
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
    # 500 flushes several times inside a bundle; the default flushes at the end.
    run_job(raw, config_path, tmp_path / "small", monkeypatch, 500)
    run_job(raw, config_path, tmp_path / "default", monkeypatch, 16_384)
    reference = tree(tmp_path / "per_user")
    assert any(p.startswith(f"{fc.RANKING}/") for p in reference)
    assert any(p.startswith("dead_letter/") for p in reference)
    summary = json.loads(reference["summary.json"])
    events = summary["events"]
    # Reconciliation: every read event is accepted, dead-lettered or filtered.
    assert events["read"] == (events["accepted"] + sum(events["dead_letter"].values())
                              + sum(events["filtered"].values()))
    assert sum(events["dead_letter"].values()) > 0
    for name in ("small", "default"):
        got = tree(tmp_path / name)
        assert sorted(got) == sorted(reference), name
        for path, data in reference.items():
            if path.endswith(".gz") and got[path] != data:
                # The records first: a clearer message than two gzip blobs.
                assert gzip.decompress(got[path]) == gzip.decompress(data), (name, path)
            assert got[path] == data, (name, path)
