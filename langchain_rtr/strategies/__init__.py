"""Reasoning strategies (direct, CoT, CoD, PAL, thinking on/off), answer grading, PAL sandbox."""

from langchain_rtr.strategies.base import (
    Extractor,
    ParsedAnswer,
    ProgramRunner,
    Strategy,
    output_text,
    strip_thinking,
    with_thinking,
)
from langchain_rtr.strategies.grading import (
    AnswerKind,
    extract_answer,
    extract_boxed,
    grade,
    is_equivalent,
    parse_number,
)
from langchain_rtr.strategies.registry import (
    UnknownStrategyError,
    builtin_strategies,
    get_strategy,
    list_strategies,
    register_strategy,
    unregister_strategy,
)
from langchain_rtr.strategies.sandbox import (
    PythonSandbox,
    SandboxResult,
    arun_program,
    extract_program,
    isolation_mode,
    run_program,
)

__all__ = [
    "AnswerKind",
    "Extractor",
    "ParsedAnswer",
    "ProgramRunner",
    "PythonSandbox",
    "SandboxResult",
    "Strategy",
    "UnknownStrategyError",
    "arun_program",
    "builtin_strategies",
    "extract_answer",
    "extract_boxed",
    "extract_program",
    "get_strategy",
    "grade",
    "is_equivalent",
    "isolation_mode",
    "list_strategies",
    "output_text",
    "parse_number",
    "register_strategy",
    "run_program",
    "strip_thinking",
    "unregister_strategy",
    "with_thinking",
]
