"""Offline evaluation of routing: baselines, AIQ/APGR, the report and its plot."""

from langchain_rtr.evaluation.baselines import (
    Metrics,
    Outcomes,
    SweepCurve,
    default_lambdas,
    knn_estimates,
    oracle_choices,
    random_choices,
    random_metrics,
)
from langchain_rtr.evaluation.curves import (
    CurveError,
    aiq,
    apgr,
    cost_to_reach,
    non_decreasing_hull,
    upper_hull,
)
from langchain_rtr.evaluation.evaluate import evaluate_router, evaluate_routing
from langchain_rtr.evaluation.plot import plot_report
from langchain_rtr.evaluation.report import EvaluationReport, MethodResult

__all__ = [
    "CurveError",
    "EvaluationReport",
    "MethodResult",
    "Metrics",
    "Outcomes",
    "SweepCurve",
    "aiq",
    "apgr",
    "cost_to_reach",
    "default_lambdas",
    "evaluate_router",
    "evaluate_routing",
    "knn_estimates",
    "non_decreasing_hull",
    "oracle_choices",
    "plot_report",
    "random_choices",
    "random_metrics",
    "upper_hull",
]
