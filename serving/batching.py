"""Server-side batching of concurrent Predict calls (off by default).

Requests to the same servable and signature whose inputs differ only in the
batch dimension are concatenated, run once and split back. This trades
latency (a request may wait up to batch_timeout_micros for company) for
throughput (one graph call instead of many). The recommender's ranking call
already carries ~500 candidates, so batching pays mainly for many small
concurrent calls; bench/serving_bench.py measures both settings.

A request is batched only when every input has the same leading dimension; the
combined outputs must again have one row per input row, otherwise the
signature is marked unbatchable and its requests run one by one.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future

import numpy as np

from serving.config_files import BatchingParameters
from serving.servables import Servable, ServingError, run_signature


def _batch_key(servable: Servable, signature_name: str,
               inputs: Mapping[str, np.ndarray]) -> tuple | None:
    rows = {a.shape[0] if a.ndim else None for a in inputs.values()}
    if len(rows) != 1 or None in rows:
        return None
    shapes = tuple(sorted((k, a.shape[1:], a.dtype.kind) for k, a in inputs.items()))
    return (id(servable), signature_name, shapes)


class Batcher:
    """Collects compatible requests for up to batch_timeout_micros and runs them together."""

    def __init__(self, params: BatchingParameters):
        self.params = params
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, params.max_enqueued_batches)
                                               * max(1, params.max_batch_size))
        self._unbatchable: set[tuple[int, str]] = set()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, name=f"batcher-{i}", daemon=True)
                         for i in range(max(1, params.num_batch_threads))]
        for thread in self._threads:
            thread.start()
        self.batches_run = 0
        self.requests_batched = 0

    def run(self, servable: Servable, signature_name: str, inputs: Mapping[str, np.ndarray],
            output_filter: Sequence[str] = ()) -> dict[str, np.ndarray]:
        signature = servable.signature(signature_name)
        key = _batch_key(servable, signature_name, inputs)
        if key is None or (id(servable), signature_name) in self._unbatchable:
            return run_signature(signature, inputs, output_filter)
        future: Future = Future()
        try:
            self._queue.put_nowait((key, servable, signature_name, dict(inputs), future))
        except queue.Full:
            import grpc
            raise ServingError(grpc.StatusCode.UNAVAILABLE, "batching queue is full; retry later")
        outputs = future.result()
        return {k: outputs[k] for k in (output_filter or outputs)}

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)

    def _loop(self) -> None:
        timeout = self.params.batch_timeout_micros / 1e6
        while not self._stop.is_set():
            try:
                first = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            group, pending = [first], []
            rows = next(iter(first[3].values())).shape[0]
            deadline = time.monotonic() + timeout
            while rows < self.params.max_batch_size:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    item = self._queue.get(timeout=left)
                except queue.Empty:
                    break
                item_rows = next(iter(item[3].values())).shape[0]
                if item[0] == first[0] and rows + item_rows <= self.params.max_batch_size:
                    group.append(item)
                    rows += item_rows
                else:
                    pending.append(item)
            for item in pending:  # incompatible: run alone rather than reorder the queue
                self._run_group([item])
            self._run_group(group)

    def _run_group(self, group: list) -> None:
        _, servable, signature_name, _, _ = group[0]
        signature = servable.signature(signature_name)
        sizes = [next(iter(item[3].values())).shape[0] for item in group]
        try:
            if len(group) == 1:
                group[0][4].set_result(run_signature(signature, group[0][3]))
                return
            merged = {k: np.concatenate([item[3][k] for item in group]) for k in group[0][3]}
            outputs = run_signature(signature, merged)
            total = sum(sizes)
            if any(v.ndim == 0 or v.shape[0] != total for v in outputs.values()):
                self._unbatchable.add((id(servable), signature_name))
                for item in group:
                    self._run_group([item])
                return
            self.batches_run += 1
            self.requests_batched += len(group)
            start = 0
            for item, size in zip(group, sizes):
                item[4].set_result({k: v[start:start + size] for k, v in outputs.items()})
                start += size
        except ServingError as err:
            if len(group) == 1:
                group[0][4].set_exception(err)
            else:  # one bad request must not fail its batch-mates
                for item in group:
                    self._run_group([item])
