"""The Faithful-CoT reader: upstream grading, layout, bad rows, and the shared files' own table."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from langchain_rtr.data.faithful_cot import (
    FAITHFUL_COT_STRATEGIES,
    is_correct,
    read_faithful_cot,
    upstream_accuracy,
)
from langchain_rtr.data.io import SkippedRow
from langchain_rtr.data.records import RecordError
from langchain_rtr.workflow import load_data

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "faithful-cot"
SEVEN = ("GSM8K", "SVAMP", "MultiArith", "ASDiv", "AQUA", "saycan", "CLUTRR")


def words(text: str) -> int:
    return len(text.split())


def _jsonl(path: Path, rows: list[Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _layout(root: Path) -> Path:
    """A two-data-set clone of the upstream layout, with runs the reader must ignore."""
    _jsonl(
        root / "data/GSM8K/test.jsonl",
        [
            {"id": 0, "question": "Ann has 3 apples and buys 4. How many?", "answer": "x\n#### 7"},
            {"id": 1, "question": "What is 1,000 + 234?", "answer": "#### 1,234"},
        ],
    )
    _jsonl(
        root / "data/AQUA/test.jsonl",
        [{"id": 0, "question": "2+2?", "answer": "B", "options": ["A)3", "B)4"]}],
    )
    out = root / "output_dir"
    _jsonl(
        out / "GSM8K/test/gpt4_COT/predictions.jsonl",
        [
            {"id": 0, "answer": "$7.9 in total", "completion": "3 + 4 = 7. The answer is 7."},
            {"id": 1, "answer": "1,234", "completion": "1234", "completions": ["1234"]},
        ],
    )
    _jsonl(
        out / "GSM8K/test/codex_standard/predictions.jsonl",
        [{"id": 0, "answer": "8", "completion": "8"}, {"id": 1, "answer": 1234, "completion": "x"}],
    )
    _jsonl(  # self-consistency run: not one of the greedy strategies
        out / "GSM8K/test/code002_NL+SL_n:40/predictions.jsonl",
        [{"id": 0, "answer": "7", "completion": "7"}],
    )
    _jsonl(
        out / "AQUA/test/text003_standard/predictions.jsonl",
        [{"id": 0, "answer": "B", "completion": "B"}],
    )
    return root


# ------------------------------------------------------------------------------ grading


@pytest.mark.parametrize(
    ("dataset", "gold", "prediction", "correct"),
    [
        ("GSM8K", "steps\n#### 18", "$18", True),  # first number of the prediction
        ("GSM8K", "#### 18", "18.9 dollars", True),  # truncated to an integer
        ("GSM8K", "#### 18", "-18", True),  # absolute value
        ("GSM8K", "#### 1,234", "$1,234", True),  # commas removed on both sides
        ("GSM8K", "#### 18", "[invalid]", False),
        ("SVAMP", "#### 5", "it is 6, not 5", False),
        ("MultiArith", "#### 5", 5, True),
        ("ASDiv", "9", "9", True),
        ("ASDiv", ["5", "10"], "(10, 5)", True),  # several values: a multiset
        ("ASDiv", ["5", "10"], "(5, 5)", False),
        ("ASDiv", "9", "[error]", False),
        ("AQUA", "A", "A", True),
        ("AQUA", "A", "B", False),
        ("CLUTRR", "husband-daughter #### daughter", "daughter", True),
        ("CLUTRR", "husband-daughter #### daughter", "son", False),
        ("saycan", '["1. find(coke)\\n2. done().\\n"]', "1. find(coke), 2. done().", True),
        (
            "saycan",
            '["1. find(coke)\\n2. done().\\n"]',
            "1. find(initial), 2. find(coke), 3. done().",  # renumbered without find(initial)
            True,
        ),
        ("saycan", '["1. find(coke)\\n2. done().\\n"]', "1. find(pepsi), 2. done().", False),
        ("saycan", '["1. find(coke)\\n"]', "[invalid]", False),
        ("sports", "1", "1", True),
        ("sports", "0", "[invalid]", False),
        ("date", "#### 05/01/2021", "05/01/2021", True),
    ],
)
def test_grading_follows_the_upstream_rules(
    dataset: str, gold: Any, prediction: Any, correct: bool
) -> None:
    assert is_correct(dataset, gold, prediction) is correct


def test_an_unreadable_gold_answer_is_an_error() -> None:
    with pytest.raises(RecordError, match="gold"):
        is_correct("ASDiv", "nine", "9")


# ------------------------------------------------------------------------------ layout


def test_reads_the_greedy_runs_of_a_clone_and_ignores_the_others(tmp_path: Path) -> None:
    rs = read_faithful_cot(
        _layout(tmp_path),
        token_counters={}.fromkeys(("gpt-4", "code-davinci-002", "text-davinci-003"), words),
    )
    pairs = {(r.model, r.strategy) for r in rs.records}
    assert pairs == {
        ("gpt-4", "COT"),
        ("code-davinci-002", "standard"),  # from the older folder name codex_
        ("text-davinci-003", "standard"),
    }
    assert set(rs.strategies) == {"COT", "standard"}
    by = {(r.question_id, r.model): r for r in rs.records}
    gpt4 = by[("GSM8K/0", "gpt-4")]
    assert gpt4.score == 1.0 and gpt4.source == "GSM8K"
    assert gpt4.output_tokens == words("3 + 4 = 7. The answer is 7.")
    assert gpt4.input_tokens == words("Ann has 3 apples and buys 4. How many?")
    assert gpt4.cost == pytest.approx((gpt4.input_tokens * 30 + gpt4.output_tokens * 60) / 1e6)
    assert by[("GSM8K/0", "code-davinci-002")].score == 0.0
    assert by[("GSM8K/1", "code-davinci-002")].score == 1.0  # an int prediction
    aqua = by[("AQUA/0", "text-davinci-003")]
    assert "B)4" in aqua.question  # the options, as the model saw them


def test_subsets_by_data_set_model_and_strategy(tmp_path: Path) -> None:
    root = _layout(tmp_path)
    counters = {"gpt-4": words, "code-davinci-002": words, "text-davinci-003": words}
    only = read_faithful_cot(root, datasets=["AQUA"], token_counters=counters)
    assert {r.source for r in only.records} == {"AQUA"}
    cot = read_faithful_cot(root, strategies=["COT"], token_counters=counters)
    assert {r.strategy for r in cot.records} == {"COT"}
    with pytest.raises(ValueError, match="unknown data set"):
        read_faithful_cot(root, datasets=["gsm8k"], token_counters=counters)


def test_a_malformed_prediction_names_its_file_and_line(tmp_path: Path) -> None:
    root = _layout(tmp_path)
    path = root / "output_dir/GSM8K/test/gpt4_COT/predictions.jsonl"
    path.write_text(path.read_text() + '{"id": 7, "answer": "1", "completion": "1"}\n{"id": 0,\n')
    counters = {"gpt-4": words, "code-davinci-002": words, "text-davinci-003": words}
    with pytest.raises(RecordError, match=r"gpt4_COT/predictions\.jsonl:3: id 7 is not in"):
        read_faithful_cot(root, token_counters=counters)
    skipped: list[SkippedRow] = []
    rs = read_faithful_cot(root, token_counters=counters, skipped=skipped)
    assert [(Path(s.file).name, s.line) for s in skipped] == [
        ("predictions.jsonl", 3),
        ("predictions.jsonl", 4),
    ]
    assert len(rs.records) == 5  # the good rows of every file survive


def test_predictions_without_their_questions_file_are_an_error(tmp_path: Path) -> None:
    root = _layout(tmp_path)
    (root / "data/AQUA/test.jsonl").unlink()
    with pytest.raises(RecordError, match=r"AQUA/test\.jsonl"):
        read_faithful_cot(
            root,
            token_counters={}.fromkeys(("text-davinci-003",), words),
            models=["text-davinci-003"],
        )


def test_load_data_reads_a_clone(tmp_path: Path) -> None:
    rs = load_data(f"faithful-cot:{_layout(tmp_path)}")
    assert rs.name == "faithful-cot" and len(rs.matrix()) == 3
    with pytest.raises(Exception, match="output_dir"):
        load_data(f"faithful-cot:{tmp_path / 'nowhere'}")


def test_strategy_descriptions_name_their_built_in_kind() -> None:
    assert "`direct`" in FAITHFUL_COT_STRATEGIES["standard"]
    assert "`cot`" in FAITHFUL_COT_STRATEGIES["COT"]
    assert "`pal`" in FAITHFUL_COT_STRATEGIES["noNL"]
    assert "decomposition" in FAITHFUL_COT_STRATEGIES["LtM"]
    assert "executes" in FAITHFUL_COT_STRATEGIES["NL+SL"]


# ------------------------------------------------------------------------------ shared files


@pytest.mark.skipif(not SHARED.is_dir(), reason="the shared Faithful-CoT files are not here")
def test_the_code_davinci_002_cells_of_the_upstream_table_are_reproduced() -> None:
    rs = read_faithful_cot(
        SHARED, models=["code-davinci-002"], token_counters={"code-davinci-002": words}
    )
    mine = upstream_accuracy(rs)
    with (SHARED / "output_dir/performance_summary.csv").open(newline="") as f:
        rows = {row[""]: row for row in csv.DictReader(f)}
    checked = 0
    for strategy in FAITHFUL_COT_STRATEGIES:
        row = rows[f"code002_{strategy}"]
        for dataset in SEVEN:
            expected = float(row[dataset])
            got = mine[(dataset, "code-davinci-002", strategy)]
            assert abs(got - expected) <= 0.2, (dataset, strategy, got, expected)
            checked += 1
    assert checked == 35


def test_the_bundled_set_is_the_default_with_strategies_lengths_and_dollars() -> None:
    rs = load_data("faithful-cot")
    m = rs.matrix()
    assert len(rs.models) == 6 and len(rs.strategies) == 5 and len(m.pairs) == 30
    assert sorted(set(m.sources)) == sorted(SEVEN)
    assert np.isfinite(m.score).all() and np.isfinite(m.output_tokens).all()
    assert np.isfinite(m.cost).all() and (m.cost > 0).all()
    tokens = dict(zip(m.pairs, np.nanmean(m.output_tokens, axis=0), strict=True))
    assert tokens[("gpt-4", "standard")] < tokens[("gpt-4", "NL+SL")] / 5  # direct is short
