"""The serving_configs/ text protos, read the way TF Serving reads them.

* models.config: a ModelServerConfig (tensorflow_serving.config) naming each
  model and its base path. Real TF Serving sees the container paths
  (/models/<name>); our server maps them under a local root with
  `model_base_path_prefix`, so one file drives both.
* batching_parameters.txt: TF Serving's BatchingParameters. Its proto is not in
  the tensorflow-serving-api wheel, so the few scalar fields are read here.
* monitoring.config: MonitoringConfig; only the Prometheus path is used.
* --ssl_config_file: SSLConfig (TLS key, certificate, client CA); its proto is
  not in the wheel either, so its four fields are declared here.
"""

from __future__ import annotations

import dataclasses
import os
import re

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """One model of models.config.

    Attributes:
      name: model name clients ask for.
      base_path: local directory holding <version>/ SavedModel dirs.
      num_versions: how many of the latest versions stay loaded.
      specific_versions: pinned versions (model_version_policy.specific), if any.
    """

    name: str
    base_path: str
    num_versions: int = 1
    specific_versions: tuple[int, ...] = ()


def map_base_path(base_path: str, prefix: str | None) -> str:
    """Maps a container base path (/models/ranking) under a local root.

    The first path component after the leading slash is the mount point of
    the TF Serving container (/models), which the local root replaces:
    /models/ranking with prefix work/serving/models -> work/serving/models/ranking.
    Relative base paths are joined to the prefix as they are.
    """
    if not prefix:
        return base_path
    if os.path.isabs(base_path):
        parts = base_path.strip("/").split("/", 1)
        rest = parts[1] if len(parts) > 1 else ""
        return os.path.join(prefix, rest) if rest else prefix
    return os.path.join(prefix, base_path)


def read_model_config(path: str, model_base_path_prefix: str | None = None) -> list[ModelEntry]:
    """Parses a ModelServerConfig text proto into ModelEntry rows.

    Raises:
      ValueError: the file is not a valid ModelServerConfig, uses
        custom_model_config, repeats a name or sets a platform other than
        tensorflow.
    """
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        config = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    except text_format.ParseError as err:
        raise ValueError(f"{path}: not a ModelServerConfig text proto: {err}") from err
    if config.WhichOneof("config") != "model_config_list":
        raise ValueError(f"{path}: only model_config_list is supported")
    entries, seen = [], set()
    for model in config.model_config_list.config:
        if not model.name or not model.base_path:
            raise ValueError(f"{path}: every config needs name and base_path: {model}")
        if model.name in seen:
            raise ValueError(f"{path}: model {model.name!r} is listed twice")
        if model.model_platform not in ("", "tensorflow"):
            raise ValueError(f"{path}: model {model.name!r} platform "
                             f"{model.model_platform!r} is not 'tensorflow'")
        seen.add(model.name)
        policy = model.model_version_policy
        which = policy.WhichOneof("policy_choice")
        num, specific = 1, ()
        if which == "latest":
            num = max(1, policy.latest.num_versions)
        elif which == "specific":
            specific = tuple(sorted(int(v) for v in policy.specific.versions))
        elif which == "all":
            num = 1 << 30
        entries.append(ModelEntry(model.name, map_base_path(model.base_path, model_base_path_prefix),
                                  num, specific))
    return entries


@dataclasses.dataclass(frozen=True)
class BatchingParameters:
    """The BatchingParameters fields our batcher honours (TF Serving names)."""

    max_batch_size: int = 1024
    batch_timeout_micros: int = 2000
    max_enqueued_batches: int = 100
    num_batch_threads: int = 1


_WRAPPED = re.compile(r"^\s*(\w+)\s*(?::\s*)?\{\s*value\s*:\s*([^}\s]+)\s*\}")
_PLAIN = re.compile(r"^\s*(\w+)\s*:\s*(\S+)")


def read_batching_parameters(path: str) -> BatchingParameters:
    """Reads a BatchingParameters text proto (wrapped `f { value: N }` or `f: N`).

    Raises:
      ValueError: a line is neither form, or a value is not an integer where
        one is needed.
    """
    known = {f.name for f in dataclasses.fields(BatchingParameters)}
    values: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            match = _WRAPPED.match(line) or _PLAIN.match(line)
            if not match:
                raise ValueError(f"{path}:{number}: cannot parse {line!r}")
            key, raw = match.group(1), match.group(2).rstrip(",")
            if key in known:
                try:
                    values[key] = int(raw)
                except ValueError as err:
                    raise ValueError(f"{path}:{number}: {key} wants an integer, got {raw!r}") from err
    return BatchingParameters(**values)


def read_prometheus_path(path: str) -> str | None:
    """The Prometheus metrics path of a MonitoringConfig, None when disabled."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if not re.search(r"enable\s*:\s*true", text):
        return None
    match = re.search(r'path\s*:\s*"([^"]+)"', text)
    return match.group(1) if match else "/monitoring/prometheus/metrics"


@dataclasses.dataclass(frozen=True)
class SslConfig:
    """TF Serving's SSLConfig: the server's key and certificate chain, optional client CA.

    Attributes:
      server_key, server_cert: PEM bytes.
      custom_ca: PEM bytes of the CA that signs client certificates, or b"".
      client_verify: require a client certificate signed by custom_ca.
    """

    server_key: bytes
    server_cert: bytes
    custom_ca: bytes = b""
    client_verify: bool = False

    def grpc_credentials(self):
        """grpc.ServerCredentials for add_secure_port."""
        import grpc

        return grpc.ssl_server_credentials([(self.server_key, self.server_cert)],
                                           root_certificates=self.custom_ca or None,
                                           require_client_auth=self.client_verify)

    def http_context(self):
        """ssl.SSLContext for the HTTP ports (same key, certificate and client policy)."""
        import ssl
        import tempfile

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        # load_cert_chain reads only files: the PEMs pass through a private temp dir.
        with tempfile.TemporaryDirectory(prefix="feedrec-tls-") as tmp:
            cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
            for path, data in ((cert, self.server_cert), (key, self.server_key)):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
            context.load_cert_chain(cert, key)
        if self.custom_ca:
            context.load_verify_locations(cadata=self.custom_ca.decode("ascii"))
        if self.client_verify:
            context.verify_mode = ssl.CERT_REQUIRED
        return context


def _ssl_config_message():
    """A message class with SSLConfig's fields (its proto is not in tensorflow-serving-api)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    proto = descriptor_pb2.FileDescriptorProto(name="feedrec/ssl_config.proto",
                                               package="tensorflow.serving", syntax="proto3")
    message = proto.message_type.add(name="SSLConfig")
    fields = (("server_key", descriptor_pb2.FieldDescriptorProto.TYPE_STRING),
              ("server_cert", descriptor_pb2.FieldDescriptorProto.TYPE_STRING),
              ("custom_ca", descriptor_pb2.FieldDescriptorProto.TYPE_STRING),
              ("client_verify", descriptor_pb2.FieldDescriptorProto.TYPE_BOOL))
    for number, (name, kind) in enumerate(fields, 1):
        message.field.add(name=name, number=number, type=kind,
                          label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()  # private: never clashes with a real ssl_config_pb2
    pool.Add(proto)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("tensorflow.serving.SSLConfig"))


def _pem(value: str, base_dir: str, field: str, path: str) -> bytes:
    """A PEM field: the PEM text itself (TF Serving's form) or, ours too, a file path."""
    if not value.strip():
        return b""
    if value.lstrip().startswith("-----BEGIN"):
        return value.encode("ascii")
    file = value if os.path.isabs(value) else os.path.join(base_dir, value)
    try:
        with open(file, "rb") as f:
            return f.read()
    except OSError as err:
        raise ValueError(f"{path}: {field} is neither PEM text nor a readable file: {err}") from err


def read_ssl_config(path: str) -> SslConfig:
    """Reads TF Serving's --ssl_config_file (an SSLConfig text proto).

    TF Serving wants the PEM text in server_key / server_cert / custom_ca;
    ours also takes a path to a PEM file there (relative to the config file).

    Raises:
      ValueError: not an SSLConfig, or server_key / server_cert missing.
    """
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        config = text_format.Parse(text, _ssl_config_message()())
    except text_format.ParseError as err:
        raise ValueError(f"{path}: not an SSLConfig text proto: {err}") from err
    base = os.path.dirname(os.path.abspath(path))
    out = SslConfig(*(_pem(getattr(config, f), base, f, path)
                      for f in ("server_key", "server_cert", "custom_ca")),
                    client_verify=config.client_verify)
    if not out.server_key or not out.server_cert:
        raise ValueError(f"{path}: server_key and server_cert are required")
    if out.client_verify and not out.custom_ca:
        raise ValueError(f"{path}: client_verify needs custom_ca (the client certificates' CA)")
    return out
