"""`python -m serving.serve` as `make serve` runs it: start, answer, stop on SIGTERM."""
import json
import os
import shutil
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


@pytest.mark.parametrize("transport", ["in_process", "grpc"])
def test_serve_answers_recommend_and_stops_cleanly(world, tmp_path, transport):
    serving_dir = tmp_path / "serving"
    shutil.copytree(world["root"], serving_dir)
    ready = tmp_path / "ready.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving.serve", "--serving_dir", str(serving_dir),
         "--data", "synthetic", "--port", "0", "--rest_api_port", "0", "--recommender_port", "0",
         "--transport", transport, "--ready_file", str(ready)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 180
        while not ready.exists():
            assert proc.poll() is None, proc.stdout.read()
            assert time.time() < deadline, "serve did not become ready"
            time.sleep(0.2)
        info = json.loads(ready.read_text())
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
