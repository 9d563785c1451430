"""The package's own error types, so callers (and the CLI) can tell bad input from bugs.

Every exception the package raises on purpose derives from `RTRError`, and from the builtin a
caller would otherwise catch (`ValueError` for a bad value, `TypeError` for a wrong type,
`KeyError` for an unknown name), so both `except RTRError` and `except ValueError` work.
"""

from __future__ import annotations


class RTRError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(RTRError, ValueError):
    """A models file, strategy, policy or routing knob is invalid; the message says where."""


class KnobTypeError(RTRError, TypeError):
    """A routing knob has the wrong type (a string where a policy was expected, ...)."""


class UnknownPairError(RTRError, KeyError):
    """A model or strategy the router was not trained on was asked for."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class RoutingError(RTRError, ValueError):
    """A routing input is unusable: an unknown pair, a policy that cannot run on these inputs."""


class NotCalibratedError(RoutingError):
    """A policy or router needs fitting on validation questions before it can route."""


class QuestionTypeError(RTRError, TypeError):
    """A question (or a batch of them) is not the type expected; ``code`` names the rule."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class QuestionValueError(RTRError, ValueError):
    """A question is a string the router cannot route (empty, invalid Unicode, too long)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code
