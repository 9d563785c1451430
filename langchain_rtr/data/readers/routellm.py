"""RouteLLM (lm-sys/RouteLLM, Apache-2.0): GSM8K responses and MMLU correctness, in CSV."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from langchain_rtr.data.io import PathLike, RowSink, SkippedRow, located, read_utf8
from langchain_rtr.data.matrix import RoutingSet
from langchain_rtr.data.readers.common import (
    DIRECT,
    DIRECT_DESCRIPTION,
    TokenCounter,
    minilm_token_counter,
)
from langchain_rtr.data.records import RecordError, RoutingRecord
from langchain_rtr.specs import ModelSpec

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
