"""RouterArena (RouteWorks/RouterArena, Apache-2.0): per-model JSONL files and a price table."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from langchain_rtr.data.io import PathLike, RowSink, SkippedRow, located, utf8_lines
from langchain_rtr.data.matrix import RoutingSet
from langchain_rtr.data.readers.common import DIRECT, DIRECT_DESCRIPTION, json_object_file, number
from langchain_rtr.data.records import RecordError, RoutingRecord
from langchain_rtr.specs import ModelSpec

# Descriptions for RouterArena's models (its files carry none); prices come from its table.
ROUTERARENA_DESCRIPTIONS: dict[str, str] = {
    "claude-3-haiku-20240307": (
        "Claude 3 Haiku (March 2024) by Anthropic: the small, fast member of the Claude 3 "
        "family, proprietary, no extended reasoning mode. Good at short answers, extraction "
        "and multiple choice; weaker on hard math and code."
    ),
    "gemini-2.0-flash-001": (
        "Gemini 2.0 Flash by Google: a fast, low-cost proprietary multimodal model with a 1M "
        "context, no thinking mode in this version. Stronger than earlier small models at "
        "math, code and knowledge questions."
    ),
}


def read_model_costs(model_cost_json: PathLike) -> dict[str, tuple[float, float]]:
    """RouterArena's price table: model -> ($ per M input tokens, $ per M output tokens)."""
    path = Path(model_cost_json)
    table = json_object_file(path, "model -> prices")
    prices: dict[str, tuple[float, float]] = {}
    for name, info in table.items():
        try:
            if not isinstance(info, dict):
                raise RecordError("expected an object")
            prices[name] = (
                number(info.get("input_token_price_per_million"), "input price"),
                number(info.get("output_token_price_per_million"), "output price"),
            )
        except RecordError as exc:
            raise located(path, None, f"model {name!r}: {exc}") from exc
    return prices


def _count(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RecordError(f"{what} must be a non-negative integer, got {value!r}")
    return value


def read_routerarena(
    jsonl_paths: Sequence[PathLike],
    model_cost_json: PathLike,
    *,
    descriptions: Mapping[str, str] | None = None,
    clip_scores: bool = False,
    skipped: list[SkippedRow] | None = None,
) -> RoutingSet:
    """Read RouterArena's per-model JSONL files, joined on ``global_index``.

    Each file holds one model's answers (``llm_selected``). The source is the ``global_index``
    prefix (the sub-data set, e.g. ``MMLUPro_math`` from ``MMLUPro_math_12``); score is
    ``evaluation_result.score``, tokens come from ``token_usage`` and cost is
    ``evaluation_result.inference_cost`` in dollars. A call that failed upstream
    (``success`` false or ``error`` set) becomes a record with ``error`` and no score.

    Args:
        jsonl_paths: One file per model; every file must hold the same questions.
        model_cost_json: The price table (``model_cost.json``).
        descriptions: Text descriptions by model (default: :data:`ROUTERARENA_DESCRIPTIONS`;
            a model in neither gets a one-line description naming it).
        clip_scores: Clip scores outside [0, 1] to the nearest bound. Some of RouterArena's
            continuous metrics (METEOR) come out slightly below 0; without this they are errors.
        skipped: Pass a list to skip malformed rows (and questions not in every file) instead
            of raising; each is appended there.

    Raises:
        RecordError: A malformed line, a duplicate index, or a question missing from a file;
            the message names the file and line.
    """
    if not jsonl_paths:
        raise ValueError("read_routerarena needs at least one JSONL file")
    prices = read_model_costs(model_cost_json)
    texts = dict(ROUTERARENA_DESCRIPTIONS)
    texts.update(descriptions or {})
    sink = RowSink(skipped is not None, skipped)
    per_file: list[tuple[Path, dict[str, tuple[int, RoutingRecord]]]] = []
    models: dict[str, ModelSpec] = {}
    for raw_path in jsonl_paths:
        path = Path(raw_path)
        rows: dict[str, tuple[int, RoutingRecord]] = {}
        for line_no, raw in utf8_lines(path, sink):
            if not raw.strip():
                continue
            try:
                item = json.loads(raw)
            except json.JSONDecodeError as exc:
                hint = " (the file looks truncated)" if not raw.endswith("\n") else ""
                sink.bad(path, line_no, f"bad JSON: {exc.msg} at column {exc.colno}{hint}")
                continue
            try:
                index, record = _arena_record(item, prices, clip_scores)
                if index in rows:
                    raise RecordError(f"global_index {index!r} already on line {rows[index][0]}")
            except RecordError as exc:
                sink.bad(path, line_no, str(exc))
                continue
            if record.model not in models:
                input_price, output_price = prices[record.model]
                models[record.model] = ModelSpec(
                    name=record.model,
                    description=texts.get(record.model, f"The model {record.model}."),
                    input_price=input_price,
                    output_price=output_price,
                )
            rows[index] = (line_no, record)
        per_file.append((path, rows))

    # Join: a question counts only when every file has it; one that some file lacks is an
    # error (or skipped, with the line where it does appear).
    common = set.intersection(*(set(rows) for _, rows in per_file))
    for path, rows in per_file:
        for index, (line_no, _) in rows.items():
            if index not in common:
                lacking = [p.name for p, other in per_file if index not in other]
                sink.bad(path, line_no, f"global_index {index!r} is missing from {lacking}")
    records: list[RoutingRecord] = []
    first_path, first_rows = per_file[0]
    for index in first_rows:  # file order of the first file
        if index not in common:
            continue
        questions = {rows[index][1].question for _, rows in per_file}
        if len(questions) > 1:
            line_no = first_rows[index][0]
            sink.bad(first_path, line_no, f"global_index {index!r} has different questions")
            continue
        records.extend(rows[index][1] for _, rows in per_file)
    return RoutingSet(
        name="routerarena",
        records=records,
        models={m: models[m] for m in sorted({r.model for r in records})},
        strategies={DIRECT: DIRECT_DESCRIPTION},
        attribution=(
            "From RouterArena (https://github.com/RouteWorks/RouterArena, commit 4714a9a), "
            "Apache-2.0."
        ),
    )


def _arena_record(
    item: Any, prices: Mapping[str, tuple[float, float]], clip_scores: bool
) -> tuple[str, RoutingRecord]:
    if not isinstance(item, dict):
        raise RecordError(f"expected a JSON object, got {type(item).__name__}")
    for key in ("global_index", "question", "llm_selected", "token_usage", "evaluation_result"):
        if key not in item:
            raise RecordError(f"missing field {key!r}")
    index = item["global_index"]
    if not isinstance(index, str) or "_" not in index:
        raise RecordError(f"global_index must look like '<dataset>_<n>', got {index!r}")
    source = index.rsplit("_", 1)[0]
    model = item["llm_selected"]
    if not isinstance(model, str) or not model:
        raise RecordError(f"llm_selected must be a model name, got {model!r}")
    if model not in prices:
        raise RecordError(f"model {model!r} has no price in the cost table")
    usage, result = item["token_usage"], item["evaluation_result"]
    if not isinstance(usage, dict):
        raise RecordError(f"token_usage must be an object, got {usage!r}")
    if not isinstance(result, dict):
        raise RecordError(f"evaluation_result must be an object, got {result!r}")
    failed = item.get("success") is False or item.get("error") not in (None, "")
    if failed:
        error = str(item.get("error") or "the call failed (success: false)")
        return index, RoutingRecord(
            question=item["question"],
            source=source,
            model=model,
            strategy=DIRECT,
            score=None,
            question_id=index,
            error=error,
        )
    for key in ("input_tokens", "output_tokens"):
        if key not in usage:
            raise RecordError(f"token_usage is missing {key!r}")
    for key in ("score", "inference_cost"):
        if key not in result:
            raise RecordError(f"evaluation_result is missing {key!r}")
    score = number(result["score"], "evaluation_result.score")
    if clip_scores:
        score = min(1.0, max(0.0, score))
    return index, RoutingRecord(
        question=item["question"],
        source=source,
        model=model,
        strategy=DIRECT,
        score=score,
        output_tokens=_count(usage["output_tokens"], "token_usage.output_tokens"),
        input_tokens=_count(usage["input_tokens"], "token_usage.input_tokens"),
        cost=number(result["inference_cost"], "evaluation_result.inference_cost"),
        question_id=index,
    )
