"""Offline evaluation: RTR against every single pair, random, KNN and the oracle on held-out data.

Protocol:
    * Only observed cells count: on each test question every method chooses among the pairs
      observed for it; questions with no observed pair are dropped (and counted).
    * Realised cost of a choice is what the data recorded for that call (see
      :class:`~langchain_rtr.evaluation.baselines.Outcomes`); with no costs or lengths in the
      set (LLMRouter), a call costs the model's mean $/M price.
    * RTR scores ``λ·â − (1−λ)·ĉ/scale`` on the predictor's correctness and the predicted cost
      (router's cost model); KNN scores the same trade-off on the mean score and the mean
      realised cost of the ``k`` most similar training questions (cosine, same encoder), i.e.
      ``acc − μ·cost/scale`` with ``μ = (1−λ)/λ``. Both use the same ``scale`` and λ grid, so
      their curves and AIQ are directly comparable.
    * APGR (two-model sets) follows RouteLLM: strong-call share on the x axis, each router
      ranking by its accuracy estimates with a fixed cost per call of each model (the curves'
      per-question costs would rank by cost as well; their APGR is reported beside).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from langchain_rtr.data.matrix import OutcomeMatrix
from langchain_rtr.evaluation.baselines import (
    Outcomes,
    default_lambdas,
    knn_estimates,
    oracle_choices,
    pair_label,
    random_metrics,
    sweep,
    switch_lambdas,
    tradeoff_choices,
)
from langchain_rtr.evaluation.curves import CurveError, aiq, apgr, cost_to_reach
from langchain_rtr.evaluation.report import (
    APGR_PER_QUESTION_SUFFIX,
    KIND_KNN,
    KIND_MODEL_BEST,
    KIND_ORACLE,
    KIND_RANDOM,
    KIND_RTR,
    KIND_SINGLE,
    KIND_SOURCE_BEST,
    EvaluationReport,
    MethodResult,
)
from langchain_rtr.predictor.calibration import reliability
from langchain_rtr.routing import (
    DEFAULT_LAMBDA,
    CostModel,
    CostUnit,
    Pair,
    PredictionLike,
    RoutingError,
    RTRRouter,
    fit_cost_scale,
)
from langchain_rtr.specs import ModelSpec


@dataclass(frozen=True)
class _ArrayPrediction:
    correctness: np.ndarray
    output_tokens: np.ndarray | None


def _reorder(values: np.ndarray | None, source: Sequence[Pair], target: Sequence[Pair]) -> Any:
    if values is None:
        return None
    index = {tuple(p): j for j, p in enumerate(source)}
    missing = [p for p in target if tuple(p) not in index]
    if missing:
        raise RoutingError(f"pairs {missing} are missing from {list(source)}")
    return np.asarray(values)[:, [index[tuple(p)] for p in target]]


def _reorder_matrix(matrix: OutcomeMatrix, pairs: Sequence[Pair]) -> OutcomeMatrix:
    if [tuple(p) for p in matrix.pairs] == [tuple(p) for p in pairs]:
        return matrix
    return OutcomeMatrix(
        questions=list(matrix.questions),
        sources=list(matrix.sources),
        pairs=list(pairs),
        score=_reorder(matrix.score, matrix.pairs, pairs),
        output_tokens=_reorder(matrix.output_tokens, matrix.pairs, pairs),
        input_tokens=_reorder(matrix.input_tokens, matrix.pairs, pairs),
        cost=_reorder(matrix.cost, matrix.pairs, pairs),
        keys=list(matrix.keys),
    )


def evaluate_routing(
    test: OutcomeMatrix,
    prediction: PredictionLike,
    test_embeddings: np.ndarray,
    train: OutcomeMatrix,
    train_embeddings: np.ndarray,
    models: Mapping[str, ModelSpec],
    *,
    pairs: Sequence[Pair] | None = None,
    cost_unit: CostUnit = "usd",
    cost_scale: float | None = None,
    lam: float = DEFAULT_LAMBDA,
    lambdas: Sequence[float] | None = None,
    k: int = 10,
    random_seeds: int = 50,
    seed: int = 0,
    name: str = "",
    strategy_overhead_tokens: Mapping[str, int] | None = None,
) -> EvaluationReport:
    """Evaluate RTR's predictions on a test matrix against the baselines.

    Args:
        test: The held-out outcomes (true scores, tokens, costs; NaN unobserved).
        prediction: The predictor's output on ``test.questions`` (same row order).
        test_embeddings: ``[n_test, d]`` question vectors (for KNN).
        train: The training outcomes (KNN's neighbours).
        train_embeddings: ``[n_train, d]`` from the same encoder.
        models: Specs (prices) of every model in the pairs.
        pairs: The prediction's column order (default: ``test.pairs``).
        cost_unit: ``"usd"`` or ``"tokens"``; the x axis of curves and AIQ.
        cost_scale: The router's cost normaliser; by default fitted on RTR's predicted costs of
            the test questions (labels unused), as :meth:`RTRRouter.fit_cost_scale` would.
        lam: λ of the ``rtr``/``knn`` rows of the table.
        lambdas: The sweep grid (default :func:`default_lambdas`).
        k: KNN neighbours.
        random_seeds: Runs averaged for the random baseline.
        seed: Base seed of the random baseline.
        name: The set's name, for titles.
        strategy_overhead_tokens: As in the router's cost model.

    Returns:
        The report (``rich``-printable, ``to_dict()``, ``plot(path)``).
    """
    given: list[Pair] = [(str(m), str(s)) for m, s in (pairs or test.pairs)]
    order: list[Pair] = [(str(m), str(s)) for m, s in test.pairs]
    test = _reorder_matrix(test, order)
    train = _reorder_matrix(train, order)
    correctness = _reorder(np.asarray(prediction.correctness, np.float64), given, order)
    out_tokens = _reorder(prediction.output_tokens, given, order)
    test_emb = np.asarray(test_embeddings, dtype=np.float32)
    train_emb = np.asarray(train_embeddings, dtype=np.float32)
    if correctness.shape[0] != len(test) or test_emb.shape[0] != len(test):
        raise RoutingError(
            f"test has {len(test)} questions, the prediction {correctness.shape[0]} rows and "
            f"the embeddings {test_emb.shape[0]}"
        )
    if train_emb.shape[0] != len(train):
        raise RoutingError(f"train has {len(train)} questions and {train_emb.shape[0]} embeddings")

    outcomes = Outcomes.from_matrix(test, models, cost_unit, strategy_overhead_tokens)
    keep = np.flatnonzero(outcomes.observed.any(axis=1))
    dropped = len(test) - len(keep)
    if len(keep) == 0:
        raise RoutingError("no test question has an observed pair")
    if dropped:
        outcomes = outcomes.subset(keep)
        correctness = correctness[keep]
        out_tokens = None if out_tokens is None else out_tokens[keep]
        test_emb = test_emb[keep]

    # RTR's predicted costs, exactly as the router computes them
    cost_model = CostModel(order, models, cost_unit, strategy_overhead_tokens)
    predicted = cost_model.predicted(_ArrayPrediction(correctness, out_tokens), outcomes.questions)
    scale = float(cost_scale) if cost_scale is not None else fit_cost_scale(predicted.cost)
    rtr_cost = predicted.cost / scale

    train_out = Outcomes.from_matrix(train, models, cost_unit, strategy_overhead_tokens)
    train_cost = np.where(train_out.observed, train_out.cost, np.nan)
    knn_acc, knn_cost = knn_estimates(train_emb, train_out.score, train_cost, test_emb, k=k)
    knn_cost = knn_cost / scale

    grid = list(lambdas) if lambdas is not None else default_lambdas()

    methods: list[MethodResult] = []
    for j, pair in enumerate(order):
        if outcomes.observed[:, j].any():
            methods.append(MethodResult(pair_label(pair), KIND_SINGLE, outcomes.single_metrics(j)))
    singles = list(methods)
    best = max(singles, key=lambda m: (m.accuracy, -m.cost))
    methods.append(
        MethodResult(
            "random",
            KIND_RANDOM,
            random_metrics(outcomes, random_seeds, seed),
            {"seeds": random_seeds},
        )
    )
    methods.append(MethodResult("oracle", KIND_ORACLE, outcomes.metrics(oracle_choices(outcomes))))
    model_best = _best_strategy_per_model(order, train, outcomes)
    methods.extend(model_best)
    methods.extend(_best_pair_per_source(train, outcomes))
    for kind, acc, cost in ((KIND_KNN, knn_acc, knn_cost), (KIND_RTR, correctness, rtr_cost)):
        idx = tradeoff_choices(acc, cost, outcomes.observed, lam)
        params: dict[str, Any] = {"lam": lam}
        if kind == KIND_KNN:
            params["k"] = k
        methods.append(MethodResult(kind, kind, outcomes.metrics(idx), params))

    # a two-model set (RouteLLM): exactly two pairs observed on the test questions
    active = np.flatnonzero(outcomes.observed.any(axis=0))
    strong_col: int | None = None
    weak_col: int | None = None
    if len(active) == 2:
        accs = [outcomes.single_metrics(int(j)).accuracy for j in active]
        strong_col, weak_col = (int(active[1]), int(active[0]))
        if accs[0] > accs[1]:
            strong_col, weak_col = weak_col, strong_col

    def method_grid(acc: np.ndarray, cost: np.ndarray) -> list[float]:
        if lambdas is not None:
            return grid
        return sorted(set(grid) | set(switch_lambdas(acc, cost, outcomes.observed)))

    curves = {
        kind: sweep(kind, outcomes, acc, cost, method_grid(acc, cost), strong_col)
        for kind, acc, cost in ((KIND_RTR, correctness, rtr_cost), (KIND_KNN, knn_acc, knn_cost))
    }

    single_cost = [m.cost for m in singles]
    single_acc_all = [m.accuracy for m in singles]
    aiqs: dict[str, float] = {}
    for key, curve in curves.items():
        try:
            aiqs[key] = aiq(curve.cost, curve.accuracy, single_cost, single_acc_all)
        except CurveError:
            aiqs[key] = float("nan")
    try:
        aiqs["singles"] = aiq(single_cost, single_acc_all, single_cost, single_acc_all)
    except CurveError:
        aiqs["singles"] = float("nan")
    if model_best:
        try:
            aiqs[KIND_MODEL_BEST] = aiq(
                [m.cost for m in model_best],
                [m.accuracy for m in model_best],
                single_cost,
                single_acc_all,
            )
        except CurveError:
            aiqs[KIND_MODEL_BEST] = float("nan")

    apgrs: dict[str, float] | None = None
    if strong_col is not None and weak_col is not None:
        weak_acc = outcomes.single_metrics(weak_col).accuracy
        strong_acc = outcomes.single_metrics(strong_col).accuracy
        # RouteLLM's protocol: APGR's x axis is the share of *calls* to the strong model, so
        # every call of a pair costs the same (its mean cost on the training questions) and
        # each method's sweep ranks questions by its accuracy estimates alone. The curves above
        # also weigh each question's own (predicted) cost; their APGR is reported beside.
        with np.errstate(invalid="ignore"):
            per_call = np.nanmean(train_cost, axis=0) / scale
        per_call = np.tile(np.nan_to_num(per_call), (len(outcomes), 1))
        per_call_curves = {
            kind: sweep(kind, outcomes, acc, per_call, method_grid(acc, per_call), strong_col)
            for kind, acc in ((KIND_RTR, correctness), (KIND_KNN, knn_acc))
        }
        apgrs = {}
        for suffix, family in (("", per_call_curves), (APGR_PER_QUESTION_SUFFIX, curves)):
            for key, curve in family.items():
                try:
                    apgrs[key + suffix] = apgr(
                        curve.strong_fraction or [], curve.accuracy, weak_acc, strong_acc
                    )
                except CurveError:
                    apgrs[key + suffix] = float("nan")

    match_best: dict[str, dict[str, float] | None] = {}
    for key, curve in curves.items():
        reach = cost_to_reach(curve.cost, curve.accuracy, best.accuracy)
        if reach is None:
            match_best[key] = None
            continue
        at = [
            i
            for i, (c, a) in enumerate(zip(curve.cost, curve.accuracy, strict=True))
            if c == reach and a >= best.accuracy - 1e-12
        ][0]
        match_best[key] = {
            "lam": curve.lambdas[at],
            "accuracy": curve.accuracy[at],
            "cost": reach,
            "cost_ratio": reach / best.cost if best.cost > 0 else float("nan"),
        }
        acc_src, cost_src = (correctness, rtr_cost) if key == KIND_RTR else (knn_acc, knn_cost)
        idx = tradeoff_choices(acc_src, cost_src, outcomes.observed, curve.lambdas[at])
        methods.append(
            MethodResult(
                f"{key} (≥ best single)",
                key,
                outcomes.metrics(idx),
                {"lam": curve.lambdas[at], "target": best.name},
            )
        )

    return EvaluationReport(
        name=name,
        cost_unit=cost_unit,
        cost_basis=outcomes.cost_basis,
        cost_scale=scale,
        lam=lam,
        n_questions=len(outcomes),
        n_train=len(train),
        methods=methods,
        curves=curves,
        aiq=aiqs,
        apgr=apgrs,
        best_single=best.name,
        match_best=match_best,
        dropped_questions=dropped,
        calibration=reliability(correctness, np.where(outcomes.observed, outcomes.score, np.nan)),
    )


def _best_strategy_per_model(
    pairs: Sequence[Pair], train: OutcomeMatrix, outcomes: Outcomes
) -> list[MethodResult]:
    """Each model with the strategy most accurate on the training questions, measured on test.

    What a user who profiled strategies once per model, and not per question, would run: the
    baseline that shows what routing the strategy per question adds. Empty for model-only sets.
    """
    if len({s for _, s in pairs}) < 2:
        return []
    with np.errstate(invalid="ignore"):
        train_acc = np.nanmean(np.asarray(train.score, np.float64), axis=0)
    rows: list[MethodResult] = []
    for model in sorted({m for m, _ in pairs}):
        columns = [
            j
            for j, (m, _) in enumerate(pairs)
            if m == model and np.isfinite(train_acc[j]) and outcomes.observed[:, j].any()
        ]
        if not columns:
            continue
        best = max(columns, key=lambda j: train_acc[j])
        rows.append(
            MethodResult(
                f"{model}, best strategy ({pairs[best][1]})",
                KIND_MODEL_BEST,
                outcomes.single_metrics(best),
                {"pair": pair_label(pairs[best]), "train_accuracy": float(train_acc[best])},
            )
        )
    return rows


def _best_pair_per_source(train: OutcomeMatrix, outcomes: Outcomes) -> list[MethodResult]:
    """Each test question gets the pair most accurate on the training questions of its source.

    A router that knew only which data set a question came from: its accuracy is what routing
    gains from the source alone, the rest of RTR's gain is per question. Empty unless at least
    two test sources were seen in training (under leave one source out, none is).
    """
    score = np.asarray(train.score, np.float64)
    train_sources = np.asarray(train.sources, dtype=object)
    test_sources = np.asarray(outcomes.sources, dtype=object)
    seen = sorted(set(outcomes.sources) & set(train.sources))
    if len(seen) < 2:
        return []
    with np.errstate(invalid="ignore"):
        overall = np.nan_to_num(np.nanmean(score, axis=0), nan=-1.0)
        by_source = {
            s: np.nan_to_num(np.nanmean(score[train_sources == s], axis=0), nan=-1.0) for s in seen
        }
    index = np.empty(len(outcomes), np.int64)
    for i, source in enumerate(test_sources):
        accuracy = by_source.get(source, overall)
        # most accurate in training among the pairs observed for this question
        index[i] = int(np.argmax(np.where(outcomes.observed[i], accuracy, -np.inf)))
    picked = {
        s: pair_label(outcomes.pairs[int(np.argmax(by_source[s]))])
        for s in seen
        if (test_sources == s).any()
    }
    return [
        MethodResult(
            "best pair for each source",
            KIND_SOURCE_BEST,
            outcomes.metrics(index),
            {"pairs": picked},
        )
    ]


def evaluate_router(
    router: RTRRouter,
    test: OutcomeMatrix,
    train: OutcomeMatrix,
    **kwargs: Any,
) -> EvaluationReport:
    """:func:`evaluate_routing` with a router: encodes both sets with its predictor's encoder.

    The router's cost unit, cost scale (if fitted), model specs and strategy overheads are used;
    ``kwargs`` go to :func:`evaluate_routing` (``lam``, ``lambdas``, ``k``, ``name``...).
    """
    encoder = router.predictor.encoder
    test_emb = np.asarray(encoder.encode(list(test.questions)), dtype=np.float32)
    train_emb = np.asarray(encoder.encode(list(train.questions)), dtype=np.float32)
    # The texts too: a cascade re-encodes its doubtful questions, and question features are
    # read from them.
    prediction = router.predictor.predict_embeddings(test_emb, list(test.questions))
    kwargs.setdefault("cost_unit", router.cost_unit)
    kwargs.setdefault("cost_scale", router.cost_scale)
    kwargs.setdefault("strategy_overhead_tokens", router.cost_model.strategy_overhead_tokens)
    return evaluate_routing(
        test,
        prediction,
        test_emb,
        train,
        train_emb,
        router.models,
        pairs=router.pairs,
        **kwargs,
    )
