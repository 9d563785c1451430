"""The one input gate: what every entry point accepts as a question, checked in one place.

Contract (every entry point -- the router's ``route``/``route_batch``/``table``, the predictor's
``predict``, ``rtr route``, the dispatch engine's input (so the runnable, chat model and graph
node) and the server -- calls these before any question reaches a tokenizer or encoder):

- a question is a ``str`` (not ``bytes``, ``None``, a number or a message object):
  otherwise :class:`~langchain_rtr.errors.QuestionTypeError` (a ``TypeError``), code
  ``not_a_string``;
- it is valid Unicode: no lone surrogate code points (U+D800 to U+DFFF, which is what Python
  makes of invalid UTF-8 command-line bytes), else ``QuestionValueError`` code
  ``invalid_encoding``;
- it holds at least one printable, non-space character (``""``, ``"   "`` and a string of NUL
  or other control characters encode like an empty question and say nothing to route on),
  else code ``empty_question``;
- it has at most :data:`MAX_QUESTION_CHARS` characters (or the caller's ``max_chars``), else
  code ``question_too_long``;
- a batch is a sequence of such questions, never one bare string (which would otherwise be
  routed one character at a time): code ``not_a_sequence``. Every item is checked and the
  error names its index.

Both error types are :class:`~langchain_rtr.errors.RTRError` subclasses with a ``code``
attribute, and their message says what was expected and where (the ``where`` argument).
The question is returned unchanged: the gate refuses, it never rewrites.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from langchain_rtr.errors import QuestionTypeError, QuestionValueError

__all__ = ["MAX_QUESTION_CHARS", "check_question", "check_questions"]

MAX_QUESTION_CHARS = 100_000
"""The longest question routed by default (characters). The encoder reads only the first few
hundred tokens; the limit exists to refuse pathological input, not to trim normal questions."""


def check_question(value: object, *, where: str = "question", max_chars: int | None = None) -> str:
    """``value`` if it is a routable question, else a ``QuestionTypeError``/``QuestionValueError``.

    Args:
        value: The candidate question.
        where: Where it came from, for the message (``"route_batch questions[3]"``).
        max_chars: Longest accepted question; default :data:`MAX_QUESTION_CHARS`.
    """
    limit = MAX_QUESTION_CHARS if max_chars is None else max_chars
    if not isinstance(value, str):
        raise QuestionTypeError(
            f"{where}: expected the question as a str, got {type(value).__name__}",
            "not_a_string",
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise QuestionValueError(
            f"{where}: the question is not valid Unicode (a lone surrogate {value[exc.start]!r} "
            f"at character {exc.start}; invalid UTF-8 input becomes one); expected valid text",
            "invalid_encoding",
        ) from None
    if not any(ch.isprintable() and not ch.isspace() for ch in value):
        raise QuestionValueError(
            f"{where}: the question is empty (no printable character in {len(value)} "
            "characters); expected some text to route",
            "empty_question",
        )
    if len(value) > limit:
        raise QuestionValueError(
            f"{where}: the question has {len(value):,} characters; expected at most {limit:,}",
            "question_too_long",
        )
    return value


def check_questions(
    values: object, *, where: str = "questions", max_chars: int | None = None
) -> list[str]:
    """``values`` as a list of routable questions; refuses a bare string and names bad items."""
    if isinstance(values, (str, bytes, bytearray)):
        raise QuestionTypeError(
            f"{where}: expected a sequence of questions, got one {type(values).__name__} "
            "(wrap a single question in a list, or route it alone)",
            "not_a_sequence",
        )
    if not isinstance(values, Iterable) or isinstance(values, Mapping):
        raise QuestionTypeError(
            f"{where}: expected a sequence of questions (a list of str), got "
            f"{type(values).__name__}",
            "not_a_sequence",
        )
    return [
        check_question(value, where=f"{where}[{i}]", max_chars=max_chars)
        for i, value in enumerate(values)
    ]
