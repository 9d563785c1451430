"""LangGraph integration: a budget-aware RTR node and the budget arithmetic behind it."""

from langchain_rtr.graph.budget import (
    Allotment,
    Budget,
    BudgetExhaustedError,
    BudgetSpec,
    Spend,
    input_token_bound,
    pair_cap,
    split,
)
from langchain_rtr.graph.node import (
    OnExhausted,
    RTRNode,
    RTRState,
    SubtaskInput,
    SubtaskResult,
    SubtaskStatus,
    create_rtr_node,
    merge_results,
)

__all__ = [
    "Allotment",
    "Budget",
    "BudgetExhaustedError",
    "BudgetSpec",
    "OnExhausted",
    "RTRNode",
    "RTRState",
    "Spend",
    "SubtaskInput",
    "SubtaskResult",
    "SubtaskStatus",
    "create_rtr_node",
    "input_token_bound",
    "merge_results",
    "pair_cap",
    "split",
]
