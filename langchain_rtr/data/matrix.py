"""Routing records as dense arrays: one row per question, one column per (model, strategy) pair.

Training, routing evaluation and the baselines all want "for question i, what did pair j score
and how many tokens did it take", so the records are pivoted once, here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from langchain_rtr.data.records import RoutingRecord
from langchain_rtr.specs import ModelSpec

Pair = tuple[str, str]


@dataclass(frozen=True)
class RoutingSet:
    """A named collection of routing records with what is known about its models and strategies.

    Attributes:
        name: A short name (``llmrouter``, ``routellm-gsm8k``...).
        records: The outcomes.
        models: Every model that appears in ``records``, by name (description and prices).
        strategies: Every strategy that appears in ``records``: name to text description.
        attribution: Where the data came from and under which licence.
    """

    name: str
    records: list[RoutingRecord]
    models: dict[str, ModelSpec]
    strategies: dict[str, str]
    attribution: str = ""

    def __post_init__(self) -> None:
        seen_models = {r.model for r in self.records}
        seen_strategies = {r.strategy for r in self.records}
        missing_m = sorted(seen_models - set(self.models))
        missing_s = sorted(seen_strategies - set(self.strategies))
        if missing_m or missing_s:
            raise ValueError(
                f"routing set {self.name!r}: records name models {missing_m} and strategies "
                f"{missing_s} that have no description"
            )

    def matrix(self, pairs: Sequence[Pair] | None = None) -> OutcomeMatrix:
        """The records as an :class:`OutcomeMatrix` (failed calls left out)."""
        return OutcomeMatrix.from_records(self.records, pairs=pairs)


@dataclass
class OutcomeMatrix:
    """Per-question outcomes of every pair; NaN marks a cell that was not observed.

    Duplicate records of one cell are averaged.
    """

    questions: list[str]
    sources: list[str]
    pairs: list[Pair]
    score: np.ndarray  # float32 [n_questions, n_pairs]
    output_tokens: np.ndarray  # float32 [n_questions, n_pairs]
    input_tokens: np.ndarray  # float32 [n_questions, n_pairs]
    cost: np.ndarray  # float32 [n_questions, n_pairs], dollars
    keys: list[str] = field(default_factory=list)

    @classmethod
    def from_records(
        cls, records: Iterable[RoutingRecord], pairs: Sequence[Pair] | None = None
    ) -> OutcomeMatrix:
        """Pivot records; ``pairs`` fixes the column order (default: sorted pairs seen)."""
        good = [r for r in records if r.ok and r.score is not None]
        if pairs is None:
            pairs = sorted({(r.model, r.strategy) for r in good})
        pair_index = {p: j for j, p in enumerate(pairs)}
        row_index: dict[str, int] = {}
        questions: list[str] = []
        sources: list[str] = []
        for r in good:
            if r.key not in row_index:
                row_index[r.key] = len(questions)
                questions.append(r.question)
                sources.append(r.source)
        shape = (len(questions), len(pairs))
        sums = {name: np.zeros(shape, np.float64) for name in ("score", "out", "inp", "cost")}
        counts = {name: np.zeros(shape, np.int32) for name in sums}
        for r in good:
            j = pair_index.get((r.model, r.strategy))
            if j is None:
                continue
            i = row_index[r.key]
            for name, value in (
                ("score", r.score),
                ("out", r.output_tokens),
                ("inp", r.input_tokens),
                ("cost", r.cost),
            ):
                if value is not None:
                    sums[name][i, j] += value
                    counts[name][i, j] += 1

        def mean(name: str) -> np.ndarray:
            with np.errstate(invalid="ignore", divide="ignore"):
                out = sums[name] / counts[name]
            out[counts[name] == 0] = np.nan
            return out.astype(np.float32)

        return cls(
            questions=questions,
            sources=sources,
            pairs=list(pairs),
            score=mean("score"),
            output_tokens=mean("out"),
            input_tokens=mean("inp"),
            cost=mean("cost"),
            keys=list(row_index),
        )

    def __len__(self) -> int:
        return len(self.questions)

    @property
    def has_lengths(self) -> bool:
        """Whether output token counts were observed at all."""
        return bool(np.isfinite(self.output_tokens).any())

    def subset(self, rows: Sequence[int] | np.ndarray) -> OutcomeMatrix:
        """The given question rows, in that order."""
        idx = np.asarray(rows, dtype=np.int64)
        return OutcomeMatrix(
            questions=[self.questions[i] for i in idx],
            sources=[self.sources[i] for i in idx],
            pairs=list(self.pairs),
            score=self.score[idx],
            output_tokens=self.output_tokens[idx],
            input_tokens=self.input_tokens[idx],
            cost=self.cost[idx],
            keys=[self.keys[i] for i in idx] if self.keys else [],
        )

    def split(self, fractions: Sequence[float], seed: int = 0) -> list[OutcomeMatrix]:
        """Split by question (never by record), shuffled with ``seed``; fractions sum to 1."""
        if not np.isclose(sum(fractions), 1.0) or any(f <= 0 for f in fractions):
            raise ValueError(f"fractions must be positive and sum to 1, got {list(fractions)}")
        order = np.random.default_rng(seed).permutation(len(self))
        bounds = np.round(np.cumsum(fractions)[:-1] * len(self)).astype(int)
        return [self.subset(part) for part in np.split(order, bounds)]
