"""examples/smollm2-tools.jinja: SmolLM2's chat exactly as its own template, plus Hermes tools.

Rendered the way Hugging Face tokenizers and vLLM render chat templates (a sandboxed Jinja
environment with ``trim_blocks`` and ``lstrip_blocks``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

jinja2_sandbox = pytest.importorskip("jinja2.sandbox")

TEMPLATE = Path(__file__).resolve().parents[2] / "examples" / "smollm2-tools.jinja"

#: SmolLM2-135M-Instruct's own chat template (what scripts/convert_smollm2.py saves).
SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def render(template: str, **kw: Any) -> str:
    env = jinja2_sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = lambda x, **k: json.dumps(x, **k)
    return env.from_string(template).render(**kw)


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": "hi"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        [
            {"role": "system", "content": "A"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "yo"},
            {"role": "user", "content": "2+2?"},
        ],
    ],
)
@pytest.mark.parametrize("prompt", [True, False])
def test_plain_chat_renders_as_smollm2s_own(messages: list[dict[str, Any]], prompt: bool) -> None:
    ours = render(TEMPLATE.read_text(), messages=messages, add_generation_prompt=prompt)
    assert ours == render(SMOLLM2, messages=messages, add_generation_prompt=prompt)


def test_tools_calls_and_results_in_the_hermes_format() -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    call = {"id": "a", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}
    messages = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "content": "5", "tool_call_id": "a"},
    ]
    text = render(TEMPLATE.read_text(), messages=messages, tools=[tool], add_generation_prompt=True)
    assert "<tools>\n" + json.dumps(tool) + "\n</tools>" in text
    assert '<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call><|im_end|>' in text
    assert "<|im_start|>user\n<tool_response>\n5\n</tool_response><|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")
