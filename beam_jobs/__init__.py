"""feedrec package."""
import os

# TFRS needs Keras 2: tf_keras must be selected before TensorFlow is imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
