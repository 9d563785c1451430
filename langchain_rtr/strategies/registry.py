"""The strategy registry: built-ins plus whatever users register, looked up by name."""

from __future__ import annotations

import threading

from langchain_rtr.errors import RTRError
from langchain_rtr.strategies.base import Strategy
from langchain_rtr.strategies.builtin import make_builtin_strategies

__all__ = [
    "UnknownStrategyError",
    "builtin_strategies",
    "get_strategy",
    "list_strategies",
    "register_strategy",
    "unregister_strategy",
]

_BUILTINS: dict[str, Strategy] = make_builtin_strategies()
_REGISTRY: dict[str, Strategy] = dict(_BUILTINS)
_LOCK = threading.Lock()


class UnknownStrategyError(RTRError, KeyError):
    """No strategy of that name is registered."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(name)
        self.name = name
        self.known = known

    def __str__(self) -> str:
        return f"unknown strategy {self.name!r}; known strategies: {', '.join(self.known)}"


def register_strategy(strategy: Strategy, *, replace: bool = False) -> None:
    """Make ``strategy`` available by name (``replace=True`` to overwrite an existing one)."""
    if not isinstance(strategy, Strategy):
        raise TypeError(f"register_strategy expects a Strategy, got {type(strategy).__name__}")
    with _LOCK:
        if strategy.name in _REGISTRY and not replace and _REGISTRY[strategy.name] is not strategy:
            raise ValueError(
                f"strategy {strategy.name!r} is already registered; "
                "pass replace=True to overwrite it"
            )
        _REGISTRY[strategy.name] = strategy


def unregister_strategy(name: str) -> None:
    """Remove a registered strategy (a built-in comes back as the original)."""
    with _LOCK:
        if name not in _REGISTRY:
            raise UnknownStrategyError(name, sorted(_REGISTRY))
        if name in _BUILTINS:
            _REGISTRY[name] = _BUILTINS[name]
        else:
            del _REGISTRY[name]


def get_strategy(name: str) -> Strategy:
    """The registered strategy called ``name``; :class:`UnknownStrategyError` lists the names."""
    with _LOCK:
        try:
            return _REGISTRY[name]
        except (KeyError, TypeError):
            raise UnknownStrategyError(str(name), sorted(_REGISTRY)) from None


def list_strategies() -> dict[str, Strategy]:
    """Every registered strategy (built-in and user), by name; a copy."""
    with _LOCK:
        return dict(_REGISTRY)


def builtin_strategies() -> dict[str, Strategy]:
    """The built-in strategies: direct, cot, cod, pal, think, no_think."""
    return dict(_BUILTINS)
