"""Question sets: JSONL and CSV reading, defaults, and malformed rows reported with their line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from langchain_rtr.questions import (
    ANSWER_TYPES,
    Question,
    QuestionSetError,
    question_id,
    read_questions,
    write_questions,
)


def _jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def test_answer_types_are_the_graders_kinds() -> None:
    assert {"number", "choice", "expression", "text"} <= set(ANSWER_TYPES)


def test_jsonl_round_trip_with_defaults_and_metadata(tmp_path: Path) -> None:
    path = _jsonl(
        tmp_path / "set.jsonl",
        [
            {"id": "a", "question": "2+2?", "answer": 4, "answer_type": "number", "source": "s1"},
            {"question": "Pick one: (A) x (B) y", "answer": "B", "answer_type": "choice"},
            {"question": "Name it", "answer": "Paris", "difficulty": 3},
        ],
    )
    qs = read_questions(path)
    assert [q.answer for q in qs] == ["4", "B", "Paris"]
    assert qs[0].id == "a" and qs[0].source == "s1" and qs[0].answer_type == "number"
    # defaults: id from the text (stable), source from the file stem, type auto
    assert qs[1].id == question_id("Pick one: (A) x (B) y")
    assert qs[1].source == "set"
    assert qs[2].answer_type == "auto"
    assert qs[2].metadata == {"difficulty": 3}
    out = write_questions(tmp_path / "again.jsonl", qs)
    again = read_questions(out)
    assert [(q.id, q.question, q.answer, q.answer_type, q.metadata) for q in again] == [
        (q.id, q.question, q.answer, q.answer_type, q.metadata) for q in qs
    ]


def test_csv_reading_and_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "set.csv"
    path.write_text(
        "id,question,answer,answer_type,source\n"
        'x1,"What is 3, plus 4?",7,number,arith-1\n'
        "\n"
        'x2,"Two\nlines?",yes,text,word-1\n',
        encoding="utf-8",
    )
    qs = read_questions(path)
    assert [q.id for q in qs] == ["x1", "x2"]
    assert qs[0].question == "What is 3, plus 4?" and qs[0].answer == "7"
    assert qs[1].question == "Two\nlines?"
    out = write_questions(tmp_path / "out.csv", qs)
    assert [q.question for q in read_questions(out)] == [q.question for q in qs]


def test_malformed_jsonl_rows_are_all_reported_with_lines(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(
        "\n".join(
            [
                json.dumps({"id": "ok", "question": "1+1", "answer": "2"}),
                "{not json",
                json.dumps(["a", "list"]),
                json.dumps({"question": "no answer"}),
                json.dumps({"question": "q", "answer": "1", "answer_type": "integer"}),
                json.dumps({"id": "ok", "question": "dup", "answer": "3"}),
                json.dumps({"question": {"nested": 1}, "answer": "1"}),
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    with pytest.raises(QuestionSetError) as info:
        read_questions(path)
    err = info.value
    lines = [p.split(": ")[0] for p in err.problems]
    assert lines == [f"{path}:{n}" for n in (2, 3, 4, 5, 6, 7)]
    text = str(err)
    assert "bad JSON" in text and "answer_type 'integer'" in text
    assert "already used on line 1" in text and "missing or empty answer" in text


def test_malformed_csv_rows_report_the_line_they_start_on(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(
        'question,answer\n"multi\nline",1\nonly-one-field\n,5\nfine,6\n', encoding="utf-8"
    )
    with pytest.raises(QuestionSetError) as info:
        read_questions(path)
    assert [p.split(": ")[0] for p in info.value.problems] == [f"{path}:4", f"{path}:5"]


def test_csv_without_required_columns(tmp_path: Path) -> None:
    path = tmp_path / "cols.csv"
    path.write_text("q,a\nx,1\n", encoding="utf-8")
    with pytest.raises(QuestionSetError, match=r"cols.csv:1: header lacks column"):
        read_questions(path)


def test_unknown_suffix_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(QuestionSetError, match="unknown question-set type"):
        read_questions(tmp_path / "x.txt")
    with pytest.raises(FileNotFoundError):
        read_questions(tmp_path / "none.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(QuestionSetError, match="no questions"):
        read_questions(empty)


def test_question_validates_its_fields() -> None:
    with pytest.raises(ValueError, match="answer_type"):
        Question(id="a", question="q", answer="1", answer_type="integer")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="question"):
        Question(id="a", question=" ", answer="1")


def test_the_shipped_question_set_reads_and_has_graded_levels() -> None:
    from langchain_rtr.questions import bundled_questions

    qs = bundled_questions("smol-arith")
    levels = {q.source for q in qs}
    assert {"arith-1", "arith-5", "word-1", "word-3"} <= levels
    assert all(q.answer_type == "number" and int(q.answer) >= 0 for q in qs)
    assert len({q.id for q in qs}) == len(qs)
    with pytest.raises(ValueError, match="no questions.jsonl"):
        bundled_questions("llmrouter")


def _generator() -> object:
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "scripts" / "make_arith_questions.py"
    spec = importlib.util.spec_from_file_location("make_arith_questions", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_questions_are_seeded_distinct_and_exact() -> None:
    import ast
    import operator
    import re

    gen: Any = _generator()
    first = gen.make_questions(6, seed=3)
    assert [q.to_dict() for q in first] == [q.to_dict() for q in gen.make_questions(6, seed=3)]
    assert [q.question for q in first] != [q.question for q in gen.make_questions(6, seed=4)]
    assert len({q.question for q in first}) == len(first) == 6 * len(gen.LEVELS)
    # a smaller set is a prefix of a bigger one: collections can grow without redoing cells
    small = gen.make_questions(2, seed=3)
    assert {q.id: q.question for q in small}.items() <= {q.id: q.question for q in first}.items()

    ops = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}

    def value(node: ast.AST) -> int:
        if isinstance(node, ast.Constant):
            return int(node.value)
        assert isinstance(node, ast.BinOp)
        return ops[type(node.op)](value(node.left), value(node.right))

    for q in first:
        m = re.fullmatch(r"What is (.+)\?", q.question)
        if m:  # the arithmetic levels: recompute the gold answer independently
            assert value(ast.parse(m.group(1), mode="eval").body) == int(q.answer), q
        assert int(q.answer) >= 0


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_a_file_that_is_not_utf8_names_its_line_and_byte(tmp_path: Path, suffix: str) -> None:
    good = '{"question": "2+2?", "answer": "4"}\n' if suffix == ".jsonl" else "question,answer\n"
    path = tmp_path / f"q{suffix}"
    path.write_bytes(good.encode() + b'{"question": "caf\xe9", "answer": "1"}\n')
    with pytest.raises(QuestionSetError) as err:
        read_questions(path)
    assert err.value.problems == [
        f"{path}:2: not UTF-8 text (byte {len(good) + 17}: invalid continuation byte)"
    ]
