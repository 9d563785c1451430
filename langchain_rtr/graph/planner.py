"""The budget planner: route one call among the pairs its share of the budget can pay for.

A pure function (`plan_call`) used by the LangGraph node for every subtask and by the agent
middleware for every model call: given what is left, a call's share, the routing tables and
an upper bound on each strategy's prompt tokens, it picks the pair, its ``max_tokens`` cap and
the fallback pairs that also fit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, TypedDict, cast

import numpy as np

from langchain_rtr.graph.budget import (
    Allotment,
    BudgetExhaustedError,
    BudgetSpec,
    Spend,
    no_spend,
    pair_cap,
    worst_case,
)
from langchain_rtr.knobs import smallest_cap
from langchain_rtr.specs import ModelSpec

Pair = tuple[str, str]
OnExhausted = Literal["cheapest", "skip", "raise"]
AllotmentMode = Literal["even", "weighted"]
SubtaskStatus = Literal["ok", "cheapest", "skipped", "error"]
"""``ok``: answered by the routed pair; ``cheapest``: the budget was short, answered by the
cheapest pair that fits; ``skipped``: no call was affordable (``on_exhausted="skip"`` or nothing
fits at all); ``error``: the call failed (every pair tried, or a bad input)."""


class SubtaskResult(TypedDict):
    """What happened to one subtask (JSON-ready, checkpointed in `RTRState.results`)."""

    id: str
    index: int
    question: str
    status: SubtaskStatus
    answer: str | None
    model: str | None
    strategy: str | None
    predicted_tokens: float | None
    predicted_correctness: float | None
    allotted: BudgetSpec
    max_tokens: int | None
    spend: Spend
    fallbacks: list[str]
    error: str | None


class CallTask(TypedDict):
    """What `dispatch` sends to `call` for one subtask (the Send payload)."""

    id: str
    index: int
    question: str
    status: SubtaskStatus
    allotted: BudgetSpec
    share_tokens: int | None
    share_pico: int | None
    max_tokens: int | None
    allowed: list[list[str]]
    input_bounds: dict[str, int]
    predicted_tokens: float | None
    predicted_correctness: float | None


@dataclass(frozen=True)
class SubtaskItem:
    """One subtask to plan: its id, position, question and weight."""

    id: str
    index: int
    question: str
    weight: float | None


@dataclass(frozen=True)
class PlanSettings:
    """What planning depends on besides the call: the router, its pairs and the rules.

    Attributes:
        router: The `RTRRouter` (its `decide` and `models`).
        pairs: The router's pairs, in its column order.
        usable: ``[P]`` which pairs may be used at all.
        policy: The routing policy.
        min_call_tokens: A pair is only called with at least this many `max_tokens`.
        on_exhausted: What happens when no pair fits the share.
        confidence: When set, a pair fits a share only if its `confidence`-quantile of output
            tokens does (the router's length quantiles), not its point estimate.
    """

    router: Any
    pairs: Sequence[Pair]
    usable: np.ndarray
    policy: Any
    min_call_tokens: int
    on_exhausted: OnExhausted
    confidence: float | None = None

    def spec(self, model: str) -> ModelSpec:
        """The model's spec (prices, its own max_tokens)."""
        return cast(ModelSpec, self.router.models[model])


def budget_tokens(tables: Any, confidence: float | None) -> np.ndarray | None:
    """``[n, P]`` output tokens a share is checked on: the point estimate, or its quantile."""
    if tables.output_tokens is None or confidence is None:
        return cast(np.ndarray | None, tables.output_tokens)
    return cast(np.ndarray, tables.output_tokens_at(confidence))


def pair_key(pair: Pair) -> str:
    """``"model/strategy"``: how a pair keys a task's ``input_bounds``."""
    return f"{pair[0]}/{pair[1]}"


def _fits(share: Allotment, cost: Allotment) -> bool:
    if share.tokens is not None and (cost.tokens is None or cost.tokens > share.tokens):
        return False
    return not (share.pico is not None and (cost.pico is None or cost.pico > share.pico))


def finite_or_none(value: Any) -> float | None:
    """``value`` as a finite float, else None."""
    try:
        out = None if value is None else float(value)
    except (TypeError, ValueError):
        return None
    return out if out is None or np.isfinite(out) else None


def _one_row(tables: Any, row: int) -> Any:
    """Row ``row`` of a `RoutingTables` as a one-question `RoutingTables`."""
    tok = tables.output_tokens
    return replace(
        tables,
        questions=[tables.questions[row]],
        correctness=tables.correctness[row : row + 1],
        output_tokens=None if tok is None else tok[row : row + 1],
        usd=tables.usd[row : row + 1],
        cost=tables.cost[row : row + 1],
    )


def subtask_result(
    task: CallTask,
    status: SubtaskStatus,
    *,
    spend: Spend | None = None,
    answer: str | None = None,
    model: str | None = None,
    strategy: str | None = None,
    max_tokens: int | None = None,
    fallbacks: list[str] | None = None,
    error: str | None = None,
) -> SubtaskResult:
    """The record of what happened to a planned task."""
    return SubtaskResult(
        id=task["id"],
        index=task["index"],
        question=task["question"],
        status=status,
        answer=answer,
        model=model,
        strategy=strategy,
        predicted_tokens=task["predicted_tokens"],
        predicted_correctness=task["predicted_correctness"],
        allotted=task["allotted"],
        max_tokens=max_tokens,
        spend=spend if spend is not None else no_spend(),
        fallbacks=fallbacks or [],
        error=error,
    )


def plan_call(
    settings: PlanSettings,
    item: SubtaskItem,
    share: Allotment,
    tables: Any,
    row: int,
    left: Allotment,
    bounds: Mapping[str, int],
) -> CallTask:
    """Route one subtask among the pairs its share can pay for (see the class doc).

    Pure: the same settings, share, tables and bounds (prompt-token bound per strategy) give
    the same task; the node and the agent middleware both plan with it.
    """
    bounds = dict(bounds)
    tokens = budget_tokens(tables, settings.confidence)
    tok = None if tokens is None else np.asarray(tokens[row])
    usd = np.asarray(tables.usd[row])
    caps: list[int | None] = []
    fits = np.zeros(len(settings.pairs), dtype=bool)
    callable_ = np.zeros(len(settings.pairs), dtype=bool)
    for j, (m, s) in enumerate(settings.pairs):
        cap = pair_cap(share, settings.spec(m), bounds.get(s, 0)) if s in bounds else 0
        caps.append(cap)
        if not settings.usable[j] or (cap is not None and cap < settings.min_call_tokens):
            continue
        callable_[j] = True
        pred = None if tok is None else finite_or_none(tok[j])
        fits[j] = cap is None or pred is None or pred <= cap
    base: dict[str, Any] = {
        "id": item.id,
        "index": item.index,
        "question": item.question,
        "allotted": share.to_spec(),
        "share_tokens": share.tokens,
        "share_pico": share.pico,
        "predicted_tokens": None,
        "predicted_correctness": None,
        "input_bounds": {},
        "allowed": [],
        "max_tokens": None,
    }
    chosen: int | None = None
    status: SubtaskStatus = "ok"
    ranking: list[Pair] = []
    if fits.any():
        decision = settings.router.decide(_one_row(tables, row), settings.policy, fits[None, :])[0]
        if decision.model is not None:
            chosen = settings.pairs.index((decision.model, decision.strategy))
            ranking = [(str(p[0]), str(p[1])) for p in decision.ranking]
    if chosen is None:
        if settings.on_exhausted == "raise":
            msg = (
                f"budget exhausted at subtask {item.id!r} ({item.question[:60]!r}): its share "
                f"{share.to_spec()} of what is left {left.to_spec()} fits no pair "
                f"(min_call_tokens={settings.min_call_tokens}); raise the budget or choose "
                "on_exhausted='cheapest' or 'skip'"
            )
            raise BudgetExhaustedError(msg, subtask=item.id, left=left.to_spec())
        if settings.on_exhausted == "skip" or not callable_.any():
            return cast(CallTask, {**base, "status": "skipped"})
        idx = np.flatnonzero(callable_)
        chosen = int(idx[np.lexsort((-np.array([caps[j] or 0 for j in idx]), usd[idx]))[0]])
        status = "cheapest"
    pair = settings.pairs[chosen]
    max_tokens = caps[chosen]
    candidates = [pair] + [p for p in ranking if p != pair] if status == "ok" else [pair]
    allowed: list[Pair] = []
    input_bounds: dict[str, int] = {}
    for p in candidates:
        j = settings.pairs.index(p)
        if not (fits[j] if status == "ok" else callable_[j]):
            continue
        spec = settings.spec(p[0])
        effective = smallest_cap(max_tokens, spec.max_tokens)
        bound = bounds[p[1]]
        if effective is not None and effective < settings.min_call_tokens:
            continue
        if not share.unbounded and not _fits(share, worst_case(spec, bound, effective)):
            continue
        allowed.append(p)
        input_bounds[pair_key(p)] = bound
    return cast(
        CallTask,
        {
            **base,
            "status": status,
            "max_tokens": max_tokens,
            "allowed": [list(p) for p in allowed],
            "input_bounds": input_bounds,
            "predicted_tokens": None if tok is None else finite_or_none(tok[chosen]),
            "predicted_correctness": finite_or_none(tables.correctness[row][chosen]),
        },
    )
