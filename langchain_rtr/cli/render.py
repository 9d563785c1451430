"""Rich views of routing objects, for the terminal (routing itself knows nothing of rich)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from rich.table import Table

from langchain_rtr.routing import RoutingTable


def routing_table_view(table: RoutingTable) -> Table:
    """One question's routing table, most likely correct pair first."""
    title = table.question if len(table.question) <= 80 else table.question[:77] + "..."
    view = Table(title=title, title_justify="left")
    rows = table.rows("correctness")
    levels = list(rows[0].output_token_quantiles or {}) if rows else []
    columns = [("model", "left"), ("strategy", "left"), ("P(correct)", "right")]
    columns += [("out tokens", "right")] + [(f"tokens {k}", "right") for k in levels]
    for name, justify in [*columns, ("$", "right")]:
        view.add_column(name, justify=justify)  # type: ignore[arg-type]
    for r in rows:
        quantiles = r.output_token_quantiles or {}
        view.add_row(
            r.model,
            r.strategy,
            f"{r.correctness:.3f}",
            "-" if r.output_tokens is None else f"{r.output_tokens:,.0f}",
            *(_tokens_text(quantiles[k]) for k in levels),
            f"{r.usd:.3g}",
        )
    return view


def _tokens_text(value: float) -> str:
    return f"{value:,.0f}" if math.isfinite(value) else "inf"


def budgets_view(router: Any, questions: Sequence[str], budgets: Sequence[int]) -> Table | str:
    """The pair each question gets under each per-question output-token budget.

    A router without a length head cannot take a token budget: the message says so instead.
    """
    from langchain_rtr.routing import RoutingError, TokenBudget

    table = Table(
        title="chosen pair under a per-question output-token budget", title_justify="left"
    )
    table.add_column("question")
    for budget in budgets:
        table.add_column(f"≤ {budget} tokens")
    tables = router.tables(list(questions))
    picks: list[list[str]] = []
    for budget in budgets:
        try:
            decisions = router.decide(tables, TokenBudget(budget), None)
        except RoutingError as exc:  # a predictor without a length head
            return f"[dim]no token budgets: {exc}[/dim]"
        picks.append(
            [
                "-" if d.model is None else f"{d.model}/{d.strategy} (~{d.output_tokens or 0:.0f})"
                for d in decisions
            ]
        )
    for i, question in enumerate(questions):
        short = question if len(question) <= 48 else question[:45] + "..."
        table.add_row(short, *(column[i] for column in picks))
    return table
