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

The output file, the summary and the progress bar live in :mod:`langchain_rtr.collection`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
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

from langchain_rtr.collection.output import (
    RecordWriter,
    check_out_path,
    collected_records,
    collected_routing_set,
    final_by_cell,
    pair_stats,
    repair_tail,
)
from langchain_rtr.collection.progress import CollectProgress
from langchain_rtr.collection.results import Cell, CollectError, CollectSummary, PairStats
from langchain_rtr.data.io import read_records
from langchain_rtr.data.records import RoutingRecord
from langchain_rtr.knobs import check_tokens, smallest_cap
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

DEFAULT_MAX_TOKENS = 512
DEFAULT_REQUEST_TIMEOUT_S = 300.0


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
        ConfigError: ``max_tokens`` is not an int in [1, 10**9] (`check_tokens`).
        RecordError: The existing output file has a malformed line (file:line in the message).
    """
    started = time.monotonic()
    if max_tokens is not None:
        check_tokens(max_tokens, "max_tokens")  # 0 is refused here as in every front end
    path = check_out_path(out_path)
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
    done = {cell for cell, r in final_by_cell(existing).items() if r.ok}

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

    writer = RecordWriter(path, fsync)
    bar = CollectProgress(progress and bool(todo), len(todo), f"collect {path.name}")
    failed_hard: list[BaseException] = []

    async def call(job: _Job) -> tuple[AIMessage, float]:
        kwargs: dict[str, Any] = dict(job.strategy.model_kwargs())
        spec = known_specs.get(job.model)
        cap = smallest_cap(max_tokens, spec.max_tokens if spec else None)
        if cap is not None:
            kwargs["max_tokens"] = cap
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
    summary.pairs = pair_stats(path, [job.cell for job in grid])
    summary.elapsed_s = time.monotonic() - started
    return summary


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
        ModelsFileError, QuestionSetError, UnknownStrategyError, CollectError, ConfigError:
            bad input.
    """
    from langchain_rtr.config import load_models_file
    from langchain_rtr.questions import read_questions
    from langchain_rtr.strategies import get_strategy

    if max_tokens is not None:
        check_tokens(max_tokens, "--max-tokens")  # before any server is started
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
