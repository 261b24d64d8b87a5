"""Versioned FAISS indexes over exported item embeddings: builder, loader, CLI.

`python -m models.faiss_index build --embeddings DIR --base BASE --name NAME`
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from models.faiss_index.index import Index, latest_version_dir, load_index  # noqa: E402,F401
