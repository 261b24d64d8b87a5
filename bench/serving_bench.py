"""`make bench-serving`: loopback load on the model server and the recommender.

Starts `python -m serving.serve --workers 2` (two serving processes sharing
the ports, each an embedded model server + the recommender HTTP API calling it
in-process, on a private redis-server as their shared store) on free loopback
ports over a private copy of the pushed models, then measures, each for a
fixed duration and a bounded request count, at concurrency 1, 8 and 32:
  * POST /recommend (500 merged candidates, one ranking Predict), and again at
    1 and 8 with one process (the `make serve` default) and with one process
    whose recommender calls the model server over loopback gRPC
    (--transport grpc, the path to a remote TF Serving);
  * a raw gRPC Predict of 500 candidates on ranking/score_candidates;
each load point also records the serve process's CPU ms per answered request
(load-independent, unlike latency on a shared box); plus the in-process
score_candidates time for the same 500 candidates (graph call alone, and from
numpy), the round trip of the cheapest gRPC call (the transport's floor), a hot
swap of a new ranking version during Predict load (failure count), and small
user-tower Predicts with server-side batching off and on, and an abuse point:
recommend at concurrency 8 clean, then beside 17 concurrent huge-shape
Predicts (refused by the size limits), then clean again (`--only_abuse` runs
just that and merges it into the JSON).

Uses work/serving/ when models were pushed there; otherwise builds small real
models (serving.toy_models) and says so in the JSON. Writes
bench/results/serving.json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import grpc  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow_serving.apis import prediction_service_pb2_grpc  # noqa: E402

from bench import stats  # noqa: E402
from feature_contract import dataset as dataset_file  # noqa: E402
from feature_contract import feature_config as fc  # noqa: E402
from serving import serving_dirs, toy_models  # noqa: E402
from serving.blend import BLEND_FILE, Blend  # noqa: E402
from serving.catalogue import ItemCatalogue, read_item_frequencies  # noqa: E402
from serving.client import ModelServerClient, make_predict_request  # noqa: E402
from serving.indexes import IndexSet  # noqa: E402
from serving.local_redis import LocalRedis  # noqa: E402
from serving.recommender import Recommender, RecommenderSettings  # noqa: E402
from serving.servables import list_versions  # noqa: E402
from serving.model_server import set_tensorflow_threads  # noqa: E402
from serving.serve import find_inputs, worker_thread_share  # noqa: E402
from serving.store import InMemoryStore  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "serving.json")
NUM_CANDIDATES = 500


def _summary(latencies: list[float], errors: int, seconds: float,
             messages: Sequence[str] = ()) -> dict:
    lat = np.array(latencies) * 1000.0
    return {"requests": len(latencies), "errors": errors, "seconds": round(seconds, 2),
            **({"error_examples": sorted(set(messages))[:3]} if messages else {}),
            "qps": round(len(latencies) / seconds, 1) if seconds else 0.0,
            **({f"p{q}_ms": round(float(np.percentile(lat, q)), 2) for q in (50, 95, 99)}
               if len(lat) else {})}


def speed_probe() -> float:
    """Seconds for a fixed pure-Python loop: how fast this box is right now.

    The shared dev box's speed drifts by tens of percent between (and
    within) runs; compare latencies across runs only together with this.
    """
    start = time.perf_counter()
    total = 0
    for i in range(5_000_000):
        total += i
    return round(time.perf_counter() - start, 3)


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, all threads (/proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_load(make_call: Callable[[], Callable[[], None]], concurrency: int, duration_s: float,
             max_requests: int, service_pids: Sequence[int] = ()) -> dict:
    """Closed-loop load: `concurrency` workers, each with its own connection.

    With service_pids, also the service processes' CPU ms per answered
    request: unlike latency, it does not depend on what else loads the machine.
    """
    latencies: list[float] = []
    errors = [0]
    messages: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + duration_s

    def worker():
        call = make_call()
        while time.monotonic() < deadline:
            with lock:
                if len(latencies) + errors[0] >= max_requests:
                    return
            start = time.perf_counter()
            try:
                call()
                with lock:
                    latencies.append(time.perf_counter() - start)
            except (grpc.RpcError, OSError, RuntimeError, http.client.HTTPException) as err:
                with lock:
                    errors[0] += 1
                    messages.append(f"{type(err).__name__}: {str(err)[:160]}")
                call = make_call()  # a failed HTTP connection is not reusable

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    def service_cpu() -> float:
        return sum(process_cpu_seconds(pid) for pid in service_pids)

    cpu_start = service_cpu()
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out = _summary(latencies, errors[0], time.monotonic() - start, messages)
    if service_pids and latencies:
        out["service_cpu_ms_per_request"] = round(
            (service_cpu() - cpu_start) * 1000.0 / len(latencies), 2)
    return out


def _http_caller(port: int, body: dict) -> Callable[[], Callable[[], None]]:
    payload = json.dumps(body).encode()

    def make():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

        def call():
            conn.request("POST", "/recommend", payload, {"Content-Type": "application/json"})
            response = conn.getresponse()
            data = response.read()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {data[:200]!r}")
        return call
    return make


def _grpc_caller(target: str, request) -> Callable[[], Callable[[], None]]:
    def make():
        stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(
            target, options=[("grpc.max_receive_message_length", 64 << 20)]))
        return lambda: stub.Predict(request, timeout=30)
    return make


class Services:
    """serving.serve in a child process; stopped with SIGTERM by its pid."""

    def __init__(self, serving_dir: str, extra: Sequence[str] = ()):
        self.ready = os.path.join(serving_dir, f"ready-{time.time_ns()}.json")
        cmd = [sys.executable, "-m", "serving.serve", "--serving_dir", serving_dir,
               "--port", "0", "--rest_api_port", "0", "--recommender_port", "0",
               "--file_system_poll_wait_seconds", "0.5", "--ready_file", self.ready, *extra]
        self.log = open(os.path.join(serving_dir, "serve.log"), "a", encoding="utf-8")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 180
        while not os.path.exists(self.ready):
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise RuntimeError(f"serving.serve did not start; see {self.log.name}")
            time.sleep(0.2)
        with open(self.ready, encoding="utf-8") as f:
            info = json.load(f)
        self.target, self.port = info["model_server"], info["recommender_port"]
        self.pids = info.get("pids") or [self.proc.pid]  # the workers, under --workers

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def prepare(work_dir: str, scratch: str, config: fc.FeatureConfig,
            ranker_model: str | None = None) -> tuple[str, dict]:
    """A private serving dir: a copy of work/serving's models, or toy models.

    Args:
      ranker_model: a ranking SavedModel directory (e.g. the pipeline's
        RankingTrainer.nfwfm Format-Serving) served as `ranking` in the
        private copy when work/serving has pushed recall models but no
        ranker (the gate refused it): latency does not depend on the
        blessing, and the JSON says which model it was. A blend.json fitted
        without a ranker (it weighs the ranker at 0, so the recommender would
        skip the ranker's Predict) is left out of that copy: the list is then
        ordered by the ranker, the two-stage path this bench measures.
    Raises:
      ValueError: ranker_model given but not a SavedModel directory.
    """
    source = os.path.join(work_dir, "serving")
    models = os.path.join(source, "models")
    out = os.path.join(scratch, "serving")
    if ranker_model and not os.path.exists(os.path.join(ranker_model, "saved_model.pb")):
        raise ValueError(f"--ranker_model {ranker_model!r} holds no saved_model.pb")
    pushed = os.path.isdir(models) and bool(list_versions(os.path.join(models, "ranking")))
    ranker = None
    if not pushed and ranker_model and os.path.isdir(models):
        ranker = {"source": os.path.abspath(ranker_model), "pushed": False,
                  "note": "not pushed by the pipeline (the gate refused it); served in the "
                          "bench's private copy for latency only"}
    if pushed or ranker:
        shutil.copytree(source, out)  # the hot swap writes a version: never into work/
        if ranker:
            shutil.copytree(ranker_model, os.path.join(out, "models", "ranking", "1"))
            blend_path = os.path.join(out, BLEND_FILE)
            if os.path.exists(blend_path) and not Blend.read(blend_path).uses_ranker:
                os.remove(blend_path)
                ranker["blend"] = ("left out of the private copy: fitted with no ranker served, "
                                   "it weighs the ranker at 0 and the recommender would skip "
                                   "the ranker's Predict; the list is ordered by the ranker")
        # The pipeline pushes models and indexes; the tables the recommender
        # reads stay where `make run` left them: copy them beside the models,
        # as a deployment would.
        for name, path in find_inputs(source, work_dir, config.name).items():
            if path and not os.path.exists(os.path.join(out, os.path.basename(path))):
                shutil.copy(path, out)
        info = {"source": os.path.abspath(source), "toy": False,
                **({"ranker": ranker} if ranker else {})}
    else:
        toy_models.write_toy_world(out, config, num_users=200, num_items=5000, seed=0)
        info = {"source": "serving.toy_models (work/serving had no pushed ranking model)",
                "toy": True, "num_items": 5000}
    info["versions"] = {name: list_versions(os.path.join(out, "models", name))
                        for name in sorted(os.listdir(os.path.join(out, "models")))}
    return out, info


def bench_config(work_dir: str, data: str | None) -> fc.FeatureConfig:
    """The feature config of the models the bench serves.

    <work_dir>/serving/feature_config.yaml when present; else the config of
    `data`, which defaults to the --data the last run stamped the serving dir
    with (serving.serving_dirs: the serve child reads the same stamp from the
    private copy), else synthetic (the toy world's).
    """
    source = os.path.join(work_dir, "serving")
    config_path = os.path.join(source, "feature_config.yaml")
    if os.path.exists(config_path):
        return fc.load(config_path)
    if data is None:
        stamp = serving_dirs.read_stamp(source)
        data = stamp.data if stamp is not None else "synthetic"
    if dataset_file.is_dataset_file(data):
        return dataset_file.load(data).config
    return fc.load(fc.builtin_config_path(data))


def build_requests(serving_dir: str, config: fc.FeatureConfig, target: str):
    """The ranking request of one real recommend (500 candidates) and a tower request."""
    items_path = next(os.path.join(serving_dir, f) for f in os.listdir(serving_dir)
                      if f.startswith("items."))
    freq = os.path.join(serving_dir, "item_frequencies.tsv")
    catalogue = ItemCatalogue.from_table(items_path, config, read_item_frequencies(freq)
                                         if os.path.exists(freq) else None)
    client = ModelServerClient(target)
    rec = Recommender(config, client, InMemoryStore(),
                      IndexSet(os.path.join(serving_dir, "indexes"), []), catalogue,
                      RecommenderSettings(num_candidates=NUM_CANDIDATES))
    now = time.time()
    row = rec.user_features("bench_user", {}, [], {}, now)
    items = catalogue.by_popularity[:NUM_CANDIDATES]
    _, wanted = client.signature_inputs("ranking", "score_candidates")
    ranking_inputs = rec._item_inputs(items, row, wanted, now)
    _, tower_wanted = client.signature_inputs("user_tower_two_tower", "serving_default")
    tower_inputs = rec._row_inputs(row, tower_wanted)
    client.close()
    return ranking_inputs, tower_inputs


def call_times_ms(call: Callable[[], object], repeats: int, warmup: int = 10) -> np.ndarray:
    """Milliseconds per call of `call`, `repeats` times after `warmup` untimed calls."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return np.array(times) * 1000.0


def in_process_scoring(fn: Callable[..., dict], inputs: dict, repeats: int) -> dict:
    """score_candidates called in this process, two ways.

    Top level: the graph call alone, on tensors built beforehand (the
    strictest baseline: the target ratio is taken against it).
    `from_numpy`: what an embedded scorer pays, from the same numpy arrays a
    Predict carries (tensor conversion + call).
    """
    tensors = {k: tf.constant(v) for k, v in inputs.items()}

    def timed(call: Callable[[], None]) -> dict:
        lat = call_times_ms(call, repeats)
        return {f"p{q}_ms": round(float(np.percentile(lat, q)), 2) for q in (50, 95, 99)}

    out = {"candidates": NUM_CANDIDATES, "repeats": repeats,
           **timed(lambda: fn(**tensors)["click"].numpy())}
    out["from_numpy"] = timed(lambda: fn(**{k: tf.constant(v) for k, v in inputs.items()})
                              ["click"].numpy())
    return out


def paired_predict_vs_in_process(fn: Callable[..., dict], inputs: dict, target: str, request,
                                 rounds: int, calls: int) -> dict:
    """Predict-500 over gRPC against the in-process graph call, measured in
    alternating rounds so both see the same machine: on a shared 2-core box
    the speed drifts by tens of percent over a run, which a ratio of two
    figures taken minutes apart would fold in. Returns each round's p50s and
    the median of the per-round ratios.
    """
    tensors = {k: tf.constant(v) for k, v in inputs.items()}
    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(
        target, options=[("grpc.max_receive_message_length", 64 << 20)]))
    ways = {"in_process_ms": lambda: fn(**tensors)["click"].numpy(),
            "predict_ms": lambda: stub.Predict(request, timeout=30)}
    out: dict = {"rounds": [], "calls_per_round": calls}
    for _ in range(rounds):
        row = {}
        for key, call in ways.items():
            row[key] = round(float(np.median(call_times_ms(call, calls))), 3)
        row["ratio"] = round(row["predict_ms"] / row["in_process_ms"], 3)
        out["rounds"].append(row)
    out["median_ratio"] = round(float(np.median([r["ratio"] for r in out["rounds"]])), 2)
    return out


def grpc_floor(target: str, repeats: int) -> dict:
    """Round trip of the cheapest call (GetModelStatus) at concurrency 1: the
    Python gRPC cost every Predict pays on top of its work."""
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc
    stub = model_service_pb2_grpc.ModelServiceStub(grpc.insecure_channel(target))
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "ranking"
    times = call_times_ms(lambda: stub.GetModelStatus(request, timeout=30), repeats, warmup=20)
    return {"call": "GetModelStatus", "repeats": repeats,
            "p50_ms": round(float(np.median(times)), 3)}


def hot_swap(serving_dir: str, target: str, request, duration_s: float) -> dict:
    """Predict load at concurrency 8 while a new ranking version is pushed."""
    base = os.path.join(serving_dir, "models", "ranking")
    old = max(list_versions(base))
    new = old + 1
    seen: dict[int, int] = {}
    errors = [0]
    stop = threading.Event()
    lock = threading.Lock()

    def worker():
        stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(target))
        while not stop.is_set():
            try:
                version = stub.Predict(request, timeout=30).model_spec.version.value
                with lock:
                    seen[version] = seen.get(version, 0) + 1
            except grpc.RpcError:
                with lock:
                    errors[0] += 1

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(duration_s / 3)
    staging = os.path.join(serving_dir, f"staging-{new}")
    shutil.copytree(os.path.join(base, str(old)), staging)
    pushed = time.monotonic()
    os.rename(staging, os.path.join(base, str(new)))  # atomic, like the Pusher
    switched = None
    deadline = time.monotonic() + max(duration_s, 60)
    while time.monotonic() < deadline:
        with lock:
            if seen.get(new):
                switched = time.monotonic() - pushed
                break
        time.sleep(0.02)
    time.sleep(duration_s / 3)
    stop.set()
    for t in threads:
        t.join()
    return {"old_version": old, "new_version": new, "requests_per_version": seen,
            "failures": errors[0], "seconds_from_push_to_first_new_response":
            round(switched, 2) if switched is not None else None, "concurrency": 8}


# 17 threads in their own process (no TensorFlow, no GIL shared with the load threads),
# each sending the huge-shape Predict as raw bytes, pausing `think` s between calls.
ABUSER = r"""
import json, sys, threading, time
import grpc
target, path, threads, seconds, think = sys.argv[1], sys.argv[2], int(sys.argv[3]), \
    float(sys.argv[4]), float(sys.argv[5])
payload = open(path, "rb").read()
codes, times, lock = {}, [], threading.Lock()
def run():
    channel = grpc.insecure_channel(target)
    call = channel.unary_unary("/tensorflow.serving.PredictionService/Predict")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        start = time.perf_counter()
        try:
            call(payload, timeout=30)
            code = "OK"
        except grpc.RpcError as err:
            code = err.code().name
        with lock:
            codes[code] = codes.get(code, 0) + 1
            times.append(time.perf_counter() - start)
        time.sleep(think)
workers = [threading.Thread(target=run) for _ in range(threads)]
for w in workers:
    w.start()
for w in workers:
    w.join()
times.sort()
pick = lambda q: round(1000 * times[min(len(times) - 1, int(q * len(times)))], 2) if times else None
print(json.dumps({"codes": codes, "requests": len(times), "p50_ms": pick(0.5), "p99_ms": pick(0.99),
                  "max_ms": round(1000 * times[-1], 2) if times else None}))
"""


def huge_shape_request() -> bytes:
    """The issue's 37-byte Predict: ranking's `examples` declares 1,000,000 rows, has one value."""
    from tensorflow.core.framework import types_pb2
    from tensorflow_serving.apis import predict_pb2
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "ranking"
    proto = request.inputs["examples"]
    proto.dtype = types_pb2.DT_STRING
    proto.tensor_shape.dim.add().size = 1_000_000
    proto.string_val.append(b"")
    return request.SerializeToString()


def rss_mb(pids: Sequence[int]) -> float:
    """Resident memory of the service processes, MB."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            total += int(next(line for line in f if line.startswith("VmRSS")).split()[1])
    return round(total / 1024, 1)


def abuse_point(services: "Services", body: dict, scratch: str, duration_s: float,
                max_requests: int, abusers: int = 17, think_s: float = 0.01) -> dict:
    """Recommend at concurrency 8: clean, then beside `abusers` concurrent huge-shape
    Predicts (the issue's 37-byte request, refused at once by the size limits),
    then clean again; the valid p99 with abuse against each clean p99, the abuse
    calls' status codes and latency, and the services' RSS before and after.
    """
    path = os.path.join(scratch, "huge_shape.bin")
    with open(path, "wb") as f:
        f.write(huge_shape_request())
    caller = _http_caller(services.port, body)
    out: dict = {"concurrency": 8, "abusers": abusers, "abuser_think_s": think_s,
                 "abuse_request_bytes": os.path.getsize(path),
                 "abuse_request": "ranking Predict, examples declares shape [1000000], one value"}
    run_load(caller, 8, duration_s / 2, max_requests)  # warm-up: the first load point ran slow
    out["clean_before"] = run_load(caller, 8, duration_s, max_requests, services.pids)
    out["rss_mb_before"] = rss_mb(services.pids)
    proc = subprocess.Popen([sys.executable, "-c", ABUSER, services.target, path, str(abusers),
                             str(duration_s + 2.0), str(think_s)],
                            stdout=subprocess.PIPE, text=True)
    time.sleep(1.0)  # every abuser is sending
    out["with_abuse"] = run_load(caller, 8, duration_s, max_requests, services.pids)
    out["abuse_calls"] = json.loads(proc.communicate(timeout=120)[0])
    out["rss_mb_after"] = rss_mb(services.pids)
    out["clean_after"] = run_load(caller, 8, duration_s, max_requests, services.pids)
    for key in ("clean_before", "clean_after"):
        if out[key].get("p99_ms") and out["with_abuse"].get("p99_ms"):
            out[f"p99_ratio_vs_{key}"] = round(out["with_abuse"]["p99_ms"] / out[key]["p99_ms"], 2)
    return out


def run_abuse_only(args: argparse.Namespace) -> None:
    """The abuse point alone, on the main figures' serve shape, merged into args.output."""
    config = bench_config(args.work_dir, args.data)
    scratch = tempfile.mkdtemp(prefix="serving_bench_")
    redis_server = None
    run = {**run_record(["--only_abuse"]),
           "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
           "speed_probe_s_at_start": speed_probe()}
    try:
        serving_dir, run["models"] = prepare(args.work_dir, scratch, config, args.ranker_model)
        flags: list[str] = []
        if args.workers > 1:
            redis_server = LocalRedis(scratch)
            flags = ["--workers", str(args.workers), "--redis_url", redis_server.url]
        run["serve_flags"] = (f"--workers {args.workers} --redis_url <private redis-server>"
                              if flags else "(defaults)")
        services = Services(serving_dir, flags)
        try:
            body = {"user_id": "u1", "context": {}, "k": 20}
            for _ in range(5):
                _http_caller(services.port, body)()()
            abuse = abuse_point(services, body, scratch, args.duration_s, args.max_requests)
        finally:
            services.stop()
    finally:
        if redis_server is not None:
            redis_server.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    run["speed_probe_s_at_end"] = speed_probe()
    results = {}
    if os.path.exists(args.output):
        with open(args.output, encoding="utf-8") as f:
            results = json.load(f)
    results["abuse"] = {**abuse, "run": run}
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2, sort_keys=False)
    print(f"abuse {results['abuse']}\nwrote {args.output}")


def run_record(argv: Sequence[str]) -> dict:
    """The JSON's `_run`: commit (with -dirty), date, command and machine (bench.stats)."""
    return stats.provenance(["python", "-m", "bench.serving_bench", *argv])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work_dir", default="work")
    parser.add_argument("--data", default=None,
                        help="the served models' dataset (a built-in name or a dataset YAML); "
                             "default: the one the last run stamped work/serving with, else "
                             "synthetic")
    parser.add_argument("--duration_s", type=float, default=4.0, help="per load point")
    parser.add_argument("--max_requests", type=int, default=5000, help="per load point")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--output", default=RESULTS)
    parser.add_argument("--workers", type=int, default=2,
                        help="serve --workers for the main figures (with a private redis-server "
                             "as their shared store); 1 = one process, in-memory store")
    parser.add_argument("--nice", type=int, default=0,
                        help="lower the bench's and the services' priority (to share a busy box); "
                             "it costs the services CPU time per request too (measured: ~25%% "
                             "more at nice 10 on the 2-core dev box), so targets are taken at 0")
    parser.add_argument("--ranker_model", default=None,
                        help="a ranking SavedModel to serve as `ranking` when work/serving has "
                             "pushed recall models but no ranker (the gate refused it), e.g. "
                             "work/tfx/feedrec/pipeline_root/RankingTrainer.nfwfm/model/<id>/"
                             "Format-Serving; recorded in the JSON's models.ranker")
    parser.add_argument("--only_abuse", action="store_true",
                        help="run only the abuse point (with its own clean points, same serve "
                             "shape) and merge it into --output under `abuse`")
    args = parser.parse_args(argv)
    if args.nice:  # the services inherit it
        os.nice(args.nice)
    if args.only_abuse:
        run_abuse_only(args)
        return
    levels = [int(c) for c in args.concurrency.split(",")]
    # The in-process baseline runs with the TensorFlow pools each serving
    # worker gets, so the Predict/in-process ratio compares like with like.
    tf_threads = worker_thread_share(args.workers) if args.workers > 1 else 0
    set_tensorflow_threads(tf_threads, tf_threads)
    config = bench_config(args.work_dir, args.data)
    scratch = tempfile.mkdtemp(prefix="serving_bench_")
    results: dict = {"_run": run_record(sys.argv[1:] if argv is None else argv),
                     "command": "make bench-serving (python -m bench.serving_bench)",
                     "cpus": os.cpu_count(), "loopback": True,
                     "duration_s_per_point": args.duration_s,
                     "max_requests_per_point": args.max_requests,
                     "note": "client and services share the machine's 2 cores: figures are "
                             "loopback and CPU-bound, and the dev box's speed drifts by tens of "
                             "percent between runs; service_cpu_ms_per_request (the serving "
                             "processes' CPU time per answered request) is the steadier figure",
                     "nice": args.nice,
                     "in_process_tf_threads": {"intra_op": tf_threads, "inter_op": tf_threads,
                                               "note": "as each serve worker's (0 = TF default)"},
                     "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
                     "speed_probe_s_at_start": speed_probe()}
    redis_server = None
    try:
        serving_dir, results["models"] = prepare(args.work_dir, scratch, config,
                                                 args.ranker_model)
        print(f"models: {results['models']}", flush=True)
        main_flags: list[str] = []
        if args.workers > 1:
            redis_server = LocalRedis(scratch)
            main_flags = ["--workers", str(args.workers), "--redis_url", redis_server.url]
        results["serve_flags"] = " ".join(main_flags).replace(
            redis_server.url if redis_server else "\0", "<private redis-server>") or "(defaults)"
        services = Services(serving_dir, main_flags)
        try:
            ranking_inputs, tower_inputs = build_requests(serving_dir, config, services.target)
            ranking_request = make_predict_request("ranking", ranking_inputs, "score_candidates")
            results["predict_request_bytes"] = ranking_request.ByteSize()
            tower_request = make_predict_request("user_tower_two_tower", tower_inputs)
            body = {"user_id": "u1", "context": {}, "k": 20}
            for _ in range(5):  # warm-up: signature metadata, traced functions, connections
                _http_caller(services.port, body)()()
                _grpc_caller(services.target, ranking_request)()()
            results["recommend"], results["predict_500"] = {}, {}
            for c in levels:
                results["recommend"][str(c)] = run_load(_http_caller(services.port, body), c,
                                                        args.duration_s, args.max_requests,
                                                        services.pids)
                results["predict_500"][str(c)] = run_load(
                    _grpc_caller(services.target, ranking_request), c, args.duration_s,
                    args.max_requests, services.pids)
                print(f"c={c} recommend {results['recommend'][str(c)]}\n"
                      f"    predict_500 {results['predict_500'][str(c)]}", flush=True)
            ranking_dir = os.path.join(serving_dir, "models", "ranking")
            # Loaded once for both in-process measurements; keep `ranking`: the
            # signature needs the loaded object's variables alive.
            ranking = tf.saved_model.load(
                os.path.join(ranking_dir, str(max(list_versions(ranking_dir)))))
            score = ranking.signatures["score_candidates"]
            results["in_process_scoring_500"] = in_process_scoring(score, ranking_inputs, 300)
            print(f"in-process {results['in_process_scoring_500']}", flush=True)
            results["grpc_round_trip_floor"] = grpc_floor(services.target, 500)
            results["predict_500_vs_in_process_paired"] = paired_predict_vs_in_process(
                score, ranking_inputs,
                services.target, ranking_request, rounds=5, calls=200)
            print(f"paired {results['predict_500_vs_in_process_paired']}", flush=True)
            if "p50_ms" in results["predict_500"].get("1", {}):
                results["predict_500_p50_over_in_process_p50"] = round(
                    results["predict_500"]["1"]["p50_ms"]
                    / results["in_process_scoring_500"]["p50_ms"], 2)
                results["predict_500_p50_over_in_process_from_numpy_p50"] = round(
                    results["predict_500"]["1"]["p50_ms"]
                    / results["in_process_scoring_500"]["from_numpy"]["p50_ms"], 2)
            results["abuse"] = abuse_point(services, body, scratch, args.duration_s,
                                           args.max_requests)
            print(f"abuse {results['abuse']}", flush=True)
            results["hot_swap"] = hot_swap(serving_dir, services.target, ranking_request,
                                           args.duration_s * 1.5)
            print(f"hot swap {results['hot_swap']}", flush=True)
        finally:
            services.stop()
        # One process (the `make serve` default: in-memory store), and one
        # process whose recommender reaches the embedded model server over
        # loopback gRPC, as it reaches a remote TF Serving.
        for key, flags in (("recommend_one_process", []),
                           ("recommend_one_process_grpc_transport", ["--transport", "grpc"])):
            services = Services(serving_dir, flags)
            try:
                for _ in range(5):
                    _http_caller(services.port, body)()()
                results[key] = {str(c): run_load(_http_caller(services.port, body), c,
                                                 args.duration_s, args.max_requests, services.pids)
                                for c in levels if c <= 8}
                if not flags:  # batching off, on the same one-process shape as batching on
                    results["batching"] = {"op": "user_tower_two_tower Predict, batch 1, one "
                                                 "process", "off": {
                        str(c): run_load(_grpc_caller(services.target, tower_request), c,
                                         args.duration_s, args.max_requests)
                        for c in levels if c > 1}}
            finally:
                services.stop()
            print(f"{key} {results[key]}", flush=True)
        batching_file = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                     "serving_configs", "batching_parameters.txt")
        services = Services(serving_dir, ["--enable_batching",
                                          "--batching_parameters_file", batching_file])
        try:
            results["batching"]["on"] = {
                str(c): run_load(_grpc_caller(services.target, tower_request), c, args.duration_s,
                                 args.max_requests) for c in levels if c > 1}
            results["batching"]["parameters_file"] = "serving_configs/batching_parameters.txt"
        finally:
            services.stop()
        print(f"batching {results['batching']}", flush=True)
    finally:
        if redis_server is not None:
            redis_server.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    results["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["speed_probe_s_at_end"] = speed_probe()
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2, sort_keys=False)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
