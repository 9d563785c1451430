"""Adding a model to a trained router from a few of its outcomes, against full retraining.

For a set, a held-out model M and a seed: split by question (``workflow.split``, test 0.2),
train RTR on the training part **without M's pairs** (the base router), and on the whole
training part (full retraining, the reference). Then add M to the base router
(``langchain_rtr.upkeep.add_model``: only M's learnable embedding is fitted) from 0, 50, 200
and 500 of its outcomes and measure on the test part, routing over every model:

* M's correctness AUC (its predicted P(correct) against its scores on the test questions);
* the router's AIQ (``workflow.evaluate``, as in ``scripts/measure_quality.py``).

An outcome is one (question, strategy) record: on ``faithful-cot`` (5 strategies) 200 outcomes
are M profiled on 40 questions with every strategy, as ``rtr collect`` would; on ``llmrouter``
(one strategy) 200 questions. The samples are nested (the 50 are among the 200) and drawn
from the training part only.

Knobs (``AddModelConfig``: ``lr``, ``steps``, and whether the description encoding is fitted
too, ``fit_text``, with its pull to the start ``prior``; ``GRID``) are chosen on validation
carved from the training part: M's outcomes on 300 training questions kept out of every
sample; the knobs with the lowest mean validation loss (the fitting objective: BCE of the
calibrated P(correct), plus the length loss where there are lengths) over 50, 200 and 500
outcomes are used for the test. ``--cache DIR`` keeps the two trained routers for a rerun.

    HF_HUB_OFFLINE=1 nice -n 19 .venv/bin/python scripts/measure_add_model.py --data faithful-cot \\
        --hold-out gpt-4 --seed 0 --ensemble 1 --json add-model-fc.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from langchain_rtr import workflow
from langchain_rtr.data.matrix import OutcomeMatrix
from langchain_rtr.predictor import RTRPredictor, TrainConfig
from langchain_rtr.predictor.adapt import AddModelConfig, add_model
from langchain_rtr.routing import RTRRouter
from langchain_rtr.upkeep import add_model as add_model_to_router

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure_quality import _auc, _no_nan, console, summarise  # noqa: E402

COUNTS = (0, 50, 200, 500)
VALIDATION_QUESTIONS = 300
GRID: dict[str, Any] = {
    "lr": (3e-3, 3e-2),
    "steps": (50, 200),
    "fit_text, prior": ((False, 0.0), (True, 1.0)),
}
"""The knobs tried: embedding only (no pull to the start) or the description encoding too."""


def columns(matrix: OutcomeMatrix, keep: list[tuple[str, str]]) -> OutcomeMatrix:
    """``matrix`` with only the pairs ``keep`` (its rows unchanged)."""
    idx = [matrix.pairs.index(p) for p in keep]
    return OutcomeMatrix(
        questions=list(matrix.questions),
        sources=list(matrix.sources),
        pairs=list(keep),
        score=matrix.score[:, idx],
        output_tokens=matrix.output_tokens[:, idx],
        input_tokens=matrix.input_tokens[:, idx],
        cost=matrix.cost[:, idx],
        keys=list(matrix.keys),
    )


def m_auc(predictor: Any, test: OutcomeMatrix, model: str) -> float:
    """AUC of the predicted P(correct) of ``model``'s pairs on their observed test cells."""
    pairs = [p for p in test.pairs if p[0] == model]
    prediction = predictor.predict(test.questions)
    got = np.stack([prediction.correctness[:, predictor.pairs.index(p)] for p in pairs], 1)
    real = columns(test, pairs).score
    seen = np.isfinite(real)
    return _auc((real[seen] >= 0.5).astype(int), got[seen])


def validation_loss(predictor: RTRPredictor, val: OutcomeMatrix) -> float:
    """The fitting objective of M's pairs on validation outcomes."""
    prediction = predictor.predict(val.questions)
    idx = [predictor.pairs.index(p) for p in val.pairs]
    p = np.clip(prediction.correctness[:, idx].astype(np.float64), 1e-6, 1 - 1e-6)
    y = val.score.astype(np.float64)
    seen = np.isfinite(y)
    loss = float(-np.mean(y[seen] * np.log(p[seen]) + (1 - y[seen]) * np.log(1 - p[seen])))
    if prediction.output_tokens is not None and predictor.length_scale:
        real = val.output_tokens.astype(np.float64)
        has = np.isfinite(real)
        if has.any():
            diff = np.log1p(prediction.output_tokens[:, idx][has]) - np.log1p(real[has])
            loss += predictor.config.length_weight * float(
                np.mean((diff / predictor.length_scale) ** 2)
            )
    return loss


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default="faithful-cot")
    parser.add_argument("--hold-out", required=True, help="the model left out and added back")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ensemble", type=int, default=None, help="networks (default 5)")
    parser.add_argument("--counts", type=int, nargs="+", default=list(COUNTS))
    parser.add_argument("--validation-questions", type=int, default=VALIDATION_QUESTIONS)
    parser.add_argument(
        "--cache", type=Path, default=None, help="keep the trained base and full routers here"
    )
    parser.add_argument("--json", dest="json_path", type=Path, default=None)
    args = parser.parse_args(argv)
    model, seed = args.hold_out, args.seed
    rs = workflow.load_data(args.data)
    if model not in rs.models:
        raise SystemExit(f"{args.data} has no model {model!r}: {sorted(rs.models)}")
    train, test = workflow.split(rs, test_fraction=0.2, seed=seed)
    m_pairs = [p for p in train.pairs if p[0] == model]
    rest_pairs = [p for p in train.pairs if p[0] != model]
    config = (
        TrainConfig(seed=seed)
        if args.ensemble is None
        else TrainConfig(seed=seed, ensemble=args.ensemble)
    )
    console.print(
        f"[bold]{args.data}[/]: hold out {model} ({len(m_pairs)} pairs), seed {seed}, "
        f"{len(train)} train / {len(test)} test questions, ensemble {config.ensemble}, "
        f"load {os.getloadavg()}"
    )

    # M's outcomes in the training part: validation questions first, then nested samples
    m_train = columns(train, m_pairs)
    pool = np.flatnonzero(np.isfinite(m_train.score).any(axis=1))
    pool = np.random.default_rng(seed).permutation(pool)
    n_val = args.validation_questions
    val = m_train.subset(pool[:n_val])
    per_question = len(m_pairs)

    def sample(k: int) -> OutcomeMatrix:
        n = -(-k // per_question)  # questions, every strategy of M on each
        return m_train.subset(pool[n_val : n_val + n])

    def trained(kind: str, part: OutcomeMatrix) -> tuple[RTRRouter, float]:
        """A router trained on ``part`` (or the one kept in ``--cache``) and its seconds."""
        folder = None
        if args.cache is not None:
            folder = args.cache / f"{rs.name}-{model}-s{seed}-e{config.ensemble}" / kind
            if (folder / "router.json").is_file():
                meta = json.loads((folder.parent / f"{kind}.json").read_text())
                return RTRRouter.load(folder), float(meta["seconds"])
        t0 = time.perf_counter()
        router = workflow.fit_router(rs, part, config=config)
        seconds = time.perf_counter() - t0
        if folder is not None:
            router.save(folder)
            (folder.parent / f"{kind}.json").write_text(json.dumps({"seconds": seconds}))
        return router, seconds

    base, t_base = trained("base", columns(train, rest_pairs))
    console.print(f"base router (without {model}) trained in {t_base:.0f} s")

    # knob selection on the validation questions (training part only)
    selection: list[dict[str, Any]] = []
    for lr, steps, (fit_text, prior) in itertools.product(
        GRID["lr"], GRID["steps"], GRID["fit_text, prior"]
    ):
        knobs = AddModelConfig(lr=lr, steps=steps, fit_text=fit_text, prior=prior, seed=seed)
        losses = {
            k: validation_loss(
                add_model(
                    base.predictor, model, rs.models[model].description, sample(k), config=knobs
                ),
                val,
            )
            for k in (50, 200, 500)
        }
        selection.append(
            {
                "lr": lr,
                "steps": steps,
                "fit_text": fit_text,
                "prior": prior,
                "losses": losses,
                "mean": float(np.mean(list(losses.values()))),
            }
        )
        console.print(f"validation {knobs}: {losses}")
    chosen = min(selection, key=lambda r: r["mean"])
    knobs = AddModelConfig(
        lr=chosen["lr"],
        steps=chosen["steps"],
        fit_text=chosen["fit_text"],
        prior=chosen["prior"],
        seed=seed,
    )
    console.print(f"chosen on validation: {knobs}")

    full, t_full = trained("full", train)
    console.print(f"full retraining in {t_full:.0f} s")
    rows: list[dict[str, Any]] = []
    full_summary = summarise(workflow.evaluate(full, train, test))
    rows.append(
        {
            "outcomes": "full retraining",
            "auc": m_auc(full.predictor, test, model),
            "aiq": full_summary["rtr_aiq"],
            "seconds": t_full,
        }
    )
    for k in args.counts:
        t0 = time.perf_counter()
        outcomes = sample(k) if k else None
        added = add_model_to_router(base, rs.models[model], outcomes or (), config=knobs)
        seconds = time.perf_counter() - t0
        summary = summarise(workflow.evaluate(added, train, test))
        rows.append(
            {
                "outcomes": k,
                "auc": m_auc(added.predictor, test, model),
                "aiq": summary["rtr_aiq"],
                "seconds": seconds,
            }
        )
        console.print(f"{k} outcomes: {rows[-1]}")
    full_aiq = rows[0]["aiq"]
    table = Table(title=f"{args.data}: {model} added back (seed {seed})", title_justify="left")
    for name in ("outcomes", f"{model} AUC", "router AIQ", "AIQ - full", "seconds"):
        table.add_column(name, justify="right")
    for r in rows:
        table.add_row(
            str(r["outcomes"]),
            f"{r['auc']:.4f}",
            f"{r['aiq']:.4f}",
            f"{r['aiq'] - full_aiq:+.4f}",
            f"{r['seconds']:.1f}",
        )
    console.print(table)
    if args.json_path is not None:
        payload = {
            "data": args.data,
            "hold_out": model,
            "seed": seed,
            "train_config": asdict(config),
            "grid": GRID,
            "selection": selection,
            "chosen": asdict(knobs),
            "base_seconds": t_base,
            "rows": rows,
            "load": os.getloadavg(),
        }
        args.json_path.write_text(json.dumps(_no_nan(payload), indent=1, default=str) + "\n")
        console.print(f"wrote {args.json_path}")


if __name__ == "__main__":
    main()
