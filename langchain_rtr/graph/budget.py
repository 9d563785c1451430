"""Exact budget arithmetic: budgets, allotments, per-pair caps and booked spend.

Everything is integer so that "the spend never exceeds the budget" is a statement about
integers, not floats: output tokens are counted as they are, and dollars are kept in
**picodollars** (1e-12 $). Prices (``$ per million tokens``) become picodollars per token,
rounded *up*; budgets in dollars become picodollars, rounded *down*. Rounding therefore only
ever makes the accounting stricter than the true prices.

A call is admitted with ``max_tokens = cap`` only if its worst case fits what it was allotted:

- output tokens: ``cap <= allotted tokens`` (a server never returns more than ``max_tokens``);
- dollars: ``input_bound x input_price + cap x output_price <= allotted dollars``, where
  ``input_bound`` is an upper bound on the prompt's tokens (:func:`input_token_bound`).

After the call the *measured* usage is booked (what the backend reported), which is at most the
worst case; when a backend reports no usage, the worst case is booked instead.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from fractions import Fraction
from typing import Any, TypedDict

from langchain_core.messages import BaseMessage

from langchain_rtr.errors import ConfigError, RTRError
from langchain_rtr.knobs import smallest_cap
from langchain_rtr.specs import ModelSpec

__all__ = [
    "INPUT_OVERHEAD_TOKENS",
    "PER_MESSAGE_TOKENS",
    "PICO_PER_USD",
    "Allotment",
    "Budget",
    "BudgetExhaustedError",
    "BudgetSpec",
    "Spend",
    "book",
    "input_token_bound",
    "no_spend",
    "pair_cap",
    "pico_to_usd",
    "price_pico_per_token",
    "split",
    "total_spend",
    "usd_to_pico",
    "worst_case",
]

PICO_PER_USD = 10**12
"""Picodollars per dollar: the unit dollar budgets and spend are counted in."""

PER_MESSAGE_TOKENS = 8
"""Tokens a chat template may add around one message (role markers, separators)."""

INPUT_OVERHEAD_TOKENS = 64
"""Tokens a chat template may add to a whole prompt (BOS, a default system prompt, the
generation prompt). SmolLM2's and Qwen's templates insert a default system prompt of about 20
tokens when none is given; 64 leaves room for that."""


class BudgetExhaustedError(RTRError):
    """The budget left cannot pay for a call (raised with ``on_exhausted="raise"``).

    Attributes:
        subtask: The subtask id (or ``"model_call"`` for agent middleware).
        left: What was left of the budget (``{"tokens": ..., "usd": ...}``).
    """

    def __init__(self, message: str, *, subtask: str, left: Mapping[str, Any]) -> None:
        super().__init__(message)
        self.subtask = subtask
        self.left = dict(left)


class BudgetSpec(TypedDict, total=False):
    """A budget (or what is left of one) in state: output tokens, dollars, or both.

    A missing or ``None`` field is unbounded.
    """

    tokens: int | None
    usd: float | None


class Spend(TypedDict):
    """Booked spend: measured usage of the calls made (worst case where none was reported)."""

    input_tokens: int
    output_tokens: int
    picodollars: int
    usd: float
    calls: int


def usd_to_pico(usd: float, *, round_up: bool = False) -> int:
    """Dollars to integer picodollars (down by default: a budget never grows by rounding)."""
    rounding = ROUND_CEILING if round_up else ROUND_FLOOR
    return int((Decimal(str(usd)) * PICO_PER_USD).to_integral_value(rounding=rounding))


def pico_to_usd(pico: int) -> float:
    """Picodollars to dollars (for display and state)."""
    return pico / PICO_PER_USD


def price_pico_per_token(price_per_million: float) -> int:
    """A ``$ per million tokens`` price as picodollars per token, rounded up."""
    return int((Decimal(str(price_per_million)) * 10**6).to_integral_value(ROUND_CEILING))


@dataclass(frozen=True)
class Allotment:
    """An amount of budget in exact units; ``None`` means unbounded.

    Used both for what is left of a budget and for one call's share of it.
    """

    tokens: int | None = None
    pico: int | None = None

    @property
    def unbounded(self) -> bool:
        """Whether neither tokens nor dollars are limited."""
        return self.tokens is None and self.pico is None

    def to_spec(self) -> BudgetSpec:
        """As ``{"tokens": ..., "usd": ...}`` for state and display."""
        return {
            "tokens": self.tokens,
            "usd": None if self.pico is None else pico_to_usd(self.pico),
        }


@dataclass(frozen=True)
class Budget:
    """One budget for a graph run or agent run: output tokens, dollars, or both.

    Attributes:
        tokens: Output tokens (None: unbounded).
        usd: Dollars, input and output priced with each model's `ModelSpec` prices
            (None: unbounded).
    """

    tokens: int | None = None
    usd: float | None = None

    def __post_init__(self) -> None:
        if self.tokens is not None and (
            isinstance(self.tokens, bool) or not isinstance(self.tokens, int) or self.tokens < 0
        ):
            raise ConfigError(f"Budget.tokens: expected an int >= 0 or None, got {self.tokens!r}")
        if self.usd is not None and (
            isinstance(self.usd, bool)
            or not isinstance(self.usd, int | float)
            or not math.isfinite(self.usd)
            or self.usd < 0
        ):
            msg = f"Budget.usd: expected a finite number >= 0 or None, got {self.usd!r}"
            raise ConfigError(msg)

    @classmethod
    def coerce(cls, value: Budget | Mapping[str, Any] | None, where: str = "budget") -> Budget:
        """A `Budget` from a `Budget`, a ``{"tokens", "usd"}`` mapping, or None (unbounded)."""
        if value is None:
            return cls()
        if isinstance(value, Budget):
            return value
        if isinstance(value, Mapping):
            unknown = sorted(set(map(str, value)) - {"tokens", "usd"})
            if unknown:
                raise ConfigError(f"{where}: unknown keys {unknown}; expected 'tokens', 'usd'")
            return cls(tokens=value.get("tokens"), usd=value.get("usd"))
        raise ConfigError(
            f"{where}: expected a Budget or {{'tokens': int, 'usd': float}}, "
            f"got {type(value).__name__}"
        )

    @property
    def total(self) -> Allotment:
        """The whole budget in exact units."""
        return Allotment(
            tokens=self.tokens, pico=None if self.usd is None else usd_to_pico(self.usd)
        )

    def left(self, spent: Iterable[Spend]) -> Allotment:
        """What is left after the booked spends (never below zero)."""
        out_tokens = 0
        pico = 0
        for s in spent:
            out_tokens += int(s.get("output_tokens", 0))
            pico += int(s.get("picodollars", 0))
        total = self.total
        return Allotment(
            tokens=None if total.tokens is None else max(total.tokens - out_tokens, 0),
            pico=None if total.pico is None else max(total.pico - pico, 0),
        )

    def to_spec(self) -> BudgetSpec:
        """As ``{"tokens": ..., "usd": ...}``."""
        return {"tokens": self.tokens, "usd": self.usd}


def _weights(weights: Sequence[float]) -> list[Fraction]:
    out: list[Fraction] = []
    for w in weights:
        value = float(w)
        if not math.isfinite(value) or value < 1.0:
            value = 1.0  # a weight is a predicted token count: at least one token
        out.append(Fraction(value))
    return out


def split(left: Allotment, weights: Sequence[float], take: int) -> list[Allotment]:
    """Shares of ``left`` for the first ``take`` of ``len(weights)`` pending items.

    Item ``i`` gets ``floor(left x w_i / sum(w))``: the weights of *all* pending items are in
    the denominator, so the items not taken now keep their part. Flooring means the shares of
    any subset sum to at most ``left`` -- the property the fan-out's safety rests on.
    Equal weights give the even split.
    """
    if take < 0 or take > len(weights):
        raise ValueError(f"take must be in [0, {len(weights)}], got {take}")
    ws = _weights(weights)
    total = sum(ws, Fraction(0))
    shares: list[Allotment] = []
    for w in ws[:take]:
        frac = w / total
        shares.append(
            Allotment(
                tokens=None if left.tokens is None else math.floor(left.tokens * frac),
                pico=None if left.pico is None else math.floor(left.pico * frac),
            )
        )
    return shares


def _text_bytes(message: BaseMessage) -> int:
    content = message.content
    text = content if isinstance(content, str) else json.dumps(content, default=str)
    extra = getattr(message, "tool_calls", None)
    size = len(text.encode("utf-8"))
    if extra:
        size += len(json.dumps(extra, default=str).encode("utf-8"))
    return size


def input_token_bound(
    messages: Sequence[BaseMessage],
    *,
    tools: Sequence[Mapping[str, Any]] = (),
    overhead: int = INPUT_OVERHEAD_TOKENS,
) -> int:
    """An upper bound on the prompt tokens of ``messages`` (and tool schemas).

    Byte-level BPE tokenizers (GPT-2 family, Llama 3, Qwen, SmolLM2) never produce more tokens
    than the text has UTF-8 bytes, so the bound is the byte count plus the chat template's
    markers (:data:`PER_MESSAGE_TOKENS` per message, ``overhead`` per prompt). It is about 4x
    the real count for English, which only makes the dollar check stricter; pass a tighter
    ``input_tokens`` function where a tokenizer is at hand.
    """
    size = sum(_text_bytes(m) + PER_MESSAGE_TOKENS for m in messages)
    size += sum(len(json.dumps(t, default=str).encode("utf-8")) for t in tools)
    return size + overhead


def pair_cap(share: Allotment, spec: ModelSpec, input_bound: int) -> int | None:
    """The largest ``max_tokens`` one call on ``spec`` may have within ``share``.

    Returns:
        The cap (0 when even the prompt does not fit the dollars), ``spec.max_tokens`` or None
        when the share is unbounded.
    """
    dollars = None
    if share.pico is not None:
        left = share.pico - input_bound * price_pico_per_token(spec.input_price)
        if left < 0:
            return 0
        out_price = price_pico_per_token(spec.output_price)
        if out_price > 0:
            dollars = left // out_price
    return smallest_cap(share.tokens, dollars, spec.max_tokens)


def worst_case(spec: ModelSpec, input_bound: int, max_tokens: int | None) -> Allotment:
    """The most a call can cost: ``max_tokens`` output tokens and ``input_bound`` input tokens."""
    if max_tokens is None:
        return Allotment(tokens=None, pico=None)
    pico = input_bound * price_pico_per_token(spec.input_price) + max_tokens * (
        price_pico_per_token(spec.output_price)
    )
    return Allotment(tokens=max_tokens, pico=pico)


def book(
    spec: ModelSpec | None,
    input_tokens: int | None,
    output_tokens: int | None,
    *,
    input_bound: int,
    max_tokens: int | None,
) -> Spend:
    """The spend to book for one call from its measured usage.

    Where the backend reported no usage, the worst case (``input_bound``, ``max_tokens``) is
    booked instead, so unmeasured calls can only make the books stricter.
    """
    in_tok = int(input_tokens) if input_tokens is not None else input_bound
    out_tok = int(output_tokens) if output_tokens is not None else int(max_tokens or 0)
    pico = 0
    if spec is not None:
        pico = in_tok * price_pico_per_token(spec.input_price) + out_tok * price_pico_per_token(
            spec.output_price
        )
    return Spend(
        input_tokens=in_tok,
        output_tokens=out_tok,
        picodollars=pico,
        usd=pico_to_usd(pico),
        calls=1,
    )


def no_spend() -> Spend:
    """A spend of nothing (a skipped subtask)."""
    return Spend(input_tokens=0, output_tokens=0, picodollars=0, usd=0.0, calls=0)


def total_spend(spends: Iterable[Spend]) -> Spend:
    """The sum of spends."""
    total = no_spend()
    for s in spends:
        total["input_tokens"] += int(s.get("input_tokens", 0))
        total["output_tokens"] += int(s.get("output_tokens", 0))
        total["picodollars"] += int(s.get("picodollars", 0))
        total["calls"] += int(s.get("calls", 0))
    total["usd"] = pico_to_usd(total["picodollars"])
    return total
