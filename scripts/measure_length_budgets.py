"""Token budgets in real tokens: truncation and accuracy, point vs quantile policies (issue 18).

For each set and seed: split by question (``workflow.split``, test fraction 0.2, that seed), train
RTR (``TrainConfig(seed=seed)``; its length quantiles are calibrated on the members' own
validation parts, carved from the training part), then on the held-out questions route with

* ``point``: ``TokenBudget(B)``, today's policy (a pair fits when its predicted tokens do);
* ``c=0.8/0.9/0.95``: ``TokenBudget(B, confidence=c)`` (when its c-quantile does);

``point`` with ``on_no_fit="fewest_tokens"`` (what ``rtr_max_tokens`` does: nothing fits, the
shortest pair is called anyway, flagged ``over_budget``), the quantile policies with
``on_no_fit="best_bet"`` (nothing fits at c: the pair with the highest P(correct) x P(fits)),
and ``best bet``: ``BestBet(B)``, which ranks every pair by P(correct) x P(fits) and states no
bound on truncation.
Budgets B are the 25th, 37.5th, 50th, 62.5th and 75th percentiles of the training part's real
lengths. Each policy chooses among the pairs observed for that question. A call is *truncated*
when its real output exceeds B (the call's ``max_tokens`` is B); a truncated answer is wrong.

Printed per set and budget: the admitted calls (status ``ok``) over all seeds and the share of
them truncated (pooled over seeds), and, as means over seeds, the share of questions that fell
back to ``over_budget`` and accuracy.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/measure_length_budgets.py \\
        --data routellm-gsm8k routerarena smol-arith faithful-cot --seeds 0 1 2 \\
        --json length-budgets.json --markdown length-budgets.md --plot docs/img/length-budgets.png
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from langchain_rtr import workflow
from langchain_rtr.evaluation.lengths import length_accuracy
from langchain_rtr.predictor import RTRPredictor, TrainConfig
from langchain_rtr.routing import STATUS_OK, BestBet, Policy, RTRRouter, TokenBudget

CONFIDENCES = (0.8, 0.9, 0.95)
BUDGET_PERCENTILES = (25.0, 37.5, 50.0, 62.5, 75.0)
SLACK = 0.02
"""Acceptance: truncation among admitted calls at most (1 - c) + SLACK."""

console = Console(width=max(Console().width, 140))


def policies(budget: float) -> dict[str, Policy]:
    """The point policy, one per confidence and the best bet, at one budget."""
    out: dict[str, Policy] = {"point": TokenBudget(budget, on_no_fit="fewest_tokens")}
    for c in CONFIDENCES:
        out[f"c={c}"] = TokenBudget(budget, on_no_fit="best_bet", confidence=c)
    out["best bet"] = BestBet(budget)
    return out


def trained(data: str, seed: int, cache: Path | None) -> RTRPredictor:
    """The predictor of one seed, trained on that seed's training part (or read from ``cache``)."""
    routing_set = workflow.load_data(data)
    train, _ = workflow.split(routing_set, seed=seed)
    path = None if cache is None else cache / f"{data}-seed{seed}"
    if path is not None and path.is_dir():
        return RTRPredictor.load(path)
    router = workflow.fit_router(routing_set, train, config=TrainConfig(seed=seed))
    predictor = router.predictor
    assert isinstance(predictor, RTRPredictor)
    if path is not None:
        predictor.save(path)
    return predictor


def measure_seed(data: str, seed: int, cache: Path | None = None) -> dict[str, Any]:
    """One seed of one set: per budget and policy, truncation, fallbacks and accuracy."""
    routing_set = workflow.load_data(data)
    train, test = workflow.split(routing_set, seed=seed)
    predictor = trained(data, seed, cache)
    router = RTRRouter(predictor, routing_set.models, cost_unit="tokens")
    prediction = predictor.predict(test.questions)
    tables = router.tables_from_prediction(prediction, test.questions)
    real = np.asarray(test.output_tokens, dtype=np.float64)
    score = np.asarray(test.score, dtype=np.float64)
    observed = np.isfinite(real) & np.isfinite(score)
    keep = observed.any(axis=1)
    budgets = np.nanpercentile(np.asarray(train.output_tokens, np.float64), BUDGET_PERCENTILES)
    coverage = {}
    for c in CONFIDENCES:
        bound = tables.output_tokens_at(c)
        assert bound is not None
        coverage[str(c)] = float(np.mean(real[observed] <= bound[observed]))
    rows: list[dict[str, Any]] = []
    for pct, budget in zip(BUDGET_PERCENTILES, budgets, strict=True):
        for name, policy in policies(float(budget)).items():
            choice = policy.choose(
                tables.correctness[keep],
                tables.output_tokens[keep] if tables.output_tokens is not None else None,
                tables.cost[keep],
                observed[keep],
                tables.length_quantiles,
            )
            i = np.arange(int(keep.sum()))
            j = choice.index
            got_real, got_score = real[keep][i, j], score[keep][i, j]
            truncated = got_real > budget
            admitted = choice.status == STATUS_OK
            rows.append(
                {
                    "percentile": pct,
                    "budget": float(budget),
                    "policy": name,
                    "truncated_admitted": float(truncated[admitted].mean())
                    if admitted.any()
                    else float("nan"),
                    "admitted": int(admitted.sum()),
                    "over_budget_share": float(np.mean(~admitted)),
                    "truncated_all": float(truncated.mean()),
                    "accuracy": float(np.mean(np.where(truncated, 0.0, got_score))),
                }
            )
    assert prediction.output_tokens is not None
    lengths = length_accuracy(
        np.asarray(prediction.output_tokens, np.float64),
        test,
        train,
        router.pairs,
        quantiles=tables.length_quantiles,
    )
    return {
        "data": data,
        "seed": seed,
        "n_test": int(keep.sum()),
        "coverage": coverage,
        "rows": rows,
        "lengths": lengths.to_dict() if lengths is not None else None,
    }


def _mean(values: list[float]) -> float:
    finite = [v for v in values if v == v]
    return statistics.fmean(finite) if finite else float("nan")


def aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean over seeds of each (percentile, policy) row."""
    keys = [(r["percentile"], r["policy"]) for r in runs[0]["rows"]]
    out = []
    for pct, name in keys:
        same = [
            r for run in runs for r in run["rows"] if (r["percentile"], r["policy"]) == (pct, name)
        ]
        row: dict[str, Any] = {"percentile": pct, "policy": name}
        admitted = sum(int(r["admitted"]) for r in same)
        row["admitted"] = admitted  # over all seeds; truncation among them is pooled
        row["truncated_admitted"] = (
            sum(float(r["truncated_admitted"]) * int(r["admitted"]) for r in same if r["admitted"])
            / admitted
            if admitted
            else float("nan")
        )
        for field in (
            "budget",
            "over_budget_share",
            "truncated_all",
            "accuracy",
        ):
            row[field] = _mean([float(r[field]) for r in same])
        out.append(row)
    return out


def verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The two acceptance checks on seed means, per confidence."""
    point = {r["percentile"]: r for r in rows if r["policy"] == "point"}
    out: dict[str, Any] = {}
    for c in CONFIDENCES:
        mine = [r for r in rows if r["policy"] == f"c={c}"]
        rates = [
            r["truncated_admitted"]
            for r in mine
            if r["truncated_admitted"] == r["truncated_admitted"]
        ]
        worst = max(rates) if rates else 0.0  # no call admitted at any budget: none truncated
        gains = [r["accuracy"] - point[r["percentile"]]["accuracy"] for r in mine]
        out[str(c)] = {
            "max_truncated_admitted": worst,
            "truncation_ok": worst <= (1 - c) + SLACK,
            "min_accuracy_gain": min(gains),
            "accuracy_ok": all(g > 0 for g in gains),
        }
    return out


def print_set(data: str, runs: list[dict[str, Any]], rows: list[dict[str, Any]]) -> None:
    table = Table(title=f"{data}: {len(runs)} seeds, {runs[0]['n_test']} test questions each")
    for name in (
        "pct",
        "budget",
        "policy",
        "admitted",
        "trunc (admitted)",
        "over budget",
        "trunc (all)",
        "accuracy",
    ):
        table.add_column(name, justify="right")
    for r in rows:
        table.add_row(
            f"{r['percentile']:g}",
            f"{r['budget']:.0f}",
            r["policy"],
            str(r["admitted"]),
            f"{r['truncated_admitted']:.3f}",
            f"{r['over_budget_share']:.3f}",
            f"{r['truncated_all']:.3f}",
            f"{r['accuracy']:.3f}",
        )
    console.print(table)
    cov = {c: _mean([run["coverage"][c] for run in runs]) for c in runs[0]["coverage"]}
    console.print(
        "coverage of the c-quantile on all observed test cells: "
        + ", ".join(f"c={c}: {v:.3f}" for c, v in cov.items())
    )
    lengths = [run["lengths"] for run in runs if run["lengths"]]
    for k, model in enumerate(lengths[0]["models"] if lengths else []):
        figures = []
        for t in lengths[0]["tolerances"]:
            rtr = _mean([run["models"][k]["within"][str(t)] for run in lengths])
            base = _mean([run["models"][k]["baseline_within"][str(t)] for run in lengths])
            figures.append(f"±{t}: {rtr:.3f} (median {base:.3f})")
        console.print(f"length accuracy {model['model']}: " + ", ".join(figures))
    for c, v in verdict(rows).items():
        console.print(
            f"c={c}: max truncation among admitted {v['max_truncated_admitted']:.3f} "
            f"(limit {(1 - float(c)) + SLACK:.3f}: {'met' if v['truncation_ok'] else 'NOT met'}); "
            f"min accuracy gain over point {v['min_accuracy_gain']:+.3f} "
            f"({'met' if v['accuracy_ok'] else 'NOT met'})"
        )


def markdown(results: dict[str, Any]) -> str:
    """The seed means as one markdown table per set (for docs/quality.md)."""
    out: list[str] = []
    for data, result in results.items():
        runs = result["runs"]
        out.append(f"**{data}** ({len(runs)} seeds, {runs[0]['n_test']} test questions each)\n")
        out.append(
            "| budget (pct) | policy | admitted calls | truncated, of admitted | over budget "
            "| accuracy (vs point) |"
        )
        out.append("|---|---|---|---|---|---|")
        point = {r["percentile"]: r for r in result["means"] if r["policy"] == "point"}
        for r in result["means"]:
            gain = r["accuracy"] - point[r["percentile"]]["accuracy"]
            acc = f"{r['accuracy']:.3f}" + ("" if r["policy"] == "point" else f" ({gain:+.3f})")
            out.append(
                f"| {r['budget']:.0f} ({r['percentile']:g}) | {r['policy']} | {r['admitted']} | "
                f"{r['truncated_admitted']:.3f} | {r['over_budget_share']:.3f} | {acc} |"
            )
        out.append("")
    return "\n".join(out)


def plot(results: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """Truncation among admitted calls and accuracy against budget, one row per set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 2, figsize=(10, 3.2 * len(results)), squeeze=False)
    for row, (data, rows) in enumerate(results.items()):
        for name in ["point", *(f"c={c}" for c in CONFIDENCES), "best bet"]:
            mine = [r for r in rows if r["policy"] == name]
            x = [r["budget"] for r in mine]
            axes[row][0].plot(x, [r["truncated_admitted"] for r in mine], marker="o", label=name)
            axes[row][1].plot(x, [r["accuracy"] for r in mine], marker="o", label=name)
        axes[row][0].set_title(f"{data}: truncated share of admitted calls")
        axes[row][1].set_title(f"{data}: accuracy (truncated = wrong)")
        for ax in axes[row]:
            ax.set_xlabel("token budget")
            ax.grid(alpha=0.3)
        axes[row][0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    console.print(f"plot: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", nargs="+", default=["routellm-gsm8k", "routerarena", "smol-arith", "faithful-cot"]
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None)
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--cache", type=Path, default=None, help="Keep trained predictors here.")
    args = parser.parse_args()
    everything: dict[str, Any] = {}
    means: dict[str, list[dict[str, Any]]] = {}
    for data in args.data:
        runs = [measure_seed(data, seed, args.cache) for seed in args.seeds]
        rows = aggregate(runs)
        print_set(data, runs, rows)
        means[data] = rows
        everything[data] = {"runs": runs, "means": rows, "verdict": verdict(rows)}
    if args.json:
        args.json.write_text(json.dumps(everything, indent=2) + "\n")
        console.print(f"json: {args.json}")
    if args.markdown:
        args.markdown.write_text(markdown(everything))
        console.print(f"markdown: {args.markdown}")
    if args.plot:
        plot(means, args.plot)


if __name__ == "__main__":
    main()
