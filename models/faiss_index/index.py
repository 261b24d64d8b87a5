"""Loading and querying a versioned index directory (the recommender's API).

Layout of `<base>/<name>/<version>/`: index.faiss, ids.txt, embeddings.npy,
metadata.json (see builder.py). Versions are integers; a directory without
metadata.json is an unfinished build and is never loaded.
"""

from __future__ import annotations

import json
import os

import faiss
import numpy as np

INDEX_FILE, IDS_FILE, EMBEDDINGS_FILE, METADATA_FILE = (
    "index.faiss", "ids.txt", "embeddings.npy", "metadata.json")


def set_search_params(index: faiss.Index, metadata: dict) -> None:
    """Applies the tuned nprobe / efSearch recorded at build time."""
    params = metadata.get("params", {})
    if "nprobe" in params:
        faiss.extract_index_ivf(index).nprobe = int(params["nprobe"])
    if "efSearch" in params:
        faiss.downcast_index(index).hnsw.efSearch = int(params["efSearch"])


class Index:
    """A loaded index: ids, raw vectors and the FAISS structure.

    Attributes:
      ids: item id per row.
      embeddings: float32 [N, dim] (the item vectors, e.g. for Item2vec's
        mean-of-history user vector).
      metadata: the build's metadata.json.
    """

    def __init__(self, index: faiss.Index, ids: list[str], embeddings: np.ndarray,
                 metadata: dict, directory: str | None = None):
        if index.ntotal != len(ids):
            raise ValueError(f"index holds {index.ntotal} vectors but {len(ids)} ids")
        self.index, self.ids, self.embeddings = index, ids, embeddings
        self.metadata, self.directory = metadata, directory
        self.dim = int(index.d)
        self.row = {item: i for i, item in enumerate(ids)}
        set_search_params(index, metadata)

    def __len__(self) -> int:
        return len(self.ids)

    def search(self, vectors: np.ndarray, k: int) -> tuple[list[list[str]], np.ndarray]:
        """Top-k items by inner product.

        Args:
          vectors: [n, dim] or [dim] float.
          k: results per query.
        Returns:
          ids: n lists of up to k item ids, best first; scores: float32 [n, k]
          (-inf where fewer than k results exist).
        Raises:
          ValueError: wrong width, k < 1 or non-finite queries.
        """
        vectors = np.atleast_2d(np.asarray(vectors, np.float32))
        if vectors.shape[1] != self.dim:
            raise ValueError(f"query width {vectors.shape[1]} != index dim {self.dim}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if not np.all(np.isfinite(vectors)):
            raise ValueError("query vectors contain NaN or inf")
        scores, rows = self.index.search(np.ascontiguousarray(vectors), k)
        ids = [[self.ids[r] for r in row if r >= 0] for row in rows]
        scores = np.where(rows >= 0, scores, -np.inf).astype(np.float32)
        return ids, scores

    def vectors_of(self, item_ids: list[str]) -> np.ndarray:
        """Stored vectors of known ids (unknown ids skipped), [m, dim]."""
        rows = [self.row[i] for i in item_ids if i in self.row]
        return self.embeddings[rows] if rows else np.zeros((0, self.dim), np.float32)


def load_index(directory: str) -> Index:
    """Loads one version directory.

    Raises:
      FileNotFoundError: a file is missing (e.g. an unfinished build).
    """
    for name in (INDEX_FILE, IDS_FILE, METADATA_FILE):
        if not os.path.exists(os.path.join(directory, name)):
            raise FileNotFoundError(f"{directory}: missing {name}")
    with open(os.path.join(directory, METADATA_FILE), encoding="utf-8") as f:
        metadata = json.load(f)
    with open(os.path.join(directory, IDS_FILE), encoding="utf-8") as f:
        ids = [line.rstrip("\n") for line in f if line.rstrip("\n")]
    emb_path = os.path.join(directory, EMBEDDINGS_FILE)
    embeddings = (np.load(emb_path).astype(np.float32) if os.path.exists(emb_path)
                  else np.zeros((0, metadata["dim"]), np.float32))
    return Index(faiss.read_index(os.path.join(directory, INDEX_FILE)), ids, embeddings,
                 metadata, directory)


def latest_version_dir(base: str) -> str | None:
    """The highest integer version under base that finished building, or None."""
    if not os.path.isdir(base):
        return None
    versions = [int(v) for v in os.listdir(base) if v.isdigit()
                and os.path.exists(os.path.join(base, v, METADATA_FILE))]
    return os.path.join(base, str(max(versions))) if versions else None
