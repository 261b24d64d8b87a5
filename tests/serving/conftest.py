"""Shared serving fixtures: one small toy world (real SavedModels + FAISS indexes) per session."""
import os
import shutil
import subprocess
import time

import portpicker
import pytest

from beam_jobs import feature_config as fc
from serving import config_files, model_server, toy_models
from serving.client import ModelServerClient
from serving.servables import ModelManager

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODELS_CONFIG = os.path.join(REPO, "serving_configs", "models.config")


@pytest.fixture(scope="session")
def config():
    return fc.load(fc.builtin_config_path("synthetic"))


@pytest.fixture(scope="session")
def world(tmp_path_factory, config):
    out = str(tmp_path_factory.mktemp("serving_world"))
    paths = toy_models.write_toy_world(out, config, num_users=20, num_items=300, seed=0)
    paths["root"] = out
    return paths


@pytest.fixture(scope="session")
def server(world):
    """The embedded model server on free loopback ports over the toy models."""
    entries = config_files.read_model_config(MODELS_CONFIG, os.path.join(world["root"], "models"))
    manager = ModelManager(entries)
    manager.poll_once()
    srv = model_server.ModelServer(manager, max_message_bytes=4 << 20)
    srv.start("127.0.0.1", 0, 0)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def client(server):
    c = ModelServerClient(f"127.0.0.1:{server.grpc_port}")
    c.wait_ready(10)
    yield c
    c.close()


@pytest.fixture
def redis_url(tmp_path):
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: run `make system-deps` "
                    "(apt-get install redis-server)")
    port = portpicker.pick_unused_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis
    client = redis.Redis(host="127.0.0.1", port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
