"""Reader for the Faithful Chain-of-Thought outputs: real model x prompting-strategy outcomes.

Faithful CoT (Lyu et al., 2023, arXiv 2301.13379; github.com/veronica320/Faithful-COT, MIT)
published the greedy outputs of six OpenAI models under five few-shot prompting strategies on
the same questions: the one public routing set here where the strategy varies. The layout, as
upstream keeps it::

    data/<DATASET>/test.jsonl                                   id, question, answer (gold)
    output_dir/<DATASET>/test/<model>_<strategy>/predictions.jsonl   id, answer, completion

``answer`` in a prediction is already extracted (or computed by the strategy's solver). The
grading rules below are the upstream's (``source/dataset/utils.py`` and
``source/evaluate/evaluate_answer_acc.py``), rewritten here; with them the upstream's own
accuracy table is reproduced. Output tokens are counted from ``completion``.
"""

from __future__ import annotations

import ast
import json
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

from langchain_rtr.data.io import PathLike, RowSink, SkippedRow, located
from langchain_rtr.data.matrix import RoutingSet
from langchain_rtr.data.records import RecordError, RoutingRecord
from langchain_rtr.data.tokenizers import (
    ENCODING_OF_MODEL,
    TokenCounter,
    TokenizerUnavailable,
    offline_token_counter,
)
from langchain_rtr.specs import ModelSpec

DATASETS = (
    "GSM8K",
    "SVAMP",
    "MultiArith",
    "ASDiv",
    "AQUA",
    "saycan",
    "StrategyQA",
    "date",
    "sports",
    "CLUTRR",
)
"""The upstream's ten data sets (folder names)."""

MODEL_PREFIXES: dict[str, str] = {
    "code001": "code-davinci-001",
    "code002": "code-davinci-002",
    "codex": "code-davinci-002",  # the upstream's older folder name for code002
    "text002": "text-davinci-002",
    "text003": "text-davinci-003",
    "gpt-3.5-turbo": "gpt-3.5-turbo",
    "gpt4": "gpt-4",
}
"""Upstream folder prefix -> model name."""

# $ per million tokens, OpenAI's 2023 list prices. code-davinci-001/002 were a free beta with no
# list price: davinci's 20 / 20 stands in. gpt-3.5-turbo: its launch price (March 2023), 2 / 2.
FAITHFUL_COT_MODELS: dict[str, ModelSpec] = {
    "gpt-4": ModelSpec(
        name="gpt-4",
        description=(
            "GPT-4 (OpenAI, 2023, 8k context): the largest and most capable model of the set, "
            "strong at multi-step math word problems, multiple choice algebra and relational "
            "reasoning; follows few-shot formats and writes correct programs most of the time. "
            "By far the most expensive per token."
        ),
        input_price=30.0,
        output_price=60.0,
    ),
    "gpt-3.5-turbo": ModelSpec(
        name="gpt-3.5-turbo",
        description=(
            "GPT-3.5 Turbo (OpenAI, March 2023): a chat-tuned GPT-3.5 model, good at everyday "
            "arithmetic word problems and at following instructions, weaker than GPT-4 on long "
            "multi-step problems and strict output formats. Cheap: a tenth of davinci's price."
        ),
        input_price=2.0,
        output_price=2.0,
    ),
    "text-davinci-003": ModelSpec(
        name="text-davinci-003",
        description=(
            "text-davinci-003 (OpenAI, GPT-3.5 series, trained with RLHF): a completion model "
            "that follows few-shot prompts well; solid at grade-school math with reasoning, "
            "less reliable at writing programs than the code models."
        ),
        input_price=20.0,
        output_price=20.0,
    ),
    "text-davinci-002": ModelSpec(
        name="text-davinci-002",
        description=(
            "text-davinci-002 (OpenAI, GPT-3.5 series, instruction-tuned): a completion model, "
            "somewhat weaker than text-davinci-003 at multi-step reasoning; follows few-shot "
            "formats."
        ),
        input_price=20.0,
        output_price=20.0,
    ),
    "code-davinci-002": ModelSpec(
        name="code-davinci-002",
        description=(
            "code-davinci-002 (OpenAI Codex, GPT-3.5 base model trained on code and text): "
            "the strongest model of its time at writing programs from a few examples; good at "
            "reasoning in natural language too. No instruction tuning. Priced here as davinci "
            "(it had no list price)."
        ),
        input_price=20.0,
        output_price=20.0,
    ),
    "code-davinci-001": ModelSpec(
        name="code-davinci-001",
        description=(
            "code-davinci-001 (OpenAI Codex, GPT-3 generation, trained on code): an early code "
            "model, far weaker than code-davinci-002 at multi-step reasoning and at programs "
            "for word problems; often wrong on anything beyond one or two steps. Priced here "
            "as davinci (it had no list price)."
        ),
        input_price=20.0,
        output_price=20.0,
    ),
}

FAITHFUL_COT_STRATEGIES: dict[str, str] = {
    "standard": (
        "Standard prompting (the same kind as the built-in `direct` strategy): few-shot "
        "exemplars of question and answer only, so the model states the answer with no "
        "reasoning. The cheapest strategy in output tokens (often under ten), good for recall "
        "and one-step arithmetic, weak on multi-step problems."
    ),
    "COT": (
        "Chain of thought (the same kind as the built-in `cot` strategy): few-shot exemplars "
        "that reason step by step in natural language before the answer. More accurate than "
        "answering directly on multi-step math and relational questions, for tens to a few "
        "hundred output tokens; arithmetic slips are not caught."
    ),
    "LtM": (
        "Least-to-most prompting (a decomposition kind of chain of thought): the model first "
        "breaks the question into simpler subquestions, then answers them in turn in natural "
        "language, each answer feeding the next. Helps on problems with many steps; costs more "
        "output tokens than plain chain of thought."
    ),
    "noNL": (
        "Program only (the same kind as the built-in `pal` strategy): the model writes a "
        "program with no natural-language comments (Python for math, a relation-composition "
        "program for kinship questions, a PDDL goal for robot planning) and a solver executes "
        "it to give the answer. Exact arithmetic; the answer is lost when the program fails to "
        "run or does not fit the question."
    ),
    "NL+SL": (
        "Faithful chain of thought: natural-language subquestions interleaved with the program "
        "that answers each one (Python, relation composition or PDDL), which a solver then "
        "executes. Like program-aided solving (`pal`) but with a reasoning step written out "
        "before each line of code; usually the most accurate strategy on math word problems, "
        "and the longest (often one to three hundred output tokens)."
    ),
}
"""Upstream strategy folder suffix -> description (what it is, and which built-in kind)."""

INVALID = "[invalid]"
_GOLD_NUMBER = re.compile(r"#### (\-?[0-9\.\,]+)")
_FIRST_NUMBER = re.compile(r"-?\d+\.?\d*")
_FOLDER = re.compile(r"^(?P<prefix>.+)_(?P<strategy>standard|COT|LtM|noNL|NL\+SL)$")


# --- grading, as upstream ----------------------------------------------------------------------


def _str_to_int(text: str) -> int:
    """The upstream's number parse: fractions summed, float, truncated to int, absolute value."""
    value = float(sum(Fraction(part) for part in text.split())) if "/" in text else float(text)
    return abs(int(value))


def _gold(dataset: str, raw: Any) -> Any:
    if dataset in ("GSM8K", "SVAMP", "MultiArith"):
        match = _GOLD_NUMBER.search(str(raw))
        return int(match.group(1).strip().replace(",", "")) if match else INVALID
    if dataset == "ASDiv":
        if isinstance(raw, (list, tuple)):
            return dict(Counter(int(v) for v in raw))
        return int(raw)
    if dataset in ("date", "CLUTRR"):
        return str(raw).split("#### ")[-1]
    if dataset == "saycan":
        plans = ast.literal_eval(raw) if isinstance(raw, str) else raw
        if not isinstance(plans, list) or not all(isinstance(p, str) for p in plans):
            raise RecordError(f"saycan gold must be a list of plans, got {raw!r}")
        return plans
    if dataset == "StrategyQA":
        return bool(raw)
    if dataset == "sports":
        return bool(int(raw))
    return raw


def _asdiv_prediction(raw: Any) -> Any:
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, dict):
        return {_str_to_int(str(k)): v for k, v in raw.items()}
    values: list[int] = []
    for part in str(raw).lstrip("{([").rstrip("]})").split(","):
        item = part.strip().split(":")[-1].strip("'\"")
        try:
            values.append(_str_to_int(item))
        except (ValueError, ZeroDivisionError):
            continue
    if len(values) > 1:
        return dict(Counter(values))
    return values[0] if values else INVALID


def _saycan_correct(gold_plans: list[str], raw: Any) -> bool:
    prediction = str(raw)
    if prediction in ("[error]", "[invalid]"):
        return False
    steps: list[str] = []
    for step in re.split(r", |\n", prediction.replace("\\n", "\n").strip()):
        parts = step.split(". ")
        if len(parts) < 2:
            return False  # not a numbered plan step
        if "find(initial)" in parts[1]:
            continue
        steps.append(f"{len(steps) + 1}. {parts[1]}")
    return any(steps == plan.strip().split("\n") for plan in gold_plans)


def is_correct(dataset: str, gold: Any, prediction: Any) -> bool:
    """Whether a prediction (already extracted upstream) answers a question, by upstream's rules.

    Args:
        dataset: One of :data:`DATASETS`.
        gold: The ``answer`` field of ``data/<dataset>/test.jsonl`` as read from JSON.
        prediction: The ``answer`` field of the prediction as read from JSON.

    Raises:
        RecordError: The gold answer cannot be read.
    """
    try:
        expected = _gold(dataset, gold)
    except (ValueError, SyntaxError, TypeError) as exc:
        raise RecordError(f"cannot read the gold answer {gold!r}: {exc}") from exc
    if dataset in ("GSM8K", "SVAMP", "MultiArith"):
        if isinstance(prediction, int) and not isinstance(prediction, bool):
            return bool(prediction == expected)
        first = _FIRST_NUMBER.search(str(prediction).replace(",", ""))
        return first is not None and bool(abs(int(float(first.group()))) == expected)
    if dataset == "ASDiv":
        return bool(_asdiv_prediction(prediction) == expected)
    if dataset == "saycan":
        return _saycan_correct(expected, prediction)
    if dataset == "StrategyQA":
        return bool(bool(prediction) == expected)
    if dataset == "sports":
        try:
            return bool(bool(int(prediction)) == expected)
        except (ValueError, TypeError):
            return False
    return bool(prediction == expected)


# --- reading -----------------------------------------------------------------------------------


def _read_jsonl(path: Path, sink: RowSink) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line, object) of each non-empty line, in file order; a bad line goes to ``sink``."""
    with path.open("r", encoding="utf-8") as f:
        for line_no, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                item = json.loads(raw)
            except json.JSONDecodeError as exc:
                sink.bad(path, line_no, f"bad JSON: {exc.msg} at column {exc.colno}")
                continue
            if not isinstance(item, dict):
                sink.bad(path, line_no, f"expected a JSON object, got {type(item).__name__}")
                continue
            yield line_no, item


def _question_id(item: dict[str, Any]) -> str:
    if "id" not in item:
        raise RecordError("missing field 'id'")
    value = item["id"]
    if isinstance(value, bool) or not isinstance(value, (int, str)) or str(value).strip() == "":
        raise RecordError(f"id must be an integer or string, got {value!r}")
    return str(int(value)) if isinstance(value, int) or value.strip().isdigit() else value.strip()


def _questions(path: Path, dataset: str, sink: RowSink) -> dict[str, tuple[str, Any]]:
    """Id -> (question text as the model saw it, gold answer)."""
    out: dict[str, tuple[str, Any]] = {}
    for line_no, item in _read_jsonl(path, sink):
        try:
            qid = _question_id(item)
            for key in ("question", "answer"):
                if key not in item:
                    raise RecordError(f"missing field {key!r}")
            question = item["question"]
            if not isinstance(question, str) or not question.strip():
                raise RecordError(f"question must be a non-empty string, got {question!r}")
            options = item.get("options")
            if dataset == "AQUA" and options and "Answer option" not in question:
                question = f"{question}\n# Answer option: {options}"
            if qid in out:
                raise RecordError(f"id {qid} appears twice")
            _gold(dataset, item["answer"])  # readable, or the row is bad here, not later
        except (RecordError, ValueError, SyntaxError, TypeError) as exc:
            sink.bad(path, line_no, str(exc))
            continue
        out[qid] = (question, item["answer"])
    return out


def _configurations(folder: Path) -> dict[tuple[str, str], Path]:
    """(model, strategy) -> predictions file; ``code002`` wins over its older name ``codex``."""
    found: dict[tuple[str, str], tuple[str, Path]] = {}
    for sub in sorted(folder.iterdir()) if folder.is_dir() else []:
        match = _FOLDER.match(sub.name)
        path = sub / "predictions.jsonl"
        if not match or match.group("prefix") not in MODEL_PREFIXES or not path.is_file():
            continue  # other upstream runs: self-consistency (n:40), ablations, exemplar sets
        prefix = match.group("prefix")
        key = (MODEL_PREFIXES[prefix], match.group("strategy"))
        if key not in found or found[key][0] == "codex":
            found[key] = (prefix, path)
    return {key: path for key, (_, path) in found.items()}


def default_token_counters(models: Sequence[str]) -> tuple[dict[str, TokenCounter], str]:
    """Each model's own tokenizer where it can be had offline, else all-MiniLM's as a proxy.

    Returns:
        The counters and a sentence saying which were used (for the attribution).
    """
    from langchain_rtr.data.readers import minilm_token_counter

    counters: dict[str, TokenCounter] = {}
    used: dict[str, str] = {}
    for model in models:
        encoding = ENCODING_OF_MODEL.get(model)
        try:
            if encoding is None:
                raise TokenizerUnavailable(f"no known encoding for {model}")
            counters[model] = offline_token_counter(encoding)
            used[model] = encoding
        except TokenizerUnavailable:
            counters[model] = minilm_token_counter
            used[model] = "all-MiniLM-L6-v2 WordPiece (a proxy)"
    how = "; ".join(f"{m}: {e}" for m, e in used.items())
    return counters, how


def read_faithful_cot(
    root: PathLike,
    *,
    datasets: Sequence[str] | None = None,
    models: Sequence[str] | None = None,
    strategies: Sequence[str] | None = None,
    token_counters: Mapping[str, TokenCounter] | None = None,
    skipped: list[SkippedRow] | None = None,
) -> RoutingSet:
    """Read a copy of the Faithful-CoT repository layout (``data/`` and ``output_dir/``).

    Every ``<model>_<strategy>`` folder of the six models and five greedy strategies found under
    ``output_dir/<dataset>/test/`` is read; other runs (self-consistency, ablations) are left
    out. Each record: the question as the model saw it (AQUA with its options), source = the
    data set folder name, score 1/0 by the upstream's rules, output tokens counted from
    ``completion``, input tokens from the question alone (the few-shot exemplars are not in the
    files), and $ from :data:`FAITHFUL_COT_MODELS`' 2023 list prices.

    Args:
        root: The repository root (holding ``data/`` and ``output_dir/``).
        datasets: Only these data sets (default: every one of :data:`DATASETS` present).
        models: Only these model names (default: all six).
        strategies: Only these strategies (default: all five).
        token_counters: A counter per model; by default :func:`default_token_counters`.
        skipped: Pass a list to skip malformed rows instead of raising; each is appended there.

    Raises:
        RecordError: A malformed row (file and line named), a prediction for an unknown id, a
            predictions folder without its ``data/<dataset>/test.jsonl``, or nothing to read.
        ValueError: An unknown data set, model or strategy was asked for.
    """
    base = Path(root)
    for asked, known, what in (
        (datasets, DATASETS, "data set"),
        (models, tuple(FAITHFUL_COT_MODELS), "model"),
        (strategies, tuple(FAITHFUL_COT_STRATEGIES), "strategy"),
    ):
        unknown = sorted(set(asked or ()) - set(known))
        if unknown:
            raise ValueError(f"unknown {what}(s) {unknown}; known: {list(known)}")
    sink = RowSink(skipped is not None, skipped)
    plan: list[tuple[str, tuple[str, str], Path]] = []
    for dataset in datasets or DATASETS:
        for pair, path in _configurations(base / "output_dir" / dataset / "test").items():
            if (models is None or pair[0] in models) and (
                strategies is None or pair[1] in strategies
            ):
                plan.append((dataset, pair, path))
    if not plan:
        raise located(base, None, "no output_dir/<dataset>/test/<model>_<strategy>/ predictions")
    used_models = sorted({pair[0] for _, pair, _ in plan})
    counters: Mapping[str, TokenCounter]
    counters = token_counters or default_token_counters(used_models)[0]
    missing = [m for m in used_models if m not in counters]
    if missing:
        raise ValueError(f"token_counters has no counter for {missing}")

    records: list[RoutingRecord] = []
    gold_by_dataset: dict[str, dict[str, tuple[str, Any]]] = {}
    for dataset, (model, strategy), path in plan:
        if dataset not in gold_by_dataset:
            gold_path = base / "data" / dataset / "test.jsonl"
            if not gold_path.is_file():
                raise located(gold_path, None, f"missing: the questions of {path}")
            gold_by_dataset[dataset] = _questions(gold_path, dataset, sink)
        questions = gold_by_dataset[dataset]
        records.extend(
            _predictions(path, dataset, model, strategy, questions, counters[model], sink)
        )
    seen_models = sorted({r.model for r in records})
    seen_strategies = [s for s in FAITHFUL_COT_STRATEGIES if any(r.strategy == s for r in records)]
    return RoutingSet(
        name="faithful-cot",
        records=records,
        models={m: FAITHFUL_COT_MODELS[m] for m in seen_models},
        strategies={s: FAITHFUL_COT_STRATEGIES[s] for s in seen_strategies},
        attribution=(
            "From Faithful-COT (https://github.com/veronica320/Faithful-COT), MIT; "
            "Lyu et al., Faithful Chain-of-Thought Reasoning, 2023."
        ),
    )


def _predictions(
    path: Path,
    dataset: str,
    model: str,
    strategy: str,
    questions: Mapping[str, tuple[str, Any]],
    count: Callable[[str], int],
    sink: RowSink,
) -> list[RoutingRecord]:
    spec = FAITHFUL_COT_MODELS[model]
    out: list[RoutingRecord] = []
    seen: dict[str, int] = {}
    for line_no, item in _read_jsonl(path, sink):
        if not item:
            continue  # upstream's placeholder for a question it did not run: not graded
        try:
            qid = _question_id(item)
            if qid not in questions:
                raise RecordError(f"id {qid} is not in data/{dataset}/test.jsonl")
            if qid in seen:
                raise RecordError(f"id {qid} already on line {seen[qid]}")
            for key in ("answer", "completion"):
                if key not in item:
                    raise RecordError(f"missing field {key!r}")
            completion = item["completion"]
            if not isinstance(completion, str):
                raise RecordError(f"completion must be a string, got {type(completion).__name__}")
            question, gold = questions[qid]
            output_tokens = count(completion)
            input_tokens = count(question)
            record = RoutingRecord(
                question=question,
                source=dataset,
                model=model,
                strategy=strategy,
                score=1.0 if is_correct(dataset, gold, item["answer"]) else 0.0,
                output_tokens=output_tokens,
                input_tokens=input_tokens,
                cost=spec.call_cost(input_tokens, output_tokens),
                question_id=f"{dataset}/{qid}",
            )
        except RecordError as exc:
            sink.bad(path, line_no, str(exc))
            continue
        seen[qid] = line_no
        out.append(record)
    return out


def upstream_accuracy(routing_set: RoutingSet) -> dict[tuple[str, str, str], float]:
    """(source, model, strategy) -> accuracy in %, rounded to 0.1 as upstream's table is."""
    totals: dict[tuple[str, str, str], list[float]] = {}
    for r in routing_set.records:
        if r.score is not None:
            totals.setdefault((r.source, r.model, r.strategy), []).append(r.score)
    return {k: round(100 * sum(v) / len(v), 1) for k, v in totals.items()}
