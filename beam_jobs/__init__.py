"""feedrec package."""
import os

# TFRS needs Keras 2: tf_keras must be selected before TensorFlow is imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

# The job's per-event modules load their compiled forms when built and
# current (beam_jobs.native); otherwise they import as Python.
from beam_jobs import native as _native  # noqa: E402

_native.install()
