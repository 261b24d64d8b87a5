"""Shared serving fixtures: one small toy world (real SavedModels + FAISS indexes) per session."""
import os

import pytest

from feature_contract import feature_config as fc
from serving import config_files, model_server, toy_models
from serving.client import ModelServerClient
from serving.local_redis import LocalRedis
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
    try:
        server = LocalRedis(str(tmp_path))
    except FileNotFoundError as err:
        pytest.fail(str(err))
    with server:
        yield server.url
