r"""A reasoning strategy: how to prompt a model, and how to read its answer back.

A strategy is data plus two small functions: a prompt template (input variable ``question``), an
answer extractor, and optionally a program runner (PAL: the model writes Python, the sandbox runs
it, and the program's output is the answer). Its ``description`` is what the RTR predictor
encodes, so it should say honestly what the strategy does and what it costs in tokens.

Writing your own takes a few lines::

    from langchain_core.prompts import ChatPromptTemplate
    from langchain_rtr.strategies import Strategy, extract_answer, register_strategy

    eli5 = Strategy(
        name="eli5",
        description="Explains the problem simply, as to a child, then answers in one line. "
        "Medium length (100-300 tokens); helps on word problems, not on hard algebra.",
        prompt=ChatPromptTemplate.from_messages(
            [("human", "{question}\\nExplain it like I'm five, then write 'Answer: <answer>'.")]
        ),
        extractor=lambda text: extract_answer(text, "auto"),
    )
    register_strategy(eli5)
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from langchain_core.messages import BaseMessage
from langchain_core.prompts import ChatPromptTemplate

if TYPE_CHECKING:
    from langchain_rtr.strategies.sandbox import SandboxResult

__all__ = [
    "Extractor",
    "ParsedAnswer",
    "ProgramRunner",
    "Strategy",
    "output_text",
    "strip_thinking",
    "with_thinking",
]

Extractor = Callable[[str], "str | None"]
"""Turns the model's final text (thinking removed) into an answer, or None when there is none."""

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


@dataclass(frozen=True)
class ParsedAnswer:
    """What a strategy read from one model output.

    Attributes:
        answer: The extracted final answer (normalised text), None if none was found.
        error: Why there is no answer (e.g. "no answer found", "program timed out after 5s").
        program_output: PAL only: what the program printed (or its ``solution()`` returned).
    """

    answer: str | None
    error: str | None = None
    program_output: str | None = None

    @property
    def ok(self) -> bool:
        """Whether an answer was found."""
        return self.answer is not None


@runtime_checkable
class ProgramRunner(Protocol):
    """Runs the program in a model output (PAL); the sandbox's :class:`PythonSandbox` is one."""

    def run(self, text: str) -> SandboxResult:
        """Extract the program from ``text``, run it, and report; never raises."""
        ...

    async def arun(self, text: str) -> SandboxResult:
        """Same as :meth:`run` without blocking the event loop."""
        ...


def _default_extractor(text: str) -> str | None:
    from langchain_rtr.strategies.grading import extract_answer

    return extract_answer(text, "auto")


_THINK_BLOCK = re.compile(r"<think(?:ing)?>.*?</think(?:ing)?>", re.S | re.I)
_THINK_OPEN = re.compile(r"<think(?:ing)?>", re.I)
_THINK_CLOSE = re.compile(r"</think(?:ing)?>", re.I)


def strip_thinking(text: str) -> tuple[str, bool]:
    """Remove ``<think>...</think>`` blocks; returns (text, ended_inside_thinking).

    Reasoning models served without a reasoning parser put their thoughts in the content. A
    closing tag with no opening one (the template opened it) drops everything before it; an
    opening tag that is never closed means the model ran out of tokens while thinking.
    """
    text = _THINK_BLOCK.sub("", text)
    closes = list(_THINK_CLOSE.finditer(text))
    if closes:
        text = text[closes[-1].end() :]
    opened = _THINK_OPEN.search(text)
    if opened:
        return text[: opened.start()], True
    return text, False


def output_text(output: str | BaseMessage | Any) -> str:
    """The text of a model output: a string, or a message's text blocks joined (no reasoning)."""
    if isinstance(output, str):
        return output
    if isinstance(output, BaseMessage):
        return str(output.text)
    content = getattr(output, "content", None)
    if isinstance(content, str):
        return content
    return "" if output is None else str(output)


@dataclass(frozen=True, eq=False)
class Strategy:
    """A reasoning strategy: a prompt, an answer extractor, and optionally a program runner.

    Attributes:
        name: Unique short name (letters, digits, ``_ . -``), e.g. ``"cot"``.
        description: One honest paragraph the predictor encodes: what it does, what it costs.
        prompt: A chat prompt whose only input variable is ``question``.
        extractor: Final text -> answer (default: :func:`extract_answer` with ``kind="auto"``).
        thinking: None leaves the model's default; True/False sets vLLM's
            ``chat_template_kwargs.enable_thinking`` (Qwen3-style reasoning models).
        program: PAL: runs the program in the output; the extractor is then applied to the
            program's last printed line.
        supports_tools: Whether a call with tools or a structured output format may use it:
            its prompt leaves the answer's form to the caller and its answer is the model's
            message itself (direct, thinking on/off), not free text it parses (CoT's box,
            PAL's program). Calls with tools or a response format route only among these.
    """

    name: str
    description: str
    prompt: ChatPromptTemplate
    extractor: Extractor = field(default=_default_extractor)
    thinking: bool | None = None
    program: ProgramRunner | None = None
    supports_tools: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise ValueError(
                f"Strategy name must be 1-64 characters of letters, digits, '_', '.', '-' "
                f"starting with a letter or digit; got {self.name!r}"
            )
        if not isinstance(self.description, str) or not self.description.strip():
            raise ValueError(f"Strategy {self.name!r}: description must be a non-empty string")
        if not isinstance(self.prompt, ChatPromptTemplate):
            raise TypeError(
                f"Strategy {self.name!r}: prompt must be a ChatPromptTemplate, "
                f"got {type(self.prompt).__name__}"
            )
        variables = set(self.prompt.input_variables)
        if variables != {"question"}:
            raise ValueError(
                f"Strategy {self.name!r}: prompt must take exactly the input variable "
                f"'question'; it takes {sorted(variables)}"
            )
        if not callable(self.extractor):
            raise TypeError(f"Strategy {self.name!r}: extractor must be callable")
        if self.thinking is not None and not isinstance(self.thinking, bool):
            raise TypeError(f"Strategy {self.name!r}: thinking must be None, True or False")
        if self.program is not None and not isinstance(self.program, ProgramRunner):
            raise TypeError(f"Strategy {self.name!r}: program must have run() and arun()")
        if not isinstance(self.supports_tools, bool):
            raise TypeError(f"Strategy {self.name!r}: supports_tools must be True or False")
        if self.supports_tools and self.program is not None:
            raise ValueError(
                f"Strategy {self.name!r}: a program strategy cannot carry tools (its answer is "
                "the program's output, not the model's message)"
            )

    def __repr__(self) -> str:
        return f"Strategy(name={self.name!r}, thinking={self.thinking!r}, pal={self.is_program})"

    @property
    def is_program(self) -> bool:
        """Whether the answer comes from running a program (PAL)."""
        return self.program is not None

    def render(self, question: str) -> list[BaseMessage]:
        """The messages to send for ``question``."""
        if not isinstance(question, str):
            raise TypeError(f"question must be a str, got {type(question).__name__}")
        return self.prompt.format_messages(question=question)

    def model_kwargs(self) -> dict[str, Any]:
        """Extra chat-model call arguments (merged by the dispatcher into ``ChatOpenAI``)."""
        if self.thinking is None:
            return {}
        return {"extra_body": {"chat_template_kwargs": {"enable_thinking": self.thinking}}}

    def _final_text(self, output: str | BaseMessage | Any) -> tuple[str, ParsedAnswer | None]:
        text, unfinished = strip_thinking(output_text(output))
        if unfinished and not text.strip():
            return text, ParsedAnswer(None, error="output ended inside <think> (no final answer)")
        if not text.strip():
            return text, ParsedAnswer(None, error="empty output")
        return text, None

    def _answer(self, text: str) -> ParsedAnswer:
        try:
            answer = self.extractor(text)
        except Exception as exc:  # noqa: BLE001 - a user extractor must not sink the batch
            return ParsedAnswer(None, error=f"extractor {self.name!r} failed: {exc!r}")
        if answer is None:
            return ParsedAnswer(None, error="no answer found")
        return ParsedAnswer(str(answer))

    def _from_program(self, result: SandboxResult) -> ParsedAnswer:
        if not result.ok:
            return ParsedAnswer(None, error=result.error, program_output=result.output)
        lines = [ln.strip() for ln in result.output.splitlines() if ln.strip()]
        if not lines:
            return ParsedAnswer(None, error="program printed nothing", program_output="")
        parsed = self._answer(lines[-1])
        answer = parsed.answer if parsed.answer is not None else lines[-1]
        return ParsedAnswer(answer, program_output=result.output)

    def parse(self, output: str | BaseMessage | Any) -> ParsedAnswer:
        """Read the answer from a model output; never raises on model output.

        PAL strategies run the program here (blocking); use :meth:`aparse` in async code.
        """
        try:
            text, failed = self._final_text(output)
            if failed is not None:
                return failed
            if self.program is None:
                return self._answer(text)
            return self._from_program(self.program.run(text))
        except Exception as exc:  # noqa: BLE001
            return ParsedAnswer(None, error=f"could not parse output: {exc!r}")

    async def aparse(self, output: str | BaseMessage | Any) -> ParsedAnswer:
        """Like :meth:`parse`; a PAL program runs without blocking the event loop."""
        if self.program is None:
            return self.parse(output)
        try:
            text, failed = self._final_text(output)
            if failed is not None:
                return failed
            return self._from_program(await self.program.arun(text))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            return ParsedAnswer(None, error=f"could not parse output: {exc!r}")


def with_thinking(
    strategy: Strategy, thinking: bool | None, *, name: str | None = None
) -> Strategy:
    """A copy of ``strategy`` with the thinking toggle set (and a new name, by default suffixed).

    ``with_thinking(get_strategy("cot"), False)`` is named ``cot_no_think``.
    """
    suffix = {True: "_think", False: "_no_think", None: ""}[thinking]
    return dataclasses.replace(strategy, thinking=thinking, name=name or strategy.name + suffix)
