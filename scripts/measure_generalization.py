"""Routing quality on data the predictor was not trained on: leave one source out (issue 14).

For each held-out source (an LLMRouter cluster, a faithful-cot data set) and each seed: train
RTR on the questions of every *other* source (``TrainConfig(seed=seed)``), evaluate on the
held-out source against every single pair, random, KNN and the oracle (``workflow.evaluate``;
KNN's neighbours come from the same training sources; the folds are ``workflow.split_by_source``).
``--protocol split`` measures the usual 80/20 question split (``workflow.split``) instead.
The figures per fold are those of ``scripts/measure_quality.py``; the bar checked per fold is
RTR's AIQ above KNN's and above the single pairs' own hull.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/measure_generalization.py --data llmrouter \\
        --seeds 0 1 2 --json generalization-llmrouter.json

``--select`` runs the same protocol *inside* the training sources of one held-out fold (train
on all training sources but one, validate on that one), so knobs are compared without looking
at the held-out source: ``--select --hold-out cluster-2`` never reads cluster-2's outcomes.
``--set key=value`` overrides any TrainConfig field (repeatable). ``--compare-raw`` evaluates each
trained router a second time with its calibration taken off (the same networks), so the effect of
calibration is read without a second training.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from langchain_rtr import workflow
from langchain_rtr.data.matrix import OutcomeMatrix, RoutingSet
from langchain_rtr.predictor import TrainConfig
from langchain_rtr.routing import CostUnit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure_quality import _mean, _no_nan, console, render, summarise  # noqa: E402


def by_source(matrix: OutcomeMatrix, held_out: str) -> tuple[OutcomeMatrix, OutcomeMatrix]:
    """(every other source, ``held_out``) parts of a training part (inner validation folds)."""
    is_out = np.array([s == held_out for s in matrix.sources])
    if not is_out.any():
        raise SystemExit(f"no question has source {held_out!r}; sources: {set(matrix.sources)}")
    return matrix.subset(np.flatnonzero(~is_out)), matrix.subset(np.flatnonzero(is_out))


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``key=value`` pairs typed after the TrainConfig field they name."""
    types = {f.name: type(getattr(TrainConfig(), f.name)) for f in fields(TrainConfig)}
    out: dict[str, Any] = {}
    for item in items:
        key, _, value = item.partition("=")
        if key not in types:
            raise SystemExit(f"--set {item!r}: TrainConfig has no field {key!r}")
        kind = types[key]
        out[key] = value.lower() in {"1", "true", "yes"} if kind is bool else kind(value)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default="llmrouter", help="bundled set or routing-set dir")
    parser.add_argument("--protocol", choices=["sources", "split"], default="sources")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cost-unit", choices=["usd", "tokens"], default=None)
    parser.add_argument("--hold-out", nargs="+", default=None, help="sources (default: all)")
    parser.add_argument("--select", action="store_true", help="validate inside the training part")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument(
        "--compare-raw", action="store_true", help="also evaluate the uncalibrated probabilities"
    )
    parser.add_argument("--json", dest="json_path", type=Path, default=None)
    return parser.parse_args(argv)


Fold = tuple[str, OutcomeMatrix, OutcomeMatrix]


def folds_of(
    routing_set: RoutingSet, protocol: str, seed: int, hold_out: list[str] | None, select: bool
) -> list[Fold]:
    """(name, train, test) of every fold; with ``select`` the test is carved from the train."""
    if protocol == "split":
        train, test = workflow.split(routing_set, test_fraction=0.2, seed=seed)
        if not select:
            return [("split", train, test)]
        inner_train, val = train.split([0.8, 0.2], seed=seed + 1000)
        return [("split/val", inner_train, val)]
    out: list[Fold] = []
    for source in hold_out or workflow.sources_of(routing_set):
        rest, held = workflow.split_by_source(routing_set, source)
        if not select:
            out.append((source, rest, held))
            continue
        for inner in sorted(set(rest.sources)):
            train, val = by_source(rest, inner)
            out.append((f"{source}/val:{inner}", train, val))
    return out


def main(argv: list[str] | None = None) -> None:
    """Train on each fold's training part, evaluate on its held-out part; every seed."""
    args = parse_args(argv)
    overrides = parse_overrides(args.overrides)
    routing_set = workflow.load_data(args.data)
    unit: CostUnit = args.cost_unit or workflow.default_cost_unit(routing_set)
    console.print(
        f"[bold]{args.data}[/]: {len(routing_set.matrix())} questions, protocol {args.protocol}"
        f"{' (selection: validation inside the training part)' if args.select else ''}, seeds "
        f"{args.seeds}, overrides {overrides or 'none'}, load {os.getloadavg()}"
    )
    rows: dict[str, list[dict[str, Any]]] = {}
    for seed in args.seeds:
        for name, train, test in folds_of(
            routing_set, args.protocol, seed, args.hold_out, args.select
        ):
            t0 = time.perf_counter()
            config = replace(TrainConfig(seed=seed), **overrides)
            router = workflow.fit_router(routing_set, train, config=config, cost_unit=unit)
            report = workflow.evaluate(router, train, test, name=f"{args.data} {name}")
            row = summarise(report) | {"seed": seed, "seconds": time.perf_counter() - t0}
            row["ece"] = report.calibration.ece if report.calibration else float("nan")
            if args.compare_raw:
                predictor = router.predictor
                kept, predictor.calibration = predictor.calibration, None
                raw = summarise(raw_report := workflow.evaluate(router, train, test))
                predictor.calibration = kept
                for key in ("rtr_aiq", "rtr_apgr", "rtr_match_best_cost_ratio"):
                    row[f"raw_{key}"] = raw[key]
                row["raw_ece"] = raw_report.calibration.ece if raw_report.calibration else None
            rows.setdefault(name, []).append(row)
            console.print(
                f"{name} seed {seed}: RTR AIQ {row['rtr_aiq']:.4f}, KNN {row['knn_aiq']:.4f}, "
                f"singles {row['singles_aiq']:.4f}, APGR {row['rtr_apgr']:.4f}, to reach best "
                f"{row['rtr_match_best_cost_ratio']:.3f}, ECE {row['ece']:.4f}"
                + (
                    f" | raw: AIQ {row['raw_rtr_aiq']:.4f}, APGR {row['raw_rtr_apgr']:.4f}, "
                    f"to reach best {row['raw_rtr_match_best_cost_ratio']:.3f}, "
                    f"ECE {row['raw_ece']:.4f}"
                    if args.compare_raw
                    else ""
                )
                + f" ({row['seconds']:.0f} s, load {os.getloadavg()[0]:.1f})"
            )
    results = {name: {"per_seed": r, "mean": _mean(r)} for name, r in rows.items()}
    for name, r in results.items():
        console.print(
            render(
                f"{args.data} {name}, cost in {unit}",
                [str(seed) for seed in args.seeds],
                r["per_seed"],
                r["mean"],
            )
        )
    bars = {
        name: {
            key: r["mean"][key]
            for key in r["mean"]
            if key.endswith(("aiq", "apgr", "ece", "cost_ratio"))
        }
        | {
            "over_knn": r["mean"]["rtr_aiq"] - r["mean"]["knn_aiq"],
            "over_singles": r["mean"]["rtr_aiq"] - r["mean"]["singles_aiq"],
        }
        for name, r in results.items()
    }
    for name, bar in bars.items():
        console.print(
            f"{name}: RTR AIQ {bar['rtr_aiq']:.4f}, over KNN {bar['over_knn']:+.4f}, over "
            f"singles' hull {bar['over_singles']:+.4f}, ECE {bar['ece']:.4f}"
        )
    if len(bars) > 1:
        console.print(
            "mean over folds: RTR AIQ "
            f"{statistics.fmean(b['rtr_aiq'] for b in bars.values()):.4f}, over KNN "
            f"{statistics.fmean(b['over_knn'] for b in bars.values()):+.4f}, over singles "
            f"{statistics.fmean(b['over_singles'] for b in bars.values()):+.4f}"
        )
    if args.json_path is not None:
        payload = {
            "data": args.data,
            "protocol": args.protocol,
            "select": args.select,
            "seeds": args.seeds,
            "train_config": asdict(replace(TrainConfig(), **overrides)),
            "overrides": overrides,
            "folds": results,
            "bars": bars,
        }
        args.json_path.write_text(json.dumps(_no_nan(payload), indent=1, default=str) + "\n")
        console.print(f"wrote {args.json_path}")


if __name__ == "__main__":
    main()
