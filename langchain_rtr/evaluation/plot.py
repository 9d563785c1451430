"""The accuracy-cost plot of an evaluation report (matplotlib, Agg: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from langchain_rtr.evaluation.curves import non_decreasing_hull

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from langchain_rtr.evaluation.report import EvaluationReport
    from langchain_rtr.predictor.calibration import Reliability

_CURVE_STYLE = {"rtr": ("RTR", "tab:blue"), "knn": ("KNN (k=10)", "tab:orange")}


def plot_report(report: EvaluationReport, path: str | Path, *, log_x: bool | None = None) -> Path:
    """Write the accuracy-cost plot of ``report`` to ``path`` (PNG) and return the path.

    With a measured calibration, RTR's reliability curve is drawn in a second panel beside it.

    Args:
        report: The evaluation.
        path: Output file; parent directories are created.
        log_x: Logarithmic cost axis; by default when costs span more than 30x.
    """
    # A bare Figure renders with Agg and leaves pyplot's global backend alone.
    from matplotlib.figure import Figure

    calibration = report.calibration
    panels = 2 if calibration is not None and calibration.counts else 1
    fig = Figure(figsize=(8 + 4.5 * (panels - 1), 5.5), dpi=120)
    ax = fig.add_subplot(1, panels, 1)
    if panels == 2 and calibration is not None:
        _plot_reliability(fig.add_subplot(1, 2, 2), calibration)
    costs: list[float] = []
    for key, curve in report.curves.items():
        label, color = _CURVE_STYLE.get(key, (key, None))
        xs, ys = np.asarray(curve.cost), np.asarray(curve.accuracy)
        order = np.argsort(xs, kind="stable")
        ax.plot(xs[order], ys[order], ".", color=color, alpha=0.35, markersize=4)
        hull = non_decreasing_hull(xs, ys)
        aiq = report.aiq.get(key)
        suffix = f" (AIQ {aiq:.3f})" if aiq is not None else ""
        ax.plot(hull[:, 0], hull[:, 1], "-", color=color, label=label + suffix, linewidth=1.8)
        costs.extend(xs[np.isfinite(xs)].tolist())
    singles = report.singles()
    if singles:
        sx = [m.cost for m in singles]
        sy = [m.accuracy for m in singles]
        ax.scatter(sx, sy, marker="s", color="tab:gray", label="single pairs", zorder=3)
        for m in singles:
            ax.annotate(
                m.name, (m.cost, m.accuracy), fontsize=6, xytext=(3, 3), textcoords="offset points"
            )
        costs.extend(sx)
    for kind, marker, color, label in (
        ("random", "x", "tab:red", "random (50 seeds)"),
        ("oracle", "*", "tab:green", "oracle"),
    ):
        for m in report.methods:
            if m.kind == kind:
                ax.scatter([m.cost], [m.accuracy], marker=marker, s=80, color=color, label=label)
                costs.append(m.cost)
    positive = [c for c in costs if c > 0]
    if log_x is None:
        log_x = bool(positive) and max(positive) / min(positive) > 30
    if log_x and positive:
        ax.set_xscale("log")
    unit = "mean $ per question" if report.cost_unit == "usd" else "mean output tokens"
    if report.cost_basis.startswith("mean price"):
        unit = "mean price per call ($/M tokens)"
    ax.set_xlabel(unit)
    ax.set_ylabel("accuracy")
    ax.set_title(f"{report.name or 'routing'}: accuracy vs cost ({report.n_questions} questions)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", bbox_inches="tight")
    return out


def _plot_reliability(ax: Axes, calibration: Reliability) -> None:
    """Mean observed score against mean predicted P(correct) per bin, sized by its count."""
    ax.plot([0, 1], [0, 1], "--", color="tab:gray", linewidth=1, label="perfectly calibrated")
    total = max(sum(calibration.counts), 1)
    sizes = [20 + 400 * c / total for c in calibration.counts]
    ax.plot(calibration.predicted, calibration.observed, "-", color="tab:blue", linewidth=1.5)
    ax.scatter(calibration.predicted, calibration.observed, s=sizes, color="tab:blue", zorder=3)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("predicted P(correct)")
    ax.set_ylabel("observed accuracy")
    ax.set_title(f"RTR reliability (ECE {calibration.ece:.3f})")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
