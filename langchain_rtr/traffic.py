"""The traffic log: every routed call kept as a routing record, written off the call path.

Every routed call measures what the router only predicted: the output tokens of the pair that
answered, its cost and latency. `TrafficLog` keeps them, with the decision's predictions and a
call id, so the router can later be refitted on its own traffic (`rtr train --update`), and a
score that arrives later (a user's thumbs-up, a grader's verdict) is attached by call id
(`TrafficLog.record_feedback`, or :func:`record_feedback` from another process).

The call path only puts the finished result on a bounded queue (`queue.Queue.put_nowait`); a
background thread turns it into a row and writes it. When the queue is full the row is dropped
and counted (`TrafficLog.stats.dropped`): a slow disk never slows a routed call.

Privacy: the question text (and the answer, which often quotes it) is written only with
``store_questions=True``. Otherwise a row holds the question's SHA-256, its embedding from the
router's encoder and its three question features (counts of words, numbers and sentences), which
is what refitting needs; the embedding is computed in the writer thread (a cache hit: the router
has just encoded the question).

Sinks: a path ending in ``.jsonl`` is one JSON object per line, appended; any other path is a
folder of Parquet files (pyarrow), one per written batch, each renamed into place whole.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import queue
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from langchain_rtr.data.records import FIELD_NAMES
from langchain_rtr.errors import ConfigError, RTRError
from langchain_rtr.predictor.features import question_features

TRAFFIC_SOURCE = "traffic"
"""The ``source`` of every logged call (a routing record needs one)."""

COLUMNS: tuple[str, ...] = (
    "kind",
    "call_id",
    "time",
    *FIELD_NAMES,
    "question_sha256",
    "embedding",
    "encoder",
    "question_features",
    "routed_model",
    "routed_strategy",
    "predicted_correctness",
    "predicted_tokens",
    "predicted_usd",
    "predicted_cost",
    "cost_unit",
    "policy",
    "status",
    "max_tokens",
    "fell_back",
    "continued",
)
"""Every row has these keys: a call (``kind="call"``) or a later score (``kind="feedback"``).
The routing-record fields are among them, so a scored call is a `RoutingRecord`."""


class TrafficLogError(RTRError, ValueError):
    """A traffic log that cannot be opened, written or read as asked.

    Attributes:
        field: The feedback field at fault (``call_id`` or ``score``), if a feedback was bad.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class _Encoder(Protocol):
    id: str

    def encode(self, texts: Sequence[str]) -> Any: ...


@dataclass
class TrafficStats:
    """Counts since the log was opened (read them any time; they only grow)."""

    submitted: int = 0
    written: int = 0
    dropped: int = 0
    """Rows lost because the queue was full (the call path never waits)."""
    failed: int = 0
    """Rows the writer could not write (the error is kept in `TrafficLog.last_error`)."""


def question_hash(question: str) -> str:
    """The SHA-256 of a question's UTF-8 text, hex."""
    return hashlib.sha256(question.encode("utf-8", "surrogatepass")).hexdigest()


def _check_score(score: float, call_id: str) -> float:
    if isinstance(score, bool) or not isinstance(score, int | float) or not 0.0 <= score <= 1.0:
        raise TrafficLogError(
            f"feedback for call {call_id!r}: score must be in [0, 1], got {score!r}",
            field="score",
        )
    return float(score)


def feedback_row(call_id: str, score: float) -> dict[str, Any]:
    """The row that attaches ``score`` to call ``call_id``."""
    if not isinstance(call_id, str) or not call_id:
        raise TrafficLogError(
            f"feedback: call_id must be a non-empty string, got {call_id!r}", field="call_id"
        )
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row.update(
        kind="feedback", call_id=call_id, time=time.time(), score=_check_score(score, call_id)
    )
    return row


def call_row(
    result: Any,
    *,
    store_questions: bool,
    embedding: Sequence[float] | None = None,
    encoder_id: str | None = None,
) -> dict[str, Any]:
    """The row of one finished call (an `RTRResult` with its ``call_id``)."""
    question: str = result.question
    digest = question_hash(question)
    routing = result.routing
    usage = result.usage
    pair_model = result.model or routing.model
    pair_strategy = result.strategy or routing.strategy
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row.update(
        kind="call",
        call_id=result.call_id,
        time=time.time(),
        question=question if store_questions else f"sha256:{digest}",
        source=TRAFFIC_SOURCE,
        model=pair_model,
        strategy=pair_strategy,
        output_tokens=None if usage is None else int(usage.output_tokens),
        input_tokens=None if usage is None else int(usage.input_tokens),
        cost=result.cost,
        question_id=digest,
        latency_s=float(result.latency_s),
        response=_text(result) if store_questions else None,
        error=result.error,
        question_sha256=digest,
        embedding=None if embedding is None else [float(x) for x in embedding],
        encoder=encoder_id,
        question_features=[float(x) for x in question_features([question])[0]],
        routed_model=routing.model,
        routed_strategy=routing.strategy,
        predicted_correctness=routing.predicted_correctness,
        predicted_tokens=routing.predicted_tokens,
        predicted_usd=routing.predicted_usd,
        predicted_cost=routing.predicted_cost,
        cost_unit=routing.cost_unit,
        policy=None if routing.policy is None else json.dumps(routing.policy, sort_keys=True),
        status=routing.status,
        max_tokens=result.max_tokens,
        fell_back=bool(result.fell_back),
        continued=bool(result.continued),
    )
    return row


def _text(result: Any) -> str | None:
    message = result.message
    return None if message is None else str(message.text)


# ------------------------------------------------------------------------------ sinks


def _is_jsonl(path: Path) -> bool:
    return path.suffix == ".jsonl"


def write_rows(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Append rows to a log: lines of a JSONL file, or one more Parquet file in a folder."""
    if not rows:
        return
    if _is_jsonl(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        text = "".join(json.dumps(dict(r), allow_nan=False) + "\n" for r in rows)
        with path.open("a", encoding="utf-8") as handle:
            handle.write(text)
        return
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - pyarrow is a dependency
        raise TrafficLogError(f"{path}: a Parquet traffic log needs pyarrow ({exc})") from exc
    path.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist([dict(r) for r in rows], schema=_schema())
    name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
    tmp = path / f".{name}.tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, path / name)


def _schema() -> Any:
    import pyarrow as pa

    types = {
        "time": pa.float64(),
        "score": pa.float64(),
        "output_tokens": pa.int64(),
        "input_tokens": pa.int64(),
        "cost": pa.float64(),
        "latency_s": pa.float64(),
        "embedding": pa.list_(pa.float32()),
        "question_features": pa.list_(pa.float32()),
        "predicted_correctness": pa.float64(),
        "predicted_tokens": pa.float64(),
        "predicted_usd": pa.float64(),
        "predicted_cost": pa.float64(),
        "max_tokens": pa.int64(),
        "fell_back": pa.bool_(),
        "continued": pa.bool_(),
    }
    return pa.schema([(name, types.get(name, pa.string())) for name in COLUMNS])


def read_rows(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every row of a log (calls and feedback), in the order written.

    Raises:
        TrafficLogError: No such log, or a line that is not a JSON object (file and line).
    """
    path = Path(path)
    if _is_jsonl(path):
        if not path.is_file():
            raise TrafficLogError(f"{path}: no such traffic log")
        rows = []
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as exc:
                    raise TrafficLogError(f"{path}:{number}: not JSON ({exc})") from exc
                if not isinstance(row, dict) or row.get("kind") not in ("call", "feedback"):
                    raise TrafficLogError(f"{path}:{number}: not a traffic log row")
                rows.append(row)
        return rows
    if not path.is_dir():
        raise TrafficLogError(f"{path}: no such traffic log (a .jsonl file or a Parquet folder)")
    import pyarrow.parquet as pq

    out: list[dict[str, Any]] = []
    for part in sorted(path.glob("part-*.parquet")):
        out.extend(pq.read_table(part).to_pylist())
    return out


def record_feedback(path: str | os.PathLike[str], call_id: str, score: float) -> None:
    """Attach ``score`` in [0, 1] to a logged call, from any process (the last score wins)."""
    write_rows(Path(path), [feedback_row(call_id, score)])


# ------------------------------------------------------------------------------ the log

_STOP = object()


class TrafficLog:
    """Writes routed calls to a sink from a background thread, through a bounded queue.

    Args:
        path: ``*.jsonl`` (a JSONL file, appended) or a folder (Parquet files).
        store_questions: Write the question and answer texts; default: only the question's
            SHA-256 and its embedding.
        encoder: The router's question encoder, for the embeddings (``None``: none written;
            the front ends pass their router's).
        max_queue: Rows waiting at most; beyond it rows are dropped and counted.
        batch_size: Rows written at once at most.
        flush_interval_s: A Parquet batch waits this long for more rows (JSONL rows are
            appended as they come).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        store_questions: bool = False,
        encoder: _Encoder | None = None,
        max_queue: int = 10_000,
        batch_size: int = 256,
        flush_interval_s: float = 1.0,
    ) -> None:
        if max_queue < 1 or batch_size < 1 or flush_interval_s < 0:
            raise ConfigError(
                f"TrafficLog: max_queue ({max_queue}) and batch_size ({batch_size}) must be >= 1, "
                f"flush_interval_s ({flush_interval_s}) >= 0"
            )
        self.path = Path(path)
        self.store_questions = bool(store_questions)
        self.encoder = encoder
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.stats = TrafficStats()
        self.last_error: BaseException | None = None
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queue)
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="rtr-traffic-log", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def __repr__(self) -> str:
        return f"TrafficLog({str(self.path)!r}, store_questions={self.store_questions})"

    # -- the call path: never waits ----------------------------------------------------------

    def _put(self, item: Any) -> bool:
        with self._lock:
            self.stats.submitted += 1
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            with self._lock:
                self.stats.dropped += 1
            return False
        return True

    def submit(self, result: Any) -> bool:
        """Queue a finished call (an `RTRResult`); False when it was dropped (queue full)."""
        if self._closed:
            return False
        return self._put(("call", result))

    def record_feedback(self, call_id: str, score: float) -> bool:
        """Attach ``score`` in [0, 1] to call ``call_id`` (checked now, written in turn)."""
        return self._put(("row", feedback_row(call_id, score)))

    # -- the writer thread -------------------------------------------------------------------

    def _embeddings(self, calls: list[Any]) -> list[Any]:
        """The calls' question vectors, in one encoder call (the router's cache answers it)."""
        if self.encoder is None or not calls:
            return [None] * len(calls)
        try:
            return list(self.encoder.encode([c.question for c in calls]))
        except Exception as exc:  # noqa: BLE001 - the rows are kept, without their vectors
            self._failed(exc, 0)
            return [None] * len(calls)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                self._queue.task_done()
                return
            batch, stop = [first], False
            deadline = time.monotonic() + (0.0 if _is_jsonl(self.path) else self.flush_interval_s)
            while len(batch) < self.batch_size:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                batch.append(item)
            self._write(batch)
            for _ in range(len(batch) + stop):
                self._queue.task_done()
            if stop:
                return

    def _write(self, batch: list[tuple[str, Any]]) -> None:
        calls = [value for kind, value in batch if kind == "call"]
        vectors = iter(self._embeddings(calls))
        encoder_id = None if self.encoder is None else str(self.encoder.id)
        rows = []
        for kind, value in batch:
            try:
                if kind == "row":
                    rows.append(dict(value))
                    continue
                rows.append(
                    call_row(
                        value,
                        store_questions=self.store_questions,
                        embedding=next(vectors),
                        encoder_id=encoder_id,
                    )
                )
            except Exception as exc:  # noqa: BLE001 - one bad call must not lose the others
                self._failed(exc, 1)
        try:
            write_rows(self.path, rows)
        except Exception as exc:  # noqa: BLE001 - the log never takes the process down
            self._failed(exc, len(rows))
            return
        with self._lock:
            self.stats.written += len(rows)

    def _failed(self, exc: BaseException, count: int) -> None:
        with self._lock:
            self.stats.failed += count
            self.last_error = exc

    def flush(self) -> None:
        """Wait until every queued row is written (or failed)."""
        self._queue.join()

    def close(self) -> None:
        """Write what is queued and stop the writer (later calls are not logged)."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join()
        atexit.unregister(self.close)


def open_traffic_log(
    log: TrafficLog | str | os.PathLike[str] | None, router: Any
) -> TrafficLog | None:
    """The front ends' traffic log: a given one, one at a path, or none.

    A log without an encoder gets the router's predictor's, so its embeddings are the ones
    the router routes with.
    """
    if log is None:
        return None
    if not isinstance(log, TrafficLog):
        if not isinstance(log, str | os.PathLike):
            raise ConfigError(f"traffic_log: expected a TrafficLog or a path, got {log!r}")
        log = TrafficLog(log)
    if log.encoder is None:
        log.encoder = getattr(getattr(router, "predictor", None), "encoder", None)
    return log
