"""Answer extraction and grading, on hand-made cases and on a table of real model outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from langchain_rtr.strategies import ParsedAnswer, extract_answer, grade, is_equivalent
from langchain_rtr.strategies.grading import extract_boxed, parse_number

TABLE = Path(__file__).parent / "data" / "model_outputs.jsonl"
ROUTERARENA = Path(__file__).resolve().parents[3] / "shared" / "data" / "routerarena"


def _table() -> list[dict[str, object]]:
    rows = []
    for lineno, line in enumerate(TABLE.read_text(encoding="utf-8").splitlines(), 1):
        row = json.loads(line)
        row["_line"] = lineno
        rows.append(row)
    return rows


ROWS = _table()


def _marks(row: dict[str, object]) -> list[pytest.MarkDecorator]:
    if "limitation" in row:
        return [pytest.mark.xfail(reason=str(row["limitation"]), strict=True)]
    return []


@pytest.mark.parametrize("row", [pytest.param(r, id=str(r["id"]), marks=_marks(r)) for r in ROWS])
def test_table_extraction(row: dict[str, object]) -> None:
    got = extract_answer(str(row["text"]), row["kind"])  # type: ignore[arg-type]
    assert got == row["expected"], f"{TABLE.name}:{row['_line']} ({row['note']})"


@pytest.mark.parametrize("row", [pytest.param(r, id=str(r["id"]), marks=_marks(r)) for r in ROWS])
def test_table_grading(row: dict[str, object]) -> None:
    kind = row["kind"]
    parsed = ParsedAnswer(extract_answer(str(row["text"]), kind))  # type: ignore[arg-type]
    assert grade(parsed, str(row["gold"]), kind) == (1.0 if row["correct"] else 0.0)  # type: ignore[arg-type]


def test_table_is_varied() -> None:
    kinds = {r["kind"] for r in ROWS}
    assert {"number", "choice", "auto", "text", "expression"} <= kinds
    assert any(not r["correct"] for r in ROWS) and any(r["correct"] for r in ROWS)
    assert len(ROWS) >= 40


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so \boxed{\frac{3}{4}} is it", r"\frac{3}{4}"),
        (r"\boxed{{982}}", "982"),
        (r"first \boxed{1} then \boxed{ {2}+\sqrt{x_{1}} }", r"{2}+\sqrt{x_{1}}"),
        (r"The answer is \boxed 5 today", "5"),
        (r"\fbox{7}", "7"),
        (r"\boxed{", None),
        ("no braces at all", None),
    ],
)
def test_extract_boxed(text: str, expected: str | None) -> None:
    assert extract_boxed(text) == expected


@pytest.mark.parametrize(
    ("text", "kind", "expected"),
    [
        ("She has 16 - 3 = 13, then 9.\n#### 9", "number", "9"),
        ("We get 12 first. The answer is 1,234.", "number", "1234"),
        ("Answer: -3", "number", "-3"),
        ("The total is +2", "number", "2"),
        ("It costs $1,200.00 in total.", "number", "1200"),
        ("The answer is 0.50", "number", "0.5"),
        ("so the result is 3/4", "number", "0.75"),
        ("distance: 12 km", "number", "12"),
        ("The share is 50%.", "number", "50"),
        (r"$\boxed{\dfrac{3}{4}}$", "number", "0.75"),
        (r"\boxed{12\text{ km}}", "number", "12"),
        ("I think it's about 7, no, 8.", "auto", "8"),
        (r"Answer: x = 5", "number", "5"),
        ("The answer is (B).", "choice", "B"),
        ("Reasoning...\nB. Paris", "choice", "B"),
        ("the answer is b", "choice", None),
        ("answer: (c)", "choice", "C"),
        ("The answer is Paris.", "text", "Paris"),
        ("Line one\nfinal line", "text", "final line"),
        ("", "auto", None),
        ("nothing numeric here", "auto", None),
    ],
)
def test_extract_answer_cases(text: str, kind: str, expected: str | None) -> None:
    assert extract_answer(text, kind) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("predicted", "gold", "kind"),
    [
        ("0.75", "3/4", "auto"),
        (r"\frac{3}{4}", "0.75", "number"),
        ("1,234", "1234", "number"),
        ("$1,200.00", "1200", "auto"),
        ("50%", "50", "auto"),
        ("1.0000001", "1", "number"),
        ("2x+1", "1+2*x", "expression"),
        (r"\sqrt{2}/2", r"1/\sqrt{2}", "expression"),
        (r"\frac{\pi}{6}", "pi/6", "auto"),
        ("x^2 + 2x + 1", "(x+1)^2", "auto"),
        ("b", "B", "choice"),
        ("(C)", "c", "choice"),
        ("Yardley", "yardley", "text"),
        ("12 km", "12", "number"),
    ],
)
def test_equivalent(predicted: str, gold: str, kind: str) -> None:
    assert is_equivalent(predicted, gold, kind)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("predicted", "gold", "kind"),
    [
        ("0.76", "3/4", "auto"),
        ("1.001", "1", "number"),
        ("2x+2", "1+2*x", "expression"),
        ("A", "B", "choice"),
        (None, "1", "auto"),
        ("2y", "2x", "auto"),
        ("17:02", "17:03", "text"),
        ("__import__('os').system('echo pwned')", "0", "expression"),
    ],
)
def test_not_equivalent(predicted: str | None, gold: str, kind: str) -> None:
    assert not is_equivalent(predicted, gold, kind)  # type: ignore[arg-type]


def test_huge_expressions_are_refused_not_computed() -> None:
    # evaluating these would hang the grader; they must simply not count as equal
    assert not is_equivalent("2^(10^10)", "3", "expression")
    assert not is_equivalent("9" * 5000, "1", "auto")
    assert parse_number("1e999999999") is None


def test_grade_no_answer_is_wrong() -> None:
    assert grade(ParsedAnswer(None, error="no answer found"), "1") == 0.0


def test_parse_number_forms() -> None:
    assert parse_number("-3") == -3
    assert parse_number("$1,200.00") == 1200
    assert parse_number(r"-\frac{1}{2}") is not None and parse_number(r"-\frac{1}{2}") < 0
    assert parse_number("2x") is None
    assert parse_number("1/0") is None


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.text(max_size=300), st.sampled_from(["number", "choice", "expression", "text", "auto"]))
def test_never_raises(text: str, kind: str) -> None:
    answer = extract_answer(text, kind)  # type: ignore[arg-type]
    assert answer is None or isinstance(answer, str)
    assert isinstance(is_equivalent(text, text[:5], kind), bool)  # type: ignore[arg-type]


def _routerarena_rows(metric: str) -> list[tuple[str, str, float]]:
    rows = []
    for path in sorted(ROUTERARENA.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            item = json.loads(line)
            result = item.get("evaluation_result") or {}
            if result.get("metric") == metric:
                rows.append(
                    (item["generated_answer"], str(result["ground_truth"]), result["score"])
                )
    return rows


@pytest.mark.skipif(not ROUTERARENA.is_dir(), reason="RouterArena data not present")
def test_agreement_with_routerarena_math(record_property: pytest.RecordProperty) -> None:
    """Report how often our grade equals RouterArena's own math score (a figure, not a bar)."""
    rows = _routerarena_rows("math_metric")
    assert rows
    same = 0
    for text, gold, score in rows:
        ours = grade(ParsedAnswer(extract_answer(text, "auto")), gold, "auto")
        same += ours == score
    agreement = same / len(rows)
    record_property("routerarena_math_agreement", agreement)
    print(f"\nRouterArena math_metric agreement: {same}/{len(rows)} = {agreement:.3f}")
    assert 0.0 <= agreement <= 1.0
