"""One rule for combining ``max_tokens`` caps (`smallest_cap`), and where it is applied."""

from __future__ import annotations

import pytest

from langchain_rtr.graph.budget import Allotment, pair_cap
from langchain_rtr.knobs import smallest_cap
from langchain_rtr.specs import ModelSpec


@pytest.mark.parametrize(
    ("caps", "expected"),
    [
        ((), None),
        ((None, None), None),
        ((300, None), 300),
        ((None, 300, 128), 128),
        ((0, 50), 0),  # 0 is a cap (a budget that pays for nothing), never "uncapped"
        ((None, 0), 0),
    ],
)
def test_smallest_cap(caps: tuple[int | None, ...], expected: int | None) -> None:
    assert smallest_cap(*caps) == expected


def test_a_share_of_no_tokens_caps_a_call_at_zero_not_at_the_models_limit() -> None:
    spec = ModelSpec(name="m", max_tokens=512)
    assert pair_cap(Allotment(tokens=0, pico=None), spec, 10) == 0
    assert pair_cap(Allotment(tokens=None, pico=None), spec, 10) == 512
    assert pair_cap(Allotment(tokens=None, pico=None), ModelSpec(name="m"), 10) is None
