"""TLS on gRPC and HTTPS on both HTTP ports from a TF Serving SSLConfig, and the recommender's
shared token; certificates are made here (python cryptography), loopback only."""
import datetime
import http.client
import ipaddress
import json
import os
import shutil
import ssl
import subprocess
import sys
import time

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tensorflow_serving.apis import prediction_service_pb2_grpc

from serving import config_files, model_server
from serving.client import ModelServerClient
from serving.servables import ModelManager

from .conftest import MODELS_CONFIG, REPO
from .test_model_server import _examples


def _certificate(name: str, key, issuer_name: str | None = None, issuer_key=None,
                 ca: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                          issuer_name or name)]))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


def _pem(obj) -> bytes:
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM)
    return obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    """A self-signed server certificate and a client CA with one client certificate."""
    out = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _certificate("localhost", key)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("feedrec test CA", ca_key, ca=True)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _certificate("client", client_key, "feedrec test CA", ca_key)
    files = {"key": _pem(key), "cert": _pem(cert), "ca": _pem(ca), "client_key": _pem(client_key),
             "client_cert": _pem(client)}
    for name, data in files.items():
        (out / f"{name}.pem").write_bytes(data)
    (out / "ssl.config").write_text('server_key: "key.pem"\nserver_cert: "cert.pem"\n')
    return {"dir": out, **files}


def test_ssl_config_reads_tf_serving_pem_text_and_our_file_paths(tls, tmp_path):
    by_path = config_files.read_ssl_config(str(tls["dir"] / "ssl.config"))
    assert by_path == config_files.SslConfig(tls["key"], tls["cert"])
    escaped = {k: tls[k].decode().replace("\n", "\\n") for k in ("key", "cert", "ca")}
    inline = tmp_path / "inline.config"  # the form TF Serving's --ssl_config_file takes
    inline.write_text(f'server_key: "{escaped["key"]}"\nserver_cert: "{escaped["cert"]}"\n'
                      f'custom_ca: "{escaped["ca"]}"\nclient_verify: true\n')
    assert config_files.read_ssl_config(str(inline)) == config_files.SslConfig(
        tls["key"], tls["cert"], tls["ca"], True)
    bad = tmp_path / "bad.config"
    bad.write_text(f'server_cert: "{tls["dir"] / "cert.pem"}"\n')  # an absolute path
    with pytest.raises(ValueError, match="server_key and server_cert are required"):
        config_files.read_ssl_config(str(bad))
    bad.write_text('server_key: "key.pem"\nserver_cert: "cert.pem"\n')  # relative to bad.config
    with pytest.raises(ValueError, match="server_key is neither PEM text nor a readable file"):
        config_files.read_ssl_config(str(bad))


@pytest.fixture
def tls_server(world, tls):
    def start(ssl_config):
        entries = config_files.read_model_config(MODELS_CONFIG,
                                                 os.path.join(world["root"], "models"))
        manager = ModelManager(entries)
        manager.poll_once()
        server = model_server.ModelServer(manager, ssl=ssl_config)
        server.start("127.0.0.1", 0, 0)
        started.append(server)
        return server
    started = []
    yield start
    for server in started:
        server.stop()


def test_grpc_and_rest_over_tls(tls_server, tls):
    server = tls_server(config_files.read_ssl_config(str(tls["dir"] / "ssl.config")))
    target = f"127.0.0.1:{server.grpc_port}"
    with ModelServerClient(target, root_certificates=tls["cert"]) as secure:
        assert secure.predict("ranking", {"examples": _examples(2)})["click"].shape == (2,)
    with ModelServerClient(target, timeout_s=3) as plain:
        with pytest.raises(grpc.RpcError) as info:
            plain.predict("ranking", {"examples": _examples(1)})
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    context = ssl.create_default_context(cadata=tls["cert"].decode())
    conn = http.client.HTTPSConnection("127.0.0.1", server.rest_port, context=context, timeout=10)
    conn.request("GET", "/v1/models/ranking")
    response = conn.getresponse()
    assert response.status == 200
    assert json.loads(response.read())["model_version_status"][0]["state"] == "AVAILABLE"
    conn.close()
    plain_http = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=5)
    with pytest.raises((http.client.HTTPException, OSError)):
        plain_http.request("GET", "/v1/models/ranking")
        plain_http.getresponse()


def test_client_verify_requires_a_client_certificate(tls_server, tls):
    server = tls_server(config_files.SslConfig(tls["key"], tls["cert"], tls["ca"], True))
    target = f"127.0.0.1:{server.grpc_port}"
    with ModelServerClient(target, timeout_s=3, root_certificates=tls["cert"]) as anonymous:
        with pytest.raises(grpc.RpcError) as info:
            anonymous.predict("ranking", {"examples": _examples(1)})
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    credentials = grpc.ssl_channel_credentials(tls["cert"], tls["client_key"], tls["client_cert"])
    with grpc.secure_channel(target, credentials) as channel:
        client = ModelServerClient.from_stub(
            prediction_service_pb2_grpc.PredictionServiceStub(channel))
        assert client.predict("ranking", {"examples": _examples(1)})["click"].shape == (1,)


def test_serve_with_https_and_a_token(world, tls, tmp_path):
    """`serve --ssl_config_file --auth_token_file --transport grpc`: the recommender answers HTTPS,
    needs the token on POSTs, and reaches its own model server over TLS."""
    serving_dir = tmp_path / "serving"
    shutil.copytree(world["root"], serving_dir)
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    ready = tmp_path / "ready.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving.serve", "--serving_dir", str(serving_dir),
         "--data", "synthetic", "--port", "0", "--rest_api_port", "0", "--recommender_port", "0",
         "--ready_file", str(ready), "--transport", "grpc",
         "--ssl_config_file", str(tls["dir"] / "ssl.config"), "--auth_token_file", str(token)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 180
        while not ready.exists():
            assert proc.poll() is None, proc.stdout.read()
            assert time.time() < deadline
            time.sleep(0.2)
        port = json.loads(ready.read_text())["recommender_port"]
        context = ssl.create_default_context(cadata=tls["cert"].decode())

        def call(method, path, body=None, headers=None):
            conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)
            conn.request(method, path, json.dumps(body).encode() if body is not None else None,
                         headers or {})
            response = conn.getresponse()
            out = response.status, dict(response.getheaders()), json.loads(response.read())
            conn.close()
            return out

        body = {"user_id": "u1", "k": 3}
        status, headers, answer = call("POST", "/recommend", body)
        assert (status, answer) == (401, {"error": "missing or wrong bearer token"})
        assert headers["WWW-Authenticate"] == "Bearer"
        assert call("POST", "/recommend", body, {"Authorization": "Bearer nope"})[0] == 401
        status, _, answer = call("POST", "/recommend", body,
                                 {"Authorization": "Bearer s3cret-token"})
        assert status == 200 and len(answer["items"]) == 3
        assert call("GET", "/readyz")[0] == 200  # probes need no token
    finally:
        proc.terminate()
        output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, output
