from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from langchain_rtr.config import (
    ModelsFile,
    ModelsFileError,
    load_models_file,
    parse_models_file,
)
from langchain_rtr.errors import ConfigError
from langchain_rtr.specs import ModelSpec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

GOOD = """\
models:
  - name: small
    description: a small model
    base_url: http://remote-host:9000/v1
    served_name: org/small-1b
    input_price: 0.1
    output_price: 0.4
    max_tokens: 512
  - name: thinker
    description: a reasoning model
    input_price: 1
    output_price: 4
    reasoning: true
    serve:
      model: Qwen/Qwen3-8B
      port: 8002
      host: 0.0.0.0
      dtype: bfloat16
      tensor_parallel_size: 2
      gpu_memory_utilization: 0.85
      extra_args: [--reasoning-parser, qwen3]
      env: {VLLM_CPU_KVCACHE_SPACE: 1, FLAG: true}
"""


def write(tmp_path: Path, text: str, name: str = "models.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_loads_specs_in_file_order(tmp_path: Path) -> None:
    loaded = load_models_file(write(tmp_path, GOOD))
    assert isinstance(loaded, ModelsFile)
    assert list(loaded.specs) == ["small", "thinker"]
    small = loaded.specs["small"]
    assert isinstance(small, ModelSpec)
    assert small.base_url == "http://remote-host:9000/v1"
    assert small.served_name == "org/small-1b"
    assert (small.input_price, small.output_price, small.max_tokens) == (0.1, 0.4, 512)
    assert small.reasoning is False
    assert loaded.specs["thinker"].reasoning is True


def test_serve_section_gives_base_url_and_entries(tmp_path: Path) -> None:
    loaded = load_models_file(write(tmp_path, GOOD))
    entries = loaded.serve_entries
    assert [e.name for e in entries] == ["thinker"]  # `small` has no serve section
    entry = entries[0]
    # A wildcard bind is reached on loopback.
    assert loaded.specs["thinker"].base_url == "http://127.0.0.1:8002/v1"
    assert entry.base_url == loaded.specs["thinker"].base_url
    assert entry.served_name == "thinker"
    assert entry.serve.model == "Qwen/Qwen3-8B"  # a hub id is not turned into a path
    assert entry.serve.tensor_parallel_size == 2
    assert entry.serve.extra_args == ["--reasoning-parser", "qwen3"]
    # The environment only holds text; YAML ints and bools arrive as such.
    assert entry.serve.env == {"VLLM_CPU_KVCACHE_SPACE": "1", "FLAG": "true"}


def test_explicit_base_url_wins_over_serve(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        models:
          - name: m
            base_url: http://proxy:1234/v1
            serve: {model: x/y, port: 8001}
        """,
    )
    assert load_models_file(path).specs["m"].base_url == "http://proxy:1234/v1"


def test_relative_paths_resolve_against_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "models" / "smol").mkdir(parents=True)
    path = write(
        tmp_path / "conf",
        """\
        serve_defaults:
          python: ../venv/bin/python
          env: {A: "1", B: "2"}
        models:
          - name: m
            serve:
              model: ../models/smol
              port: 8001
              env: {B: "3"}
          - name: n
            serve: {model: python3, port: 8002, python: python3}
        """,
    )
    monkeypatch.chdir("/")
    entries = {e.name: e for e in load_models_file(path).serve_entries}
    assert entries["m"].serve.model == str((tmp_path / "models" / "smol").resolve())
    assert entries["m"].serve.python == str(tmp_path / "venv" / "bin" / "python")
    assert entries["m"].serve.env == {"A": "1", "B": "3"}  # per-model env overrides defaults
    # A bare command stays a command, found on PATH when it runs.
    assert entries["n"].serve.python == "python3"


def test_a_models_extra_args_follow_the_shared_ones(tmp_path: Path) -> None:
    # The shared flags (tool parser, chat template) must survive a model adding its own
    # (its decoding); a model's repeated flag comes last, so vLLM takes the model's value.
    path = write(
        tmp_path,
        """\
        serve_defaults:
          extra_args: [--enable-auto-tool-choice, --seed=1]
        models:
          - name: m
            serve: {model: x, port: 8001, extra_args: "--seed=2 --max-num-seqs 4"}
          - name: n
            serve: {model: x, port: 8002}
        """,
    )
    entries = {e.name: e for e in load_models_file(path).serve_entries}
    assert entries["m"].serve.extra_args == [
        "--enable-auto-tool-choice",
        "--seed=1",
        "--seed=2",
        "--max-num-seqs",
        "4",
    ]
    assert entries["n"].serve.extra_args == ["--enable-auto-tool-choice", "--seed=1"]


def test_api_key_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTR_TEST_KEY", "sk-test")
    path = write(tmp_path, "models:\n  - {name: m, api_key_env: RTR_TEST_KEY}\n")
    assert load_models_file(path).specs["m"].api_key == "sk-test"
    monkeypatch.delenv("RTR_TEST_KEY")
    assert load_models_file(path).specs["m"].api_key is None


def test_error_names_file_line_entry_and_field(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        models:
          - name: ok
          - name: broken
            input_price: -1
            serve:
              model: m
              port: 99999
        """,
    )
    with pytest.raises(ModelsFileError) as info:
        load_models_file(path)
    err = info.value
    assert isinstance(err, ConfigError) and isinstance(err, ValueError)
    assert err.path == str(path)
    assert len(err.problems) == 2  # every problem is reported, not only the first
    price, port = err.problems
    assert price.startswith(f"{path}:4:") and "models[1] (broken)" in price
    assert "input_price" in price
    assert port.startswith(f"{path}:7:") and "serve.port" in port


def test_unknown_and_missing_fields(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        models:
          - name: m
            input_prize: 1
            serve: {port: 8001}
        """,
    )
    with pytest.raises(ModelsFileError) as info:
        load_models_file(path)
    text = str(info.value)
    assert "input_prize: unknown field" in text
    assert "serve.model: required field missing" in text


def test_duplicate_names_and_ports(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        models:
          - {name: a, serve: {model: x, port: 8001}}
          - {name: a, serve: {model: y, port: 8001, host: 0.0.0.0}}
        """,
    )
    with pytest.raises(ModelsFileError) as info:
        load_models_file(path)
    problems = info.value.problems
    assert any(":3:" in p and "already used by models[0]" in p for p in problems)
    assert any("port 8001" in p and "already taken by a" in p for p in problems)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("models: [\n", "not valid YAML"),
        ("", "empty file"),
        ("- name: a\n", "expected a mapping"),
        ("models: []\n", "models"),
    ],
)
def test_bad_shapes(text: str, expected: str) -> None:
    with pytest.raises(ModelsFileError, match=expected):
        parse_models_file(text, source="inline.yaml")


def test_missing_file_is_a_models_file_error(tmp_path: Path) -> None:
    with pytest.raises(ModelsFileError, match="cannot read"):
        load_models_file(tmp_path / "nope.yaml")


@pytest.mark.parametrize("name", ["models.cpu.yaml", "models.gpu.yaml"])
def test_examples_are_valid(name: str) -> None:
    loaded = load_models_file(EXAMPLES / name)
    assert loaded.specs
    for entry in loaded.serve_entries:
        assert entry.spec.base_url == entry.base_url


def test_cpu_example_decodes_as_the_bundled_set_was_collected(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A router trained on smol-arith predicts these servers only if they decode the same way.
    monkeypatch.syspath_prepend(str(EXAMPLES.parent / "scripts"))
    import collect_bundled  # scripts/, put on the path above

    flag = "--override-generation-config="
    served = {
        entry.name: [json.loads(a.removeprefix(flag)) for a in entry.serve.extra_args if flag in a]
        for entry in load_models_file(EXAMPLES / "models.cpu.yaml").serve_entries
    }
    assert served == {name: [gen] for name, gen in collect_bundled.GENERATION.items()}


def test_tools_flag_and_relative_extra_args(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    path = write(
        tmp_path / "conf",
        """\
        models:
          - name: caller
            tools: true
            serve:
              model: m
              port: 8001
              extra_args: [--chat-template, ./tools.jinja, --tool-call-parser=hermes, ../x]
          - name: plain
        """,
    )
    loaded = load_models_file(path)
    assert loaded.specs["caller"].tools is True and loaded.specs["plain"].tools is False
    args = loaded.serve_entries[0].serve.extra_args
    assert args == [
        "--chat-template",
        str(tmp_path / "conf" / "tools.jinja"),
        "--tool-call-parser=hermes",
        str(tmp_path / "x"),
    ]
