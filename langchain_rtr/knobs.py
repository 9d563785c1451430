"""One parser for the routing knobs, wherever they come from.

A call's routing is set by the same few knobs in every front end:

============  =====================  ==================  ==========================================
knob          config / kwarg         CLI flag            server model string / body
============  =====================  ==================  ==========================================
lambda        ``rtr_lambda``         ``--lambda``        ``rtr:lambda=0.7``
max_tokens    ``rtr_max_tokens``     ``--max-tokens``    ``rtr:max_tokens=300``
confidence    ``rtr_confidence``     ``--confidence``    ``rtr:max_tokens=300,confidence=0.9``
budget_rule   ``rtr_budget_rule``    ``--budget-rule``   ``rtr:max_tokens=300,budget_rule=best_bet``
floor         ``rtr_floor``          ``--floor``         ``rtr:floor=0.8``
pairs         ``rtr_allowed_pairs``  ``--allow``         ``rtr:pairs=m/cot|m/direct``
policy        ``rtr_policy``         (none)              (none)
============  =====================  ==================  ==========================================

Each front end turns its source into a mapping keyed by knob name (text values from the CLI or
a model string go through `knobs_from_text` first) and calls `parse_knobs`, which validates
every value where it enters and builds one `Knobs`, so the same knobs give the same policy
everywhere:

- at most one of ``lambda``, ``floor`` and ``policy`` chooses the policy;
- ``max_tokens`` caps the answer; given alone it also routes, with
  ``TokenBudget(max_tokens, on_no_fit="fewest_tokens", confidence=confidence)``: a call must
  still answer when no pair is predicted to fit, and the cap keeps it within the budget;
- ``confidence`` belongs to the token budget and needs ``max_tokens``;
- ``budget_rule`` also needs ``max_tokens``: ``"fit"`` (the default) is that token budget,
  ``"best_bet"`` routes with ``BestBet(max_tokens)`` instead, the pair with the highest
  P(correct) x P(its answer fits); it states no truncation bound, so not with ``confidence``;
- a pair is ``(model, strategy)`` or ``"model/strategy"``, split at the *last* ``/`` (strategy
  names have none; model names may: ``"org/model/cot"`` is ``("org/model", "cot")``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_rtr.errors import ConfigError, KnobTypeError
from langchain_rtr.routing import AccuracyFloor, BestBet, Policy, TokenBudget, Tradeoff

__all__ = [
    "CONFIG_KEYS",
    "KNOBS",
    "Knobs",
    "UnknownKnobError",
    "check_tokens",
    "config_label",
    "knobs_from_config",
    "knobs_from_text",
    "parse_knobs",
    "parse_model_string",
    "parse_pair",
    "parse_pairs",
    "policy_budget",
    "smallest_cap",
]

Pair = tuple[str, str]

KNOBS: dict[str, str] = {
    "lambda": "accuracy/cost trade-off in [0, 1] (1: accuracy only)",
    "max_tokens": "per-question output token budget (routes within it and caps the answer)",
    "confidence": "with max_tokens: probability in (0, 1) that the answer fits the budget",
    "budget_rule": "with max_tokens: fit (a pair's length must fit) or best_bet "
    "(highest P(correct) x P(fits))",
    "floor": "accuracy floor in [0, 1]: the cheapest pair predicted to reach it",
    "pairs": "the (model, strategy) pairs this call may use, as model/strategy|model/strategy",
    "policy": "a routing policy object (Tradeoff, TokenBudget, BestBet, AccuracyFloor, ...)",
}
"""Every knob, with what it means (the server lists these in its errors and model cards)."""

CONFIG_KEYS: dict[str, str] = {
    "rtr_lambda": "lambda",
    "rtr_max_tokens": "max_tokens",
    "rtr_confidence": "confidence",
    "rtr_budget_rule": "budget_rule",
    "rtr_floor": "floor",
    "rtr_allowed_pairs": "pairs",
    "rtr_policy": "policy",
}
"""The `config["configurable"]` key of each knob."""

BUDGET_RULES = ("fit", "best_bet")
"""The values of the ``budget_rule`` knob."""

MAX_TOKENS_LIMIT = 10**9
"""Largest ``max_tokens`` accepted (far above any model's context, below any overflow)."""

Label = Callable[[str], str]


class UnknownKnobError(ConfigError):
    """A knob name that does not exist (a typo must not be ignored)."""


def config_label(knob: str) -> str:
    """How a knob is named in errors about `config["configurable"]`."""
    key = next((k for k, v in CONFIG_KEYS.items() if v == knob), knob)
    return f"config['configurable'][{key!r}]"


@dataclass(frozen=True)
class Knobs:
    """A call's routing, validated: the policy (None: the default), cap and allowed pairs."""

    policy: Policy | None = None
    max_tokens: int | None = None
    pairs: frozenset[Pair] | None = None


# --------------------------------------------------------------------------- pairs
def parse_pair(item: Any, where: str) -> Pair:
    """``(model, strategy)`` from a 2-sequence of strings or ``"model/strategy"``."""
    if isinstance(item, str):
        model, sep, strategy = item.rpartition("/")
        if sep and model and strategy:
            return (model, strategy)
    elif (
        isinstance(item, Sequence)
        and len(item) == 2
        and all(isinstance(x, str) and x for x in item)
    ):
        return (item[0], item[1])
    msg = f"{where}: expected a (model, strategy) pair or 'model/strategy', got {item!r}"
    if isinstance(item, str | Sequence):
        raise ConfigError(msg)
    raise KnobTypeError(msg)


def parse_pairs(items: Any, where: str) -> frozenset[Pair]:
    """Pairs from a list of pairs, or one ``"m/s|m/s"`` string; at least one."""
    if isinstance(items, str):
        items = [p for p in items.split("|") if p.strip()]
    elif not isinstance(items, Collection) or isinstance(items, Mapping):
        msg = f"{where}: expected a list of (model, strategy) pairs, got {items!r}"
        raise KnobTypeError(msg)
    pairs = frozenset(parse_pair(item, where) for item in items)
    if not pairs:
        raise ConfigError(f"{where}: names no pair; give at least one model/strategy")
    return pairs


# --------------------------------------------------------------------------- values
def _number(value: Any, where: str, lo: float, hi: float, *, open_: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise KnobTypeError(f"{where}: expected a number, got {value!r}")
    x = float(value)
    inside = lo < x < hi if open_ else lo <= x <= hi
    if not (math.isfinite(x) and inside):
        interval = f"({lo:g}, {hi:g})" if open_ else f"[{lo:g}, {hi:g}]"
        raise ConfigError(f"{where}: expected a number in {interval}, got {value!r}")
    return x


def check_tokens(value: Any, where: str) -> int:
    """``value`` as a token count in [1, `MAX_TOKENS_LIMIT`], or a clear error."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise KnobTypeError(f"{where}: expected a positive int (output tokens), got {value!r}")
    if not 1 <= int(value) <= MAX_TOKENS_LIMIT:
        msg = f"{where}: expected an int in [1, {MAX_TOKENS_LIMIT:,}], got {value!r}"
        raise ConfigError(msg)
    return int(value)


def smallest_cap(*caps: int | None) -> int | None:
    """The tightest of a call's ``max_tokens`` caps; the one rule every front end applies.

    None is no cap, so the result is None only when no cap is given; any number is a cap,
    0 included (a budget that pays for nothing), so no front end reads 0 as "uncapped". Caps
    from users are validated first (`check_tokens`: at least 1).
    """
    given = [int(c) for c in caps if c is not None]
    return min(given) if given else None


def _budget_rule(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise KnobTypeError(f"{where}: expected one of {', '.join(BUDGET_RULES)}, got {value!r}")
    if value not in BUDGET_RULES:
        raise ConfigError(f"{where}: expected one of {', '.join(BUDGET_RULES)}, got {value!r}")
    return value


def _policy(value: Any, where: str) -> Policy:
    if not isinstance(value, Policy):
        msg = (
            f"{where}: expected a routing policy (Tradeoff, TokenBudget, BestBet, AccuracyFloor "
            f"or AverageBudget; `policy_from_dict` reads a saved one), got "
            f"{type(value).__name__} {value!r}"
        )
        raise KnobTypeError(msg)
    return value


def parse_knobs(values: Mapping[str, Any], label: Label = repr) -> Knobs:
    """Validate knob values (by knob name; None means not given) and build the call's `Knobs`.

    Args:
        values: Knob name to value; see the module docstring.
        label: How to name a knob in an error (e.g. `config_label`, or ``"--max-tokens"``).

    Raises:
        UnknownKnobError: A name that is no knob.
        KnobTypeError: A value of the wrong type (a string where a number is expected...).
        ConfigError: A value out of range, or knobs that contradict each other.
    """
    unknown = sorted(set(values) - set(KNOBS))
    if unknown:
        names = ", ".join(label(k) for k in unknown)
        raise UnknownKnobError(f"unknown routing knob(s) {names}; known: {', '.join(KNOBS)}")
    given = {k: v for k, v in values.items() if v is not None}
    lam = _number(given["lambda"], label("lambda"), 0, 1) if "lambda" in given else None
    floor = _number(given["floor"], label("floor"), 0, 1) if "floor" in given else None
    policy = _policy(given["policy"], label("policy")) if "policy" in given else None
    budget = None
    if "max_tokens" in given:
        budget = check_tokens(given["max_tokens"], label("max_tokens"))
    confidence = None
    if "confidence" in given:
        confidence = _number(given["confidence"], label("confidence"), 0, 1, open_=True)
    rule = (
        _budget_rule(given["budget_rule"], label("budget_rule")) if "budget_rule" in given else None
    )
    choosers = [k for k in ("lambda", "floor", "policy") if k in given]
    if len(choosers) > 1:
        names = " and ".join(label(k) for k in choosers)
        raise ConfigError(f"{names} each choose a policy; give at most one of them")
    if confidence is not None and (budget is None or choosers):
        msg = (
            f"{label('confidence')} belongs to a token budget: give it with "
            f"{label('max_tokens')} and no other policy"
        )
        raise ConfigError(msg)
    if rule is not None and (budget is None or choosers):
        msg = (
            f"{label('budget_rule')} belongs to a token budget: give it with "
            f"{label('max_tokens')} and no other policy"
        )
        raise ConfigError(msg)
    if rule == "best_bet" and confidence is not None:
        msg = (
            f"{label('budget_rule')} 'best_bet' states no truncation bound, so it takes no "
            f"{label('confidence')}; give one of them"
        )
        raise ConfigError(msg)
    if lam is not None:
        policy = Tradeoff(lam=lam)
    elif floor is not None:
        policy = AccuracyFloor(floor=floor)
    elif policy is None and budget is not None and rule == "best_bet":
        policy = BestBet(max_tokens=budget)
    elif policy is None and budget is not None:
        policy = TokenBudget(max_tokens=budget, on_no_fit="fewest_tokens", confidence=confidence)
    pairs = parse_pairs(given["pairs"], label("pairs")) if "pairs" in given else None
    return Knobs(policy=policy, max_tokens=budget, pairs=pairs)


def policy_budget(policy: Any) -> int | None:
    """The token cap a policy implies (a `TokenBudget`'s or `BestBet`'s ``max_tokens``), if any."""
    if isinstance(policy, TokenBudget | BestBet) and policy.max_tokens >= 1:
        return int(policy.max_tokens)
    return None


# --------------------------------------------------------------------------- sources
def knobs_from_config(configurable: Mapping[str, Any]) -> dict[str, Any]:
    """The knobs among `config["configurable"]`'s keys (other keys are not ours)."""
    return {CONFIG_KEYS[k]: v for k, v in configurable.items() if k in CONFIG_KEYS}


def knobs_from_text(raw: Mapping[str, str], label: Label = repr) -> dict[str, Any]:
    """Knob values typed from text (a model string, a query string): numbers parsed."""
    out: dict[str, Any] = {}
    for key, text in raw.items():
        if key in ("lambda", "floor", "confidence"):
            try:
                out[key] = float(text)
            except ValueError:
                raise ConfigError(f"{label(key)}: expected a number, got {text!r}") from None
        elif key == "max_tokens":
            try:
                out[key] = int(text)
            except ValueError:
                raise ConfigError(f"{label(key)}: expected an integer, got {text!r}") from None
        elif key in ("pairs", "budget_rule"):
            out[key] = text
        else:
            msg = f"unknown routing knob {label(key)}; known: {', '.join(k for k in KNOBS)}"
            raise UnknownKnobError(msg)
    return out


def parse_model_string(model: str, route_name: str = "rtr") -> dict[str, str] | None:
    """Split ``rtr:lambda=0.7,max_tokens=600`` into its raw knob texts.

    Returns:
        None if ``model`` does not name the router; else the knobs (empty for plain ``rtr``).

    Raises:
        UnknownKnobError: A name that is no knob (``policy`` is Python-only).
        ConfigError: A knob without a value, or given twice.
    """
    if model == route_name:
        return {}
    prefix = route_name + ":"
    if not model.startswith(prefix):
        return None
    knobs: dict[str, str] = {}
    for part in model[len(prefix) :].split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if key not in KNOBS or key == "policy":
            known = ", ".join(k for k in KNOBS if k != "policy")
            raise UnknownKnobError(
                f"unknown RTR knob {key!r} in model {model!r}; known knobs: {known}"
            )
        if not sep or not value:
            raise ConfigError(f"RTR knob {key!r} in model {model!r} needs a value ({key}=...)")
        if key in knobs:
            raise ConfigError(f"RTR knob {key!r} is given twice in {model!r}")
        knobs[key] = value
    return knobs
