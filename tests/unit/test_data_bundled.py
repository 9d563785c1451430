"""The bundled routing sets: present, loadable without arguments or network, licensed."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest

from langchain_rtr.data.bundled import DEFAULT_BUNDLED, list_bundled, load_bundled


def test_default_set_loads_without_arguments() -> None:
    rs = load_bundled()
    assert rs.name == DEFAULT_BUNDLED
    m = rs.matrix()
    assert len(m) > 1000
    assert len(rs.models) >= 2
    assert all(spec.description for spec in rs.models.values())
    assert all(spec.mean_price > 0 for spec in rs.models.values())
    assert np.isfinite(m.score).all()
    assert "Faithful-COT" in rs.attribution
    assert len(rs.strategies) > 1 and m.has_lengths  # strategy routing and token budgets


def test_every_bundled_set_is_under_10_mb() -> None:
    root = files("langchain_rtr.data") / "bundled"
    for name in list_bundled():
        folder = Path(str(root / name))
        size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
        assert size < 10_000_000, (name, size)


@pytest.mark.parametrize("name", ["faithful-cot", "llmrouter", "routellm-gsm8k", "routerarena"])
def test_each_bundled_set_has_licence_attribution_and_records(name: str) -> None:
    assert name in list_bundled()
    folder = files("langchain_rtr.data") / "bundled" / name
    assert (folder / "LICENSE").read_text(encoding="utf-8").strip()
    attribution = (folder / "ATTRIBUTION.md").read_text(encoding="utf-8")
    assert "commit" in attribution and "github.com" in attribution
    rs = load_bundled(name)
    assert rs.records and set(rs.strategies) == {r.strategy for r in rs.records}
    assert set(rs.models) == {r.model for r in rs.records}
    for r in rs.records[:50]:
        assert r.response is None  # answer texts are not shipped


def test_gsm8k_set_has_lengths_and_dollar_costs() -> None:
    m = load_bundled("routellm-gsm8k").matrix()
    assert m.has_lengths
    assert np.isfinite(m.output_tokens).all() and (m.output_tokens > 0).all()
    assert np.isfinite(m.cost).all()


def test_unknown_name_lists_the_available_sets() -> None:
    with pytest.raises(ValueError, match="llmrouter"):
        load_bundled("nope")
