"""Train-and-evaluate recipes shared by the CLI, the demo, the benchmarks and the examples.

Each function is a few lines of glue over the data, predictor, routing and evaluation layers, so
that "the held-out part of a set" and "a router trained on a set" mean the same thing everywhere.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from langchain_rtr.data.bundled import list_bundled, load_bundled
from langchain_rtr.data.faithful_cot import read_faithful_cot
from langchain_rtr.data.io import load_routing_set
from langchain_rtr.data.matrix import OutcomeMatrix, RoutingSet
from langchain_rtr.errors import ConfigError
from langchain_rtr.evaluation import EvaluationReport, evaluate_router
from langchain_rtr.predictor import QuestionEncoder, RTRPredictor, TrainConfig
from langchain_rtr.predictor.cascade import CascadePredictor
from langchain_rtr.routing import CostUnit, PredictorLike, RTRRouter

TRAINING_INFO = "training.json"
FAITHFUL_COT_PREFIX = "faithful-cot:"
"""``faithful-cot:PATH`` reads a clone of the Faithful-CoT repository (any of its data sets)."""


@dataclass(frozen=True)
class TrainingInfo:
    """How a saved router was trained, so `rtr eval` can rebuild the very same held-out part."""

    data: str
    test_fraction: float
    split_seed: int
    cost_unit: str
    max_questions: int | None = None
    held_out_source: str | None = None


def load_data(source: str) -> RoutingSet:
    """A bundled set by name, ``faithful-cot:PATH`` or a ``save_routing_set`` directory.

    ``faithful-cot:PATH`` reads a clone of the Faithful-COT repository's layout as it is.
    """
    if source in list_bundled():
        return load_bundled(source)
    if source.startswith(FAITHFUL_COT_PREFIX):
        root = Path(source[len(FAITHFUL_COT_PREFIX) :])
        if not (root / "output_dir").is_dir():
            raise ConfigError(f"{source!r}: {root} has no output_dir/ (a Faithful-COT clone?)")
        return read_faithful_cot(root)
    path = Path(source)
    if path.is_dir():
        return load_routing_set(path)
    raise ConfigError(
        f"data {source!r} is neither a bundled set ({', '.join(list_bundled())}), "
        f"{FAITHFUL_COT_PREFIX}PATH, nor a routing-set directory (records.parquet + models.json "
        "+ strategies.json)"
    )


def split(
    routing_set: RoutingSet,
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
    max_questions: int | None = None,
) -> tuple[OutcomeMatrix, OutcomeMatrix]:
    """(train, test) parts by question; the same seed always gives the same parts.

    ``max_questions`` first keeps a seeded sample of that many questions, for quick runs.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction}")
    matrix = routing_set.matrix()
    if max_questions is not None and 0 < max_questions < len(matrix):
        keep = np.random.default_rng(seed).choice(len(matrix), max_questions, replace=False)
        matrix = matrix.subset(np.sort(keep))
    train, test = matrix.split([1.0 - test_fraction, test_fraction], seed=seed)
    return train, test


def _normalised(question: str) -> str:
    return " ".join(question.lower().split())


def split_by_source(routing_set: RoutingSet, held_out: str) -> tuple[OutcomeMatrix, OutcomeMatrix]:
    """(train, test): test is every question of source ``held_out``, train the other sources.

    A training question whose text (case and spacing aside) is also a held-out question is
    left out of training too: public sets reuse questions (ASDiv and MultiArith share dozens).
    """
    matrix = routing_set.matrix()
    sources = sorted(set(matrix.sources))
    if held_out not in sources:
        raise ConfigError(f"no source {held_out!r} in {routing_set.name}; sources: {sources}")
    if len(sources) < 2:
        raise ConfigError(f"{routing_set.name} has one source; nothing to train on")
    test_rows = [i for i, s in enumerate(matrix.sources) if s == held_out]
    seen = {_normalised(matrix.questions[i]) for i in test_rows}
    train_rows = [
        i
        for i, (s, q) in enumerate(zip(matrix.sources, matrix.questions, strict=True))
        if s != held_out and _normalised(q) not in seen
    ]
    return matrix.subset(train_rows), matrix.subset(test_rows)


def sources_of(routing_set: RoutingSet) -> list[str]:
    """The set's sources, sorted: the folds of leave-one-source-out."""
    return sorted({r.source for r in routing_set.records})


def split_for(routing_set: RoutingSet, info: TrainingInfo) -> tuple[OutcomeMatrix, OutcomeMatrix]:
    """The (train, test) parts a saved router was trained and is evaluated on."""
    if info.held_out_source is not None:
        return split_by_source(routing_set, info.held_out_source)
    return split(
        routing_set,
        test_fraction=info.test_fraction,
        seed=info.split_seed,
        max_questions=info.max_questions,
    )


def default_cost_unit(routing_set: RoutingSet) -> CostUnit:
    """Dollars when the set's models have prices, else output tokens."""
    priced = any(m.input_price > 0 or m.output_price > 0 for m in routing_set.models.values())
    return "usd" if priced else "tokens"


def fit_router(
    routing_set: RoutingSet,
    train: OutcomeMatrix,
    *,
    encoder: QuestionEncoder | None = None,
    config: TrainConfig | None = None,
    cost_unit: CostUnit | None = None,
    progress: Callable[[int, float, float], None] | None = None,
) -> RTRRouter:
    """Train the predictor on ``train`` and wrap it in a router with a fitted cost scale."""
    predictor = _train_predictor(routing_set, train, encoder, config, progress)
    return _router_over(predictor, routing_set, train, cost_unit)


def fit_cascade_router(
    routing_set: RoutingSet,
    train: OutcomeMatrix,
    *,
    fast_encoder: QuestionEncoder,
    full_encoder: QuestionEncoder,
    share: float = 0.25,
    config: TrainConfig | None = None,
    cost_unit: CostUnit | None = None,
    progress: Callable[[int, float, float], None] | None = None,
) -> RTRRouter:
    """Train a predictor on each encoder and route through their :class:`CascadePredictor`.

    ``share`` of the training questions (the fast predictor's least certain) set the threshold
    above which a question is re-scored by the full predictor. ``progress`` counts epochs on
    across both trainings.
    """
    fast = _train_predictor(routing_set, train, fast_encoder, config, progress)
    done = sum(fast.summary.epochs)

    def after_fast(epoch: int, train_loss: float, val_loss: float) -> None:
        if progress is not None:
            progress(done + epoch, train_loss, val_loss)

    full = _train_predictor(routing_set, train, full_encoder, config, after_fast)
    cascade = CascadePredictor.fit(fast, full, train.questions, share=share)
    return _router_over(cascade, routing_set, train, cost_unit)


def _train_predictor(
    routing_set: RoutingSet,
    train: OutcomeMatrix,
    encoder: QuestionEncoder | None,
    config: TrainConfig | None,
    progress: Callable[[int, float, float], None] | None,
) -> RTRPredictor:
    return RTRPredictor.train(
        train,
        {name: spec.description for name, spec in routing_set.models.items()},
        routing_set.strategies,
        encoder=encoder,
        config=config,
        progress=progress,
    )


def _router_over(
    predictor: PredictorLike,
    routing_set: RoutingSet,
    train: OutcomeMatrix,
    cost_unit: CostUnit | None,
) -> RTRRouter:
    """A router over ``predictor`` with its cost scale fitted on the training questions."""
    router = RTRRouter(
        predictor, routing_set.models, cost_unit=cost_unit or default_cost_unit(routing_set)
    )
    router.fit_cost_scale(train.questions)
    return router


def in_unit(
    router: RTRRouter, routing_set: RoutingSet, train: OutcomeMatrix, cost_unit: CostUnit
) -> RTRRouter:
    """The same trained predictor under another cost unit (its cost scale fitted on ``train``).

    Tokens and $ rank pairs differently, so a router is measured in each unit it trades in.
    """
    if router.cost_unit == cost_unit:
        return router
    return _router_over(router.predictor, routing_set, train, cost_unit)


def save_training_info(directory: str | Path, info: TrainingInfo) -> None:
    """Write ``training.json`` next to a saved router."""
    Path(directory, TRAINING_INFO).write_text(json.dumps(asdict(info), indent=2) + "\n")


def load_training_info(directory: str | Path) -> TrainingInfo | None:
    """Read ``training.json`` of a saved router, if it has one."""
    path = Path(directory, TRAINING_INFO)
    if not path.exists():
        return None
    try:
        raw: dict[str, Any] = json.loads(path.read_text())
        return TrainingInfo(**raw)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: not a valid training record ({exc})") from exc


def evaluate(
    router: RTRRouter, train: OutcomeMatrix, test: OutcomeMatrix, *, name: str = ""
) -> EvaluationReport:
    """RTR against every single pair, random, KNN and the oracle on ``test``."""
    return evaluate_router(router, test, train, name=name)
