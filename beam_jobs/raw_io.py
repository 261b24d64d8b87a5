"""Raw-table reading and batched TFRecord writing for the Beam jobs.

Reading: `ReadRawTable(pattern)` turns every file matching a glob into
batches (lists) of raw records. The format comes from the file name
(README, "Raw click-log format"): `*.csv[.gz]` is CSV with a header and
yields one dict per row; `*.jsonl`, `*.json`, `*.ndjson` (optionally `.gz`)
yield the raw line as bytes, parsed later by the consumer so that a bad line
becomes a dead-letter record, not a crash. A CSV row whose column count does
not match the header is yielded as a `MalformedRecord`. Blank lines are not
records. Records travel in batches because per-element overhead dominates the
Python runners: one element per few thousand rows keeps it negligible.

What is an error and what is a bad row: a table whose glob matches no file,
a file of unknown format and a corrupt, truncated or empty (0-byte) gzip
file fail the job (`RawTableError`, naming the glob or the file): reading on
would silently drop part of the data. A bad row (a stray CSV quote, a wrong
column count, bad JSON, a CSV line that is not UTF-8) is a `MalformedRecord`
/ bad line that the consumer dead-letters with its raw text, and reading
goes on. A UTF-8 byte order mark at the start of a file (Excel's "CSV
UTF-8") is dropped, so it cannot hide inside the first column's name.

Writing: `WriteTFRecordBatches(prefix)` writes a PCollection of *lists* of
serialized records as gzip TFRecord files; one element per list keeps the
runner's per-element cost off the hot path.
"""

from __future__ import annotations

import collections
import concurrent.futures
import csv
import struct
import threading
import zlib
from collections.abc import Iterator
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.io import filebasedsink, fileio, iobase
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.fileio import EmptyMatchTreatment
from apache_beam.io.filesystems import FileSystems

from beam_jobs import compiled as compiled_loops

try:  # google-crc32c ships with apache-beam[gcp]; crcmod is the slow fallback
    import google_crc32c

    _crc32c = google_crc32c.value
except ImportError:  # pragma: no cover - depends on the environment
    from apache_beam.io.tfrecordio import _default_crc32c_fn as _crc32c

JSONL, CSV = "jsonl", "csv"
_JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
_BOM = b"\xef\xbb\xbf"
_READ_CHUNK_BYTES = 8 << 20
DEFAULT_BATCH_SIZE = 4096
# A quoted CSV field may span lines, but at most this many: past it an open
# quote is taken for a stray one, so it cannot swallow the rest of the file.
MAX_CSV_RECORD_LINES = 100


class RawTableError(ValueError):
    """A raw table cannot be read as a whole (no file, corrupt or truncated file)."""


class MalformedRecord(NamedTuple):
    """A raw row that could not be split into columns (kept for dead-letter)."""

    text: str
    reason: str


def table_format(path: str) -> str:
    """Returns `jsonl` or `csv` from a file name (a `.gz` suffix is ignored).

    Raises:
      RawTableError: the extension is neither CSV nor JSON Lines.
    """
    name = path.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    if name.endswith(".csv"):
        return CSV
    if name.endswith(_JSONL_SUFFIXES):
        return JSONL
    raise RawTableError(
        f"cannot tell the format of {path!r}: want .csv or .jsonl/.json/.ndjson, "
        "optionally .gz")


def _iter_line_chunks(handle: Any) -> Iterator[list[bytes]]:
    """Yields the lines of a binary stream without their newline, a read chunk's worth at a time.

    A UTF-8 byte order mark opening the stream is dropped.
    """
    rest = b""
    first = True
    while True:
        chunk = handle.read(_READ_CHUNK_BYTES)
        if first:
            first = False
            # A short first read cannot split the 3-byte mark in practice
            # (reads return up to 8 MiB), so a prefix test is enough.
            if chunk.startswith(_BOM):
                chunk = chunk[len(_BOM):]
        if not chunk:
            break
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        yield lines
    if rest:
        yield [rest]


def _iter_lines(handle: Any) -> Iterator[bytes]:
    """Yields the lines of a binary stream without their newline, in chunks."""
    for lines in _iter_line_chunks(handle):
        yield from lines


def _iter_jsonl_batches(handle: Any, batch_size: int) -> Iterator[list[bytes]]:
    """`iter_records`' JSON lines in lists of `batch_size`, a read chunk at a time.

    The same lines in the same order as `iter_records`, but filtered and
    sliced as whole chunks (list comprehension, slices) rather than one
    generator step and one append per line.
    """
    pending: list[bytes] = []
    for lines in _iter_line_chunks(handle):
        pending += [line for line in lines if line.strip()]
        while len(pending) >= batch_size:
            yield pending[:batch_size]
            del pending[:batch_size]
    for start in range(0, len(pending), batch_size):
        yield pending[start:start + batch_size]


def iter_records(handle: Any, fmt: str) -> Iterator[Any]:
    """Yields the raw records of one open binary file.

    Args:
      handle: a binary file object, already decompressed.
      fmt: `jsonl` or `csv` (see `table_format`).

    Yields:
      bytes (one JSON line), dict[str, str] (one CSV row) or MalformedRecord.
    """
    if fmt == JSONL:
        for line in _iter_lines(handle):
            if line.strip():
                yield line
        return
    yield from _iter_csv(handle)


def _iter_csv(handle: Any) -> Iterator[dict[str, str] | MalformedRecord]:
    """CSV rows (dicts keyed by the header) or MalformedRecords of a binary stream.

    A record is one line, or several when a quoted field holds a newline (an
    odd number of `"` so far means a quote is still open). A record still
    open after MAX_CSV_RECORD_LINES lines or at the end of the file, or one
    spanning lines that does not split into the header's column count, is
    taken for a stray quote: its first line alone is a bad record and
    reading resumes at the next line, so one stray quote costs one row.
    (Python's csv reader would read on to the next quote, swallowing rows,
    and fail the job once the field passes its size limit.) A line that is
    not UTF-8 is a bad record of its own (shown with U+FFFD for the bad
    bytes): decoding it leniently would merge ids that differ only in those
    bytes (Latin-1 "josé" and "josè" would both read "jos\ufffd").
    """
    lines = _decoded_lines(handle)
    pending: collections.deque[str] = collections.deque()
    header: list[str] | None = None
    while True:
        line = pending.popleft() if pending else next(lines, None)
        if line is None:
            return
        if line.__class__ is _NotUtf8 and header is not None:
            yield MalformedRecord(str(line), line.reason)
            continue
        if '"' not in line:  # the common case: csv's own split, without csv
            text, row = line, line.rstrip("\r").split(",")
        else:
            parts, quotes = [line], line.count('"')
            while quotes % 2 and len(parts) < MAX_CSV_RECORD_LINES:
                more = pending.popleft() if pending else next(lines, None)
                if more is None:
                    break
                parts.append(more)
                quotes += more.count('"')
            text = "\n".join(parts)
            bad_text = next((p for p in parts if p.__class__ is _NotUtf8), None)
            if bad_text is not None and not quotes % 2:
                yield MalformedRecord(text, bad_text.reason)  # the whole quoted record
                continue
            reason = "unterminated quote" if quotes % 2 else ""
            row = []
            if not reason:
                try:
                    row = next(csv.reader([text + "\n"]), [])
                except csv.Error as err:
                    reason = f"bad CSV: {err}"
            if len(parts) > 1 and (reason or (header is not None and len(row) != len(header))):
                reason = "unterminated quote"  # the first line's quote was a stray one
            if reason:
                pending.extendleft(reversed(parts[1:]))
                yield MalformedRecord(line, reason)
                continue
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if header is None:
            header = [c.strip() for c in row]  # (a non-UTF-8 header keeps its U+FFFD)
        elif len(row) != len(header):
            yield MalformedRecord(text, f"{len(row)} columns, header has {len(header)}")
        else:
            yield dict(zip(header, row))


class _NotUtf8(str):
    """A CSV line that is not valid UTF-8: its lenient decoding, and why."""
    reason: str


def _decoded_lines(handle: Any) -> Iterator[str]:
    """The stream's lines as str; a line that is not UTF-8 comes as a _NotUtf8."""
    for line in _iter_lines(handle):
        try:
            yield line.decode("utf-8")
        except UnicodeDecodeError as err:
            bad = _NotUtf8(line.decode("utf-8", errors="replace"))
            bad.reason = f"not UTF-8 text (byte {line[err.start]:#04x} at offset {err.start})"
            yield bad


class _GzipReader:
    """Decompressing reader over a raw gzip stream that notices truncation.

    Python's gzip stream (and Beam's compressed file) stop quietly where a
    cut-off file ends, so half a file reads as a smaller, valid table. This
    reader raises instead when the input ends inside a gzip member, or when
    a `.gz` file is empty (0 bytes: no gzip stream at all, e.g. a copy that
    never started; a gzip of an empty text still has its header).
    Concatenated members (`cat a.gz b.gz`) are read as one stream, as gzip
    does.
    """

    def __init__(self, raw: Any, path: str):
        self._raw, self._path = raw, path
        self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._started = False

    def read(self, size: int) -> bytes:
        while True:
            chunk = self._raw.read(size)
            if not chunk:
                if not self._started:
                    raise RawTableError(
                        f"{self._path}: empty .gz file (0 bytes, not a gzip stream); re-copy "
                        "it or remove it from the table")
                if not self._inflate.eof:
                    raise RawTableError(
                        f"{self._path}: truncated gzip file (it ends inside the compressed "
                        "stream); re-copy it or remove it from the table")
                return b""
            out = []
            while chunk:
                if self._inflate.eof:  # the next member of a concatenated gzip
                    self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
                self._started = True
                try:
                    out.append(self._inflate.decompress(chunk))
                except zlib.error as err:
                    raise RawTableError(f"{self._path}: not a valid gzip file ({err})") from None
                chunk = self._inflate.unused_data if self._inflate.eof else b""
            data = b"".join(out)
            if data:
                return data


class _ReadFileBatches(beam.DoFn):
    """ReadableFile -> lists of at most `batch_size` raw records."""

    def __init__(self, batch_size: int):
        self._batch_size = batch_size

    def process(self, readable_file: fileio.ReadableFile) -> Iterator[list[Any]]:
        path = readable_file.metadata.path
        fmt = table_format(path)
        gzipped = path.lower().endswith(".gz")
        with readable_file.open(mime_type="application/octet-stream",
                                compression_type=CompressionTypes.UNCOMPRESSED) as raw:
            handle = _GzipReader(raw, path) if gzipped else raw
            if fmt == JSONL:
                yield from _iter_jsonl_batches(handle, self._batch_size)
                return
            batch: list[Any] = []
            for record in iter_records(handle, fmt):
                batch.append(record)
                if len(batch) >= self._batch_size:
                    yield batch
                    batch = []
            if batch:
                yield batch


def check_table_matches(table: str, file_pattern: str) -> list[str]:
    """The files a table's glob matches, checked when the pipeline is built.

    Raises:
      RawTableError: the glob matches no file, naming the table and glob, or
        a matched file's name gives no known format (`table_format`).
    """
    try:
        matched = FileSystems.match([file_pattern])[0].metadata_list
    except (OSError, ValueError) as err:  # Beam raises BeamIOError (an IOError)
        raise RawTableError(f"{table} table: cannot list {file_pattern!r}: {err}") from err
    if not matched:
        raise RawTableError(f"{table} table: no file matches {file_pattern!r}")
    paths = sorted(m.path for m in matched)
    for path in paths:
        try:
            table_format(path)
        except RawTableError as err:
            raise RawTableError(f"{table} table: {err}") from None
    return paths


class ReadRawTable(beam.PTransform):
    """Reads every file matching a glob into batches of raw records.

    Output elements are lists of records (see `iter_records`); gzip is
    detected from the `.gz` suffix. A glob that matches no file fails when
    the pipeline is built (naming the table and the glob); a file of unknown
    format or a corrupt or truncated gzip fails the run naming the file: a
    config or copy error, not a bad row.
    """

    def __init__(self, file_pattern: str, batch_size: int = DEFAULT_BATCH_SIZE,
                 table: str = "raw"):
        super().__init__()
        self._pattern = file_pattern
        self._batch_size = batch_size
        self._table = table

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        check_table_matches(self._table, self._pattern)
        return (pbegin
                | "MatchFiles" >> fileio.MatchFiles(self._pattern,
                                                    EmptyMatchTreatment.DISALLOW)
                | "ReadMatches" >> fileio.ReadMatches()
                | "ReadBatches" >> beam.ParDo(_ReadFileBatches(self._batch_size)))


# ---- TFRecord writing --------------------------------------------------------
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
# A record's length header (8-byte length + its masked crc) depends only on
# the length, and records of one kind have a few hundred distinct lengths.
_LENGTH_HEADERS: dict[int, bytes] = {}
_MAX_LENGTH_HEADERS = 1 << 16


def _masked_crc32c(data: bytes) -> int:
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _length_header(size: int) -> bytes:
    """A record's 12-byte TFRecord header: its length and the length's masked crc."""
    header = _LENGTH_HEADERS.get(size)
    if header is None:
        length = _U64.pack(size)
        header = length + _U32.pack(_masked_crc32c(length))
        if len(_LENGTH_HEADERS) < _MAX_LENGTH_HEADERS:
            _LENGTH_HEADERS[size] = header
    return header


def tfrecord_frames(records: list[bytes]) -> bytes:
    """Frames records in the TFRecord format: length, crc, data, crc.

    `_fastloops.tfrecord_frames` does it in one C pass when built (see
    beam_jobs.compiled); `_tfrecord_frames_py` is its Python twin.
    """
    if records.__class__ is list and compiled_loops.wanted(None):
        return compiled_loops.module().tfrecord_frames(records)
    return _tfrecord_frames_py(records)


def _tfrecord_frames_py(records: list[bytes]) -> bytes:
    """`tfrecord_frames` in Python.

    Column by column rather than record by record (this runs once per
    written example): the headers are cached per length, the crcs one C call
    each through `map`, masked with numpy over the whole batch, and the
    three pieces of every record interleaved by slice assignment.
    """
    if not records:
        return b""
    headers = list(map(_LENGTH_HEADERS.get, map(len, records)))
    if None in headers:
        headers = [h if h is not None else _length_header(len(r))
                   for h, r in zip(headers, records)]
    crcs = np.fromiter(map(_crc32c, records), dtype=np.uint64, count=len(records))
    masked = (((crcs >> np.uint64(15)) | (crcs << np.uint64(17))) + np.uint64(0xA282EAD8)) \
        & np.uint64(0xFFFFFFFF)
    trailers = masked.astype("<u4").tobytes()
    parts: list[bytes | None] = [None] * (3 * len(records))
    parts[0::3] = headers
    parts[1::3] = records
    parts[2::3] = [trailers[i:i + 4] for i in range(0, len(trailers), 4)]
    return b"".join(parts)


_COMPRESSOR_LOCK = threading.Lock()
_COMPRESSOR: concurrent.futures.ThreadPoolExecutor | None = None


def _compressor() -> concurrent.futures.ThreadPoolExecutor:
    """The process's one background compression thread (created on first use)."""
    global _COMPRESSOR
    with _COMPRESSOR_LOCK:
        if _COMPRESSOR is None:
            _COMPRESSOR = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="tfrecord-gzip")
        return _COMPRESSOR


_MAX_QUEUED_CHUNKS = 8  # per open file, of `_GzipWriter.chunk_bytes` each


class _GzipWriter:
    """Gzip stream over a raw file handle at a chosen compression level.

    Beam's compressed files use zlib's default level (6); level 1 writes the
    same gzip format several times faster, which matters because compression
    is the largest single cost of writing examples.

    Data is buffered to `chunk_bytes` and each chunk compressed and written
    by one background thread: zlib and file writes release the GIL, so on a
    second core this overlaps with building the next examples. The thread
    runs tasks in submission order, so the file's bytes are exactly those of
    compressing everything in order; a failed chunk's error is raised by the
    next `write` that submits a chunk, or by `close`, which waits for the
    rest. At most `_MAX_QUEUED_CHUNKS` chunks per file wait for
    the thread: when examples are built faster than they compress, `write`
    waits for the oldest instead of holding the backlog in memory (unbounded,
    it held ~1.5 GB at 10M events once the per-event loops were compiled).
    """

    def __init__(self, raw: Any, level: int, chunk_bytes: int = 1 << 20):
        self._raw = raw
        self._zlib = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        self._chunk_bytes = chunk_bytes
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._tasks: collections.deque[concurrent.futures.Future] = collections.deque()

    def _compress_and_write(self, data: bytes) -> None:
        out = self._zlib.compress(data)
        if out:
            self._raw.write(out)

    def _finish(self) -> None:
        self._raw.write(self._zlib.flush())
        self._raw.close()

    def _submit_pending(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending, self._pending_bytes = [], 0
            tasks = self._tasks
            while tasks and tasks[0].done():
                tasks.popleft().result()  # re-raises a failed chunk's error now
            if len(tasks) >= _MAX_QUEUED_CHUNKS:
                tasks.popleft().result()
            tasks.append(_compressor().submit(self._compress_and_write, data))

    def write(self, data: bytes) -> None:
        self._pending.append(data)
        self._pending_bytes += len(data)
        if self._pending_bytes >= self._chunk_bytes:
            self._submit_pending()

    def close(self) -> None:
        self._submit_pending()
        self._tasks.append(_compressor().submit(self._finish))
        tasks, self._tasks = self._tasks, collections.deque()
        for task in tasks:
            task.result()


class _TFRecordBatchSink(filebasedsink.FileBasedSink):
    """A gzip TFRecord sink whose elements are lists of serialized records."""

    def __init__(self, file_path_prefix: str, file_name_suffix: str, num_shards: int,
                 compression_level: int):
        super().__init__(file_path_prefix, coder=None, file_name_suffix=file_name_suffix,
                         num_shards=num_shards, mime_type="application/octet-stream",
                         compression_type=CompressionTypes.UNCOMPRESSED)
        self._level = compression_level

    def open(self, temp_path: str) -> _GzipWriter:
        raw = FileSystems.create(temp_path, self.mime_type, CompressionTypes.UNCOMPRESSED)
        return _GzipWriter(raw, self._level)

    def write_record(self, file_handle: Any, value: list[bytes]) -> None:
        file_handle.write(tfrecord_frames(value))


class WriteTFRecordBatches(beam.PTransform):
    """Writes lists of serialized records as gzip TFRecords.

    Files are `<prefix>-SSSSS-of-NNNNN<suffix>`, gzip at `compression_level`.

    At least one (possibly empty) shard is always written, so a reader's
    `data-*` glob never comes up empty.
    """

    def __init__(self, file_path_prefix: str, file_name_suffix: str = ".tfrecord.gz",
                 num_shards: int = 0, compression_level: int = 1):
        super().__init__()
        self._sink = _TFRecordBatchSink(file_path_prefix, file_name_suffix, num_shards,
                                        compression_level)

    def expand(self, pcoll: beam.PCollection) -> beam.pvalue.PDone:
        return pcoll | "Write" >> iobase.Write(self._sink)
