"""beam_jobs.native: compiled modules load only while current; same outputs either way.

The finder is checked on a hand-made manifest (no compiler needed); the
job itself runs twice in subprocesses, once with the compiled modules
`make install` built and once as pure Python (FEEDREC_PURE_PYTHON=1), on
a synthetic log with bad rows, its events as JSONL and as CSV, and every
output file must be byte-for-byte the same.
"""

import csv
import gzip
import hashlib
import importlib.machinery
import json
import os
import subprocess
import sys

import pytest

from feature_contract import feature_config as fc
from beam_jobs import native, synthetic
from tests.beam_jobs.test_sessionize_equivalence import raw_log, tree  # noqa: F401 (fixture)

SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture()
def built(tmp_path, monkeypatch):
    """A package dir with event_parsing.py and a manifest naming its compiled file."""
    monkeypatch.delenv(native.DISABLE_ENV, raising=False)
    package, native_dir = tmp_path / "pkg", tmp_path / "native"
    package.mkdir()
    native_dir.mkdir()
    source = package / "event_parsing.py"
    source.write_text("X = 1\n")
    (native_dir / f"event_parsing{SUFFIX}").write_bytes(b"not loaded by these tests")
    manifest = {"cython": "3", "ext_suffix": SUFFIX, "modules": {"event_parsing": {
        "file": f"event_parsing{SUFFIX}",
        "sha256": hashlib.sha256(b"X = 1\n").hexdigest()}}}
    (native_dir / native.MANIFEST).write_text(json.dumps(manifest))
    return package, native_dir, manifest


def finder(package, native_dir):
    return native.NativeFinder(str(native_dir), str(package))


def test_a_current_build_is_found_as_an_extension_module(built):
    package, native_dir, _ = built
    spec = finder(package, native_dir).find_spec("beam_jobs.event_parsing")
    assert spec.origin == str(native_dir / f"event_parsing{SUFFIX}")
    assert isinstance(spec.loader, importlib.machinery.ExtensionFileLoader)
    assert spec.name == "beam_jobs.event_parsing"


def test_other_modules_are_left_to_the_regular_finders(built):
    package, native_dir, _ = built
    f = finder(package, native_dir)
    assert f.find_spec("beam_jobs.sessionize") is None  # not in MODULES
    assert f.find_spec("other.event_parsing") is None
    assert f.find_spec("beam_jobs") is None
    # In MODULES but not in this build.
    assert f.compiled_path("raw_io") == (None, "not in the build")


def test_an_edited_source_imports_as_python(built):
    package, native_dir, _ = built
    (package / "event_parsing.py").write_text("X = 2\n")
    f = finder(package, native_dir)
    assert f.compiled_path("event_parsing") == (None, "source changed since the build")
    assert f.find_spec("beam_jobs.event_parsing") is None


def test_the_switch_a_failed_build_and_another_python_all_fall_back(built, monkeypatch):
    package, native_dir, manifest = built
    monkeypatch.setenv(native.DISABLE_ENV, "1")
    assert finder(package, native_dir).compiled_path("event_parsing") == (
        None, "FEEDREC_PURE_PYTHON is set")
    monkeypatch.setenv(native.DISABLE_ENV, "0")  # "0" means not set
    assert finder(package, native_dir).compiled_path("event_parsing")[0] is not None
    (native_dir / native.MANIFEST).write_text(json.dumps(dict(manifest, ext_suffix=".cpython-310.so")))
    assert finder(package, native_dir).compiled_path("event_parsing") == (
        None, f"built for .cpython-310.so, this Python loads {SUFFIX}")
    (native_dir / native.MANIFEST).write_text(json.dumps({"error": "no compiler"}))
    assert finder(package, native_dir).compiled_path("event_parsing") == (
        None, "build failed: no compiler")
    os.remove(native_dir / native.MANIFEST)
    assert finder(package, native_dir).compiled_path("event_parsing") == (
        None, "not built (python -m beam_jobs.native_build)")


def test_a_missing_compiled_file_falls_back(built):
    package, native_dir, _ = built
    os.remove(native_dir / f"event_parsing{SUFFIX}")
    path, why = finder(package, native_dir).compiled_path("event_parsing")
    assert path is None and why.endswith("is missing")


def test_a_build_without_cython_records_why_and_raises_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "Cython", None)  # import Cython -> ImportError
    manifest = native.build(str(tmp_path))
    assert manifest["error"].startswith("Cython or setuptools missing: ")
    assert json.loads((tmp_path / native.MANIFEST).read_text()) == manifest


# --- the job, compiled and pure Python --------------------------------------

_JOB = """
import json, sys
from beam_jobs import native, sessionize
sessionize.run(sys.argv[1:])
print(json.dumps(native.status()))
"""


def _run_job(args, pure):
    env = dict(os.environ)
    env.pop(native.DISABLE_ENV, None)
    if pure:
        env[native.DISABLE_ENV] = "1"
    result = subprocess.run([sys.executable, "-c", _JOB, *args], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _json_or_none(line):
    try:
        return json.loads(line)
    except ValueError:
        return None


@pytest.fixture(scope="module")
def csv_events(raw_log, tmp_path_factory):
    """raw_log's events as CSV (its bad rows that are not JSON objects are
    dropped) plus CSV's own bad rows: a short row and a bad timestamp."""
    raw, _ = raw_log
    with gzip.open(raw / "events.jsonl.gz", "rt") as f:
        rows = [r for r in map(_json_or_none, f)
                if isinstance(r, dict) and not any(isinstance(v, (list, dict)) for v in r.values())]
    columns = ["timestamp", "user_id", "item_id", "event", "network", "os", "tab"]
    path = tmp_path_factory.mktemp("csv") / "events.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        f.write("1767231041,u7\n")
        f.write("yesterday,u7,i23,click,wifi,ios,recommend\n")
    return path


@pytest.mark.parametrize("events", ["jsonl", "csv"])
def test_compiled_and_pure_python_jobs_write_the_same_bytes(raw_log, csv_events, tmp_path,
                                                            events):
    raw, config_path = raw_log
    manifest = native.read_manifest()
    assert manifest is not None, "make install builds the compiled modules (beam_jobs.native)"
    if manifest.get("error"):
        pytest.skip(f"no compiled modules on this machine: {manifest['error']}")
    events_glob = str(raw / "events.jsonl.gz") if events == "jsonl" else str(csv_events)

    def args(out):
        return ["--config", str(config_path), "--events", events_glob,
                "--users", str(raw / "users.jsonl.gz"), "--items", str(raw / "items.jsonl.gz"),
                "--output_dir", str(out), "--batch_size", "500"]

    compiled_status = _run_job(args(tmp_path / "compiled"), pure=False)
    pure_status = _run_job(args(tmp_path / "pure"), pure=True)
    assert compiled_status == {name: native.COMPILED for name in native.MODULES}
    assert pure_status == {name: "python (FEEDREC_PURE_PYTHON is set)"
                           for name in native.MODULES}
    got, want = tree(tmp_path / "compiled"), tree(tmp_path / "pure")
    assert sorted(got) == sorted(want)
    assert any(path.startswith(f"{fc.RANKING}/") for path in want)
    summary = json.loads(want["summary.json"])
    assert sum(summary["events"]["dead_letter"].values()) > 0
    for path in want:
        assert got[path] == want[path], path
