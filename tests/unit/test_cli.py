"""The `rtr` command end to end on a small routing set, and its one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from langchain_rtr.cli.main import app
from langchain_rtr.data.io import save_routing_set
from langchain_rtr.data.matrix import RoutingSet
from langchain_rtr.data.records import RoutingRecord
from langchain_rtr.specs import ModelSpec

runner = CliRunner()


def _small_set() -> RoutingSet:
    """Arithmetic is solved only by the big model, capital cities by both (seeded noise)."""
    rng = np.random.default_rng(0)
    records: list[RoutingRecord] = []
    cities = ["France", "Japan", "Peru", "Kenya", "Norway", "Chile", "Egypt", "Italy"]
    for i in range(48):
        if i % 2:
            q, source, small_ok = f"What is {i * 37} times {i + 11}?", "math", False
        else:
            country = cities[i % len(cities)]
            q, source, small_ok = f"What is the capital city of {country}? ({i})", "geo", True
        for model, ok in (("small", small_ok), ("big", True)):
            flip = rng.random() < 0.05
            records.append(
                RoutingRecord(
                    question=q,
                    source=source,
                    model=model,
                    strategy="direct",
                    score=float(ok != flip),
                    output_tokens=int(rng.integers(20, 60) * (3 if model == "big" else 1)),
                )
            )
    models = {
        "small": ModelSpec(name="small", description="A small fast model.", output_price=0.1),
        "big": ModelSpec(name="big", description="A large careful model.", output_price=2.0),
    }
    return RoutingSet("tiny", records, models, {"direct": "Ask the question as it is."})


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny")
    save_routing_set(path, _small_set())
    return path


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTR_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "rtr-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def trained(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    os.environ.setdefault("RTR_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "rtr-cache"))
    out = tmp_path_factory.mktemp("router")
    result = runner.invoke(app, ["train", "--data", str(data_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_bundled_lists_the_default_set() -> None:
    result = runner.invoke(app, ["bundled"])
    assert result.exit_code == 0, result.output
    assert "faithful-cot" in result.output and "llmrouter" in result.output


def test_train_saves_a_router_and_its_split(trained: Path, data_dir: Path) -> None:
    assert (trained / "router.json").exists()
    info = json.loads((trained / "training.json").read_text())
    assert info["data"] == str(data_dir)
    assert info["test_fraction"] == pytest.approx(0.2)


def test_route_prints_the_table_and_decision(trained: Path) -> None:
    result = runner.invoke(app, ["route", "What is 123 times 45?", "--router", str(trained)])
    assert result.exit_code == 0, result.output
    assert "decision:" in result.output
    assert "small" in result.output and "big" in result.output


def _route_json(trained: Path, *args: str) -> dict[str, object]:
    result = runner.invoke(
        app, ["route", "What is 9 times 7?", "--router", str(trained), "--json", *args]
    )
    assert result.exit_code == 0, result.output
    decision: dict[str, object] = json.loads(result.stdout)
    return decision


def test_route_json_respects_allowed_pairs(trained: Path) -> None:
    assert _route_json(trained, "--allow", "small")["model"] == "small"


def test_route_token_budget_is_never_exceeded(trained: Path) -> None:
    # the small model's answers take 20-60 tokens, the big one's 60-180: only small fits 70
    decision = _route_json(trained, "--max-tokens", "70")
    assert decision["model"] == "small"
    assert isinstance(decision["output_tokens"], float) and decision["output_tokens"] <= 70


def test_route_token_budget_nothing_fits_is_explicit(trained: Path) -> None:
    # the same meaning as rtr_max_tokens in a call: the shortest pair, flagged over budget
    decision = _route_json(trained, "--max-tokens", "1")
    assert decision["model"] == "small"
    assert decision["status"] == "over_budget"
    assert isinstance(decision["output_tokens"], float) and decision["output_tokens"] > 1


def test_route_refuses_bad_knobs_with_a_usage_error(trained: Path) -> None:
    for args in (
        ["--max-tokens", "0"],
        ["--confidence", "0.9"],
        ["--lambda", "2"],
        ["--budget-rule", "best_bet"],
        ["--max-tokens", "70", "--budget-rule", "bet"],
    ):
        result = runner.invoke(app, ["route", "q", "--router", str(trained), *args])
        assert result.exit_code == 2, (args, result.output)


def test_eval_writes_plot_and_json(trained: Path, tmp_path: Path) -> None:
    plot, report = tmp_path / "curve.png", tmp_path / "report.json"
    result = runner.invoke(
        app, ["eval", "--router", str(trained), "--plot", str(plot), "--json", str(report)]
    )
    assert result.exit_code == 0, result.output
    assert plot.stat().st_size > 1000
    methods = {m["name"] for m in json.loads(report.read_text())["methods"]}
    assert {"rtr", "knn", "oracle", "random"} <= methods
    assert "RTR ±600" in result.output and "base ±100" in result.output  # the length table


def test_demo_runs_on_a_given_set(data_dir: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["demo", "--data", str(data_dir), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert len(list(tmp_path.glob("*-curve.png"))) == 1
    assert (tmp_path / "router" / "training.json").exists()
    assert result.output.count("decision:") >= 3


def test_conflicting_policies_are_a_usage_error(trained: Path) -> None:
    result = runner.invoke(
        app, ["route", "q", "--router", str(trained), "--lambda", "0.5", "--floor", "0.5"]
    )
    assert result.exit_code == 2
    assert "at most one" in result.output


def _rtr(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "langchain_rtr.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "RTR_DEBUG": ""},
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("route", "q", "--router", "/nonexistent/router"), "/nonexistent/router"),
        (("train", "--data", "no-such-set"), "no-such-set"),
    ],
)
def test_errors_are_one_clear_line(args: tuple[str, ...], needle: str) -> None:
    proc = _rtr(*args)
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error:") and needle in lines[0]
    assert "Traceback" not in proc.stderr


def test_leave_one_source_out_never_trains_on_the_held_out_source(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from langchain_rtr.predictor import RTRPredictor

    trained_on: list[set[str]] = []
    real_train = RTRPredictor.train

    def spy(train: object, *args: object, **kwargs: object) -> RTRPredictor:
        trained_on.append(set(train.sources))  # type: ignore[attr-defined]
        return real_train(train, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(RTRPredictor, "train", staticmethod(spy))
    out = tmp_path / "geo-out"
    result = runner.invoke(
        app, ["train", "--data", str(data_dir), "--out", str(out), "--hold-out-source", "geo"]
    )
    assert result.exit_code == 0, result.output
    assert trained_on == [{"math"}]
    assert json.loads((out / "training.json").read_text())["held_out_source"] == "geo"
    result = runner.invoke(app, ["eval", "--router", str(out), "--plot", str(tmp_path / "p.png")])
    assert result.exit_code == 0, result.output
    assert "24 test questions" in result.output  # every geo question, and only those

    report = tmp_path / "loso.json"
    result = runner.invoke(
        app, ["eval", "--protocol", "loso", "--data", str(data_dir), "--json", str(report)]
    )
    assert result.exit_code == 0, result.output
    assert trained_on[1:] == [{"math"}, {"geo"}]  # one router per held-out source
    assert set(json.loads(report.read_text())) == {"geo", "math"}
    assert "leave-one-source-out" in result.output
