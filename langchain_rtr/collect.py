"""Profiling live models: run every (model, strategy) pair over a question set, grade, record.

This is how a user gets routing records for *their* models (``rtr collect``): each cell
(question, model, strategy) is one call; its answer is read by the strategy (PAL runs the
program in the sandbox), graded against the gold answer by answer type, and appended to a JSONL
file as one :class:`~langchain_rtr.data.records.RoutingRecord` per line.

Properties the collection guarantees:
    * **Append-only and durable**: each finished call is one line, written in one ``write``,
      flushed and fsync'd, so a crash or Ctrl-C loses at most the calls in flight.
    * **Resumable**: a rerun reads the file and runs only the cells without a successful
      record; a successful cell is never written twice. A cell whose last record is an error is
      tried again. A partial last line (a crash mid-write) is cut off with a warning.
    * **Errors are not wrong answers**: a call that fails (connection refused, 5xx, timeout
      after the retries; or any other exception) is written with ``score=None`` and ``error``
      set, which training and evaluation leave out.
    * **Per-endpoint concurrency**: ``concurrency_per_endpoint`` workers per base URL, so two
      models on one server share its limit and a dead endpoint does not hold up the others. An
      endpoint that fails ``give_up_after`` calls in a row is abandoned for this run; its
      remaining cells stay missing (a rerun does them) instead of each waiting out its retries.
    * **Retries**: endpoint failures only (see :func:`~langchain_rtr.runnable.is_endpoint_failure`),
      with exponential backoff (tenacity).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import os
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from langchain_rtr.data.io import read_records
from langchain_rtr.data.matrix import RoutingSet
from langchain_rtr.data.records import RecordError, RoutingRecord
from langchain_rtr.errors import ConfigError
from langchain_rtr.models import chat_model_for
from langchain_rtr.questions import Question
from langchain_rtr.runnable import is_endpoint_failure
from langchain_rtr.specs import ModelSpec
from langchain_rtr.strategies.base import Strategy, output_text
from langchain_rtr.strategies.grading import grade

__all__ = [
    "PAPER_STRATEGIES",
    "CollectError",
    "CollectSummary",
    "PairStats",
    "collect",
    "collected_records",
    "collected_routing_set",
    "plan_pairs",
    "repair_tail",
    "run_collect",
]

logger = logging.getLogger(__name__)

PAPER_STRATEGIES: tuple[str, ...] = ("direct", "cot", "cod", "pal")
"""The four strategies of the paper, run for every model by default."""

Cell = tuple[str, str, str]
"""(question_id, model, strategy): what one call covers and what resuming keys on."""

DEFAULT_MAX_TOKENS = 512
DEFAULT_REQUEST_TIMEOUT_S = 300.0


class CollectError(ConfigError):
    """The collection cannot start: bad output path, unknown model or strategy, empty grid."""


@dataclass
class PairStats:
    """What the output file holds for one (model, strategy) pair of the grid.

    Attributes:
        cells: Cells of the grid for this pair.
        ok: Cells with a successful (graded) record.
        correct: Sum of scores over ``ok`` cells.
        output_tokens: Sum of output tokens over ``ok`` cells that report them.
        errors: Cells whose last record is an error.
    """

    cells: int = 0
    ok: int = 0
    correct: float = 0.0
    output_tokens: int = 0
    errors: int = 0

    @property
    def accuracy(self) -> float:
        """Mean score of the successful cells (NaN when none)."""
        return self.correct / self.ok if self.ok else math.nan

    @property
    def mean_output_tokens(self) -> float:
        """Mean output tokens of the successful cells (NaN when none)."""
        return self.output_tokens / self.ok if self.ok else math.nan

    @property
    def missing(self) -> int:
        """Cells with no record at all."""
        return self.cells - self.ok - self.errors


@dataclass
class CollectSummary:
    """What one :func:`collect` run did, and where the file stands afterwards.

    Attributes:
        out_path: The JSONL file.
        cells: Cells in the grid (questions x applicable pairs).
        done_before: Cells that already had a successful record when the run started.
        attempted: Cells this run finished a call for (success or error).
        succeeded: Of those, calls that returned an answer (graded).
        failed: Of those, calls recorded as errors.
        not_run: Cells this run left without a record (interrupted, or endpoint abandoned).
        interrupted: The run was stopped (Ctrl-C) before the grid was done.
        abandoned: Endpoints given up on after too many failures in a row.
        skipped_pairs: Pairs not run, with why (a thinking strategy on a non-reasoning model).
        repaired_bytes: Bytes of a partial last line cut from the file before the run.
        elapsed_s: Wall-clock seconds.
        pairs: Per pair ``"model/strategy"``: the state of the file after the run.
    """

    out_path: Path
    cells: int = 0
    done_before: int = 0
    attempted: int = 0
    succeeded: int = 0
    failed: int = 0
    not_run: int = 0
    interrupted: bool = False
    abandoned: list[str] = field(default_factory=list)
    skipped_pairs: dict[str, str] = field(default_factory=dict)
    repaired_bytes: int = 0
    elapsed_s: float = 0.0
    pairs: dict[str, PairStats] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """Whether every cell of the grid now has a successful record."""
        return all(p.ok == p.cells for p in self.pairs.values())

    @property
    def remaining(self) -> int:
        """Cells still without a successful record (a rerun would do these)."""
        return sum(p.cells - p.ok for p in self.pairs.values())

    def format(self) -> str:
        """A plain-text summary: counts, then one line per pair."""
        state = "interrupted" if self.interrupted else "complete" if self.complete else "partial"
        lines = [
            f"collect {state}: {self.out_path}",
            f"  cells {self.cells}: {self.done_before} done before, {self.attempted} run now "
            f"({self.succeeded} ok, {self.failed} errors), {self.not_run} not run; "
            f"{self.remaining} still to do; {self.elapsed_s:.1f} s",
        ]
        if self.repaired_bytes:
            lines.append(f"  cut a partial last line ({self.repaired_bytes} bytes) before resuming")
        for endpoint in self.abandoned:
            lines.append(f"  gave up on endpoint {endpoint} after repeated failures")
        for pair, why in self.skipped_pairs.items():
            lines.append(f"  skipped {pair}: {why}")
        if self.pairs:
            width = max(len(p) for p in self.pairs)
            lines.append(
                f"  {'pair':<{width}}  {'ok':>5} {'err':>4} {'miss':>5} {'acc':>6} {'out tok':>8}"
            )
            for name, p in self.pairs.items():
                acc = f"{p.accuracy:.3f}" if p.ok else "-"
                tok = f"{p.mean_output_tokens:.1f}" if p.ok else "-"
                lines.append(
                    f"  {name:<{width}}  {p.ok:>5} {p.errors:>4} {p.missing:>5} {acc:>6} {tok:>8}"
                )
        return "\n".join(lines)


# --------------------------------------------------------------------------- the output file
def repair_tail(path: str | os.PathLike[str]) -> int:
    """Make the file end on a complete line; returns the bytes cut (0 if none).

    A crash in the middle of a write leaves a partial last line. If that line is a whole JSON
    object (only the newline is missing) the newline is added; otherwise the partial line is cut
    and a warning logged: its call is redone by the next run, so nothing is lost silently.
    """
    file = Path(path)
    if not file.is_file():
        return 0
    with file.open("rb+") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size == 0:
            return 0
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return 0
        # find the start of the last line
        chunk = 1 << 16
        pos = size
        start = 0
        while pos > 0:
            read_from = max(0, pos - chunk)
            f.seek(read_from)
            block = f.read(pos - read_from)
            nl = block.rfind(b"\n")
            if nl >= 0:
                start = read_from + nl + 1
                break
            pos = read_from
        f.seek(start)
        tail = f.read()
        try:
            row = json.loads(tail.decode("utf-8"))
            RoutingRecord.from_dict(row)
        except (UnicodeDecodeError, json.JSONDecodeError, RecordError, TypeError):
            f.truncate(start)
            f.flush()
            os.fsync(f.fileno())
            logger.warning(
                "%s: cut a partial last line of %d bytes (a crash mid-write); its call will be "
                "run again",
                file,
                len(tail),
            )
            return len(tail)
        f.seek(size)
        f.write(b"\n")
        f.flush()
        os.fsync(f.fileno())
        return 0


class _Writer:
    """Appends records, one line per call, each written whole and made durable."""

    def __init__(self, path: Path, fsync: bool) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._fsync = fsync

    def write(self, record: RoutingRecord) -> None:
        line = json.dumps(record.to_dict(), ensure_ascii=False, allow_nan=False) + "\n"
        data = line.encode("utf-8")
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        if self._fsync:
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1


def _check_out_path(out_path: str | os.PathLike[str]) -> Path:
    path = Path(out_path)
    if path.suffix.lower() not in (".jsonl", ".ndjson"):
        raise CollectError(
            f"{path}: the collection output must be a .jsonl file (appended line by line); "
            "convert it to a routing set afterwards with collected_routing_set()"
        )
    if path.exists() and not path.is_file():
        raise CollectError(f"{path}: exists and is not a file")
    return path


def _final_by_cell(records: Sequence[RoutingRecord]) -> dict[Cell, RoutingRecord]:
    """The record that counts for each cell: the first success, else the last error."""
    final: dict[Cell, RoutingRecord] = {}
    for r in records:
        cell = (r.key, r.model, r.strategy)
        old = final.get(cell)
        if old is None or (not old.ok):
            final[cell] = r
    return final


def collected_records(path: str | os.PathLike[str]) -> list[RoutingRecord]:
    """The records of a collection file, one per cell: successes, and errors never redone.

    A cell that failed and then succeeded on a rerun keeps only its success; if a file somehow
    holds two successes of one cell (two runs at once), the first is kept.
    """
    file = Path(path)
    repair_tail(file)
    return list(_final_by_cell(read_records(file).records).values())


def collected_routing_set(
    path: str | os.PathLike[str],
    name: str,
    models: Mapping[str, ModelSpec],
    strategies: Sequence[Strategy] | Mapping[str, str],
    *,
    attribution: str = "",
    include_errors: bool = False,
) -> RoutingSet:
    """A :class:`RoutingSet` from a collection file, ready for ``save_routing_set``.

    Args:
        path: The JSONL written by :func:`collect`.
        name: The set's name.
        models: Specs of the models (descriptions, prices); endpoints and keys are dropped.
        strategies: The strategies (or name -> description) the records use.
        attribution: Text of ATTRIBUTION.md.
        include_errors: Keep cells whose only record is an error (``score=None``).
    """
    records = [r for r in collected_records(path) if include_errors or r.ok]
    used_models = {r.model for r in records}
    specs = {
        n: s.model_copy(update={"base_url": None, "api_key": None, "served_name": None})
        for n, s in models.items()
        if n in used_models
    }
    if isinstance(strategies, Mapping):
        descriptions = dict(strategies)
    else:
        descriptions = {s.name: s.description for s in strategies}
    used_strategies = {r.strategy for r in records}
    descriptions = {k: v for k, v in descriptions.items() if k in used_strategies}
    return RoutingSet(name, records, specs, descriptions, attribution)


# --------------------------------------------------------------------------- planning
def plan_pairs(
    model_names: Sequence[str],
    strategies: Sequence[Strategy],
    specs: Mapping[str, ModelSpec],
) -> tuple[list[tuple[str, Strategy]], dict[str, str]]:
    """The (model, strategy) pairs to run, and the pairs skipped with why.

    Thinking-toggle strategies (``strategy.thinking`` set) only run on models whose spec says
    ``reasoning: true``; every other strategy runs on every model.
    """
    pairs: list[tuple[str, Strategy]] = []
    skipped: dict[str, str] = {}
    for model in model_names:
        spec = specs.get(model)
        for strategy in strategies:
            if strategy.thinking is not None and not (spec is not None and spec.reasoning):
                skipped[f"{model}/{strategy.name}"] = (
                    "a thinking toggle needs a model with reasoning: true"
                )
                continue
            pairs.append((model, strategy))
    return pairs, skipped


def _endpoint_of(name: str, model: BaseChatModel, spec: ModelSpec | None) -> str:
    if spec is not None and spec.base_url:
        return spec.base_url.rstrip("/")
    for attr in ("openai_api_base", "base_url", "api_url"):
        value = getattr(model, attr, None)
        if isinstance(value, str) and value:
            return value.rstrip("/")
    return f"model:{name}"


def _call_seed(seed: int, cell: Cell) -> int:
    digest = hashlib.sha256(f"{seed}\x00{cell[0]}\x00{cell[1]}\x00{cell[2]}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def _describe_error(exc: BaseException) -> str:
    text = str(exc).strip().replace("\n", " ") or type(exc).__name__
    if len(text) > 400:
        text = text[:397] + "..."
    return f"{type(exc).__name__}: {text}"


# --------------------------------------------------------------------------- progress
class _Progress:
    """A rich progress bar (rate, ETA, ok/error counts) or nothing."""

    def __init__(self, enabled: bool, total: int, description: str) -> None:
        self._progress: Any = None
        self._task: Any = None
        self.ok = 0
        self.errors = 0
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            ProgressColumn,
            Task,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.text import Text

        class RateColumn(ProgressColumn):
            def render(self, task: Task) -> Text:
                speed = task.finished_speed or task.speed
                if speed is None:
                    return Text("- calls/s", style="progress.data.speed")
                if speed < 1:
                    return Text(f"{speed * 60:.1f} calls/min", style="progress.data.speed")
                return Text(f"{speed:.2f} calls/s", style="progress.data.speed")

        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("[green]{task.fields[ok]} ok[/] [red]{task.fields[err]} err[/]"),
            RateColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(description, total=total, ok=0, err=0)

    def advance(self, ok: bool) -> None:
        if ok:
            self.ok += 1
        else:
            self.errors += 1
        if self._progress is not None:
            self._progress.update(self._task, advance=1, ok=self.ok, err=self.errors)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


# --------------------------------------------------------------------------- the run
@dataclass
class _Job:
    question: Question
    model: str
    strategy: Strategy

    @property
    def cell(self) -> Cell:
        return (self.question.id, self.model, self.strategy.name)


@dataclass
class _Endpoint:
    name: str
    queue: asyncio.Queue[_Job]
    consecutive_failures: int = 0
    abandoned: bool = False


def _resolve_models(
    models: Mapping[str, ModelSpec] | Mapping[str, BaseChatModel],
    specs: Mapping[str, ModelSpec] | None,
    request_timeout: float,
    http_client: httpx.AsyncClient,
) -> tuple[dict[str, BaseChatModel], dict[str, ModelSpec]]:
    clients: dict[str, BaseChatModel] = {}
    known_specs: dict[str, ModelSpec] = dict(specs or {})
    for name in list(models):
        value = models[name]
        if isinstance(value, ModelSpec):
            known_specs.setdefault(name, value)
            # our retry loop owns retries; the client's own would multiply them
            clients[name] = chat_model_for(
                value, max_retries=0, timeout=request_timeout, http_async_client=http_client
            )
        elif isinstance(value, BaseChatModel):
            clients[name] = value
        else:
            raise CollectError(
                f"model {name!r}: expected a ModelSpec or a langchain BaseChatModel, "
                f"got {type(value).__name__}"
            )
    return clients, known_specs


async def collect(
    questions: Sequence[Question],
    models: Mapping[str, ModelSpec] | Mapping[str, BaseChatModel],
    strategies: Sequence[Strategy],
    out_path: str | os.PathLike[str],
    *,
    specs: Mapping[str, ModelSpec] | None = None,
    concurrency_per_endpoint: int = 4,
    retries: int = 3,
    backoff_s: float = 1.0,
    backoff_max_s: float = 30.0,
    max_tokens: int | None = DEFAULT_MAX_TOKENS,
    temperature: float | None = None,
    seed: int | None = None,
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT_S,
    give_up_after: int | None = 8,
    progress: bool = True,
    fsync: bool = True,
    stop: asyncio.Event | None = None,
) -> CollectSummary:
    """Run every (model, strategy) pair over the questions and append graded routing records.

    Args:
        questions: The question set (see :func:`~langchain_rtr.questions.read_questions`).
        models: Model name -> :class:`ModelSpec` (a ``ChatOpenAI`` client is built for each,
            with no client-level retries) or -> ready chat model (e.g. a
            :class:`~langchain_rtr.models.ModelRegistry`, or fakes in tests).
        strategies: The strategies to run (thinking toggles only on reasoning models).
        out_path: The ``.jsonl`` file appended to; an existing file is resumed.
        specs: Model specs for prices, endpoints and ``reasoning`` when ``models`` holds chat
            models (with specs in ``models`` they are taken from there).
        concurrency_per_endpoint: Calls in flight per endpoint (base URL) at most.
        retries: Retries of a call after an endpoint failure (connection refused, 5xx, 408,
            429, timeout); other errors are recorded at once.
        backoff_s: First backoff; doubles per retry up to ``backoff_max_s``.
        backoff_max_s: Longest backoff.
        max_tokens: Output cap per call (lowered by a spec's ``max_tokens``); None: no cap.
        temperature: Sampling temperature sent with each call; None leaves the server default.
        seed: If set, each call gets a seed derived from it and the cell, so sampled answers
            are reproducible (for servers that honour ``seed``, as vLLM and OpenAI do).
        request_timeout: Seconds one call may take before it counts as an endpoint failure.
        give_up_after: Abandon an endpoint for this run after this many failed calls in a row
            (None: never); its remaining cells are left for a rerun.
        progress: Show a progress bar (stderr) with rate and ETA.
        fsync: fsync after each record (durability against power loss, not only crashes).
        stop: When set, the run stops: calls in flight are cancelled, and what was written
            stays (``run_collect`` sets it on Ctrl-C).

    Returns:
        A :class:`CollectSummary`. Cancelling the task also stops the run cleanly (the file
        stays consistent) and re-raises the cancellation.

    Raises:
        CollectError: Bad output path, no questions, no models, no strategies, or nothing to run.
        RecordError: The existing output file has a malformed line (file:line in the message).
    """
    started = time.monotonic()
    path = _check_out_path(out_path)
    if not questions:
        raise CollectError("no questions to collect")
    if not models:
        raise CollectError("no models to collect")
    if not strategies:
        raise CollectError("no strategies to collect")
    if concurrency_per_endpoint < 1:
        raise CollectError(f"concurrency_per_endpoint must be >= 1, got {concurrency_per_endpoint}")
    names = [s.name for s in strategies]
    dupes = sorted(n for n, c in Counter(names).items() if c > 1)
    if dupes:
        raise CollectError(f"strategies listed twice: {dupes}")
    ids = Counter(q.id for q in questions)
    dup_ids = sorted(i for i, c in ids.items() if c > 1)
    if dup_ids:
        raise CollectError(f"question ids used twice: {dup_ids[:10]}")

    # A client of this event loop: langchain-openai's shared default belongs to whichever loop
    # opened it first, so a second asyncio.run(collect(...)) would fail on "Event loop is closed".
    http_client = httpx.AsyncClient(timeout=request_timeout)
    clients, known_specs = _resolve_models(models, specs, request_timeout, http_client)
    pairs, skipped = plan_pairs(list(clients), strategies, known_specs)
    if not pairs:
        await http_client.aclose()
        raise CollectError(f"no (model, strategy) pair to run: {skipped}")

    summary = CollectSummary(out_path=path, skipped_pairs=skipped)
    summary.repaired_bytes = repair_tail(path)
    existing = read_records(path).records if path.is_file() else []
    done = {cell for cell, r in _final_by_cell(existing).items() if r.ok}

    # question-major order per endpoint: a partial run covers whole questions
    endpoints: dict[str, _Endpoint] = {}
    model_endpoint = {m: _endpoint_of(m, clients[m], known_specs.get(m)) for m in clients}
    grid: list[_Job] = []
    for q in questions:
        for model, strategy in pairs:
            grid.append(_Job(q, model, strategy))
    summary.cells = len(grid)
    todo = [job for job in grid if job.cell not in done]
    summary.done_before = summary.cells - len(todo)
    for job in todo:
        key = model_endpoint[job.model]
        if key not in endpoints:
            endpoints[key] = _Endpoint(key, asyncio.Queue())
        endpoints[key].queue.put_nowait(job)

    writer = _Writer(path, fsync)
    bar = _Progress(progress and bool(todo), len(todo), f"collect {path.name}")
    failed_hard: list[BaseException] = []

    async def call(job: _Job) -> tuple[AIMessage, float]:
        kwargs: dict[str, Any] = dict(job.strategy.model_kwargs())
        spec = known_specs.get(job.model)
        caps = [c for c in (max_tokens, spec.max_tokens if spec else None) if c]
        if caps:
            kwargs["max_tokens"] = min(caps)
        if temperature is not None:
            kwargs["temperature"] = temperature
        if seed is not None:
            kwargs["seed"] = _call_seed(seed, job.cell)
        messages = job.strategy.render(job.question.question)
        client = clients[job.model]
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(retries + 1),
            wait=wait_exponential(multiplier=backoff_s, max=backoff_max_s),
            retry=retry_if_exception(is_endpoint_failure),
            reraise=True,
        ):
            with attempt:
                t0 = time.perf_counter()
                message = await asyncio.wait_for(
                    client.ainvoke(messages, **kwargs), timeout=request_timeout
                )
                latency = time.perf_counter() - t0
        if not isinstance(message, AIMessage):  # pragma: no cover - chat models return these
            message = AIMessage(content=output_text(message))
        return message, latency

    async def run_job(job: _Job, endpoint: _Endpoint) -> RoutingRecord:
        q = job.question
        base: dict[str, Any] = {
            "question": q.question,
            "source": q.source,
            "model": job.model,
            "strategy": job.strategy.name,
            "question_id": q.id,
        }
        try:
            message, latency = await call(job)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a failed call is a record, not a crash
            if is_endpoint_failure(exc):
                endpoint.consecutive_failures += 1
            return RoutingRecord(**base, score=None, error=_describe_error(exc))
        endpoint.consecutive_failures = 0
        parsed = await job.strategy.aparse(message)
        score = await asyncio.to_thread(grade, parsed, q.answer, q.answer_type)
        usage = message.usage_metadata
        inp = usage.get("input_tokens") if usage else None
        out = usage.get("output_tokens") if usage else None
        spec = known_specs.get(job.model)
        cost = (
            spec.call_cost(inp, out)
            if spec is not None and inp is not None and out is not None
            else None
        )
        return RoutingRecord(
            **base,
            score=score,
            output_tokens=int(out) if out is not None else None,
            input_tokens=int(inp) if inp is not None else None,
            cost=cost,
            latency_s=latency,
            response=output_text(message),
        )

    async def worker(endpoint: _Endpoint) -> None:
        while True:
            try:
                job = endpoint.queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            if endpoint.abandoned:
                continue  # left missing; counted in not_run at the end
            record = await run_job(job, endpoint)
            writer.write(record)
            summary.attempted += 1
            if record.ok:
                summary.succeeded += 1
            else:
                summary.failed += 1
            bar.advance(record.ok)
            if (
                give_up_after is not None
                and endpoint.consecutive_failures >= give_up_after
                and not endpoint.abandoned
            ):
                endpoint.abandoned = True
                summary.abandoned.append(endpoint.name)
                logger.warning(
                    "giving up on %s after %d failed calls in a row; its remaining cells are "
                    "left for a rerun",
                    endpoint.name,
                    endpoint.consecutive_failures,
                )

    async def guarded(endpoint: _Endpoint) -> None:
        try:
            await worker(endpoint)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # writing failed (disk full...): stop everything
            failed_hard.append(exc)
            raise

    tasks = [
        asyncio.create_task(guarded(ep), name=f"rtr-collect {ep.name} #{i}")
        for ep in endpoints.values()
        for i in range(concurrency_per_endpoint)
    ]
    all_done = asyncio.gather(*tasks) if tasks else None
    stop_task = asyncio.create_task(stop.wait()) if stop is not None else None
    try:
        if all_done is not None:
            waiting: set[asyncio.Future[Any]] = {all_done}
            if stop_task is not None:
                waiting.add(stop_task)
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if stop is not None and stop.is_set() and not all_done.done():
                summary.interrupted = True
            if not all_done.done() or failed_hard:
                for t in tasks:
                    t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if failed_hard:
                raise failed_hard[0]
    except asyncio.CancelledError:
        summary.interrupted = True
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    finally:
        if stop_task is not None:
            stop_task.cancel()
        if all_done is not None and not all_done.done():
            all_done.cancel()
        with contextlib.suppress(BaseException):
            if all_done is not None:
                await asyncio.gather(all_done, return_exceptions=True)
        writer.close()
        bar.stop()
        await http_client.aclose()

    summary.not_run = len(todo) - summary.attempted
    summary.pairs = _pair_stats(path, grid)
    summary.elapsed_s = time.monotonic() - started
    return summary


def _pair_stats(path: Path, grid: Sequence[_Job]) -> dict[str, PairStats]:
    records = read_records(path).records if path.is_file() else []
    final = _final_by_cell(records)
    stats: dict[str, PairStats] = defaultdict(PairStats)
    for job in grid:
        p = stats[f"{job.model}/{job.strategy.name}"]
        p.cells += 1
        r = final.get(job.cell)
        if r is None:
            continue
        if r.ok and r.score is not None:
            p.ok += 1
            p.correct += r.score
            p.output_tokens += r.output_tokens or 0
        else:
            p.errors += 1
    return dict(stats)


# --------------------------------------------------------------------------- sync entry point
def run_collect(
    models_file: str | os.PathLike[str],
    questions_file: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    strategies: Sequence[str] = PAPER_STRATEGIES,
    models: Sequence[str] | None = None,
    concurrency: int = 4,
    max_tokens: int | None = DEFAULT_MAX_TOKENS,
    retries: int = 3,
    temperature: float | None = None,
    seed: int | None = None,
    limit: int | None = None,
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
) -> CollectSummary:
    """Collect from the CLI: read the files, run :func:`collect`, print the summary.

    Ctrl-C stops the run: calls in flight are cancelled, everything finished is already on
    disk, the summary is printed, and ``summary.interrupted`` is True (the CLI exits 130).

    Args:
        models_file: The YAML models file (models need a ``base_url`` or a ``serve:`` section).
        questions_file: JSONL or CSV question set.
        out_path: The ``.jsonl`` output; resumed if it exists.
        strategies: Strategy names (registered ones); default the four paper strategies.
        models: Only these models of the file (default: all with an endpoint).
        concurrency: Calls in flight per endpoint.
        max_tokens: Output cap per call.
        retries: Retries after an endpoint failure.
        temperature: Sent with every call when given.
        seed: Per-call seeds derived from it when given.
        limit: Only the first ``limit`` questions.
        progress: Show the progress bar.
        echo: Where the summary goes (default: print to stdout).

    Raises:
        ModelsFileError, QuestionSetError, UnknownStrategyError, CollectError: bad input.
    """
    from langchain_rtr.config import load_models_file
    from langchain_rtr.questions import read_questions
    from langchain_rtr.strategies import get_strategy

    loaded = load_models_file(models_file)
    all_specs = loaded.specs
    if models is not None:
        unknown = [m for m in models if m not in all_specs]
        if unknown:
            raise CollectError(
                f"models {unknown} are not in {models_file}; it has {sorted(all_specs)}"
            )
        all_specs = {m: all_specs[m] for m in models}
    no_endpoint = [n for n, s in all_specs.items() if not s.base_url]
    if models is not None and no_endpoint:
        raise CollectError(f"models {no_endpoint} have no base_url or serve section")
    served = {n: s for n, s in all_specs.items() if s.base_url}
    if not served:
        raise CollectError(f"no model in {models_file} has a base_url or a serve section")
    chosen = [get_strategy(name) for name in strategies]
    questions = read_questions(questions_file)
    if limit is not None:
        questions = questions[:limit]

    stop = asyncio.Event()

    async def main() -> CollectSummary:
        loop = asyncio.get_running_loop()
        installed = False
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGINT, stop.set)
            installed = True
        try:
            return await collect(
                questions,
                served,
                chosen,
                out_path,
                concurrency_per_endpoint=concurrency,
                retries=retries,
                max_tokens=max_tokens,
                temperature=temperature,
                seed=seed,
                progress=progress,
                stop=stop,
            )
        finally:
            if installed:
                loop.remove_signal_handler(signal.SIGINT)

    summary = asyncio.run(main())
    (echo or print)(summary.format())
    return summary
