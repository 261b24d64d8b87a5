"""Helpers of the component tests: artifacts as the launcher would create them."""

import os

import tensorflow as tf


def new_artifact(cls, root: str, name: str):
    """An output artifact with its URI created, as the launcher would give it."""
    artifact = cls()
    artifact.uri = os.path.join(root, name)
    os.makedirs(artifact.uri, exist_ok=True)
    return artifact


def executor_fn(component_class):
    """The Python function behind a @component (its executor's body)."""
    return component_class.EXECUTOR_SPEC.executor_class._FUNCTION


def count_records(pattern: str) -> int:
    files = tf.io.gfile.glob(pattern)
    return sum(1 for _ in tf.data.TFRecordDataset(files, compression_type="GZIP"))


def temp_dir(testcase) -> str:
    """A temporary directory removed after the test (absl's create_tempdir needs
    parsed absl flags, which pytest does not provide)."""
    import shutil
    import tempfile
    path = tempfile.mkdtemp(prefix="feedrec-test-")
    testcase.addCleanup(shutil.rmtree, path, ignore_errors=True)
    return path
