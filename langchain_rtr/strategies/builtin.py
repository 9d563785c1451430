r"""The paper's strategies (RTR, arXiv 2505.19435, App. B.2) and the thinking toggle.

Prompts are the paper's, word for word; a LaTeX ``\boxed{}`` in a prompt template is written
``\boxed{{}}`` so that the model sees ``\boxed{}`` (an unescaped template is how RouterArena's
prompts ended up showing models ``\boxed{{}}``).
"""

from __future__ import annotations

from dataclasses import replace

from langchain_core.prompts import ChatPromptTemplate

from langchain_rtr.strategies.base import Strategy, with_thinking
from langchain_rtr.strategies.sandbox import PythonSandbox

__all__ = ["COD_INSTRUCTION", "COT_INSTRUCTION", "PAL_INSTRUCTION", "make_builtin_strategies"]

COT_INSTRUCTION = (
    "Please reason step by step before providing the final answer, "
    "and put your final answer within \\boxed{}."
)
COD_INSTRUCTION = (
    "Think step by step, but only keep minimum draft for each thinking step, "
    "with 5 words at most, and put your final answer within \\boxed{}."
)
PAL_INSTRUCTION = (
    "Write a Python code snippet to solve the following problem. "
    "Do not use any plotting libraries or the input() function."
)


def _escape(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def _human(template: str) -> ChatPromptTemplate:
    return ChatPromptTemplate.from_messages([("human", template)])


DIRECT_DESCRIPTION = (
    "Direct answering: the question is sent alone, with no instruction to reason or to format "
    "the answer, and the final answer is read from the end of the reply (a boxed expression, "
    "'the answer is', or the last number). It is the cheapest strategy in output tokens (often "
    "tens of tokens for a non-reasoning model) and does well on recall and easy arithmetic, but "
    "loses accuracy on multi-step math where intermediate work matters. On a reasoning model "
    "left in its default thinking mode it still thinks at length."
)
COT_DESCRIPTION = (
    "Chain-of-thought: the model is asked to reason step by step and put the final answer in "
    "\\boxed{}. Writing out the intermediate steps raises accuracy on multi-step arithmetic, "
    "algebra and word problems, at the price of several hundred output tokens on school math "
    "and thousands on competition problems (more again on reasoning models); it adds little "
    "on questions that only need recall."
)
COD_DESCRIPTION = (
    "Chain-of-draft: the model reasons step by step but keeps each step to a terse draft of at "
    "most five words, then boxes the final answer. It keeps most of chain-of-thought's "
    "structure for a fraction of its output tokens (often a third or less), but small models "
    "follow the word limit poorly and can lose accuracy on problems that need careful algebra."
)
PAL_DESCRIPTION = (
    "Program-aided: the model writes a Python program for the problem, which runs in a "
    "sandbox; what it prints (or its solution() returns) is the answer. Exact arithmetic makes "
    "it strong on calculation-heavy word problems; the program costs roughly as many tokens as "
    "a short chain of thought, and the answer is lost when the code fails to run, times out, "
    "or the task is not computable (proofs, multiple choice, recall)."
)
THINK_DESCRIPTION = (
    "Thinking mode on (reasoning models such as Qwen3, via enable_thinking=True): the question "
    "is sent alone and the model thinks in a hidden scratchpad before answering. The most "
    "accurate option on hard math and science, and the most expensive: often one to several "
    "thousand output tokens even for easy questions."
)
NO_THINK_DESCRIPTION = (
    "Thinking mode off (reasoning models such as Qwen3, via enable_thinking=False): the "
    "question is sent alone and the model answers without a thinking phase. Output is short "
    "(tens to a few hundred tokens) and accuracy is close to a good non-reasoning model of the "
    "same size: fine on easy questions, weaker on hard multi-step problems."
)


def make_builtin_strategies() -> dict[str, Strategy]:
    """Fresh instances of the built-in strategies, by name.

    ``direct``, ``cot``, ``cod``, ``pal`` (thinking left at the model's default), and
    ``think`` / ``no_think``: the direct prompt with vLLM's ``enable_thinking`` on or off. Other
    combinations come from :func:`~langchain_rtr.strategies.base.with_thinking`. Direct, think
    and no_think carry tools and structured output (``supports_tools``); the others shape and
    parse a free-text answer.
    """
    direct = Strategy(
        name="direct",
        description=DIRECT_DESCRIPTION,
        prompt=_human("{question}"),
        supports_tools=True,
    )
    cot = Strategy(
        name="cot",
        description=COT_DESCRIPTION,
        prompt=_human("{question}\n" + _escape(COT_INSTRUCTION)),
    )
    cod = Strategy(
        name="cod",
        description=COD_DESCRIPTION,
        prompt=_human("{question}\n" + _escape(COD_INSTRUCTION)),
    )
    pal = Strategy(
        name="pal",
        description=PAL_DESCRIPTION,
        prompt=_human(_escape(PAL_INSTRUCTION) + "\n\n{question}"),
        program=PythonSandbox(site_packages=True),
    )
    think = replace(with_thinking(direct, True, name="think"), description=THINK_DESCRIPTION)
    no_think = replace(
        with_thinking(direct, False, name="no_think"), description=NO_THINK_DESCRIPTION
    )
    return {s.name: s for s in (direct, cot, cod, pal, think, no_think)}
