"""FAISS recall indexes for the recommender, via the shared loader models.faiss_index.

Index dirs follow the contract `<indexes_root>/<channel>/<version>/` with
index.faiss, ids.txt (row order), metadata.json and embeddings.npy (item
vectors aligned with ids.txt; the item2vec channel averages them). This module
is the recommender's only door to FAISS: `RecallIndex` adds the version and
the item2vec mean on top of models.faiss_index.Index, and `IndexSet` polls
every channel's base dir and swaps new versions in.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, Sequence

import numpy as np

from models import faiss_index
from serving.lifecycle import Poller

log = logging.getLogger(__name__)


def set_search_threads(threads: int) -> None:
    """OpenMP threads FAISS uses per search (process-wide; call once at start-up)."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    import faiss

    faiss.omp_set_num_threads(threads)


def latest_version_dir(base: str) -> str | None:
    """The highest finished version dir under base, or None (models.faiss_index rule)."""
    return faiss_index.latest_version_dir(base)


class RecallIndex:
    """One loaded index version.

    Attributes:
      ids: item id per row.
      metadata: metadata.json.
      version: integer version dir name.
      row: item id -> row.
    """

    def __init__(self, directory: str):
        self.directory = directory
        self.version = int(os.path.basename(directory.rstrip("/")))
        self._index = faiss_index.load_index(directory)
        self.ids = self._index.ids
        self.metadata = self._index.metadata
        self.dim = self._index.dim
        self.row = self._index.row
        self._vectors: np.ndarray | None = None
        self._lock = threading.Lock()
        self._row_maps: tuple[Mapping[str, int], np.ndarray] | None = None

    def search(self, vectors: np.ndarray, k: int) -> tuple[list[list[str]], np.ndarray]:
        """Top-k item ids and scores per query.

        Args:
          vectors: float32 [n, dim].
          k: neighbours per query (capped at the index size).
        Returns:
          (ids [n][<=k], scores [n, k]).
        Raises:
          ValueError: vectors have the wrong dim or are not finite.
        """
        return self._index.search(vectors, max(1, min(k, len(self.ids))))

    def search_rows(self, vector: np.ndarray, k: int) -> np.ndarray:
        """Index rows of the top-k items of one query, best first (the request path:
        no id strings are built; map rows with `catalogue_rows`).

        Args:
          vector: float32 [1, dim] or [dim].
          k: neighbours (capped at the index size).
        Returns:
          int64 rows [<= k].
        Raises:
          ValueError: the vector has the wrong dim or is not finite.
        """
        vector = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        if vector.shape[1] != self.dim:
            raise ValueError(f"query width {vector.shape[1]} != index dim {self.dim}")
        if not np.isfinite(vector).all():
            raise ValueError("query vector contains NaN or inf")
        _, rows = self._index.index.search(np.ascontiguousarray(vector),
                                           max(1, min(k, len(self.ids))))
        rows = rows[0]
        return rows[rows >= 0]

    def catalogue_rows(self, row_of: Mapping[str, int]) -> np.ndarray:
        """index row -> row in another table (the item catalogue), -1 where absent.

        Built once per (index version, table) and cached: `row_of` is
        compared by identity, so pass the same mapping (ItemCatalogue.row).
        """
        cached = self._row_maps
        if cached is not None and cached[0] is row_of:
            return cached[1]
        mapping = np.array([row_of.get(i, -1) for i in self.ids], dtype=np.int64)
        self._row_maps = (row_of, mapping)
        return mapping

    def item_vectors(self) -> np.ndarray:
        """Item vectors [N, dim]: embeddings.npy, else reconstructed from the index."""
        with self._lock:
            if self._vectors is None:
                vectors = self._index.embeddings
                if vectors.shape[0] != len(self.ids):
                    vectors = self._index.index.reconstruct_n(0, self._index.index.ntotal)
                if vectors.shape != (len(self.ids), self.dim):
                    raise ValueError(f"{self.directory}: item vectors {vectors.shape}")
                self._vectors = np.asarray(vectors, np.float32)
            return self._vectors

    def mean_vector(self, item_ids: Sequence[str]) -> np.ndarray | None:
        """Mean vector of the known items ([1, dim]); None when none is known (no prior).

        `item_ids` is oldest first. When the index metadata carries the
        model's `recent_clicks` N (Item2vec), only the last N known items are
        averaged: the rule the model's own user tower applies in training
        and evaluation (models.item2vec.model.MeanHistoryTower). When it
        says `prior_column`, the vectors' last column is a popularity prior
        and the user vector carries 1 there (the same tower's rule), so a
        user with no known item gets the prior alone, not None.
        """
        rows = [self.row[i] for i in item_ids if i in self.row]
        recent = self.metadata.get("recent_clicks")
        if recent:
            rows = rows[-int(recent):]
        prior = bool(self.metadata.get("prior_column"))
        if not rows and not prior:
            return None
        mean = (self.item_vectors()[rows].mean(axis=0, keepdims=True) if rows
                else np.zeros((1, self.dim), np.float32))
        if prior:
            mean[:, -1] = 1.0
        return mean


def load_index(directory: str) -> RecallIndex:
    return RecallIndex(directory)


class IndexSet:
    """The latest version of every channel's index, refreshed by polling.

    Args:
      root: indexes root holding <channel>/<version>/.
      channels: channel names to load (missing ones are skipped until they appear).
    """

    def __init__(self, root: str, channels: Sequence[str]):
        self.root = root
        self.channels = list(channels)
        self._indexes: dict[str, RecallIndex] = {}
        self._poller = Poller(self.refresh, "index-poller")
        self.refresh()

    def refresh(self) -> dict[str, int]:
        """Loads newer versions; returns channel -> loaded version."""
        indexes = dict(self._indexes)
        for channel in self.channels:
            latest = latest_version_dir(os.path.join(self.root, channel))
            if latest is None:
                continue
            current = indexes.get(channel)
            if current is not None and current.directory == latest:
                continue
            try:
                indexes[channel] = load_index(latest)
                log.info("loaded index %s from %s", channel, latest)
            except (OSError, ValueError, RuntimeError) as err:
                log.error("cannot load index %s: %s (keeping the old one)", latest, err)
        self._indexes = indexes  # one reference swap: readers see old or new
        return {c: i.version for c, i in indexes.items()}

    def get(self, channel: str) -> RecallIndex | None:
        return self._indexes.get(channel)

    def versions(self) -> dict[str, int]:
        return {c: i.version for c, i in self._indexes.items()}

    def start(self, interval_s: float) -> None:
        """Polls for new versions every interval_s seconds on a daemon thread."""
        self._poller.start(interval_s)

    def stop(self) -> None:
        self._poller.stop()
