"""`rtr add-model` and `rtr train --update` on a router trained by `rtr train`."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from langchain_rtr.cli.main import app
from langchain_rtr.data.io import save_routing_set, write_records
from langchain_rtr.data.records import RoutingRecord
from langchain_rtr.routing import RTRRouter
from langchain_rtr.traffic import TrafficLog, read_rows, record_feedback
from tests.unit.test_cli import _small_set
from tests.unit.test_traffic import logged_call

runner = CliRunner()


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTR_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "rtr-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    os.environ.setdefault("RTR_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "rtr-cache"))
    data = tmp_path_factory.mktemp("tiny")
    save_routing_set(data, _small_set())
    out = tmp_path_factory.mktemp("router")
    result = runner.invoke(app, ["train", "--data", str(data), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_add_model_from_records(trained: Path, tmp_path: Path) -> None:
    records = [
        RoutingRecord(
            question=f"What is {i} times {i + 3}?",
            source="math",
            model="medium",
            strategy="direct",
            score=1.0,
            output_tokens=30,
        )
        for i in range(20)
    ]
    write_records(tmp_path / "medium.jsonl", records)
    out = tmp_path / "added"
    args = [
        "add-model",
        "--router",
        str(trained),
        "--out",
        str(out),
        "--name",
        "medium",
        "--description",
        "A medium model.",
        "--output-price",
        "0.5",
        "--records",
        str(tmp_path / "medium.jsonl"),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "from 20 outcomes" in " ".join(result.output.split())
    router = RTRRouter.load(out)
    assert ("medium", "direct") in router.pairs and router.models["medium"].output_price == 0.5
    table = router.table("What is 7 times 9?")
    assert len(table.pairs) == 3

    no_text = runner.invoke(app, ["add-model", "--router", str(trained), "--name", "x"])
    assert no_text.exit_code != 0 and "description" in no_text.output


def test_train_update_refits_on_a_traffic_log_and_reports(trained: Path, tmp_path: Path) -> None:
    router = RTRRouter.load(trained)
    log_path = tmp_path / "calls.jsonl"
    log = TrafficLog(log_path, encoder=router.predictor.encoder)  # type: ignore[attr-defined]
    rng = np.random.default_rng(0)
    for i in range(40):
        question = f"What is {i * 13} times {i + 2}?"
        log.submit(logged_call(question, ("big", "direct"), int(rng.integers(300, 400)), f"c{i}"))
    log.close()
    for i in range(0, 40, 2):
        record_feedback(log_path, f"c{i}", 1.0)
    assert len(read_rows(log_path)) == 60
    out = tmp_path / "updated"
    result = runner.invoke(
        app, ["train", "--update", str(log_path), "--router", str(trained), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "40 logged calls: 40 used (20 with feedback)" in " ".join(result.output.split())
    assert "length_error big" in result.output and "brier" in result.output
    updated = RTRRouter.load(out)
    assert updated.pairs == router.pairs
