"""README against the code: every `rtr` command it shows parses with the CLI as it is (command,
options, values), and every Python snippet compiles and imports only names the package has.

Running the commands is the job of CI's routing check (`rtr route`, `rtr bundled`, `rtr demo
--help` from the built wheel) and of the tests of each command; here drift is caught cheaply.
"""

from __future__ import annotations

import ast
import importlib
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer

from langchain_rtr.cli.main import app

README = Path(__file__).resolve().parents[2] / "README.md"
SEPARATORS = {"&&", "||", ";", "|", "&"}


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def rtr_commands() -> list[list[str]]:
    """The argument lists of every `rtr` command in README's shell blocks."""
    commands: list[list[str]] = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.commenters = "#"
            lexer.whitespace_split = True
            words = list(lexer)
            start = 0
            for i, word in enumerate([*words, ";"]):
                if word in SEPARATORS:
                    if words[start:i][:1] == ["rtr"]:
                        commands.append(words[start + 1 : i])
                    start = i + 1
    return commands


def parse(args: list[str]) -> None:
    """Parse ``args`` the way `rtr` would, without running the command.

    Typer ships its own copy of click, so its classes are reached through the command objects.
    """
    command: Any = typer.main.get_command(app)
    ctx = command.make_context("rtr", [], resilient_parsing=True)
    while hasattr(command, "get_command") and args and not args[0].startswith("-"):
        sub = command.get_command(ctx, args[0])
        assert sub is not None, f"README uses `rtr ... {args[0]}`, which is no command"
        name, args = args[0], args[1:]
        if hasattr(sub, "get_command"):
            ctx = sub.make_context(name, [], parent=ctx, resilient_parsing=True)
        else:
            sub.make_context(name, list(args), parent=ctx)
            return
        command = sub


COMMANDS = rtr_commands()


def test_readme_shows_the_quick_start_commands() -> None:
    names = {c[0] for c in COMMANDS if c}
    assert {"demo", "train", "eval", "route", "bundled", "serve-router", "add-model"} <= names


@pytest.mark.parametrize("args", COMMANDS, ids=[" ".join(c)[:60] for c in COMMANDS])
def test_every_rtr_command_in_readme_parses(args: list[str]) -> None:
    try:
        parse(args)
    except Exception as exc:  # typer's click: UsageError and its kinds have format_message
        if not hasattr(exc, "format_message"):
            raise
        pytest.fail(f"`rtr {shlex.join(args)}` from README does not parse: {exc.format_message()}")


SNIPPETS = blocks("python")


@pytest.mark.parametrize("source", SNIPPETS, ids=[f"snippet-{i}" for i in range(len(SNIPPETS))])
def test_every_python_snippet_compiles_and_imports_real_names(source: str) -> None:
    tree = ast.parse(source)
    compile(tree, "README.md", "exec")
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("langchain_rtr"):
            module = importlib.import_module(node.module or "")
            missing = [a.name for a in node.names if not hasattr(module, a.name)]
            assert not missing, f"README imports {missing} from {node.module}, which has none"
