"""`make serve`: the model server plus the recommender's JSON HTTP API.

  python -m serving.serve --work_dir work [--model_server host:8500] [--redis_url redis://...]

Serves from <work_dir>/serving/ (what the pipeline pushes there):
  models/<name>/<version>/          SavedModels named in serving_configs/models.config
  indexes/<channel>/<version>/      FAISS indexes (two_tower, youtubenet, item2vec)
  items.jsonl.gz, users.jsonl.gz    raw side tables (catalogue, profiles to seed the store);
                                    else the newest <work_dir>/raw/<data>*/ tables
  item_frequencies.tsv              popularity; else the newest under <work_dir>/tfx/
  feature_config.yaml               optional; else the config of --data (a built-in name);
                                    a dataset YAML given as --data wins over it (its config,
                                    and its data: globs name the tables not copied here)
  dataset.json                      the stamp of the run that pushed there: with no --data,
                                    its --data is served; with --data of another dataset,
                                    <work_dir>/serving.<dataset> is (serving.serving_dirs)
Without --model_server the embedded model server is started on --port/--rest_api_port
and the recommender calls it in-process (--transport grpc: over its loopback port);
with --model_server, the recommender uses that server over gRPC (e.g. real TF
Serving). New model and index versions are picked up by polling, without a restart.

--workers N (with --redis_url) runs N such processes, on one shared store, under a
supervising process: the gRPC and REST ports are shared with SO_REUSEPORT, and the
recommender's connections are spread evenly from one shared listening socket
(serving.balance).

HTTP (loopback by default, --recommender_port; HTTPS with --ssl_config_file):
  POST /recommend {"user_id", "context": {...}, "k"} -> {"items": [{"item_id", "score", "channels"}]}
  POST /ingest    {"user_id", "item_id", "event"?, "profile"?} -> {"history_changed": bool}
  GET  /healthz   liveness: 200 while the process answers (index versions, counters, pid)
  GET  /readyz    readiness: 200 {"ready": true, "checks"}, or 503 naming what is wrong
                  (store unreachable or lost its state, a model without a loaded
                  version, a missing index)
Errors are JSON {"error": ...}: 400 bad request (k, ids, context, profile, unknown
item), 401 bad token (--auth_token_file), 411 / 413 / 408 body rules and timeouts
(serving.httpd), 503 store or model server unavailable, 500 an incompatible model
or an internal error.

python -m serving.serve --reseed_only --redis_url ... re-seeds a Redis store that lost
its state from the tables, and exits.
"""

from __future__ import annotations

import argparse
import glob
import hmac
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import grpc

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from feature_contract import dataset as dataset_file  # noqa: E402
from feature_contract import feature_config as fc  # noqa: E402
from serving import model_server  # noqa: E402
from serving.balance import BalancedHTTPServer, ConnectionCounts, shared_listener  # noqa: E402
from serving.catalogue import (  # noqa: E402
    ItemCatalogue, read_item_frequencies, read_recent_clicks, read_user_profiles)
from serving.blend import BLEND_FILE, Blend, merge_order  # noqa: E402
from serving.client import ModelServerClient  # noqa: E402
from serving.httpd import (HardenedHTTPServer, HttpError, HttpLimits,  # noqa: E402
                           JsonRequestHandler, log_once)
from serving.indexes import IndexSet, set_search_threads  # noqa: E402
from serving.recommender import ModelIncompatible, Recommender, RecommenderSettings  # noqa: E402
from serving.request_checks import BadRequest, RequestRules  # noqa: E402
from serving.servables import list_versions  # noqa: E402
from serving import serving_dirs  # noqa: E402
from serving.store import StoreUnavailable, make_store  # noqa: E402
from serving.lifecycle import freeze_heap, termination_event, wait_for_termination  # noqa: E402

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 1 << 20


# Model server statuses that say "not now" (retry may succeed): 503; any other is a 500.
_RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
              grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.NOT_FOUND,
              grpc.StatusCode.CANCELLED}


RECOMMENDER_LIMITS = HttpLimits(max_body_bytes=MAX_BODY_BYTES)


def make_handler(recommender: Recommender, limits: HttpLimits = RECOMMENDER_LIMITS,
                 token: str | None = None) -> type[JsonRequestHandler]:
    """The recommender's HTTP API (see the module docstring); every request gets an answer.

    Args:
      recommender: what answers.
      limits: timeouts, connection cap and body limit (serving.httpd).
      token: when set, POSTs need `Authorization: Bearer <token>` (401
        otherwise); /healthz and /readyz stay open for probes.
    """
    expected = f"Bearer {token}".encode() if token else None

    class Handler(JsonRequestHandler):
        def get(self):
            path = self.path.split("?", 1)[0]
            if path == "/healthz":  # liveness: the process answers
                self.send_json(200, {"alive": True, "indexes": recommender.indexes.versions(),
                                     "stats": dict(recommender.stats), "pid": os.getpid()})
            elif path == "/readyz":  # readiness: requests can be served as intended
                ready, checks = recommender.readiness()
                self.send_json(200 if ready else 503, {"ready": ready, "checks": checks,
                                                       "pid": os.getpid()})
            else:
                raise HttpError(404, f"no route GET {self.path[:200]}")

        def post(self):
            if expected is not None and not hmac.compare_digest(
                    self.headers.get("Authorization", "").encode(), expected):
                recommender.stats["unauthorized"] += 1
                raise HttpError(401, "missing or wrong bearer token", close=True)
            body = self.read_json()
            if not isinstance(body, dict):
                raise HttpError(400, "body must be a JSON object")
            try:
                if self.path == "/recommend":
                    items = recommender.recommend(body.get("user_id"), body.get("context"),
                                                  body.get("k", 10))
                    self.send_json(200, {"items": [{"item_id": r.item_id, "score": r.score,
                                                    "channels": list(r.channels)} for r in items]})
                elif self.path == "/ingest":
                    self.send_json(200, {"history_changed": recommender.ingest(body)})
                else:
                    raise HttpError(404, f"no route POST {self.path[:200]}")
            except BadRequest as err:
                recommender.stats["bad_requests"] += 1
                raise HttpError(400, str(err)) from err

        def send_json(self, status, payload, headers=None, content_type="application/json"):
            if status == 401:
                headers = {**(headers or {}), "WWW-Authenticate": "Bearer"}
            super().send_json(status, payload, headers, content_type)

        def internal_error(self, err: Exception) -> tuple[int, str]:
            if isinstance(err, StoreUnavailable):
                recommender.stats["store_unavailable"] += 1
                return 503, f"store unavailable: {err}"
            if isinstance(err, grpc.RpcError):
                recommender.stats["model_server_errors"] += 1
                code = err.code()
                return (503 if code in _RETRYABLE else 500,
                        f"model server: {code.name}: {err.details()}")
            if isinstance(err, ModelIncompatible):
                recommender.stats["model_incompatible"] += 1
                log_once("a served model is incompatible", err)
                return 500, f"model incompatible: {err}"
            recommender.stats["internal_errors"] += 1
            return super().internal_error(err)

    Handler.limits = limits
    return Handler


class RecommenderHTTPServer:
    """The recommender's HTTP API on a HardenedHTTPServer; port 0 picks a free port.

    With `listen_fd` and `counts` (a `serve --workers` worker), it serves on
    the supervisor's shared listening socket and accepts only while it is the
    least loaded worker (serving.balance); host and port are then ignored.

    Args:
      recommender, host, port, listen_fd, counts: as above.
      limits: timeouts, connection cap and body limit (serving.httpd).
      ssl_context: HTTPS when given.
      token: shared bearer token required on POSTs (make_handler).
    """

    def __init__(self, recommender: Recommender, host: str = "127.0.0.1", port: int = 8600,
                 listen_fd: int | None = None, counts: ConnectionCounts | None = None,
                 limits: HttpLimits = RECOMMENDER_LIMITS,
                 ssl_context: Any = None, token: str | None = None):
        handler = make_handler(recommender, limits, token)
        if listen_fd is not None and counts is not None:
            self._server = BalancedHTTPServer(listen_fd, counts, handler, ssl_context)
            serve = self._server.serve_balanced
        else:
            self._server = HardenedHTTPServer((host, port), handler, ssl_context=ssl_context)
            serve = self._server.serve_forever
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=serve, name="recommender-http", daemon=True)

    @property
    def refused(self) -> int:
        """Connections answered 503 because every connection slot was taken."""
        return self._server.refused

    def start(self) -> int:
        self._thread.start()
        return self.port

    def stop(self) -> None:
        if isinstance(self._server, BalancedHTTPServer):
            self._server.stop_accepting()
            self._thread.join(timeout=5)
        else:
            self._server.shutdown()
        self._server.server_close()


def _first_existing(*paths: str) -> str | None:
    return next((p for p in paths if p and os.path.exists(p)), None)


_TABLE_EXTENSIONS = ("jsonl.gz", "jsonl", "csv.gz", "csv")


def infer_dataset(work_dir: str, known: Sequence[str] = ("synthetic", "movielens")) -> str:
    """The built-in dataset whose raw dir under <work_dir>/raw is newest (synthetic if none)."""
    raw = os.path.join(work_dir, "raw")
    dirs = [d for d in glob.glob(os.path.join(raw, "*")) if os.path.isdir(d)
            and any(os.path.basename(d).startswith(k) for k in known)]
    if not dirs:
        return "synthetic"
    newest = os.path.basename(max(dirs, key=os.path.getmtime))
    return next(k for k in known if newest.startswith(k))


def find_inputs(serving_dir: str, work_dir: str, data: str,
                tables: Mapping[str, str | None] | None = None) -> dict[str, Any]:
    """Items / users / events tables and item_frequencies.tsv for serving.

    Looks in serving_dir first (a deployment copies them there), then, for a
    dataset YAML, its `data:` globs (`tables`: table -> glob or None; every
    file a glob matches, sorted, is one table), else where `make run` leaves
    a built-in dataset's: the raw tables in <work_dir>/raw/<data>*/; and the
    newest item_frequencies.tsv of the pipeline's catalogue under
    <work_dir>/tfx/. Returns name -> path, list of paths, or None.

    Raises:
      SystemExit: a YAML's glob names a remote filesystem (serving reads
        local files: copy the tables into serving_dir) or matches no file.
    """
    def newest(patterns: list[str]) -> str | None:
        found = [p for pat in patterns for p in glob.glob(pat, recursive=True)]
        return max(found, key=os.path.getmtime) if found else None

    def matched(table: str) -> list[str] | None:
        pattern = (tables or {}).get(table)
        if pattern is None:
            return None
        if dataset_file.is_url(pattern):
            raise SystemExit(f"{table} table {pattern!r}: serving reads local files; copy the "
                             f"table into {serving_dir} as {table}.jsonl[.gz] / .csv[.gz]")
        # The job's own matching (Beam's FileSystems: `**` crosses folders), so
        # serving reads the very files the models were trained from.
        from beam_jobs import raw_io
        try:
            return raw_io.check_table_matches(table, pattern)
        except raw_io.RawTableError as err:
            raise SystemExit(str(err)) from None

    out: dict[str, Any] = {}
    for table in ("items", "users", "events"):
        out[table] = _first_existing(*(os.path.join(serving_dir, f"{table}.{e}")
                                       for e in _TABLE_EXTENSIONS))
        if out[table] is None:
            out[table] = matched(table) if tables is not None else newest(
                [os.path.join(work_dir, "raw", f"{data}*", f"{table}.{e}")
                 for e in _TABLE_EXTENSIONS])
    out["item_frequencies"] = _first_existing(os.path.join(serving_dir, "item_frequencies.tsv")) \
        or newest([p for p in glob.glob(os.path.join(work_dir, "tfx", "**",
                                                      "item_frequencies.tsv"), recursive=True)
                   if _counted_from(p) in (None, data)])
    return out


def _counted_from(frequencies: str) -> str | None:
    """The dataset a pipeline's item_frequencies.tsv was counted from, None when unknown.

    It sits in ClickLogExampleGen's catalogue (<component>/catalogue/<execution>/);
    the same execution's summary (<component>/summary/<execution>/summary.json)
    names the feature config. Several datasets' runs share <work_dir>/tfx, so
    the newest file may be another dataset's.
    """
    execution = os.path.dirname(frequencies)
    summary = os.path.join(os.path.dirname(os.path.dirname(execution)), "summary",
                           os.path.basename(execution), "summary.json")
    try:
        with open(summary, encoding="utf-8") as f:
            return json.load(f).get("config")
    except (OSError, ValueError, AttributeError):
        return None


def _write_json(path: str, payload: dict) -> None:
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(payload, f)
    os.replace(path + ".tmp", path)


def seed_store(store, found: dict[str, str | None], config: fc.FeatureConfig,
               seed_clicks: bool = True) -> dict[str, Any]:
    """User profiles (users table) and recent clicks (events table) into the store.

    Ends by writing the store's seed marker (store.mark_seeded): readiness
    reports a store without it, i.e. one that lost what was seeded.

    Returns:
      The marker: {"at", "users", "click_users", "users_table", "events_table"}.
    """
    info: dict[str, Any] = {"at": time.time(), "users": 0, "click_users": 0,
                            "users_table": found["users"], "events_table": None}
    if found["users"]:
        profiles = read_user_profiles(found["users"], config)
        store.put_profiles(profiles)
        info["users"] = len(profiles)
    if found["events"] and seed_clicks:
        clicks, bad = read_recent_clicks(found["events"], config, store.max_clicks)
        for user, items in clicks.items():
            store.set_clicks(user, items)
        info.update(click_users=len(clicks), events_table=found["events"])
        log.info("seeded recent clicks of %d users from %s (%d unusable click rows)",
                 len(clicks), found["events"], bad)
    store.mark_seeded(info)
    return info


def read_token(path: str | None) -> str | None:
    """The shared token of --auth_token_file (surrounding whitespace dropped), None without one.

    Raises:
      SystemExit: the file is unreadable or empty.
    """
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except OSError as err:
        raise SystemExit(f"cannot read --auth_token_file {path}: {err}") from err
    if not token:
        raise SystemExit(f"--auth_token_file {path} is empty")
    return token


def model_server_tls(args: argparse.Namespace, embedded) -> dict[str, Any]:
    """ModelServerClient TLS arguments: from --model_server_ca_file, else (for the embedded
    server with --ssl_config_file) its own certificate; {} for a plain channel."""
    if args.model_server_ca_file:
        with open(args.model_server_ca_file, "rb") as f:
            root = f.read()
    elif embedded is not None:
        root = embedded.server_cert
    else:
        return {}
    return {"root_certificates": root, "tls_server_name": args.model_server_tls_name}


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def worker_thread_share(workers: int, cpus: int | None = None) -> int:
    """Threads of each TensorFlow pool in each of `workers` processes: its share of the cores.

    A worker left at TensorFlow's default sizes its op pools to every core, so
    N workers run N x cores pool threads that spin-wait between ops and
    preempt each other (measured on the 2-core dev box, 2 workers at
    concurrency 8: the share used 3-17% less CPU per recommend).
    """
    return max(1, (cpus or os.cpu_count() or 1) // max(1, workers))


def worker_thread_flags(args: argparse.Namespace, cpus: int | None = None) -> list[str]:
    """TensorFlow thread flags for each worker (worker_thread_share); flags the caller set are kept."""
    share = str(worker_thread_share(args.workers, cpus))
    flags = []
    if not args.tensorflow_intra_op_parallelism:
        flags += ["--tensorflow_intra_op_parallelism", share]
    if not args.tensorflow_inter_op_parallelism:
        flags += ["--tensorflow_inter_op_parallelism", share]
    return flags


def run_workers(args: argparse.Namespace, argv: list[str]) -> None:
    """Supervises `args.workers` serving processes on shared ports.

    Every worker binds the same gRPC and REST ports with SO_REUSEPORT (the
    kernel hashes connections over them), accepts recommender connections from
    one listening socket this process opens, evenly (serving.balance), and runs its own
    embedded model server (or reaches --model_server) on the shared Redis
    store, which this process has already seeded. Ready (the ready file is
    written) once every worker is; SIGTERM stops them all; if one dies, the
    others are stopped and this process exits non-zero, for the supervisor
    above (systemd, Kubernetes) to restart the group. Each worker's TensorFlow
    pools get its share of the cores (worker_thread_flags).
    """
    grpc_port = args.port or _free_port(args.host)
    try:
        listener = shared_listener(args.host, args.recommender_port)
    except OSError as err:
        raise SystemExit(f"cannot listen on {args.host}:{args.recommender_port} for the "
                         f"recommender: {err}") from err
    ready_dir = tempfile.mkdtemp(prefix="serve-workers-")
    counts = ConnectionCounts.create(os.path.join(ready_dir, "connections"), args.workers)
    overrides = ["--workers", "1", "--worker", "--port", str(grpc_port),
                 "--listen_fd", str(listener.fileno()), "--balance_file", counts,
                 *worker_thread_flags(args)]
    children = []
    for i in range(args.workers):
        ready = os.path.join(ready_dir, f"worker-{i}.json")
        children.append((subprocess.Popen([sys.executable, "-m", "serving.serve", *argv,
                                           *overrides, "--worker_index", str(i),
                                           "--ready_file", ready],
                                          pass_fds=(listener.fileno(),)), ready))
    done = termination_event()
    failed, announced = None, False
    try:
        while failed is None and not done.is_set():
            failed = next((c for c, _ in children if c.poll() is not None), None)
            if not announced and failed is None and all(os.path.exists(r) for _, r in children):
                with open(children[0][1], encoding="utf-8") as f:
                    info = json.load(f)  # the ports are the same for every worker
                log.info("%d workers serving: recommender port %d, model server %s",
                         len(children), info["recommender_port"], info["model_server"])
                if args.ready_file:
                    _write_json(args.ready_file, {**info, "pids": [c.pid for c, _ in children]})
                announced = True
            done.wait(0.2)
    finally:
        for child, _ in children:
            if child.poll() is None:
                child.terminate()
        for child, _ in children:
            child.wait()
        listener.close()
        shutil.rmtree(ready_dir, ignore_errors=True)
    if failed is not None:
        raise SystemExit(f"worker pid {failed.pid} exited with {failed.returncode}; "
                         "stopped the others")


# No blend and no ranker to order by (a recall-only run whose blend was not
# published): the merged candidates as they come, and nothing waits on a ranker.
MERGE_ORDER = merge_order("no blend.json and no ranking model pushed")


def _dataset_name(data: str) -> str:
    if dataset_file.is_dataset_file(data):
        return dataset_file.load(data).name
    return fc.load(fc.builtin_config_path(data)).name


def pick_serving_dir(serving_dir: str, data: str | None, explicit: bool = False
                     ) -> tuple[str, str | None]:
    """The serving dir and --data to serve (serving.serving_dirs).

    With no --data, the dataset the serving dir is stamped with (its run's
    --data). With --data, that dataset's serving dir: serving_dir itself, or
    the one parked beside it while another dataset's run used the work dir
    (not for an explicit --serving_dir, which must be that dataset's).

    Returns:
      (serving dir, data), data None when neither the flag nor a stamp names it.
    Raises:
      SystemExit: the dataset has no serving dir here; the message says which
        dataset is served and how to serve the asked one.
    """
    try:
        stamp = serving_dirs.read_stamp(serving_dir)
        if data is None:
            if stamp is None:
                return serving_dir, None
            if dataset_file.is_dataset_file(stamp.data) and not os.path.exists(stamp.data):
                raise SystemExit(f"error: {serving_dir} serves {stamp.dataset!r}, run with --data "
                                 f"{stamp.data}, which no longer exists: pass --data")
            log.info("serving %r (the dataset %s is stamped with)", stamp.data, serving_dir)
            return serving_dir, stamp.data
        name = _dataset_name(data)
        found = serving_dirs.find(serving_dir, name)
    except (fc.FeatureConfigError, serving_dirs.ServingDirError) as err:
        raise SystemExit(f"error: {err}") from None
    if found == serving_dir:
        return serving_dir, data
    if found is None:
        raise SystemExit(
            f"error: {serving_dir} serves {stamp.dataset!r}, not {name!r}, and no serving dir "
            f"of {name!r} is kept beside it ({serving_dirs.parked(serving_dir, name)}): run the "
            f"pipeline on {data} first (make run DATA={data})")
    if explicit:
        raise SystemExit(f"error: --serving_dir {serving_dir} serves {stamp.dataset!r}, not "
                         f"{name!r}; the serving dir of {name!r} is {found}")
    log.info("serving %r from %s (%s holds %r's models)", name, found, serving_dir,
             stamp.dataset)
    return found, data


def no_models_message(serving_dir: str, in_place: str) -> str:
    """Why serve cannot start on a serving dir without pushed models, and what to do.

    A run that pushed nothing (its gates or data checks refused every model)
    still publishes its report there: the message points at it rather than
    at `make run`, which the user has just run.
    """
    models_root = os.path.join(serving_dir, "models")
    reports = sorted(glob.glob(os.path.join(serving_dir, "reports", "*", "report.md")),
                     key=os.path.getmtime)
    if reports:
        text = (f"no pushed models under {models_root}: the last run pushed none (its gates or "
                f"data checks refused them; see 'Pushed' and 'Data checks' in {reports[-1]})")
    else:
        text = (f"no pushed models under {models_root}: run `make run` first (or `make "
                "bench-serving`, which builds small demo models)")
    aside = sorted(glob.glob(glob.escape(os.path.normpath(in_place)) + ".*" + os.sep))
    if aside:
        text += (f"; other datasets' serving dirs kept aside: "
                 f"{', '.join(a.rstrip(os.sep) for a in aside)} (--data <dataset>)")
    return text


def read_blend(path: str | None, serving_dir: str, ranker_pushed: bool = True) -> Blend | None:
    """The blend to rank with: `path`, else <serving_dir>/blend.json if present, else None
    (the ranker's click score alone), or MERGE_ORDER when no ranker was pushed either.

    Raises:
      ValueError: a named file is missing, or a blend file is not a blend.
    """
    if path is None:
        path = os.path.join(serving_dir, BLEND_FILE)
        if not os.path.exists(path):
            if not ranker_pushed:
                log.info("no %s and no ranking model pushed: the final list is in merge order",
                         path)
                return MERGE_ORDER
            log.info("no %s: ranking by the ranker's click score alone", path)
            return None
    elif not os.path.exists(path):
        raise ValueError(f"--blend {path}: no such file")
    blend = Blend.read(path)
    log.info("final list ranked by the blend in %s: %s", path, dict(blend.weights))
    return blend


def ranker_pushed(args: argparse.Namespace, models_root: str) -> bool:
    """Whether a ranking model may be served: always with a remote --model_server (its
    models are not ours to list), else when <models_root>/<ranking model> holds a complete
    version (servables.list_versions: what the embedded model server would load)."""
    return bool(args.model_server) or bool(
        list_versions(os.path.join(models_root, args.ranking_model)))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="model server + recommender HTTP API")
    model_server.add_flags(parser)
    parser.add_argument("--work_dir", default="work")
    parser.add_argument("--serving_dir", default=None, help="default <work_dir>/serving")
    parser.add_argument("--data", default=None,
                        help="a built-in dataset name or your dataset YAML (its feature config, "
                             "and its tables read where its data: globs point); default: the "
                             "--data of the run that pushed to the serving dir (its "
                             "dataset.json), else the built-in dataset most recently prepared "
                             "under <work_dir>/raw, else synthetic")
    parser.add_argument("--feature_config", default=None)
    parser.add_argument("--model_server", default=None,
                        help="host:port of a running model server (e.g. TF Serving); "
                             "default: start the embedded one")
    parser.add_argument("--recommender_port", type=int, default=8600)
    parser.add_argument("--transport", choices=("in_process", "grpc"), default="in_process",
                        help="how the recommender reaches the EMBEDDED model server: in_process "
                             "calls its servicers directly (same protos, codes and metrics, no "
                             "loopback hop); grpc goes over the loopback port like any client. "
                             "With --model_server it is always gRPC")
    parser.add_argument("--redis_url", default=None)
    parser.add_argument("--no_seed_clicks", action="store_true",
                        help="do not seed recent clicks from the events table (a store fed "
                             "by the click stream, e.g. a shared Redis, already has them)")
    parser.add_argument("--index_poll_seconds", type=float, default=2.0)
    parser.add_argument("--ranking_model", default="ranking")
    parser.add_argument("--follow_weight", type=float, default=0.0,
                        help="score = click + w * follow (with --ranking_model ranking_multitask)")
    parser.add_argument("--num_candidates", type=int, default=500)
    parser.add_argument("--blend", default=None,
                        help="final-list blend weights (serving.blend JSON; default "
                             f"<serving_dir>/{BLEND_FILE} when it exists, else the ranker's "
                             "click score alone)")
    parser.add_argument("--faiss_omp_threads", type=int, default=1,
                        help="OpenMP threads of a FAISS search (0 = FAISS's default). One query "
                             "per search gains nothing from a thread team, and request threads "
                             "already run searches side by side")
    parser.add_argument("--ready_file", default=None,
                        help="written with the bound ports once serving (for scripts)")
    parser.add_argument("--max_k", type=int, default=RequestRules().max_k,
                        help="largest k a /recommend may ask for (400 above)")
    parser.add_argument("--auth_token_file", default=None,
                        help="file holding a shared token: POST /recommend and /ingest then need "
                             "`Authorization: Bearer <token>` (401 otherwise); probes stay open")
    parser.add_argument("--model_server_ca_file", default=None,
                        help="PEM CA of a TLS model server (--model_server, or the embedded one "
                             "with --transport grpc; default there: its own certificate)")
    parser.add_argument("--model_server_tls_name", default=None,
                        help="name the model server's certificate is checked against, when it "
                             "is not the host of the address")
    parser.add_argument("--reseed_only", action="store_true",
                        help="seed the --redis_url store from the users and events tables (as at "
                             "start-up) and exit: restores a store that lost its state; clicks "
                             "and profiles ingested since the tables were written are not in them")
    parser.add_argument("--workers", type=int, default=1,
                        help="serving processes sharing the ports (gRPC and REST with SO_REUSEPORT; "
                             "recommender connections spread evenly), each with its own "
                             "embedded model server: one Python process does not fill two "
                             "cores. Needs --redis_url, the store all workers share. Unless the "
                             "--tensorflow_*_parallelism flags are set, each worker's TensorFlow "
                             "pools get cores / workers threads")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker_index", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--listen_fd", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--balance_file", default=None, help=argparse.SUPPRESS)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.workers < 1:
        raise SystemExit(f"--workers must be >= 1, got {args.workers}")
    if args.workers > 1 and not args.redis_url:
        raise SystemExit("--workers > 1 needs --redis_url: an ingest answered by one worker "
                         "must reach the next recommend, whichever worker answers it")

    if args.faiss_omp_threads:
        set_search_threads(args.faiss_omp_threads)
    in_place = args.serving_dir or os.path.join(args.work_dir, "serving")
    serving_dir, args.data = pick_serving_dir(in_place, args.data,
                                              explicit=bool(args.serving_dir))
    # Held while serving: no run on another dataset moves the dir from under
    # the pollers (serving.serving_dirs); released when the process ends.
    try:
        serving_hold = serving_dirs.hold(in_place)  # noqa: F841 - kept open on purpose
    except serving_dirs.ServingDirError as err:
        raise SystemExit(f"error: {err}") from None
    models_root = os.path.join(serving_dir, "models")
    if not os.path.isdir(models_root) or not os.listdir(models_root):
        raise SystemExit(no_models_message(serving_dir, in_place))
    dataset = None
    if args.data and dataset_file.is_dataset_file(args.data):
        # A dataset YAML: its feature config, and its tables where its globs say.
        try:
            dataset = dataset_file.load(args.data)
        except fc.FeatureConfigError as err:  # DatasetError too; the message names the file
            raise SystemExit(f"error: {err}") from None
    explicit = _first_existing(args.feature_config or "")
    if explicit:
        config = fc.load(explicit)
    elif dataset is not None:
        config = dataset.config
    else:
        config = fc.load(_first_existing(os.path.join(serving_dir, "feature_config.yaml"))
                         or fc.builtin_config_path(args.data or infer_dataset(args.work_dir)))
    found = find_inputs(serving_dir, args.work_dir, config.name,
                        dict(dataset.tables) if dataset is not None else None)
    log.info("serving inputs: %s", found)
    if found["items"] is None:
        raise SystemExit(f"no items table (items.jsonl[.gz] / items.csv[.gz]) in {serving_dir} "
                         f"or {args.work_dir}/raw/{config.name}*/; for your own dataset pass "
                         "its YAML: --data mine.yaml (make serve DATA=mine.yaml)")
    history = config.history_feature
    if args.reseed_only and not args.redis_url:
        raise SystemExit("--reseed_only needs --redis_url (the in-process store lives and dies "
                         "with its server)")
    try:
        store = make_store(args.redis_url, history.max_len if history else config.history_max_len)
    except StoreUnavailable as err:
        raise SystemExit(f"cannot reach the user store: {err}") from err
    if not args.worker:  # a supervisor seeds the shared store once, before its workers start
        info = seed_store(store, found, config, seed_clicks=not args.no_seed_clicks)
        if args.reseed_only:
            log.info("re-seeded %s: %s", store.where, info)
            return
    if args.workers > 1:
        run_workers(args, argv)
        return
    if found["item_frequencies"] is None:
        log.warning("no item_frequencies.tsv: cold-start popularity falls back to catalogue order")
    catalogue = ItemCatalogue.from_table(
        found["items"], config,
        read_item_frequencies(found["item_frequencies"]) if found["item_frequencies"] else None)

    server = manager = None
    target = args.model_server
    if target is None:
        if args.model_base_path_prefix is None:
            args.model_base_path_prefix = models_root
        server, manager = model_server.build_server(args)
        grpc_port, rest_port = server.start(args.host, args.port, args.rest_api_port or None,
                                            reuse_port=args.worker)
        manager.start(args.file_system_poll_wait_seconds)
        target = f"{args.host}:{grpc_port}"
        log.info("model server: gRPC %s, REST %s", target, rest_port)
    tls = model_server.ssl_config(args)
    if server is not None and args.transport == "in_process":
        client = ModelServerClient.from_stub(model_server.InProcessStub(server.core))
    else:
        client = ModelServerClient(target, **model_server_tls(args, tls if server else None))
        client.wait_ready(30)
    indexes = IndexSet(os.path.join(serving_dir, "indexes"),
                       [c.name for c in RecommenderSettings().channels])
    indexes.start(args.index_poll_seconds)
    settings = RecommenderSettings(ranking_model=args.ranking_model,
                                   num_candidates=args.num_candidates,
                                   follow_weight=args.follow_weight,
                                   rules=RequestRules(max_k=args.max_k),
                                   blend=read_blend(args.blend, serving_dir, ranker_pushed(
                                       args, models_root)))
    recommender = Recommender(config, client, store, indexes, catalogue, settings)
    counts = (ConnectionCounts(args.balance_file, args.worker_index)
              if args.worker and args.balance_file else None)
    http = RecommenderHTTPServer(recommender, args.host, args.recommender_port,
                                 listen_fd=args.listen_fd if counts else None, counts=counts,
                                 limits=model_server.http_limits(args, MAX_BODY_BYTES),
                                 ssl_context=tls.http_context() if tls else None,
                                 token=read_token(args.auth_token_file))
    port = http.start()
    log.info("recommender on http://%s:%d (indexes %s)", args.host, port, indexes.versions())
    if args.ready_file:
        _write_json(args.ready_file, {"model_server": target, "recommender_port": port,
                                      "rest_api_port": server.rest_port if server else None,
                                      "pids": [os.getpid()]})
    freeze_heap()
    wait_for_termination()
    http.stop()
    indexes.stop()
    client.close()
    if server is not None:
        manager.stop()
        server.stop()


if __name__ == "__main__":
    main()
