"""The evaluation report: a table of methods, the λ curves, AIQ/APGR, a plot and JSON."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from langchain_rtr.evaluation.baselines import Metrics, SweepCurve
from langchain_rtr.predictor.calibration import Reliability

KIND_SINGLE = "single"
KIND_RANDOM = "random"
KIND_ORACLE = "oracle"
KIND_RTR = "rtr"
KIND_KNN = "knn"
KIND_MODEL_BEST = "model-best"
"""Each model with the strategy most accurate on the training part (sets with strategies)."""
KIND_SOURCE_BEST = "source-best"
"""The pair most accurate on the training part's questions of each source (sets with sources)."""


@dataclass(frozen=True)
class MethodResult:
    """One method (a single pair, a baseline or a router at one λ) and what it realised."""

    name: str
    kind: str
    metrics: Metrics
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        """Mean score."""
        return self.metrics.accuracy

    @property
    def cost(self) -> float:
        """Mean cost in the report's unit."""
        return self.metrics.cost

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        m = self.metrics
        return _clean_dict(
            {
                "name": self.name,
                "kind": self.kind,
                "params": self.params,
                "n": m.n,
                "accuracy": m.accuracy,
                "cost": m.cost,
                "usd": m.usd,
                "output_tokens": m.output_tokens,
                "pair_share": m.pair_share,
                "per_source": m.per_source,
            }
        )


APGR_PER_QUESTION_SUFFIX = " ($ per question)"
"""Suffix of the APGR keys measured on the cost-aware curves (see ``EvaluationReport.apgr``)."""


@dataclass(frozen=True)
class EvaluationReport:
    """RTR against the baselines on one test set.

    Attributes:
        name: The set's name.
        cost_unit: Unit of ``cost`` everywhere (``usd`` or ``tokens``).
        cost_basis: How $ was obtained (observed, tokens x prices, mean price per call).
        cost_scale: The cost normaliser the trade-offs used.
        lam: The λ of the ``rtr``/``knn`` rows.
        methods: Singles, random, oracle, RTR and KNN at ``lam``, and each router at the
            cheapest λ that reaches the best single pair's accuracy (``... ≥ best``).
        curves: The λ sweeps (``rtr``, ``knn``).
        aiq: AIQ of each curve, of the single pairs alone (``singles``) and, on sets with
            several strategies, of each model at its best training strategy (``model-best``).
        apgr: For two-pair sets, RouteLLM's APGR of each router (``rtr``, ``knn``): its sweep
            with every call of a pair costing the pair's mean cost per call, so only accuracy
            estimates rank the questions, as RouteLLM's strong-call-share axis assumes; and,
            under ``rtr ($ per question)`` / ``knn ($ per question)``, the APGR of the curves
            in ``curves``, which also weigh each question's own (predicted) cost. ``None`` for
            other sets.
        best_single: Name of the most accurate single pair.
        match_best: Per router, the cheapest point reaching the best single's accuracy:
            ``{"lam", "accuracy", "cost", "cost_ratio"}`` (cost relative to the best single), or
            ``None`` when it never does.
        calibration: RTR's P(correct) against the observed scores of the test cells: expected
            calibration error and the reliability curve (``None`` when not measured).
    """

    name: str
    cost_unit: str
    cost_basis: str
    cost_scale: float
    lam: float
    n_questions: int
    n_train: int
    methods: list[MethodResult]
    curves: dict[str, SweepCurve]
    aiq: dict[str, float]
    apgr: dict[str, float] | None
    best_single: str
    match_best: dict[str, dict[str, float] | None]
    dropped_questions: int = 0
    calibration: Reliability | None = None

    def method(self, name: str) -> MethodResult:
        """The row called ``name``."""
        for m in self.methods:
            if m.name == name:
                return m
        raise KeyError(f"no method {name!r}; have {[m.name for m in self.methods]}")

    def singles(self) -> list[MethodResult]:
        """The single-pair rows."""
        return [m for m in self.methods if m.kind == KIND_SINGLE]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN becomes ``None``)."""
        return _clean_dict(
            {
                "name": self.name,
                "cost_unit": self.cost_unit,
                "cost_basis": self.cost_basis,
                "cost_scale": self.cost_scale,
                "lam": self.lam,
                "n_questions": self.n_questions,
                "n_train": self.n_train,
                "dropped_questions": self.dropped_questions,
                "best_single": self.best_single,
                "aiq": self.aiq,
                "apgr": self.apgr,
                "match_best": self.match_best,
                "methods": [m.to_dict() for m in self.methods],
                "curves": {k: c.to_dict() for k, c in self.curves.items()},
                "calibration": self.calibration.to_dict() if self.calibration else None,
            }
        )

    # ---------------------------------------------------------------- rendering

    def methods_table(self) -> Table:
        """Accuracy, cost, $ and tokens of every method."""
        unit = "$" if self.cost_unit == "usd" else "tokens"
        table = Table(
            title=f"{self.name or 'evaluation'}: {self.n_questions} test questions "
            f"(cost: {unit}, {self.cost_basis})",
            title_justify="left",
        )
        table.add_column("method")
        for col in ("accuracy", "mean $", "mean out tokens", "cost vs best single"):
            table.add_column(col, justify="right")
        best = self.method(self.best_single)
        for m in self.methods:
            met = m.metrics
            ratio = met.cost / best.metrics.cost if best.metrics.cost > 0 else float("nan")
            table.add_row(
                m.name,
                f"{met.accuracy:.4f}",
                f"{met.usd:.4g}",
                "-" if met.output_tokens is None else f"{met.output_tokens:,.0f}",
                f"{ratio:.2f}x",
                style="bold" if m.kind in (KIND_RTR,) else None,
            )
        return table

    def sources_table(self, max_sources: int = 12) -> Table | None:
        """Accuracy per source for every method but the single pairs (None: one source)."""
        sources = sorted(self.methods[0].metrics.per_source)
        if len(sources) < 2:
            return None
        shown = sources[:max_sources]
        table = Table(title="accuracy per source", title_justify="left")
        table.add_column("method")
        for s in shown:
            table.add_column(s, justify="right")
        for m in self.methods:
            if m.kind == KIND_SINGLE:
                continue  # in pairs_table
            row = [m.name]
            for s in shown:
                v = m.metrics.per_source.get(s, {}).get("accuracy")
                row.append("-" if v is None else f"{v:.3f}")
            table.add_row(*row)
        return table

    def pairs_table(self, max_sources: int = 12) -> Table:
        """Every single pair and the oracle: accuracy and mean output tokens, per source."""
        rows = [m for m in self.methods if m.kind in (KIND_SINGLE, KIND_ORACLE)]
        return pair_source_table(
            rows, f"{self.name or 'evaluation'}: each pair, per source", max_sources
        )

    def summary(self) -> Text:
        """AIQ, APGR and the cost of matching the best single pair, as text."""
        lines = [
            "AIQ (area under the non-decreasing convex hull over the single pairs' cost range): "
            + ", ".join(f"{k} {v:.4f}" for k, v in self.aiq.items())
        ]
        if self.calibration is not None:
            lines.append(
                f"calibration of RTR's P(correct): expected calibration error "
                f"{self.calibration.ece:.4f} (10 bins, {sum(self.calibration.counts)} outcomes)"
            )
        if self.apgr is not None:
            lines.append("APGR: " + ", ".join(f"{k} {v:.4f}" for k, v in self.apgr.items()))
        for name, point in self.match_best.items():
            if point is None:
                lines.append(f"{name}: never reaches {self.best_single}'s accuracy")
            else:
                lines.append(
                    f"{name}: reaches {self.best_single}'s accuracy at "
                    f"{point['cost_ratio']:.0%} of its cost (λ={point['lam']:.4g})"
                )
        return Text("\n".join(lines))

    def __rich__(self) -> Group:
        parts: list[Any] = [self.pairs_table(), self.methods_table()]
        sources = self.sources_table()
        if sources is not None:
            parts.append(sources)
        parts.append(self.summary())
        return Group(*parts)

    def plot(self, path: str | Path, *, log_x: bool | None = None) -> Path:
        """Accuracy-cost plot (PNG): RTR and KNN curves, singles, random and oracle."""
        from langchain_rtr.evaluation.plot import plot_report

        return plot_report(self, path, log_x=log_x)


def pair_source_table(rows: list[MethodResult], title: str, max_sources: int = 12) -> Table:
    """Accuracy / mean output tokens of each row, overall and per source."""
    sources = sorted(rows[0].metrics.per_source)[:max_sources] if rows else []
    table = Table(title=title + " (accuracy / mean output tokens)", title_justify="left")
    table.add_column("pair", no_wrap=True)
    table.add_column("all", justify="right")
    for s in sources if len(sources) > 1 else []:
        table.add_column(s, justify="right")

    def cell(accuracy: float | None, tokens: float | None) -> str:
        if accuracy is None:
            return "-"
        return f"{accuracy:.3f}" + ("" if tokens is None else f" / {tokens:,.0f}")

    for m in rows:
        cells = [cell(m.metrics.accuracy, m.metrics.output_tokens)]
        for s in sources if len(sources) > 1 else []:
            per = m.metrics.per_source.get(s, {})
            cells.append(cell(per.get("accuracy"), per.get("output_tokens")))
        table.add_row(m.name, *cells, style="bold" if m.kind == KIND_ORACLE else None)
    return table


def _clean_dict(value: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = _clean(value)
    return out


def _clean(value: Any) -> Any:
    """NaN/inf to None, tuples to lists, recursively (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value
