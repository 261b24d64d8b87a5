"""Benchmark of the sessionize job on the DirectRunner.

    python -m bench.sessionize_bench [--events 1000000] [--pairs 5] [Beam flags...]

Generates a synthetic click log with `beam_jobs.synthetic.generate` once (not
timed), then, with --pairs N (default 5), runs `beam_jobs.sessionize` on it
2N times, each in a fresh process: N runs with the compiled per-event loops
(beam_jobs.compiled) and N as pure Python (FEEDREC_PURE_PYTHON=1),
alternately, so the machine's drifting speed is shared out evenly
(`fresh_runs`). The headline figures of bench/results/sessionize.json are the
medians of the compiled runs; every run is listed with its throughput, CPU
seconds per 1M events, peak RSS (the process plus its children, e.g.
multi-process workers, sampled together) and the load average, since wall
time on a shared machine depends on the neighbours (the pure-Python runs,
paired with the compiled ones, show the machine's speed at the time). The
paired difference compiled - pure comes with its 95% interval. With --pairs 0:
one run in this process (the 10M-event and multi-worker benches), its figures
the headline.

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


def generate_log(data_dir: str, num_events: int, seed: int) -> dict[str, Any]:
    """The synthetic log the runs read, written once: {"events", "seconds"}."""
    start = time.perf_counter()
    generated = synthetic.generate(data_dir, num_events, seed=seed)
    return {"events": generated.get("num_events"),
            "seconds": round(time.perf_counter() - start, 2)}


def run_bench(num_events: int, work_dir: str, beam_args: list[str], seed: int = 0,
              data_dir: str | None = None) -> dict[str, Any]:
    """One run of the job in this process (on `data_dir`'s log, else a new one)."""
    if data_dir is None:
        data_dir = os.path.join(work_dir, "data")
        generated = generate_log(data_dir, num_events, seed)
    else:
        generated = {"events": None, "seconds": None}  # the parent wrote it
    out_dir = os.path.join(work_dir, "out")
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
    # What the process already holds (imports; the generator's leftovers when
    # it ran here): part of every RSS figure below, not the job's.
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
        "generated_events": generated["events"],
        "generator_seconds": generated["seconds"],
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


# What each fresh run contributes to the series in the JSON.
_RUN_FIELDS = ("seconds", "events_per_s", "cpu_seconds_per_1m_events", "load_average_1min",
               "peak_rss_mb")


def fresh_runs(pairs: int, num_events: int, data_dir: str, beam_args: list[str],
               work_dir: str, modes: tuple[str, ...] = ("compiled", "pure")
               ) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """Runs the job `pairs` times per mode on `data_dir`'s log, each in a fresh process.

    The modes alternate and the order flips every pair, so a drifting machine
    speed is shared out evenly. Returns (mode -> the runs' `_RUN_FIELDS`, the
    full JSON of the first run, for the counts every run shares).
    """
    series: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
    first: dict[str, Any] = {}
    for i in range(pairs):
        for mode in (modes if i % 2 == 0 else modes[::-1]):
            env = {k: v for k, v in os.environ.items() if k != compiled.ENV_PURE_PYTHON}
            if mode == "pure":
                env[compiled.ENV_PURE_PYTHON] = "1"
            out = os.path.join(work_dir, f"{mode}_{i}.json")
            done = subprocess.run([sys.executable, "-m", "bench.sessionize_bench",
                                   "--events", str(num_events), "--data_dir", data_dir,
                                   "--work_dir", os.path.join(work_dir, f"{mode}_{i}"),
                                   "--pairs", "0", "--output", out, *beam_args],
                                  cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                  env=env, capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(f"the {mode} run {i} failed (exit {done.returncode}):\n"
                                   + done.stderr[-4000:])
            with open(out, encoding="utf-8") as f:
                run = json.load(f)
            shutil.rmtree(os.path.join(work_dir, f"{mode}_{i}"), ignore_errors=True)
            if run["compiled_loops"] != (mode == "compiled"):
                raise RuntimeError(f"a {mode} run reported compiled_loops="
                                   f"{run['compiled_loops']}: is the extension built?")
            if run["read"] != num_events:
                raise RuntimeError(f"the {mode} run {i} read {run['read']} events, "
                                   f"not {num_events}")
            first = first or run
            series[mode].append({key: run[key] for key in _RUN_FIELDS})
    return series, first


def compare_pure(series: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Both series of `fresh_runs`, their medians and the paired difference compiled - pure."""
    speed = {mode: [r["events_per_s"] for r in runs] for mode, runs in series.items()}
    cpu = {mode: [r["cpu_seconds_per_1m_events"] for r in runs] for mode, runs in series.items()}
    return {
        "pairs": len(series["compiled"]),
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


def headline(runs: list[dict[str, Any]], first: dict[str, Any], mode: str,
             generated: dict[str, Any]) -> dict[str, Any]:
    """The JSON's top level from fresh runs of one mode: medians, the worst RSS."""
    speeds = [r["events_per_s"] for r in runs]
    result = dict(first)
    result.update({
        "headline": f"median of {len(runs)} fresh-process runs ({mode} loops) on one log",
        "generated_events": generated["events"],
        "generator_seconds": generated["seconds"],
        "seconds": float(np.median([r["seconds"] for r in runs])),
        "events_per_s": float(np.median(speeds)),
        "events_per_s_range": [min(speeds), max(speeds)],
        "runs_at_or_above_target": sum(v >= TARGET_EVENTS_PER_S for v in speeds),
        "cpu_seconds_per_1m_events": float(np.median(
            [r["cpu_seconds_per_1m_events"] for r in runs])),
        "peak_rss_mb": max((r["peak_rss_mb"] for r in runs),
                           key=lambda rss: rss["sampled_tree_total"]),
    })
    for key in ("cpu_seconds", "events_per_cpu_s", "load_average_1min"):
        result.pop(key, None)  # per run only (in the series)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work_dir", default=None, help="kept if given, else a temp dir")
    parser.add_argument("--data_dir", default=None,
                        help="read this log instead of generating one (the fresh runs)")
    parser.add_argument("--output", default=RESULTS)
    parser.add_argument("--pairs", type=int, default=5,
                        help="fresh-process runs per mode, compiled and pure alternately "
                             "(0: one run in this process)")
    args, beam_args = parser.parse_known_args(argv)
    beam_args = beam_args or list(DEFAULT_BEAM_ARGS)
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="sessionize_bench_")
    try:
        if not args.pairs:
            result = run_bench(args.events, work_dir, beam_args, args.seed, args.data_dir)
        else:
            data_dir = args.data_dir or os.path.join(work_dir, "data")
            generated = ({"events": None, "seconds": None} if args.data_dir
                         else generate_log(data_dir, args.events, args.seed))
            modes = ("compiled", "pure") if compiled.available() else ("pure",)
            series, first = fresh_runs(args.pairs, args.events, data_dir, beam_args,
                                       work_dir, modes)
            result = headline(series[modes[0]], first, modes[0], generated)
            result["command"] = "python -m bench.sessionize_bench " + " ".join(
                sys.argv[1:] if argv is None else argv)
            result["compiled_vs_pure"] = (
                compare_pure(series) if len(modes) == 2 else
                {"skipped": "beam_jobs._fastloops is not built (no C compiler at install)",
                 "runs": series})
    finally:
        if args.work_dir is None:
            shutil.rmtree(work_dir, ignore_errors=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2, sort_keys=False)
        f.write("\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
