"""The routing record: one observed outcome of one (model, strategy) pair on one question."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from langchain_rtr.errors import RTRError


class RecordError(RTRError, ValueError):
    """A routing record, or a row that should become one, is malformed.

    The message names the place (file and line where known) and what was wrong.
    """


@dataclass(frozen=True, slots=True)
class RoutingRecord:
    """One outcome: model `model` prompted with strategy `strategy` on `question`.

    Attributes:
        question: The question text, as the encoder sees it.
        source: The task or data set it came from (e.g. ``gsm8k``); used for per-source reports.
        model: The model's name.
        strategy: The strategy's name (``direct`` for sets that have no strategy dimension).
        score: Correctness in [0, 1]; ``None`` only when the call failed (``error`` is set).
        output_tokens: Output tokens the answer took, if known.
        input_tokens: Input tokens of the prompt, if known.
        cost: Dollars the call cost, if known.
        question_id: A stable id; questions are keyed on it when given, else on the text.
        latency_s: Wall-clock seconds of the call, if measured.
        response: The raw answer text, if kept.
        error: Why the call failed; an error is never a wrong answer.
    """

    question: str
    source: str
    model: str
    strategy: str
    score: float | None
    output_tokens: int | None = None
    input_tokens: int | None = None
    cost: float | None = None
    question_id: str | None = None
    latency_s: float | None = None
    response: str | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        for name in ("question", "source", "model", "strategy"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise RecordError(f"{name} must be a non-empty string, got {value!r}")
        if self.score is None:
            if self.error is None:
                raise RecordError("score is missing and no error is given")
        else:
            if isinstance(self.score, bool) or not isinstance(self.score, (int, float)):
                raise RecordError(f"score must be a number in [0, 1], got {self.score!r}")
            if not (0.0 <= float(self.score) <= 1.0) or math.isnan(self.score):
                raise RecordError(f"score must be in [0, 1], got {self.score!r}")
        for name in ("output_tokens", "input_tokens"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 0
            ):
                raise RecordError(f"{name} must be a non-negative integer, got {value!r}")
        for name in ("cost", "latency_s"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not value >= 0  # also rejects NaN
            ):
                raise RecordError(f"{name} must be a non-negative number, got {value!r}")

    @property
    def key(self) -> str:
        """What identifies the question across records."""
        return self.question_id if self.question_id is not None else self.question

    @property
    def ok(self) -> bool:
        """Whether the call produced a gradable answer."""
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        """A plain dict with every field, ``None`` kept, for JSONL and Parquet."""
        return asdict(self)

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> RoutingRecord:
        """Build from a dict; unknown keys and a missing required field are errors."""
        known = {f.name for f in fields(cls)}
        unknown = set(row) - known
        if unknown:
            raise RecordError(
                f"unknown field(s) {sorted(unknown)}; expected some of {sorted(known)}"
            )
        required = ("question", "source", "model", "strategy")
        missing = [name for name in required if name not in row]
        if missing:
            raise RecordError(f"missing field(s) {missing}")
        row = dict(row)
        row.setdefault("score", None)
        return cls(**row)


FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in fields(RoutingRecord))
