"""Rich views of routing objects, for the terminal (routing itself knows nothing of rich)."""

from __future__ import annotations

from rich.table import Table

from langchain_rtr.routing import RoutingTable


def routing_table_view(table: RoutingTable) -> Table:
    """One question's routing table, most likely correct pair first."""
    title = table.question if len(table.question) <= 80 else table.question[:77] + "..."
    view = Table(title=title, title_justify="left")
    for name, justify in (
        ("model", "left"),
        ("strategy", "left"),
        ("P(correct)", "right"),
        ("out tokens", "right"),
        ("$", "right"),
    ):
        view.add_column(name, justify=justify)  # type: ignore[arg-type]
    for r in table.rows("correctness"):
        view.add_row(
            r.model,
            r.strategy,
            f"{r.correctness:.3f}",
            "-" if r.output_tokens is None else f"{r.output_tokens:,.0f}",
            f"{r.usd:.3g}",
        )
    return view
