"""Routing quality on the held-out part of a set, over several seeds (issue 2, item 8).

For each seed: split the set by question (``workflow.split``, test fraction 0.2, that seed),
train RTR (``TrainConfig(seed=seed)``), evaluate on the held-out part against every single pair,
random, KNN and the oracle (``workflow.evaluate``). Printed per seed and as the mean:

* the best single pair and its accuracy and cost;
* RTR's (and KNN's) cheapest λ-sweep point that reaches the best single's accuracy, as a share
  of the best single's cost (``EvaluationReport.match_best``; "never" when it does not reach);
* AIQ of RTR and KNN (and of the singles' own hull), APGR of both on two-model sets;
* oracle and random accuracy and cost, and RTR at the default λ.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/measure_quality.py --data llmrouter --seeds 0 1 2 \\
        --json quality-llmrouter.json
    HF_HUB_OFFLINE=1 .venv/bin/python scripts/measure_quality.py --data routellm-gsm8k \\
        --cost-unit tokens

TrainConfig knobs (``--learnable-dim``, ``--hidden``, ``--lr``, ``--patience``, ...) override
the defaults for all seeds, to try alternatives; the headline figures use the defaults.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from langchain_rtr import workflow
from langchain_rtr.evaluation import EvaluationReport
from langchain_rtr.evaluation.report import APGR_PER_QUESTION_SUFFIX
from langchain_rtr.predictor import TrainConfig
from langchain_rtr.routing import CostUnit

console = Console(width=max(Console().width, 130))


def _f(x: float | None) -> float:
    return float("nan") if x is None else float(x)


def summarise(report: EvaluationReport) -> dict[str, Any]:
    """The figures item 8 asks for, from one seed's report (NaN where not defined)."""
    best = report.method(report.best_single)
    oracle = report.method("oracle")
    random = report.method("random")
    rtr = report.method("rtr")
    out: dict[str, Any] = {
        "n_test": report.n_questions,
        "n_train": report.n_train,
        "cost_unit": report.cost_unit,
        "cost_basis": report.cost_basis,
        "best_single": report.best_single,
        "best_single_accuracy": best.accuracy,
        "best_single_cost": best.cost,
        "oracle_accuracy": oracle.accuracy,
        "oracle_cost": oracle.cost,
        "random_accuracy": random.accuracy,
        "random_cost": random.cost,
        "rtr_default_lam": report.lam,
        "rtr_default_accuracy": rtr.accuracy,
        "rtr_default_cost": rtr.cost,
        "rtr_max_accuracy": max(report.curves["rtr"].accuracy),
        "knn_max_accuracy": max(report.curves["knn"].accuracy),
    }
    for key in ("rtr", "knn"):
        point = report.match_best.get(key)
        out[f"{key}_match_best_cost_ratio"] = _f(point["cost_ratio"]) if point else float("nan")
        out[f"{key}_match_best_cost"] = _f(point["cost"]) if point else float("nan")
        out[f"{key}_match_best_lam"] = _f(point["lam"]) if point else float("nan")
        out[f"{key}_aiq"] = _f(report.aiq.get(key))
        apgrs = report.apgr or {}
        out[f"{key}_apgr"] = _f(apgrs.get(key))
        out[f"{key}_apgr_per_question"] = _f(apgrs.get(key + APGR_PER_QUESTION_SUFFIX))
    out["singles_aiq"] = _f(report.aiq.get("singles"))
    return out


def _mean(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean of every numeric field over seeds; a ratio that some seed never reaches stays NaN."""
    mean: dict[str, Any] = {}
    for key, value in rows[0].items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            mean[key] = statistics.fmean(float(r[key]) for r in rows)
        else:
            values = {r[key] for r in rows}
            mean[key] = value if len(values) == 1 else " / ".join(sorted(map(str, values)))
    return mean


def _no_nan(value: Any) -> Any:
    """NaN as ``null``: strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_nan(v) for v in value]
    return value


def _fmt(x: Any, kind: str = "") -> str:
    if isinstance(x, str):
        return x
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "never" if kind == "ratio" else "-"
    if kind == "ratio":
        return f"{100 * x:.1f} %"
    if kind == "cost":
        return f"{x:.4g}"
    return f"{x:.4f}"


ROWS: list[tuple[str, str, str]] = [
    ("best single", "best_single", ""),
    ("best single accuracy", "best_single_accuracy", ""),
    ("best single cost", "best_single_cost", "cost"),
    ("RTR cost to reach best (share)", "rtr_match_best_cost_ratio", "ratio"),
    ("KNN cost to reach best (share)", "knn_match_best_cost_ratio", "ratio"),
    ("RTR AIQ", "rtr_aiq", ""),
    ("KNN AIQ", "knn_aiq", ""),
    ("singles AIQ", "singles_aiq", ""),
    ("RTR APGR (RouteLLM: per call)", "rtr_apgr", ""),
    ("KNN APGR (RouteLLM: per call)", "knn_apgr", ""),
    ("RTR APGR, $ per question", "rtr_apgr_per_question", ""),
    ("KNN APGR, $ per question", "knn_apgr_per_question", ""),
    ("RTR max accuracy (sweep)", "rtr_max_accuracy", ""),
    ("KNN max accuracy (sweep)", "knn_max_accuracy", ""),
    ("RTR λ=0.9 accuracy", "rtr_default_accuracy", ""),
    ("RTR λ=0.9 cost", "rtr_default_cost", "cost"),
    ("oracle accuracy", "oracle_accuracy", ""),
    ("oracle cost", "oracle_cost", "cost"),
    ("random accuracy", "random_accuracy", ""),
    ("random cost", "random_cost", "cost"),
]


def render(title: str, seeds: list[int], rows: list[dict[str, Any]], mean: dict[str, Any]) -> Table:
    """One column per seed, then the mean."""
    table = Table(title=title, title_justify="left")
    table.add_column("")
    for s in seeds:
        table.add_column(f"seed {s}", justify="right")
    table.add_column("mean", justify="right", style="bold")
    two_model = any(not math.isnan(r["rtr_apgr"]) for r in rows)
    for label, key, kind in ROWS:
        if "apgr" in key and not two_model:
            continue
        table.add_row(label, *(_fmt(r[key], kind) for r in rows), _fmt(mean[key], kind))
    return table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """``--seeds 0 1 2`` takes several values, which typer options cannot."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default="llmrouter", help="bundled set or routing-set dir")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--cost-unit", choices=["usd", "tokens"], default=None)
    parser.add_argument("--json", dest="json_path", type=Path, default=None)
    knobs = parser.add_argument_group("TrainConfig overrides (all seeds)")
    knobs.add_argument("--learnable-dim", type=int)
    knobs.add_argument("--hidden", type=int)
    knobs.add_argument("--lr", type=float)
    knobs.add_argument("--patience", type=int)
    knobs.add_argument("--weight-decay", type=float)
    knobs.add_argument("--max-epochs", type=int)
    knobs.add_argument("--length-weight", type=float)
    knobs.add_argument("--validation-fraction", type=float)
    knobs.add_argument("--ensemble", type=int, help="networks averaged (default 5)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Train and evaluate RTR on ``--data`` once per seed; print per seed and the mean."""
    args = parse_args(argv)
    data, seeds, test_fraction = args.data, list(args.seeds), args.test_fraction
    cost_unit, json_path = args.cost_unit, args.json_path
    learnable_dim, hidden, lr = args.learnable_dim, args.hidden, args.lr
    patience, weight_decay, max_epochs = args.patience, args.weight_decay, args.max_epochs
    overrides = {
        k: v
        for k, v in {
            "learnable_dim": learnable_dim,
            "hidden": hidden,
            "lr": lr,
            "patience": patience,
            "weight_decay": weight_decay,
            "max_epochs": max_epochs,
            "length_weight": args.length_weight,
            "validation_fraction": args.validation_fraction,
            "ensemble": args.ensemble,
        }.items()
        if v is not None
    }
    routing_set = workflow.load_data(data)
    unit: CostUnit = (
        workflow.default_cost_unit(routing_set) if cost_unit is None else cost_unit  # type: ignore[assignment]
    )
    console.print(
        f"[bold]{data}[/]: {len(routing_set.matrix())} questions, cost unit {unit}, "
        f"seeds {seeds}, test fraction {test_fraction}, TrainConfig overrides {overrides or 'none'}"
        f", load {os.getloadavg()}"
    )
    per_seed: list[dict[str, Any]] = []
    reports: list[dict[str, Any]] = []
    for seed in seeds:
        t0 = time.perf_counter()
        train, test = workflow.split(routing_set, test_fraction=test_fraction, seed=seed)
        config = replace(TrainConfig(seed=seed), **overrides)
        router = workflow.fit_router(routing_set, train, config=config, cost_unit=unit)
        t1 = time.perf_counter()
        report = workflow.evaluate(router, train, test, name=f"{data} (seed {seed})")
        row = summarise(report)
        summary = getattr(router.predictor, "summary", None)
        row["seed"] = seed
        row["epochs"] = "/".join(map(str, getattr(summary, "epochs", [])))  # per member
        row["train_seconds"] = t1 - t0
        row["eval_seconds"] = time.perf_counter() - t1
        per_seed.append(row)
        reports.append(report.to_dict())
        console.print(
            f"seed {seed}: trained in {t1 - t0:.1f} s ({row['epochs']} epochs), evaluated in "
            f"{row['eval_seconds']:.1f} s; RTR AIQ {row['rtr_aiq']:.4f}, KNN AIQ "
            f"{row['knn_aiq']:.4f}, load {os.getloadavg()}"
        )
    mean = _mean(per_seed)
    console.print(render(f"{data}, cost in {unit}", seeds, per_seed, mean))
    if json_path is not None:
        payload = {
            "data": data,
            "cost_unit": unit,
            "test_fraction": test_fraction,
            "seeds": seeds,
            "train_config": asdict(replace(TrainConfig(), **overrides)),
            "overrides": overrides,
            "per_seed": per_seed,
            "mean": mean,
            "reports": reports,
        }
        json_path.write_text(
            json.dumps(_no_nan(payload), indent=1, default=str) + "\n", encoding="utf-8"
        )
        console.print(f"wrote {json_path}")


if __name__ == "__main__":
    main()
