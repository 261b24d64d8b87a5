"""`python -m serving.serve` as `make serve` runs it: start, answer, stop on SIGTERM."""
import argparse
import gzip
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from .conftest import REPO


def _post(port: int, path: str, body: dict) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                     data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _serve(world, tmp_path, *flags: str) -> tuple[subprocess.Popen, str]:
    serving_dir = tmp_path / "serving"
    shutil.copytree(world["root"], serving_dir)
    ready = tmp_path / "ready.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving.serve", "--serving_dir", str(serving_dir),
         "--data", "synthetic", "--port", "0", "--rest_api_port", "0", "--recommender_port", "0",
         "--ready_file", str(ready), *flags],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, ready


def _wait_ready(proc: subprocess.Popen, ready, timeout_s: float = 180) -> dict:
    """The ready file's content once serve writes it; fails with serve's output if it dies."""
    deadline = time.time() + timeout_s
    while not ready.exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "serve did not become ready"
        time.sleep(0.2)
    return json.loads(ready.read_text())


@pytest.mark.parametrize("transport", ["in_process", "grpc"])
def test_serve_answers_recommend_and_stops_cleanly(world, tmp_path, transport):
    proc, ready = _serve(world, tmp_path, "--transport", transport)
    try:
        info = _wait_ready(proc, ready)
        port = info["recommender_port"]
        items = _post(port, "/recommend", {"user_id": "u1", "k": 7})["items"]
        assert len(items) == 7 and all(i["channels"] for i in items)
        assert _post(port, "/ingest", {"user_id": "u1", "item_id": items[0]["item_id"]}) == \
            {"history_changed": True}
        after = _post(port, "/recommend", {"user_id": "u1", "k": 7})["items"]
        assert items[0]["item_id"] not in {i["item_id"] for i in after}  # seen now
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as response:
            health = json.loads(response.read())
        assert set(health["indexes"]) == {"two_tower", "youtubenet", "item2vec"}
        assert health["stats"]["requests"] == 2
    finally:
        proc.terminate()
        output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, output


def _own_dataset(world, tmp_path) -> str:
    """The toy world's tables moved out of the serving dir into a dataset YAML's layout:
    items in two parts, users renamed, clicks of u1 in two CSV event files."""
    data = tmp_path / "mydata"
    (data / "catalog").mkdir(parents=True)
    (data / "logs").mkdir()
    serving_dir = tmp_path / "serving"
    with gzip.open(serving_dir / "items.jsonl.gz", "rt") as f:
        items = f.readlines()
    for part, rows in enumerate((items[:150], items[150:])):
        with gzip.open(data / "catalog" / f"part-{part}.jsonl.gz", "wt") as f:
            f.writelines(rows)
    os.remove(serving_dir / "items.jsonl.gz")
    shutil.move(serving_dir / "users.jsonl.gz", data / "members.jsonl.gz")
    for part, items_clicked in enumerate((range(0, 5), range(5, 10))):
        with open(data / "logs" / f"events-{part}.csv", "w") as f:
            f.write("timestamp,user_id,item_id,event\n")
            f.writelines(f"{1000 + 10 * part + i},u1,i{i},click\n" for i in items_clicked)
    with open(os.path.join(REPO, "feature_contract", "configs", "synthetic.yaml")) as f:
        text = f.read()
    yaml_path = data / "mine.yaml"
    yaml_path.write_text(text + "data:\n  events: logs/events-*.csv\n"
                                "  users: members.jsonl.gz\n  items: catalog/part-*.jsonl.gz\n")
    return str(yaml_path)


def test_serve_reads_a_dataset_yamls_tables_where_its_globs_point(world, tmp_path):
    serving_dir = tmp_path / "serving"
    shutil.copytree(world["root"], serving_dir)
    yaml_path = _own_dataset(world, tmp_path)
    ready = tmp_path / "ready.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving.serve", "--serving_dir", str(serving_dir),
         "--data", yaml_path, "--port", "0", "--rest_api_port", "0",
         "--recommender_port", "0", "--ready_file", str(ready)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        port = _wait_ready(proc, ready)["recommender_port"]
        items = _post(port, "/recommend", {"user_id": "u1", "k": 200})["items"]
        assert len(items) == 200
        # u1's clicks in both event files were seeded, so none of them is served again.
        assert not {i["item_id"] for i in items} & {f"i{i}" for i in range(10)}
        # Items from both catalogue parts are served.
        rows = {int(i["item_id"][1:]) for i in items}
        assert min(rows) < 150 <= max(rows)
    finally:
        proc.terminate()
        output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, output
    assert "seeded recent clicks of 1 users from ['" in output, output


def test_serve_names_a_dataset_glob_that_matches_nothing(world, tmp_path):
    serving_dir = tmp_path / "serving"
    shutil.copytree(world["root"], serving_dir)
    yaml_path = _own_dataset(world, tmp_path)
    shutil.rmtree(tmp_path / "mydata" / "catalog")
    done = subprocess.run(
        [sys.executable, "-m", "serving.serve", "--serving_dir", str(serving_dir),
         "--data", yaml_path], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    pattern = str(tmp_path / "mydata" / "catalog" / "part-*.jsonl.gz")
    assert done.stderr.strip().splitlines()[-1] == f"items table: no file matches {pattern!r}"


def test_workers_share_the_port_and_the_redis_store(world, tmp_path, redis_url):
    proc, ready = _serve(world, tmp_path, "--workers", "2", "--redis_url", redis_url)
    try:
        info = _wait_ready(proc, ready, timeout_s=240)
        assert len(info["pids"]) == 2 and proc.pid not in info["pids"]
        port = info["recommender_port"]
        # Each urllib call is a new connection: the kernel may hand it to either worker.
        first = _post(port, "/recommend", {"user_id": "u2", "k": 5})["items"]
        for _ in range(3):
            _post(port, "/ingest", {"user_id": "u2", "item_id": first[0]["item_id"]})
            later = _post(port, "/recommend", {"user_id": "u2", "k": 5})["items"]
            assert first[0]["item_id"] not in {i["item_id"] for i in later}
        from serving.client import ModelServerClient
        with ModelServerClient(info["model_server"]) as client:
            assert client.available_versions("ranking") == [1]
        # Keep-alive connections, opened one after another, alternate between
        # the workers (SO_REUSEPORT would hash them, possibly all onto one).
        connections = [http.client.HTTPConnection("127.0.0.1", port, timeout=30) for _ in range(4)]
        pids = []
        for conn in connections:
            conn.request("GET", "/healthz")
            pids.append(json.loads(conn.getresponse().read())["pid"])
        assert sorted(pids.count(pid) for pid in info["pids"]) == [2, 2]
        for conn in connections:
            conn.close()
    finally:
        proc.terminate()
        output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, output
    assert not any(os.path.exists(f"/proc/{pid}") for pid in info["pids"])  # stopped and reaped


def test_a_dying_worker_stops_the_group_with_an_error(world, tmp_path, redis_url):
    proc, ready = _serve(world, tmp_path, "--workers", "2", "--redis_url", redis_url)
    try:
        info = _wait_ready(proc, ready, timeout_s=240)
        os.kill(info["pids"][0], signal.SIGKILL)
        output = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0
    assert f"worker pid {info['pids'][0]} exited with -9; stopped the others" in output
    assert not os.path.exists(f"/proc/{info['pids'][1]}")


def test_workers_without_a_shared_store_is_a_clear_error(world, tmp_path):
    proc, _ = _serve(world, tmp_path, "--workers", "2")
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode != 0 and "--workers > 1 needs --redis_url" in output


def test_each_worker_gets_its_share_of_the_cores():
    from serving import serve
    parser = argparse.ArgumentParser()
    serve.model_server.add_flags(parser)
    parser.add_argument("--workers", type=int)
    default = parser.parse_args(["--workers", "2"])
    assert serve.worker_thread_flags(default, cpus=2) == [
        "--tensorflow_intra_op_parallelism", "1", "--tensorflow_inter_op_parallelism", "1"]
    assert serve.worker_thread_flags(default, cpus=8)[1::2] == ["4", "4"]
    assert serve.worker_thread_flags(parser.parse_args(["--workers", "4"]), cpus=2)[1::2] == ["1", "1"]
    chosen = parser.parse_args(["--workers", "2", "--tensorflow_intra_op_parallelism", "3"])
    assert serve.worker_thread_flags(chosen, cpus=8) == ["--tensorflow_inter_op_parallelism", "4"]


def test_workers_on_a_recommender_port_in_use_is_a_clear_error(world, tmp_path, redis_url):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        proc, _ = _serve(world, tmp_path, "--workers", "2", "--redis_url", redis_url,
                         "--recommender_port", str(port))
        output = proc.communicate(timeout=120)[0]
    assert proc.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port} for the recommender" in output


def test_serve_without_data_serves_what_the_serving_dirs_stamp_names(world, tmp_path):
    """After `make run DATA=mine.yaml`, a plain `make serve` serves mine.yaml (its config and
    tables, none of which are in the serving dir) because the run stamped the dir."""
    from serving import serving_dirs
    work = tmp_path / "work"
    serving_dir = tmp_path / "serving"  # _own_dataset's layout; moved under the work dir
    shutil.copytree(world["root"], serving_dir)
    yaml_path = _own_dataset(world, tmp_path)
    work.mkdir()
    shutil.move(serving_dir, work / "serving")
    serving_dirs.write_stamp(str(work / "serving"), serving_dirs.Stamp("synthetic", yaml_path))
    ready = tmp_path / "ready.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving.serve", "--work_dir", str(work), "--port", "0",
         "--rest_api_port", "0", "--recommender_port", "0", "--ready_file", str(ready)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        port = _wait_ready(proc, ready)["recommender_port"]
        items = _post(port, "/recommend", {"user_id": "u1", "k": 20})["items"]
        assert len(items) == 20 and not {i["item_id"] for i in items} & {
            f"i{i}" for i in range(10)}  # u1's clicks from the YAML's event files
    finally:
        proc.terminate()
        output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, output
    assert f"serving '{yaml_path}' (the dataset {work / 'serving'} is stamped with)" in output
