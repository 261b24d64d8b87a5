"""`python -m beam_jobs.datasets` (make data): checking a dataset YAML."""

import json

import yaml

from beam_jobs import datasets
from feature_contract import feature_config as fc


def _dataset_yaml(tmp_path, events: str) -> str:
    with open(fc.builtin_config_path("synthetic"), encoding="utf-8") as f:
        raw = yaml.safe_load(f)
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({**raw, "data": {"events": events}}, sort_keys=False))
    return str(path)


def test_glob_matching_no_file_is_an_error_like_the_job_says(tmp_path, capsys):
    # `make data` printed "events: 0 files" and exit 0 for a dataset the
    # sessionize job then refused.
    path = _dataset_yaml(tmp_path, "logs/*.jsonl")
    assert datasets.main(["--data", path, "--work_dir", str(tmp_path / "w")]) == 1
    pattern = str(tmp_path / "logs" / "*.jsonl")
    assert capsys.readouterr().err == (
        f"error: {path}: events table: no file matches {pattern!r}\n")


def test_file_of_unknown_format_is_an_error(tmp_path, capsys):
    (tmp_path / "events.txt").write_text("{}\n")
    path = _dataset_yaml(tmp_path, "events.*")
    assert datasets.main(["--data", path, "--work_dir", str(tmp_path / "w")]) == 1
    assert "cannot tell the format of" in capsys.readouterr().err


def test_matching_glob_prints_the_resolved_tables(tmp_path, capsys):
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "a.jsonl").write_text("{}\n")
    path = _dataset_yaml(tmp_path, "logs/*.jsonl")
    assert datasets.main(["--data", path, "--work_dir", str(tmp_path / "w")]) == 0
    out = capsys.readouterr().out
    assert out.endswith("}\n") and not out.endswith("\n\n")  # one line end, then the prompt
    shown = json.loads(out)
    assert shown["events"] == str(tmp_path / "logs" / "*.jsonl")
    assert shown["fingerprint"].startswith("events: 1 files, 3 bytes, sha256 ")
