"""Question sets: the questions to profile models on, each with its gold answer.

A question set is a JSONL or CSV file with one question per row::

    {"id": "arith-3-0007", "question": "What is 48 * 7?", "answer": "336",
     "answer_type": "number", "source": "arith-3"}

Columns (CSV: a header row with these names):
    * ``question`` (required): the text sent to the model.
    * ``answer`` (required): the gold answer, in any form the grader understands ("336",
      "3/4", "B", "x^2 + 1"); a JSON number is taken as its text.
    * ``answer_type``: how the answer is graded: ``number``, ``choice``, ``expression`` or
      ``text`` (``auto`` guesses); default ``auto``.
    * ``source``: the task or difficulty level it came from (reports group by it); default the
      file's stem.
    * ``id``: a stable id; routing records and resumable collection key on it. Default: a hash of
      the question text, so an edit to the text makes it a new question.
    * anything else is kept in :attr:`Question.metadata`.

Every malformed row is reported with its file and line, all at once
(:class:`QuestionSetError`), so a user fixes the file in one pass.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast, get_args

from langchain_rtr.errors import RTRError
from langchain_rtr.strategies.grading import AnswerKind

__all__ = [
    "ANSWER_TYPES",
    "Question",
    "QuestionSetError",
    "bundled_questions",
    "question_id",
    "read_questions",
    "write_questions",
]

ANSWER_TYPES: tuple[str, ...] = cast("tuple[str, ...]", get_args(AnswerKind))
"""The answer types a question may have (the grader's kinds)."""

_KNOWN = ("id", "question", "answer", "answer_type", "source")
_JSONL_SUFFIXES = (".jsonl", ".ndjson")
_CSV_SUFFIXES = (".csv",)
_MAX_REPORTED = 50


class QuestionSetError(RTRError, ValueError):
    """A question set file is unreadable or has malformed rows.

    Attributes:
        path: The file.
        problems: One ``file:line: what`` string per problem, in file order.
    """

    def __init__(self, path: str, problems: Sequence[str]) -> None:
        self.path = path
        self.problems = list(problems)
        shown = self.problems[:_MAX_REPORTED]
        more = len(self.problems) - len(shown)
        tail = f"\n  ... and {more} more" if more > 0 else ""
        noun = "problem" if len(self.problems) == 1 else "problems"
        super().__init__(
            f"invalid question set {path} ({len(self.problems)} {noun}):\n  "
            + "\n  ".join(shown)
            + tail
        )


def question_id(question: str) -> str:
    """The default id of a question: a short hash of its text (stable across runs)."""
    return "q-" + hashlib.sha1(question.encode("utf-8")).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class Question:
    """One question with its gold answer.

    Attributes:
        id: Stable id; routing records carry it as ``question_id``.
        question: The text the model sees.
        answer: The gold answer, as text.
        answer_type: How :func:`~langchain_rtr.strategies.grade` compares answers.
        source: Task or difficulty level (e.g. ``arith-3``).
        metadata: Extra columns of the row, kept as read.
    """

    id: str
    question: str
    answer: str
    answer_type: AnswerKind = "auto"
    source: str = "questions"
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("id", "question", "answer", "source"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{name} must be a non-empty string, got {value!r}")
        if self.answer_type not in ANSWER_TYPES:
            raise ValueError(
                f"answer_type must be one of {', '.join(ANSWER_TYPES)}, got {self.answer_type!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """The row as written to JSONL (metadata columns inline)."""
        row: dict[str, Any] = {
            "id": self.id,
            "question": self.question,
            "answer": self.answer,
            "answer_type": self.answer_type,
            "source": self.source,
        }
        for key, value in self.metadata.items():
            row.setdefault(key, value)
        return row


def _text(value: Any, name: str, problems: list[str], where: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        problems.append(f"{where}: {name} must be text, got {type(value).__name__}")
        return None
    text = (
        value if isinstance(value, str) else repr(value) if isinstance(value, float) else str(value)
    )
    return text.strip() or None


def _row_to_question(
    row: Mapping[str, Any], where: str, default_source: str, problems: list[str]
) -> Question | None:
    before = len(problems)
    question = _text(row.get("question"), "question", problems, where)
    answer = _text(row.get("answer"), "answer", problems, where)
    if len(problems) > before:
        return None
    missing = [n for n, v in (("question", question), ("answer", answer)) if v is None]
    if missing:
        problems.append(f"{where}: missing or empty {' and '.join(missing)}")
        return None
    assert question is not None and answer is not None
    kind = _text(row.get("answer_type"), "answer_type", problems, where) or "auto"
    if kind.lower() not in ANSWER_TYPES:
        problems.append(f"{where}: answer_type {kind!r} is not one of {', '.join(ANSWER_TYPES)}")
        return None
    source = _text(row.get("source"), "source", problems, where) or default_source
    qid = _text(row.get("id"), "id", problems, where) or question_id(question)
    if len(problems) > before:
        return None
    metadata = {k: v for k, v in row.items() if k not in _KNOWN and k is not None}
    return Question(
        id=qid,
        question=question,
        answer=answer,
        answer_type=cast("AnswerKind", kind.lower()),
        source=source,
        metadata=metadata,
    )


def _check_utf8(path: Path) -> None:
    """Refuse a file that is not UTF-8 with its line and byte, before any row is read."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise QuestionSetError(
            str(path), [f"{path}:{line}: not UTF-8 text (byte {exc.start}: {exc.reason})"]
        ) from None


def _jsonl_rows(path: Path, problems: list[str]) -> Iterable[tuple[int, Mapping[str, Any]]]:
    with path.open("r", encoding="utf-8", newline="") as f:
        for line_no, raw in enumerate(f, start=1):
            line = raw.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append(f"{path}:{line_no}: bad JSON: {exc.msg} at column {exc.colno}")
                continue
            if not isinstance(row, dict):
                problems.append(
                    f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}"
                )
                continue
            yield line_no, row


def _csv_rows(path: Path, problems: list[str]) -> Iterable[tuple[int, Mapping[str, Any]]]:
    with path.open("r", encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            problems.append(f"{path}:1: bad CSV header: {exc}")
            return
        header = [h.strip() for h in header]
        missing = [n for n in ("question", "answer") if n not in header]
        if missing:
            problems.append(f"{path}:1: header lacks column(s) {missing}; it has {header}")
            return
        while True:
            start = reader.line_num + 1
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                problems.append(f"{path}:{start}: bad CSV: {exc}")
                return
            if not cells or all(not c.strip() for c in cells):
                continue
            if len(cells) != len(header):
                problems.append(
                    f"{path}:{start}: {len(cells)} fields, the header has {len(header)}"
                )
                continue
            yield start, dict(zip(header, cells, strict=True))


def read_questions(path: str | os.PathLike[str]) -> list[Question]:
    """Read a question set (JSONL or CSV, chosen by suffix).

    Args:
        path: ``.jsonl``/``.ndjson`` or ``.csv`` file.

    Returns:
        The questions in file order.

    Raises:
        FileNotFoundError: There is no such file.
        QuestionSetError: The suffix is unknown, or rows are malformed (every bad row is listed
            with its line), or two rows share an id.
    """
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix not in _JSONL_SUFFIXES + _CSV_SUFFIXES:
        raise QuestionSetError(
            str(file),
            [f"{file}: unknown question-set type {suffix!r}; expected .jsonl, .ndjson or .csv"],
        )
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no such question-set file")
    _check_utf8(file)
    problems: list[str] = []
    rows = _jsonl_rows(file, problems) if suffix in _JSONL_SUFFIXES else _csv_rows(file, problems)
    questions: list[Question] = []
    first_line: dict[str, int] = {}
    for line_no, row in rows:
        where = f"{file}:{line_no}"
        q = _row_to_question(row, where, file.stem, problems)
        if q is None:
            continue
        if q.id in first_line:
            problems.append(f"{where}: id {q.id!r} already used on line {first_line[q.id]}")
            continue
        first_line[q.id] = line_no
        questions.append(q)
    if problems:
        raise QuestionSetError(str(file), problems)
    if not questions:
        raise QuestionSetError(str(file), [f"{file}: no questions"])
    return questions


def write_questions(path: str | os.PathLike[str], questions: Iterable[Question]) -> Path:
    """Write questions as JSONL (or CSV for a ``.csv`` path); returns the path."""
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    items = list(questions)
    tmp = file.with_name(f".{file.name}.tmp")
    try:
        if file.suffix.lower() in _CSV_SUFFIXES:
            extra = sorted({k for q in items for k in q.metadata} - set(_KNOWN))
            with tmp.open("w", encoding="utf-8", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=[*_KNOWN, *extra])
                writer.writeheader()
                for q in items:
                    writer.writerow(q.to_dict())
        else:
            with tmp.open("w", encoding="utf-8") as f:
                for q in items:
                    f.write(json.dumps(q.to_dict(), ensure_ascii=False) + "\n")
        os.replace(tmp, file)
    finally:
        tmp.unlink(missing_ok=True)
    return file


def bundled_questions(name: str = "smol-arith") -> list[Question]:
    """The question set shipped beside a bundled routing set (``<name>/questions.jsonl``).

    Raises:
        ValueError: That bundled set has no question file.
    """
    from importlib.resources import as_file, files

    resource = files("langchain_rtr.data") / "bundled" / name / "questions.jsonl"
    if not resource.is_file():
        raise ValueError(f"bundled set {name!r} ships no questions.jsonl")
    with as_file(resource) as path:
        return read_questions(path)
