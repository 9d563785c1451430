"""Strategies: the paper's prompts, parsing, the thinking toggle, and the registry."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.prompts import ChatPromptTemplate

from langchain_rtr.strategies import (
    ParsedAnswer,
    Strategy,
    UnknownStrategyError,
    builtin_strategies,
    extract_answer,
    get_strategy,
    list_strategies,
    register_strategy,
    unregister_strategy,
    with_thinking,
)

PAPER = {
    "cot": "Please reason step by step before providing the final answer, and put your final "
    "answer within \\boxed{}.",
    "cod": "Think step by step, but only keep minimum draft for each thinking step, with 5 words "
    "at most, and put your final answer within \\boxed{}.",
    "pal": "Write a Python code snippet to solve the following problem. Do not use any plotting "
    "libraries or the input() function.",
}


@pytest.fixture
def clean_registry() -> Iterator[None]:
    before = set(list_strategies())
    yield
    for name in set(list_strategies()) - before:
        unregister_strategy(name)


def test_builtin_names() -> None:
    assert set(builtin_strategies()) == {"direct", "cot", "cod", "pal", "think", "no_think"}


def test_direct_prompt_is_the_question_alone() -> None:
    messages = get_strategy("direct").render("What is {2+2}?")
    assert len(messages) == 1 and isinstance(messages[0], HumanMessage)
    assert messages[0].content == "What is {2+2}?"


@pytest.mark.parametrize("name", ["cot", "cod", "pal"])
def test_paper_prompts_verbatim(name: str) -> None:
    text = get_strategy(name).render("Q?")[0].content
    assert isinstance(text, str)
    assert PAPER[name] in text and "Q?" in text
    assert "{{" not in text  # the template's escaping must not leak to the model


def test_descriptions_are_distinct_paragraphs() -> None:
    descriptions = [s.description for s in builtin_strategies().values()]
    assert len(set(descriptions)) == len(descriptions)
    assert all(len(d.split()) >= 30 and "token" in d for d in descriptions)


def test_thinking_kwargs() -> None:
    assert get_strategy("cot").model_kwargs() == {}
    on, off = get_strategy("think").model_kwargs(), get_strategy("no_think").model_kwargs()
    assert on["extra_body"]["chat_template_kwargs"]["enable_thinking"] is True
    assert off["extra_body"]["chat_template_kwargs"]["enable_thinking"] is False
    variant = with_thinking(get_strategy("cot"), False)
    assert variant.name == "cot_no_think" and variant.prompt is get_strategy("cot").prompt


def test_parse_string_and_message() -> None:
    cot = get_strategy("cot")
    assert cot.parse("so 3+4 = 7, \\boxed{7}") == ParsedAnswer("7")
    blocks = AIMessage(content=[{"type": "text", "text": "The answer is \\boxed{12}"}])
    assert cot.parse(blocks).answer == "12"


def test_parse_strips_thinking() -> None:
    direct = get_strategy("direct")
    assert direct.parse("<think>maybe 5? \\boxed{5}</think>The answer is 6.").answer == "6"
    assert direct.parse("maybe 5</think>\n\\boxed{6}").answer == "6"
    unfinished = direct.parse("<think>let me think about 41 and 42 ...")
    assert unfinished.answer is None and "think" in (unfinished.error or "")


def test_parse_never_raises_on_odd_output() -> None:
    for output in ("", "   ", None, AIMessage(content=""), "\\boxed{"):
        parsed = get_strategy("cot").parse(output)
        assert isinstance(parsed, ParsedAnswer)
        assert parsed.answer is None and parsed.error


def test_pal_parse_runs_the_program() -> None:
    output = "```python\ndef solution():\n    eggs = 16 - 3 - 4\n    return eggs * 2\n```"
    parsed = get_strategy("pal").parse(output)
    assert parsed.answer == "18" and parsed.program_output is not None


def test_pal_failure_is_a_result() -> None:
    parsed = get_strategy("pal").parse("```python\nprint(1/0)\n```")
    assert parsed.answer is None and "ZeroDivisionError" in (parsed.error or "")


async def test_pal_aparse() -> None:
    parsed = await get_strategy("pal").aparse("```python\nprint(sum(range(5)))\n```")
    assert parsed.answer == "10"
    assert (await get_strategy("cot").aparse("\\boxed{3}")).answer == "3"


def test_custom_strategy_in_a_few_lines(clean_registry: None) -> None:
    eli5 = Strategy(
        name="eli5",
        description="Explains simply, then answers on a line 'Answer: X'. About 150 tokens.",
        prompt=ChatPromptTemplate.from_messages(
            [("human", "{question}\nExplain it like I'm five, then write 'Answer: <answer>'.")]
        ),
        extractor=lambda text: extract_answer(text, "choice"),
    )
    register_strategy(eli5)
    assert get_strategy("eli5") is eli5
    assert get_strategy("eli5").parse("Because... Answer: (C)").answer == "C"
    with pytest.raises(ValueError, match="already registered"):
        register_strategy(Strategy(name="eli5", description="x", prompt=eli5.prompt))
    register_strategy(Strategy(name="eli5", description="y", prompt=eli5.prompt), replace=True)
    assert get_strategy("eli5").description == "y"


def test_failing_custom_extractor_is_an_error_result() -> None:
    def boom(text: str) -> str | None:
        raise RuntimeError("extractor bug")

    s = Strategy(name="boom", description="d", prompt=get_strategy("direct").prompt, extractor=boom)
    parsed = s.parse("1")
    assert parsed.answer is None and "extractor bug" in (parsed.error or "")


def test_unknown_strategy_lists_known_names() -> None:
    with pytest.raises(KeyError) as info:
        get_strategy("tree_of_thought")
    assert isinstance(info.value, UnknownStrategyError)
    assert "tree_of_thought" in str(info.value) and "cot" in str(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": "", "description": "d"},
        {"name": "has space", "description": "d"},
        {"name": "ok", "description": "   "},
    ],
)
def test_invalid_strategy(kwargs: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        Strategy(prompt=get_strategy("direct").prompt, **kwargs)  # type: ignore[arg-type]


def test_prompt_must_take_question() -> None:
    prompt = ChatPromptTemplate.from_messages([("human", "{query}")])
    with pytest.raises(ValueError, match="question"):
        Strategy(name="bad", description="d", prompt=prompt)


def test_register_rejects_non_strategy() -> None:
    with pytest.raises(TypeError):
        register_strategy("cot")  # type: ignore[arg-type]


def test_only_strategies_whose_answer_is_the_message_carry_tools() -> None:
    carry = {name for name, s in builtin_strategies().items() if s.supports_tools}
    assert carry == {"direct", "think", "no_think"}
    assert with_thinking(builtin_strategies()["cot"], False).supports_tools is False


def test_a_program_strategy_cannot_carry_tools() -> None:
    pal = builtin_strategies()["pal"]
    with pytest.raises(ValueError, match="cannot carry tools"):
        Strategy(
            name="pal2",
            description="x",
            prompt=pal.prompt,
            program=pal.program,
            supports_tools=True,
        )
