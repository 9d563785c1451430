"""README, run: its Quick start commands in order in a fresh folder, then every Python snippet and
the endpoint's commands against the session's real vLLM servers.

What runs is README's own text; the only edits are the ones a reader on this machine makes: the
Quick start's ``make setup && source .venv/bin/activate`` is the venv these tests already run in
(its ``bin`` goes first on ``PATH``), ``examples/models.cpu.yaml`` is copied with the ports the
session's servers listen on, and the endpoint's port 8000 becomes a free one. Shell blocks that
are not run are named in :data:`NOT_RUN` with the reason, so a new block must be placed in one
list or the other (``test_every_shell_block_is_run_or_named``).

The unit test ``tests/unit/test_readme.py`` checks the same text cheaply (every ``rtr`` command
parses, every snippet imports real names); this one shows the commands work.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.integration.conftest import REPO, SmolServers, fresh_async_http_clients

README = REPO / "README.md"
ACTIVATE = "make setup && source .venv/bin/activate"
COMMAND_TIMEOUT_S = 900.0
#: README's command that trains the router its live-routing snippets load.
SMOL_TRAIN = "rtr train --data smol-arith --out rtr-out/smol-router"

#: First command of each shell block that is not run here, and why.
NOT_RUN = {
    "make demo": "README's set-up commands: CI runs `make test` itself, and `rtr demo` runs below",
    "pip install langchain-rtr": "installs from PyPI; CI's routing check installs the built wheel",
    "make setup": "README's Development block: the make targets CI runs (lint, test, routing "
    "check) or this test stands on (setup, servers)",
    "rtr add-model": "needs the reader's own models file and a new model's outcomes "
    "(tests/unit/test_cli_upkeep.py runs these commands on files it writes)",
}


def code_blocks() -> list[tuple[str, str]]:
    """(language, text) of every fenced block of README, in order."""
    text = README.read_text(encoding="utf-8")
    return re.findall(r"```(\w+)\n(.*?)```", text, re.S)


def shell_lines(block: str) -> list[str]:
    """The block's commands: continuation lines joined, comments and blank lines dropped."""
    lines = []
    for line in block.replace("\\\n", " ").splitlines():
        command = re.sub(r"\s+#.*$", "", line).strip()
        if command and not command.startswith("#"):
            lines.append(command)
    return lines


def quick_start() -> list[str]:
    section = README.read_text(encoding="utf-8").split("## Quick start", 1)[1]
    return shell_lines(re.findall(r"```bash\n(.*?)```", section, re.S)[0])


def run_shell(command: str, cwd: Path, env: dict[str, str]) -> str:
    """Run one README command; fail with its output if it exits non-zero."""
    done = subprocess.run(
        ["bash", "-c", command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"`{command}` exited {done.returncode}:\n{output[-4000:]}"
    return output


@pytest.fixture(scope="module")
def reader_env() -> dict[str, str]:
    """The environment after README's ``source .venv/bin/activate``: this venv's bin first."""
    venv_bin = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
        "VIRTUAL_ENV": str(Path(sys.executable).parents[1]),
        "HF_HUB_OFFLINE": "1",
    }


@pytest.fixture(scope="module")
def reader_dir(tmp_path_factory: pytest.TempPathFactory, smol_servers: SmolServers) -> Path:
    """A fresh folder with README's ``examples/`` models file pointing at the session servers."""
    folder = tmp_path_factory.mktemp("readme")
    examples = folder / "examples"
    examples.mkdir()
    models = yaml.safe_load((REPO / "examples" / "models.cpu.yaml").read_text(encoding="utf-8"))
    for entry in models["models"]:
        entry["serve"]["port"] = smol_servers.servers[entry["name"]].port
    (examples / "models.cpu.yaml").write_text(yaml.safe_dump(models), encoding="utf-8")
    (examples / "smollm2-tools.jinja").write_text(
        (REPO / "examples" / "smollm2-tools.jinja").read_text(encoding="utf-8"), encoding="utf-8"
    )
    return folder


def test_every_shell_block_is_run_or_named() -> None:
    firsts = [shell_lines(text)[0] for lang, text in code_blocks() if lang == "bash"]
    run_here = {quick_start()[0], SMOL_TRAIN}
    run_here.add(next(f for f in firsts if f.startswith("rtr serve-router")))
    unplaced = [
        f for f in firsts if f not in run_here and not any(f.startswith(n) for n in NOT_RUN)
    ]
    assert not unplaced, f"README shell blocks neither run nor named in NOT_RUN: {unplaced}"


def test_quick_start_runs_in_order(reader_dir: Path, reader_env: dict[str, str]) -> None:
    commands = quick_start()
    assert commands[0] == ACTIVATE, f"Quick start no longer starts with {ACTIVATE!r}"
    outputs = {command: run_shell(command, reader_dir, reader_env) for command in commands[1:]}

    assert (reader_dir / "rtr-out" / "router" / "router.json").is_file(), "no router saved"
    route = next(out for cmd, out in outputs.items() if cmd.startswith("rtr route"))
    assert re.search(r"gpt-4|gpt-3\.5-turbo|davinci|code-davinci", route), route[-2000:]
    bundled = next(out for cmd, out in outputs.items() if cmd.startswith("rtr bundled"))
    assert "faithful-cot" in bundled


@pytest.fixture(scope="module")
def smol_router(reader_dir: Path, reader_env: dict[str, str]) -> Path:
    """README's :data:`SMOL_TRAIN`, run as written (and it must still be README's)."""
    assert any(SMOL_TRAIN in shell_lines(text) for lang, text in code_blocks() if lang == "bash")
    run_shell(SMOL_TRAIN, reader_dir, reader_env)
    return reader_dir / "rtr-out" / "smol-router"


def python_snippets() -> list[str]:
    return [text for lang, text in code_blocks() if lang == "python"]


@pytest.fixture
def in_reader_dir(reader_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(reader_dir)
    fresh_async_http_clients()
    return reader_dir


@pytest.fixture
def router_endpoint(
    reader_dir: Path, reader_env: dict[str, str], smol_router: Path
) -> Iterator[tuple[int, str]]:
    """README's ``rtr serve-router ...`` on a free port, and its next command (the curl)."""
    from langchain_rtr.serving import free_port

    block = next(text for lang, text in code_blocks() if "rtr serve-router --router" in text)
    port = free_port()
    serve, curl = (line.replace("8000", str(port)) for line in shell_lines(block))
    log = (reader_dir / "serve-router.log").open("w")
    proc = subprocess.Popen(
        ["bash", "-c", f"exec {serve}"],
        cwd=reader_dir,
        env=reader_env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert proc.poll() is None, (reader_dir / "serve-router.log").read_text()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            pytest.fail("rtr serve-router did not become healthy within 180 s")
        yield port, curl
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_python_snippets_run_in_order(
    in_reader_dir: Path,
    smol_router: Path,
    router_endpoint: tuple[int, str],
    reader_env: dict[str, str],
) -> None:
    port, curl = router_endpoint
    reply = json.loads(run_shell(curl, in_reader_dir, reader_env))
    assert reply["choices"][0]["message"]["content"], reply
    assert reply["rtr"]["model"] in {"smol-a", "smol-b"}, reply

    snippets = python_snippets()
    assert len(snippets) == 5, "README's Python snippets changed: update this test's checks"
    saved = in_reader_dir / "rtr-out" / "router" / "router.json"
    before = saved.stat().st_mtime_ns if saved.exists() else 0
    namespace: dict[str, object] = {"__name__": "readme"}
    for index, source in enumerate(snippets):
        source = source.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
        exec(compile(source, f"README.md python snippet {index}", "exec"), namespace)  # noqa: S102

    assert saved.stat().st_mtime_ns > before, "the first snippet did not save its router"
    result = namespace["result"]
    assert getattr(result, "model", None) in {"smol-a", "smol-b"}, result
    # The call went through; SmolLM2 may still answer badly (a PAL program that does not parse).
    assert getattr(result, "error", "missing") is None, result
    assert getattr(result, "answer", None) is not None or getattr(result, "parse_error", None)
    out = namespace["out"]
    assert isinstance(out, dict) and len(out["answers"]) == 2, out
    assert namespace["reply"].choices[0].message.content  # type: ignore[attr-defined]
