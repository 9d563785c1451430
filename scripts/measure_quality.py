"""Routing quality on held-out data, over several seeds, under two protocols.

``--protocol split`` (default): for each seed, split the set by question (``workflow.split``,
test fraction 0.2, that seed), train RTR (``TrainConfig(seed=seed)``), evaluate on the held-out
part against every single pair, each model at its best training strategy, random, KNN and the
oracle (``workflow.evaluate``). ``--protocol loso``: for each seed and each source, train on the
other sources and test on that one (``workflow.split_by_source``). ``--cost-unit both`` measures
the one trained predictor with routers in output tokens and in $. Printed per run and as the mean:

* the best single pair and its accuracy and cost;
* RTR's (and KNN's) cheapest λ-sweep point that reaches the best single's accuracy, as a share
  of the best single's cost (``EvaluationReport.match_best``; "never" when it does not reach);
* AIQ of RTR and KNN (and of the singles' own hull), APGR of both on two-model sets;
* oracle and random accuracy and cost, and RTR at the default λ.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/measure_quality.py --data llmrouter --seeds 0 1 2 \\
        --json quality-llmrouter.json
    HF_HUB_OFFLINE=1 .venv/bin/python scripts/measure_quality.py --data routellm-gsm8k \\
        --cost-unit tokens
    HF_HUB_OFFLINE=1 .venv/bin/python scripts/measure_quality.py --data faithful-cot \\
        --cost-unit both --protocol loso --seeds 0
    HF_HUB_OFFLINE=1 .venv/bin/python scripts/measure_quality.py --data faithful-cot --ablation

``--ablation`` trains the paper's three pair representations (text description + learnable
embedding, text only, learnable only) on each seed's split and reports the held-out
correctness accuracy (threshold 0.5) and ROC AUC of the predicted P(correct).

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

import numpy as np
from rich.console import Console
from rich.table import Table

from langchain_rtr import workflow
from langchain_rtr.evaluation import EvaluationReport
from langchain_rtr.evaluation.report import (
    APGR_PER_QUESTION_SUFFIX,
    KIND_MODEL_BEST,
    KIND_SOURCE_BEST,
)
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
        "best_single_max_gap": max(report.curves["rtr"].accuracy) - best.accuracy,
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
    out["model_best_aiq"] = _f(report.aiq.get(KIND_MODEL_BEST))
    source_best = [m for m in report.methods if m.kind == KIND_SOURCE_BEST]
    out["source_best_accuracy"] = source_best[0].accuracy if source_best else float("nan")
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
    ("each model at its best strategy, AIQ", "model_best_aiq", ""),
    ("RTR max accuracy - best single", "best_single_max_gap", ""),
    ("RTR APGR (RouteLLM: per call)", "rtr_apgr", ""),
    ("KNN APGR (RouteLLM: per call)", "knn_apgr", ""),
    ("RTR APGR, $ per question", "rtr_apgr_per_question", ""),
    ("KNN APGR, $ per question", "knn_apgr_per_question", ""),
    ("RTR max accuracy (sweep)", "rtr_max_accuracy", ""),
    ("KNN max accuracy (sweep)", "knn_max_accuracy", ""),
    ("RTR λ=0.9 accuracy", "rtr_default_accuracy", ""),
    ("RTR λ=0.9 cost", "rtr_default_cost", "cost"),
    ("best pair for each source, accuracy", "source_best_accuracy", ""),
    ("oracle accuracy", "oracle_accuracy", ""),
    ("oracle cost", "oracle_cost", "cost"),
    ("random accuracy", "random_accuracy", ""),
    ("random cost", "random_cost", "cost"),
]


def render(title: str, runs: list[str], rows: list[dict[str, Any]], mean: dict[str, Any]) -> Table:
    """One column per run (seed, or held-out source), then the mean."""
    table = Table(title=title, title_justify="left")
    table.add_column("")
    for run in runs:
        table.add_column(run, justify="right")
    table.add_column("mean", justify="right", style="bold")
    two_model = any(not math.isnan(r["rtr_apgr"]) for r in rows)
    for label, key, kind in ROWS:
        if "apgr" in key and not two_model:
            continue
        if key == "model_best_aiq" and all(math.isnan(r[key]) for r in rows):
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
    parser.add_argument("--cost-unit", choices=["usd", "tokens", "both"], default=None)
    parser.add_argument("--protocol", choices=["split", "loso"], default="split")
    parser.add_argument("--sources", nargs="+", help="loso: only these held-out sources")
    parser.add_argument("--ablation", action="store_true", help="pair representations")
    parser.add_argument(
        "--describe",
        action="store_true",
        help="each pair and the oracle on the whole set; no training",
    )
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
    knobs.add_argument(
        "--question-features",
        action="store_const",
        const=True,
        help="the heads also read word, number and sentence counts (default off)",
    )
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
            "question_features": args.question_features,
        }.items()
        if v is not None
    }
    routing_set = workflow.load_data(data)
    units: list[CostUnit] = (
        ["tokens", "usd"]
        if cost_unit == "both"
        else [workflow.default_cost_unit(routing_set) if cost_unit is None else cost_unit]
    )
    console.print(
        f"[bold]{data}[/]: {len(routing_set.matrix())} questions, protocol {args.protocol}, "
        f"cost units {units}, seeds {seeds}, TrainConfig overrides {overrides or 'none'}, "
        f"load {os.getloadavg()}"
    )
    if args.describe:
        describe(routing_set)
        return
    if args.ablation:
        run_ablation(routing_set, seeds, test_fraction, overrides, json_path)
        return
    folds: list[tuple[str, int, str | None]] = [(f"seed {seed}", seed, None) for seed in seeds]
    if args.protocol == "loso":
        held = args.sources or workflow.sources_of(routing_set)
        folds = [(f"{s} s{seed}", seed, s) for seed in seeds for s in held]
    per_unit: dict[str, list[dict[str, Any]]] = {u: [] for u in units}
    reports: list[dict[str, Any]] = []
    for label, seed, source in folds:
        rows, fold_reports = run_fold(routing_set, seed, source, test_fraction, overrides, units)
        for unit, row in rows.items():
            row["run"] = label
            per_unit[unit].append(row)
        reports.extend(fold_reports)
        console.print(
            f"{label}: trained in {rows[units[0]]['train_seconds']:.1f} s; "
            + "; ".join(
                f"{u}: RTR AIQ {r['rtr_aiq']:.4f}, KNN {r['knn_aiq']:.4f}, singles "
                f"{r['singles_aiq']:.4f}, model-best {r['model_best_aiq']:.4f}; best single "
                f"{r['best_single']} {r['best_single_accuracy']:.4f}, RTR reaches it at "
                f"{_fmt(r['rtr_match_best_cost_ratio'], 'ratio')} of its cost, RTR max accuracy "
                f"{r['rtr_max_accuracy']:.4f}"
                for u, r in rows.items()
            )
            + f"; load {os.getloadavg()}"
        )
    payload: dict[str, Any] = {
        "data": data,
        "protocol": args.protocol,
        "test_fraction": test_fraction,
        "seeds": seeds,
        "train_config": asdict(replace(TrainConfig(), **overrides)),
        "overrides": overrides,
        "units": {},
        "reports": reports,
    }
    for unit, rows in per_unit.items():
        mean = _mean(rows)
        console.print(
            render(
                f"{data} ({args.protocol}), cost in {unit}", [r["run"] for r in rows], rows, mean
            )
        )
        if args.protocol == "loso":
            _loso_bars(rows)
        payload["units"][unit] = {"per_run": rows, "mean": mean}
    if json_path is not None:
        json_path.write_text(
            json.dumps(_no_nan(payload), indent=1, default=str) + "\n", encoding="utf-8"
        )
        console.print(f"wrote {json_path}")


def run_fold(
    routing_set: Any,
    seed: int,
    held_out: str | None,
    test_fraction: float,
    overrides: dict[str, Any],
    units: list[CostUnit],
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Train once on one split (random, or all but ``held_out``); evaluate in every unit."""
    t0 = time.perf_counter()
    if held_out is None:
        train, test = workflow.split(routing_set, test_fraction=test_fraction, seed=seed)
    else:
        train, test = workflow.split_by_source(routing_set, held_out)
    config = replace(TrainConfig(seed=seed), **overrides)
    router = workflow.fit_router(routing_set, train, config=config, cost_unit=units[0])
    t1 = time.perf_counter()
    rows: dict[str, dict[str, Any]] = {}
    reports: list[dict[str, Any]] = []
    for unit in units:
        unit_router = workflow.in_unit(router, routing_set, train, unit)
        name = f"{routing_set.name} ({'seed ' + str(seed) if held_out is None else held_out})"
        report = workflow.evaluate(unit_router, train, test, name=name)
        row = summarise(report)
        summary = getattr(router.predictor, "summary", None)
        row["seed"] = seed
        row["held_out_source"] = held_out or ""
        row["epochs"] = "/".join(map(str, getattr(summary, "epochs", [])))
        row["train_seconds"] = t1 - t0
        rows[unit] = row
        reports.append({"unit": unit, "seed": seed, "held_out": held_out, **report.to_dict()})
    return rows, reports


def _loso_bars(rows: list[dict[str, Any]]) -> None:
    """How many held-out sources RTR's AIQ beats the singles' hull and KNN on."""
    over_hull = sum(r["rtr_aiq"] > r["singles_aiq"] for r in rows)
    over_knn = sum(r["rtr_aiq"] > r["knn_aiq"] for r in rows)
    console.print(
        f"RTR AIQ above the singles' hull on {over_hull} of {len(rows)} runs, above KNN's on "
        f"{over_knn} of {len(rows)}"
    )


def describe(routing_set: Any) -> None:
    """Accuracy and mean output tokens of every pair and of the oracle, overall and per source."""
    from langchain_rtr.evaluation import Outcomes, oracle_choices
    from langchain_rtr.evaluation.baselines import pair_label
    from langchain_rtr.evaluation.report import (
        KIND_ORACLE,
        KIND_SINGLE,
        MethodResult,
        pair_source_table,
    )

    outcomes = Outcomes.from_matrix(routing_set.matrix(), routing_set.models, "tokens")
    rows = [
        MethodResult(pair_label(pair), KIND_SINGLE, outcomes.single_metrics(j))
        for j, pair in enumerate(outcomes.pairs)
    ]
    rows.sort(key=lambda m: -m.accuracy)
    rows.append(MethodResult("oracle", KIND_ORACLE, outcomes.metrics(oracle_choices(outcomes))))
    console.print(pair_source_table(rows, f"{routing_set.name}, all {len(outcomes)} questions"))
    usd = {m.name: m.metrics.usd for m in rows}
    console.print("mean $ per question: " + ", ".join(f"{k} {v:.5f}" for k, v in usd.items()))


def _auc(labels: Any, scores: Any) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


def run_ablation(
    routing_set: Any,
    seeds: list[int],
    test_fraction: float,
    overrides: dict[str, Any],
    json_path: Path | None,
) -> None:
    """The paper's ablation: which pair representation predicts held-out correctness best."""
    from langchain_rtr.predictor import RTRPredictor

    variants = {
        "text + learnable": (True, None),
        "text only": (True, 0),
        "learnable only": (False, None),
    }
    results: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    for seed in seeds:
        train, test = workflow.split(routing_set, test_fraction=test_fraction, seed=seed)
        observed = np.isfinite(test.score)
        labels = (test.score[observed] >= 0.5).astype(int)
        for name, (with_text, learnable_dim) in variants.items():
            knobs = dict(overrides)
            if learnable_dim is not None:
                knobs["learnable_dim"] = learnable_dim
            config = replace(TrainConfig(seed=seed), **knobs)
            blank = " "  # one shared text: only the learnable embedding tells pairs apart
            models = {
                m: (spec.description if with_text else blank)
                for m, spec in routing_set.models.items()
            }
            strategies = {
                s: (text if with_text else blank) for s, text in routing_set.strategies.items()
            }
            predictor = RTRPredictor.train(train, models, strategies, config=config)
            p = np.asarray(predictor.predict(test.questions).correctness)
            order = [predictor.pairs.index(tuple(pair)) for pair in test.pairs]
            p = p[:, order][observed]
            row = {
                "seed": float(seed),
                "accuracy": float(np.mean((p >= 0.5) == (labels == 1))),
                "auc": _auc(labels, p),
            }
            results[name].append(row)
            console.print(
                f"seed {seed} {name}: accuracy {row['accuracy']:.4f} AUC {row['auc']:.4f}"
            )
    table = Table(title="pair representation ablation (held-out correctness)", title_justify="left")
    table.add_column("representation")
    for seed in seeds:
        table.add_column(f"seed {seed} acc / AUC", justify="right")
    table.add_column("mean acc / AUC", justify="right", style="bold")
    for name, rows in results.items():
        cells = [f"{r['accuracy']:.4f} / {r['auc']:.4f}" for r in rows]
        mean_acc = statistics.fmean(r["accuracy"] for r in rows)
        mean_auc = statistics.fmean(r["auc"] for r in rows)
        table.add_row(name, *cells, f"{mean_acc:.4f} / {mean_auc:.4f}")
    console.print(table)
    if json_path is not None:
        json_path.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
        console.print(f"wrote {json_path}")


if __name__ == "__main__":
    main()
