"""The one input gate: what is a question, and every router entry point refusing the rest."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from langchain_rtr import MAX_QUESTION_CHARS, check_question, check_questions
from langchain_rtr.errors import QuestionTypeError, QuestionValueError, RTRError
from langchain_rtr.predictor import RTRPredictor, TrainConfig
from tests.unit.test_graph_fakes import FakePredictor, make_router
from tests.unit.test_predictor import MODELS, STRATEGIES, TopicEncoder, planted_matrix

BAD_TYPES = [None, 3, 2.5, b"bytes question", ["a list"], {"content": "a dict"}]
BAD_TEXT = {
    "": "empty_question",
    "   \n\t ": "empty_question",
    "\x00\x00\x00": "empty_question",
    "\x1b\x07": "empty_question",
    "\ud800": "invalid_encoding",
    "what is 2+2? \udcff": "invalid_encoding",
    "x" * (MAX_QUESTION_CHARS + 1): "question_too_long",
}


@pytest.mark.parametrize("value", BAD_TYPES, ids=lambda v: type(v).__name__)
def test_a_question_must_be_a_string(value: object) -> None:
    with pytest.raises(QuestionTypeError, match="expected the question as a str") as info:
        check_question(value, where="here")
    assert isinstance(info.value, TypeError) and isinstance(info.value, RTRError)
    assert info.value.code == "not_a_string" and str(info.value).startswith("here: ")


@pytest.mark.parametrize("value", list(BAD_TEXT), ids=list(BAD_TEXT.values()))
def test_unroutable_strings_are_refused(value: str) -> None:
    with pytest.raises(QuestionValueError) as info:
        check_question(value, where="here")
    assert isinstance(info.value, ValueError) and isinstance(info.value, RTRError)
    assert info.value.code == BAD_TEXT[value]
    assert "expected" in str(info.value) and str(info.value).startswith("here: ")


def test_good_questions_pass_unchanged() -> None:
    for question in ("What is 2+2?", " 7 ", "¿Cuánto es 3×4? 🤔", "x" * MAX_QUESTION_CHARS):
        assert check_question(question) is question
    assert check_question("x" * 20, max_chars=20) == "x" * 20
    with pytest.raises(QuestionValueError, match="at most 10"):
        check_question("x" * 11, max_chars=10)


def test_a_batch_is_a_sequence_and_names_its_bad_item() -> None:
    assert check_questions(("a", "b")) == ["a", "b"]
    assert check_questions(np.array(["a", "b"])) == ["a", "b"]
    for bare in ("one question", b"one question"):
        with pytest.raises(QuestionTypeError, match="sequence of questions") as info:
            check_questions(bare)
        assert info.value.code == "not_a_sequence"
    for not_a_batch in (None, 5, {"q": "a"}):
        with pytest.raises(QuestionTypeError, match="sequence of questions"):
            check_questions(not_a_batch)
    with pytest.raises(QuestionValueError, match=r"batch\[2\]: the question is empty"):
        check_questions(["fine", "also fine", "\x00"], where="batch")


# ----------------------------------------------------------------- the router's entry points


class RecordingPredictor(FakePredictor):
    """Records what reached it: nothing may when the input is bad."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[list[str]] = []

    def predict(self, questions):  # type: ignore[no-untyped-def]
        self.seen.append(list(questions))
        return super().predict(questions)


@pytest.mark.parametrize("value", [*BAD_TYPES[:3], "", "\x00\x00", "\ud800"])
def test_route_table_and_route_batch_refuse_bad_questions(value: object) -> None:
    predictor = RecordingPredictor()
    router = make_router(predictor)
    error = QuestionTypeError if not isinstance(value, str) else QuestionValueError
    with pytest.raises(error, match="route question"):
        router.route(value)  # type: ignore[arg-type]
    with pytest.raises(error, match="question"):
        router.table(value)  # type: ignore[arg-type]
    with pytest.raises(error, match=r"route_batch questions\[1\]"):
        router.route_batch(["a fine question", value])  # type: ignore[list-item]
    assert predictor.seen == []


def test_route_batch_refuses_a_bare_string() -> None:
    predictor = RecordingPredictor()
    with pytest.raises(QuestionTypeError, match="got one str"):
        make_router(predictor).route_batch("What is 2+2?")
    assert predictor.seen == []
    assert len(make_router().route_batch(["What is 2+2?", "And 3+3?"])) == 2


def test_the_predictor_checks_its_own_callers() -> None:
    predictor = RTRPredictor.train(
        planted_matrix(30, seed=2),
        MODELS,
        STRATEGIES,
        encoder=TopicEncoder(),
        config=TrainConfig(hidden=8, learnable_dim=2, max_epochs=1, ensemble=1),
    )
    with pytest.raises(QuestionValueError, match=r"predict questions\[0\]"):
        predictor.predict(["\ud800"])
    with pytest.raises(QuestionTypeError, match=r"predict questions\[0\]"):
        predictor.predict([None])  # type: ignore[list-item]


# --------------------------------------------------------------------------- the CLI


def rtr(*args: str | bytes) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2]), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "langchain_rtr.cli", *args],
        capture_output=True,
        text=True,
        errors="replace",
        env=env,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("argument", "expected"),
    [("", "empty"), ("\x01\x02", "empty"), (b"caf\xe9 \xff?", "not valid Unicode")],
    ids=["empty", "control characters", "invalid UTF-8"],
)
def test_rtr_route_refuses_bad_questions(
    argument: str | bytes, expected: str, tmp_path: Path
) -> None:
    done = rtr("route", argument, "--router", str(tmp_path / "no-router-needed"))
    assert done.returncode == 1
    assert expected in done.stderr and "QuestionValueError" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
