"""`rtr encoder compare`'s protocols: leave-one-group-out folds and the per-protocol table."""

from __future__ import annotations

import dataclasses

import pytest

from langchain_rtr.cli.encoder import QualityRow, group_out_folds, quality_markdown, random_folds
from langchain_rtr.errors import ConfigError
from langchain_rtr.workflow import load_data


def test_each_llmrouter_cluster_is_held_out_once() -> None:
    data = load_data("llmrouter")
    folds = group_out_folds(data)
    matrix = data.matrix()
    assert [f.name for f in folds] == [f"{g} out" for g in sorted(set(matrix.sources))]
    assert len(folds) == 3  # the bundled set keeps upstream's cluster_id as source
    held_out: list[str] = []
    for fold in folds:
        (group,) = set(fold.test.sources)
        assert group not in set(fold.train.sources)
        assert len(fold.train) + len(fold.test) == len(matrix)
        held_out += fold.test.questions
    assert sorted(held_out) == sorted(matrix.questions)


def test_a_set_with_one_source_is_refused() -> None:
    data = load_data("llmrouter")
    one = dataclasses.replace(
        data, records=[dataclasses.replace(r, source="all") for r in data.records[:90]]
    )
    with pytest.raises(ConfigError, match="at least two record sources"):
        group_out_folds(one)


def test_random_folds_follow_the_seeds() -> None:
    data = load_data("llmrouter")
    a, b = random_folds(data, [0, 1], 0.2)
    assert (a.seed, b.seed) == (0, 1)
    assert a.test.questions != b.test.questions
    assert len(a.test) == pytest.approx(0.2 * len(data.matrix()), abs=1)


def test_the_table_compares_each_protocol_with_its_own_baseline() -> None:
    rows = [
        QualityRow("sentence-transformers", "random", ["seed 0", "seed 1"], [0.6, 0.7], [0.6, 0.7]),
        QualityRow("onnx-int8", "random", ["seed 0", "seed 1"], [0.61, 0.68], [0.6, 0.7]),
        QualityRow("sentence-transformers", "group-out", ["a out"], [0.5], [0.5]),
        QualityRow("onnx-int8", "group-out", ["a out"], [0.45], [0.5]),
    ]
    text = quality_markdown(rows)
    random_part, group_part = text.split("group-out (")
    assert "+0.0100, -0.0200" in random_part and "-0.0050" in random_part
    assert "-0.0500 (-0.0500)" in group_part
