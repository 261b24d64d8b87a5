"""Benchmark of the sessionize job on the DirectRunner.

    python -m bench.sessionize_bench [--events 1000000] [--pairs 5] [Beam flags...]

Generates a synthetic click log with `beam_jobs.synthetic.generate` (not
timed), runs `beam_jobs.sessionize` on it in-process and writes
bench/results/sessionize.json: throughput, the job's own summary counts and
peak RSS (this process plus its children, e.g. multi-process workers,
sampled together), plus CPU seconds per 1M events and the machine's load
average, since wall time on a shared machine depends on the neighbours.
Then, with --pairs N (default 5), N more runs each with the compiled
per-event loops (beam_jobs.compiled) and as pure Python
(FEEDREC_PURE_PYTHON=1), alternately in fresh processes: both series, their
medians and the paired difference (`compare_pure`).

Beam flags default to DEFAULT_BEAM_ARGS, the fastest DirectRunner setting
measured on the 2-core benchmark machine (see that constant); any Beam flag
given on the command line replaces them.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import psutil  # noqa: E402

from feature_contract import feature_config as fc  # noqa: E402
from beam_jobs import compiled, sessionize, synthetic  # noqa: E402
from bench import stats  # noqa: E402

# Measured at 1M events (CPU-seconds are load-independent, wall is not):
# one in-process worker (the default) 21.6 CPU-s; --direct_num_workers=2
# with multi_processing 30.5 CPU-s and slower (every element crosses gRPC);
# with multi_threading 24.5 CPU-s, and Beam 2.77's threaded data channel
# corrupts data at this size (wrong counts or a decode error), so it is
# never a default. The one worker already overlaps gzip compression with
# the Python work on a second core (beam_jobs.raw_io).
DEFAULT_BEAM_ARGS: list[str] = []
TARGET_EVENTS_PER_S = 100_000  # #15: one DirectRunner worker, 1M events
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "sessionize.json")


def _peak_rss_mb() -> dict[str, float]:
    """Peak RSS of this process and of its largest waited-for child (Linux: KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    return {"self": round(own, 1), "children": round(children, 1),
            "total": round(own + children, 1)}


class _RssSampler:
    """Peak of the summed RSS of this process and all its descendants."""

    def __init__(self, interval_s: float = 0.2, children_every: int = 10):
        self._interval = interval_s
        # Listing the descendants walks all of /proc (psutil's ppid map) with
        # the GIL held: every 0.2 s that took 0.6-0.7 s of a 1M-event run
        # (3-4% of its samples in py-spy profiles). The list is refreshed every
        # `children_every` samples (2 s: multi-process workers live for the
        # whole run); every sample still reads each process's RSS.
        self._children_every = children_every
        self._samples = 0
        self._procs: list[psutil.Process] = []
        self._stop = threading.Event()
        self.peak_mb = 0.0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        if self._samples % self._children_every == 0:
            me = psutil.Process()
            self._procs = [me] + me.children(recursive=True)
        self._samples += 1
        total = 0
        for proc in self._procs:
            try:
                total += proc.memory_info().rss
            except psutil.Error:  # a worker exited between listing and reading
                continue
        self.peak_mb = max(self.peak_mb, total / 2**20)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self._interval)

    def __enter__(self) -> "_RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def _dirty_paths() -> list[str] | None:
    """Tracked files that differ from HEAD when the run starts (None outside git).

    On a shared checkout the commit is often "-dirty" from other work in
    progress; the list shows whether any of it is code this bench runs
    (beam_jobs/, feature_contract/, bench/).
    """
    try:
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), check=True,
            capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return sorted(line[3:] for line in status.splitlines() if line.strip())


def run_bench(num_events: int, work_dir: str, beam_args: list[str], seed: int = 0) -> dict[str, Any]:
    data_dir = os.path.join(work_dir, "data")
    out_dir = os.path.join(work_dir, "out")
    gen_start = time.perf_counter()
    generated = synthetic.generate(data_dir, num_events, seed=seed)
    gen_seconds = time.perf_counter() - gen_start
    config_path = fc.builtin_config_path("synthetic")
    argv = ["--config", config_path,
            "--events", os.path.join(data_dir, "events.jsonl.gz"),
            "--users", os.path.join(data_dir, "users.jsonl.gz"),
            "--items", os.path.join(data_dir, "items.jsonl.gz"),
            "--output_dir", out_dir] + beam_args
    # Before the run: the code measured (with "-dirty" if tracked files differ).
    commit = stats.git_commit()
    dirty_paths = _dirty_paths()
    load_before = os.getloadavg()
    cpu_before = os.times()
    # What the process already holds (the generator's leftovers, imports):
    # part of every RSS figure below, not the job's.
    rss_before_mb = psutil.Process().memory_info().rss / 2**20
    start = time.perf_counter()
    with _RssSampler() as rss:
        sessionize.run(argv)
    seconds = time.perf_counter() - start
    cpu_after = os.times()
    # CPU seconds of this process and its (multi-process) workers: on a shared
    # machine wall time depends on the neighbours, CPU time much less.
    cpu_seconds = sum(getattr(cpu_after, f) - getattr(cpu_before, f)
                      for f in ("user", "system", "children_user", "children_system"))
    with open(os.path.join(out_dir, "summary.json"), encoding="utf-8") as f:
        summary = json.load(f)
    events = summary["events"]
    out_bytes = sum(os.path.getsize(os.path.join(d, n))
                    for d, _, names in os.walk(out_dir) for n in names)
    return {
        "benchmark": "sessionize",
        "commit": commit,
        "dirty_paths": dirty_paths,
        "command": "python -m bench.sessionize_bench " + " ".join(beam_args),
        "runner": "DirectRunner",
        "beam_args": beam_args,
        "events": events["read"],
        "generated_events": generated.get("num_events"),
        "generator_seconds": round(gen_seconds, 2),
        "seconds": round(seconds, 2),
        "events_per_s": round(events["read"] / seconds, 1),
        "target_events_per_s": TARGET_EVENTS_PER_S,
        "cpu_seconds": round(cpu_seconds, 2),
        "events_per_cpu_s": round(events["read"] / cpu_seconds, 1),
        "cpu_seconds_per_1m_events": round(cpu_seconds * 1e6 / events["read"], 2),
        "load_average_1min": {"before": round(load_before[0], 2),
                              "after": round(os.getloadavg()[0], 2)},
        "read": events["read"],
        "accepted": events["accepted"],
        "dead_letter": events["dead_letter"],
        "filtered": events["filtered"],
        "examples": summary["examples"],
        "sessions": summary["sessions"],
        "checks": summary["checks"],
        "output_mb": round(out_bytes / 2**20, 1),
        "peak_rss_mb": dict(_peak_rss_mb(), sampled_tree_total=round(rss.peak_mb, 1),
                            before_job=round(rss_before_mb, 1)),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        # Whether the per-event loops ran compiled (beam_jobs/_fastloops.c) or in Python.
        "compiled_loops": compiled.wanted(None),
    }


def compare_pure(pairs: int, num_events: int, seed: int, beam_args: list[str],
                 work_dir: str) -> dict[str, Any]:
    """Runs the bench `pairs` times compiled and as pure Python, alternately.

    Each run is a fresh process, and the order flips every pair so a drifting
    machine speed (the same code has measured 58k-83k events/s within minutes
    here) is shared out evenly. Returns both series, their medians and the
    paired difference compiled - pure with its 95% interval.
    """
    series: dict[str, list[dict[str, Any]]] = {"compiled": [], "pure": []}
    for i in range(pairs):
        for mode in (("compiled", "pure") if i % 2 == 0 else ("pure", "compiled")):
            env = {k: v for k, v in os.environ.items() if k != compiled.ENV_PURE_PYTHON}
            if mode == "pure":
                env[compiled.ENV_PURE_PYTHON] = "1"
            out = os.path.join(work_dir, f"{mode}_{i}.json")
            done = subprocess.run([sys.executable, "-m", "bench.sessionize_bench",
                                   "--events", str(num_events), "--seed", str(seed),
                                   "--pairs", "0", "--output", out, *beam_args],
                                  cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                  env=env, capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(f"the {mode} run {i} failed (exit {done.returncode}):\n"
                                   + done.stderr[-4000:])
            with open(out, encoding="utf-8") as f:
                run = json.load(f)
            if run["compiled_loops"] != (mode == "compiled"):
                raise RuntimeError(f"a {mode} run reported compiled_loops="
                                   f"{run['compiled_loops']}: is the extension built?")
            series[mode].append({key: run[key] for key in (
                "seconds", "events_per_s", "cpu_seconds_per_1m_events", "load_average_1min",
                "peak_rss_mb")})
    speed = {mode: [r["events_per_s"] for r in runs] for mode, runs in series.items()}
    cpu = {mode: [r["cpu_seconds_per_1m_events"] for r in runs] for mode, runs in series.items()}
    return {
        "pairs": pairs,
        "order": "compiled first in even pairs, pure first in odd ones; fresh processes",
        "runs": series,
        "median_events_per_s": {mode: float(np.median(v)) for mode, v in speed.items()},
        "median_cpu_seconds_per_1m_events": {mode: float(np.median(v)) for mode, v in cpu.items()},
        "compiled_minus_pure_events_per_s": stats.paired_difference(speed["compiled"],
                                                                    speed["pure"]),
        "compiled_minus_pure_cpu_seconds_per_1m": stats.paired_difference(cpu["compiled"],
                                                                          cpu["pure"]),
        "compiled_runs_at_or_above_target": sum(v >= TARGET_EVENTS_PER_S for v in speed["compiled"]),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work_dir", default=None, help="kept if given, else a temp dir")
    parser.add_argument("--output", default=RESULTS)
    parser.add_argument("--pairs", type=int, default=5,
                        help="compiled / pure-Python run pairs after the main run (0: none)")
    args, beam_args = parser.parse_known_args(argv)
    beam_args = beam_args or list(DEFAULT_BEAM_ARGS)
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="sessionize_bench_")
    try:
        result = run_bench(args.events, work_dir, beam_args, args.seed)
        if args.pairs and not compiled.available():
            result["compiled_vs_pure"] = {
                "skipped": "beam_jobs._fastloops is not built (no C compiler at install)"}
        elif args.pairs:
            result["compiled_vs_pure"] = compare_pure(args.pairs, args.events, args.seed,
                                                      beam_args, work_dir)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work_dir, ignore_errors=True)
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2, sort_keys=False)
        f.write("\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
