"""LLMRouter (ulab-uiuc/LLMRouter, MIT): a JSON list of scored questions and a model table."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from langchain_rtr.data.io import PathLike, RowSink, SkippedRow, located, read_utf8
from langchain_rtr.data.matrix import RoutingSet
from langchain_rtr.data.readers.common import DIRECT, DIRECT_DESCRIPTION, json_object_file, number
from langchain_rtr.data.records import RecordError, RoutingRecord
from langchain_rtr.specs import ModelSpec


def _json_array_items(path: Path) -> Iterator[tuple[int, Any]]:
    """(line, item) for each element of a top-level JSON array, with the line it starts on."""
    text = read_utf8(path)
    decoder = json.JSONDecoder()
    lines = _LineCounter(text)
    pos = _skip_ws(text, 0)
    if pos >= len(text) or text[pos] != "[":
        raise located(path, lines.at(pos), "expected a JSON list")
    pos = _skip_ws(text, pos + 1)
    if pos < len(text) and text[pos] == "]":
        return
    while True:
        try:
            item, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise located(path, exc.lineno, f"bad JSON: {exc.msg} at column {exc.colno}") from exc
        yield lines.at(pos), item
        pos = _skip_ws(text, end)
        if pos < len(text) and text[pos] == ",":
            pos = _skip_ws(text, pos + 1)
            continue
        if pos < len(text) and text[pos] == "]":
            if _skip_ws(text, pos + 1) != len(text):
                raise located(path, lines.at(pos + 1), "text after the JSON list")
            return
        if pos >= len(text):
            problem = "the file ends inside the list (truncated?)"
        else:
            problem = "expected ',' or ']'"
        raise located(path, lines.at(pos), f"bad JSON: {problem}")


class _LineCounter:
    """Line numbers of increasing offsets into one text, counted incrementally (linear time)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line = 1

    def at(self, pos: int) -> int:
        if pos < self.pos:  # never happens in a forward scan; stay correct anyway
            self.pos, self.line = 0, 1
        self.line += self.text.count("\n", self.pos, pos)
        self.pos = pos
        return self.line


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def read_llmrouter_models(llm_json: PathLike) -> dict[str, ModelSpec]:
    """LLMRouter's model table (``default_llm.json``) as model specs.

    The description is the upstream ``feature`` text, kept as written (some of its prices and
    sizes disagree with the table's own fields; the price fields are used for cost).
    """
    path = Path(llm_json)
    table = json_object_file(path, "model name -> details")
    specs: dict[str, ModelSpec] = {}
    for name, info in table.items():
        try:
            if not isinstance(info, dict):
                raise RecordError("expected an object")
            for key in ("feature", "input_price", "output_price"):
                if key not in info:
                    raise RecordError(f"missing field {key!r}")
            specs[name] = ModelSpec(
                name=name,
                description=str(info["feature"]),
                input_price=number(info["input_price"], "input_price"),
                output_price=number(info["output_price"], "output_price"),
            )
        except (RecordError, ValueError) as exc:
            raise located(path, None, f"model {name!r}: {exc}") from exc
    return specs


def read_llmrouter(
    train_json: PathLike,
    llm_json: PathLike,
    *,
    skipped: list[SkippedRow] | None = None,
) -> RoutingSet:
    """Read LLMRouter's routing data (``dcrouter_train.json``) with its model table.

    Scores are kept as given (mostly 0/1, some fractional). The source is the upstream
    ``cluster_id`` (``cluster-0``...): the file names no data set, and its three clusters each
    mix tasks (code, math word problems, logic puzzles, open QA...). There are no lengths; the
    cost of each record is the model's mean price in $ per million tokens, a per-call proxy
    that ranks models by price (not dollars spent). Only models that appear in the data are
    kept.

    Raises:
        RecordError: A malformed item (named with the line it starts on) or model table.
    """
    path = Path(train_json)
    specs = read_llmrouter_models(llm_json)
    sink = RowSink(skipped is not None, skipped)
    records: list[RoutingRecord] = []
    for index, (line, item) in enumerate(_json_array_items(path)):
        try:
            if not isinstance(item, dict):
                raise RecordError(f"expected an object, got {type(item).__name__}")
            for key in ("question", "scores", "cluster_id"):
                if key not in item:
                    raise RecordError(f"missing field {key!r}")
            question, scores, cluster = item["question"], item["scores"], item["cluster_id"]
            if not isinstance(question, str) or not question.strip():
                raise RecordError(f"question must be a non-empty string, got {question!r}")
            if not isinstance(scores, dict) or not scores:
                raise RecordError(f"scores must be a non-empty object, got {scores!r}")
            if isinstance(cluster, bool) or not isinstance(cluster, (int, str)):
                raise RecordError(f"cluster_id must be an integer or string, got {cluster!r}")
            batch = []
            for model, score in scores.items():
                if model not in specs:
                    raise RecordError(f"model {model!r} is not in {Path(llm_json).name}")
                batch.append(
                    RoutingRecord(
                        question=question,
                        source=f"cluster-{cluster}",
                        model=model,
                        strategy=DIRECT,
                        score=number(score, f"score of {model}"),
                        cost=specs[model].mean_price,
                        question_id=f"llmrouter/{index}",
                    )
                )
        except RecordError as exc:
            sink.bad(path, line, str(exc))
            continue
        records.extend(batch)
    used = sorted({r.model for r in records})
    return RoutingSet(
        name="llmrouter",
        records=records,
        models={m: specs[m] for m in used},
        strategies={DIRECT: DIRECT_DESCRIPTION},
        attribution=(
            "From LLMRouter (https://github.com/ulab-uiuc/LLMRouter, commit 4e7a796), MIT."
        ),
    )
