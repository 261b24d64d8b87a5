"""Item2vec recall: skip-gram with negative sampling on click sessions (Meitu, 58.com)."""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
