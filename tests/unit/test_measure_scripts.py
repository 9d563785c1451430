"""The measurement scripts docs/quality.md quotes run to the end and write their JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTR_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "rtr-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.syspath_prepend(str(SCRIPTS))


def test_measure_generalization_prints_its_table_and_writes_json(tmp_path: Path) -> None:
    import measure_generalization  # scripts/, put on the path above

    out = tmp_path / "g.json"
    quick = ["--set", "ensemble=1", "--set", "max_epochs=2"]
    measure_generalization.main(
        ["--data", "smol-arith", "--protocol", "split", "--seeds", "0", "1", *quick]
        + ["--json", str(out)]
    )
    payload = json.loads(out.read_text())
    assert payload["seeds"] == [0, 1] and payload["overrides"] == {"ensemble": 1, "max_epochs": 2}
    assert [row["seed"] for row in payload["folds"]["split"]["per_seed"]] == [0, 1]
