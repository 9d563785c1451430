"""The rules the docs state about the package's structure, checked on its source."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import langchain_rtr
from langchain_rtr.errors import RTRError

PACKAGE = Path(langchain_rtr.__file__).parent

NOT_YET_PUBLIC_IMPORTS: set[str] = set()


def _modules() -> list[str]:
    found = pkgutil.walk_packages([str(PACKAGE)], prefix="langchain_rtr.")
    return sorted(m.name for m in found if not m.name.endswith("__main__"))


def test_no_module_imports_another_modules_private_names() -> None:
    offences: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("langchain_rtr"):
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        where = path.relative_to(PACKAGE.parent)
                        name = f"{node.module}.{alias.name}"
                        if name not in NOT_YET_PUBLIC_IMPORTS:
                            offences.append(f"{where}:{node.lineno}: {name}")
    assert offences == []


def test_the_private_names_check_can_fail(tmp_path: Path) -> None:
    source = "from langchain_rtr.runnable import _Attempt\n"
    tree = ast.parse(source)
    found = [
        a.name
        for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom)
        for a in n.names
        if a.name.startswith("_")
    ]
    assert found == ["_Attempt"]


def test_every_public_exception_of_the_package_is_an_rtr_error() -> None:
    offenders: list[str] = []
    for name in _modules():
        try:
            module = importlib.import_module(name)
        except ImportError:  # an optional extra that is not installed
            continue
        for cls_name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != name or not issubclass(cls, BaseException):
                continue
            if cls_name.startswith("_"):  # internal control flow, never reaches a caller
                continue
            qualified = f"{name}.{cls_name}"
            if not issubclass(cls, RTRError):
                offenders.append(qualified)
    assert offenders == []


def test_rtr_errors_keep_their_builtin_base() -> None:
    from langchain_rtr.errors import (
        ConfigError,
        KnobTypeError,
        NotCalibratedError,
        RoutingError,
        UnknownPairError,
    )
    from langchain_rtr.evaluation.curves import CurveError
    from langchain_rtr.server import OpenAIError

    for cls, base in [
        (ConfigError, ValueError),
        (KnobTypeError, TypeError),
        (RoutingError, ValueError),
        (NotCalibratedError, ValueError),
        (UnknownPairError, KeyError),
        (CurveError, ValueError),
    ]:
        assert issubclass(cls, RTRError) and issubclass(cls, base), cls
    assert issubclass(OpenAIError, RTRError)


def test_no_package_file_is_over_600_lines() -> None:
    long = {
        str(p.relative_to(PACKAGE.parent)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > 600
    }
    assert long == {}
