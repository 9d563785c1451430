"""Readers of the public routing data: the real files in ../shared/data and broken copies."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from langchain_rtr.data.io import SkippedRow
from langchain_rtr.data.readers import (
    DIRECT,
    ROUTELLM_GPT4,
    ROUTELLM_MIXTRAL,
    minilm_token_counter,
    read_llmrouter,
    read_routellm_gsm8k,
    read_routellm_mmlu,
    read_routerarena,
)
from langchain_rtr.data.records import RecordError

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"the public data is not at {SHARED}")


def words(text: str) -> int:
    """A cheap token counter so the full-file tests stay fast."""
    return len(text.split())


def _counters() -> dict[str, object]:
    return {ROUTELLM_GPT4: words, ROUTELLM_MIXTRAL: words}


# --- the real files ----------------------------------------------------------------------------


@needs_shared
def test_routellm_gsm8k_real_file() -> None:
    rs = read_routellm_gsm8k(SHARED / "routellm/gsm8k_responses.csv", token_counters=_counters())
    m = rs.matrix()
    assert len(m) == 1319  # the README: 1,319 GSM8K test questions
    assert set(rs.models) == {ROUTELLM_MIXTRAL, ROUTELLM_GPT4}
    assert set(rs.strategies) == {DIRECT}
    assert {r.source for r in rs.records} == {"gsm8k"}
    assert np.isfinite(m.score).all() and np.isfinite(m.output_tokens).all()
    assert set(np.unique(m.score)) <= {0.0, 1.0}
    # GPT-4 is the stronger and the dearer model in this data.
    gpt4 = m.pairs.index((ROUTELLM_GPT4, DIRECT))
    mixtral = m.pairs.index((ROUTELLM_MIXTRAL, DIRECT))
    assert m.score[:, gpt4].mean() > m.score[:, mixtral].mean()
    assert m.cost[:, gpt4].mean() > 10 * m.cost[:, mixtral].mean()
    # Cost follows the price table and the counted tokens.
    record = rs.records[0]
    spec = rs.models[record.model]
    assert record.cost == pytest.approx(
        spec.call_cost(record.input_tokens or 0, record.output_tokens or 0)
    )


@needs_shared
def test_routellm_mmlu_real_folder() -> None:
    rs = read_routellm_mmlu(SHARED / "routellm/mmlu_responses")
    m = rs.matrix()
    assert len(m) == 14042  # repeated prompts stay separate questions
    assert len({r.source for r in rs.records}) == 57
    assert "abstract_algebra" in set(m.sources)
    assert len(rs.records) == 2 * 14042
    assert not m.has_lengths


@needs_shared
def test_llmrouter_real_files() -> None:
    rs = read_llmrouter(
        SHARED / "llmrouter/dcrouter_train.json", SHARED / "llmrouter/default_llm.json"
    )
    m = rs.matrix()
    assert len(m) == 5608
    assert len(rs.models) == 9  # only models with scores, though the table lists more
    assert all(spec.description for spec in rs.models.values())
    assert all(spec.input_price > 0 for spec in rs.models.values())
    assert np.isfinite(m.score).all()
    fractional = (m.score > 0) & (m.score < 1)
    assert fractional.any()  # kept as given, not rounded
    assert {r.source for r in rs.records} == {"cluster-0", "cluster-1", "cluster-2"}
    # cost is the model's mean $/M price, a per-call proxy
    for r in rs.records[:20]:
        assert r.cost == rs.models[r.model].mean_price


@needs_shared
def test_routerarena_real_files() -> None:
    arena = SHARED / "routerarena"
    files = [arena / "claude-3-haiku-20240307.jsonl", arena / "gemini-2.0-flash-001.jsonl"]
    rs = read_routerarena(files, arena / "model_cost.json", clip_scores=True)
    m = rs.matrix()
    assert len(m) == 809
    assert len(set(m.sources)) == 78
    assert set(rs.models) == {"claude-3-haiku-20240307", "gemini-2.0-flash-001"}
    assert np.isfinite(m.output_tokens).all() and np.isfinite(m.cost).all()
    assert rs.models["gemini-2.0-flash-001"].input_price == 0.1
    # Without clipping, upstream's slightly negative METEOR score is an error with its line.
    with pytest.raises(RecordError, match=r"claude-3-haiku-20240307\.jsonl:\d+: score"):
        read_routerarena(files, arena / "model_cost.json")


def test_minilm_token_counter_counts_offline() -> None:
    short = minilm_token_counter("Janet has 16 eggs.")
    longer = minilm_token_counter("Janet has 16 eggs. She eats three for breakfast every day.")
    assert 0 < short < longer


# --- RouteLLM CSV, broken -------------------------------------------------------------------


GSM8K_HEADER = [
    "prompt",
    ROUTELLM_MIXTRAL,
    ROUTELLM_GPT4,
    f"{ROUTELLM_MIXTRAL}_response",
    f"{ROUTELLM_GPT4}_response",
]


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _gsm8k_rows() -> list[list[str]]:
    return [
        ["What is 1+1?", "True", "True", "1+1=2\n#### 2", "It is 2."],
        # A multi-line quoted prompt: the next row starts three physical lines down.
        ["Line one\nline two\nline three?", "False", "True", "x\n#### 3", "3"],
        ["What is 2+2?", "Maybe", "True", "#### 4", "4"],
    ]


def test_gsm8k_bad_correctness_names_line_after_multiline_field(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "g.csv", GSM8K_HEADER, _gsm8k_rows())
    with pytest.raises(RecordError, match="Maybe") as info:
        read_routellm_gsm8k(path, token_counters=_counters())
    # header: line 1; row 1: lines 2-3; row 2: lines 4-7; row 3: line 8
    assert f"{path}:8:" in str(info.value)


def test_gsm8k_skip_reports_each_bad_row(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "g.csv", GSM8K_HEADER, _gsm8k_rows())
    skipped: list[SkippedRow] = []
    rs = read_routellm_gsm8k(path, token_counters=_counters(), skipped=skipped)
    assert len(rs.matrix()) == 2
    assert [(s.file, s.line) for s in skipped] == [(str(path), 8)]


def test_gsm8k_missing_column(tmp_path: Path) -> None:
    header = GSM8K_HEADER[:-1]
    path = _write_csv(tmp_path / "g.csv", header, [r[:-1] for r in _gsm8k_rows()[:1]])
    with pytest.raises(RecordError, match="gpt-4-1106-preview_response") as info:
        read_routellm_gsm8k(path, token_counters=_counters())
    assert f"{path}:1:" in str(info.value)


def test_gsm8k_unknown_model_column(tmp_path: Path) -> None:
    header = [*GSM8K_HEADER, "some/other-model", "some/other-model_response"]
    path = _write_csv(tmp_path / "g.csv", header, [[*_gsm8k_rows()[0], "True", "2"]])
    with pytest.raises(RecordError, match="some/other-model"):
        read_routellm_gsm8k(path, token_counters=_counters())


def test_gsm8k_short_row_and_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "g.csv"
    good = _gsm8k_rows()[0]
    _write_csv(path, GSM8K_HEADER, [good, good[:3]])
    with pytest.raises(RecordError, match="3 fields") as info:
        read_routellm_gsm8k(path, token_counters=_counters())
    assert f"{path}:4:" in str(info.value)

    # Cut inside the last row's quoted two-line response.
    text = _write_csv(path, GSM8K_HEADER, [good, good]).read_text(encoding="utf-8")
    path.write_text(text[: text.rindex("#### 2")], encoding="utf-8")
    with pytest.raises(RecordError, match="truncated") as info:
        read_routellm_gsm8k(path, token_counters=_counters())
    assert str(path) in str(info.value)


def test_mmlu_bad_row_and_empty_folder(tmp_path: Path) -> None:
    header = ["prompt", ROUTELLM_MIXTRAL, ROUTELLM_GPT4]
    _write_csv(tmp_path / "mmlu_anatomy.csv", header, [["Q1\nA. x\nAnswer:", "True", "False"]])
    bad = _write_csv(
        tmp_path / "mmlu_virology.csv", header, [["Q2", "True", "True"], ["Q3", "yes", "True"]]
    )
    with pytest.raises(RecordError, match="'yes'") as info:
        read_routellm_mmlu(tmp_path)
    assert f"{bad}:3:" in str(info.value)
    skipped: list[SkippedRow] = []
    rs = read_routellm_mmlu(tmp_path, skipped=skipped)
    assert len(skipped) == 1
    assert sorted({r.source for r in rs.records}) == ["anatomy", "virology"]

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RecordError, match="mmlu_"):
        read_routellm_mmlu(empty)


# --- LLMRouter JSON, broken -----------------------------------------------------------------


def _llm_table(path: Path) -> Path:
    table = {
        "a": {"feature": "model a", "input_price": 0.1, "output_price": 0.3},
        "b": {"feature": "model b", "input_price": 1.0, "output_price": 1.0},
        "unused": {"feature": "no scores", "input_price": 5, "output_price": 5},
    }
    path.write_text(json.dumps(table), encoding="utf-8")
    return path


def _items() -> list[dict[str, object]]:
    return [
        {"question": "q1", "scores": {"a": 1.0, "b": 0.0}, "cluster_id": 0},
        {"question": "q2", "scores": {"a": 0.5, "b": 1.0}, "cluster_id": 1},
        {"question": "q3", "scores": {"a": 1.5, "b": 1.0}, "cluster_id": 1},
    ]


def _dump(path: Path, items: list[dict[str, object]]) -> Path:
    path.write_text(json.dumps(items, indent=2), encoding="utf-8")
    return path


def _line_of(path: Path, needle: str) -> int:
    """The line of the '{' that opens the item containing ``needle``."""
    lines = path.read_text(encoding="utf-8").splitlines()
    hit = next(i for i, line in enumerate(lines) if needle in line)
    return next(i for i in range(hit, -1, -1) if lines[i].strip().startswith("{")) + 1


def test_llmrouter_small_file(tmp_path: Path) -> None:
    train = _dump(tmp_path / "t.json", _items()[:2])
    rs = read_llmrouter(train, _llm_table(tmp_path / "llm.json"))
    assert set(rs.models) == {"a", "b"}
    assert rs.models["a"].description == "model a"
    assert rs.models["a"].output_price == 0.3
    assert sorted(r.score for r in rs.records if r.model == "a") == [0.5, 1.0]


@pytest.mark.parametrize(
    ("item", "problem"),
    [
        ({"question": "q3", "scores": {"a": 1.5}, "cluster_id": 1}, r"\[0, 1\]"),
        ({"question": "q3", "scores": {"a": "1"}, "cluster_id": 1}, "must be a number"),
        ({"question": "q3", "cluster_id": 1}, "missing field 'scores'"),
        ({"question": "q3", "scores": {"zzz": 1.0}, "cluster_id": 1}, "'zzz'"),
    ],
)
def test_llmrouter_bad_item_names_line(
    tmp_path: Path, item: dict[str, object], problem: str
) -> None:
    train = _dump(tmp_path / "t.json", [*_items()[:2], item])
    with pytest.raises(RecordError, match=problem) as info:
        read_llmrouter(train, _llm_table(tmp_path / "llm.json"))
    assert f"{train}:{_line_of(train, 'q3')}:" in str(info.value)


def test_llmrouter_skip_and_truncated(tmp_path: Path) -> None:
    train = _dump(tmp_path / "t.json", _items())
    skipped: list[SkippedRow] = []
    rs = read_llmrouter(train, _llm_table(tmp_path / "llm.json"), skipped=skipped)
    assert len(rs.matrix()) == 2
    assert [s.line for s in skipped] == [_line_of(train, "q3")]

    text = train.read_text(encoding="utf-8")
    train.write_text(text[: text.index('"q3"')], encoding="utf-8")
    with pytest.raises(RecordError, match="bad JSON") as info:
        read_llmrouter(train, _llm_table(tmp_path / "llm.json"))
    assert str(train) in str(info.value)


def test_llmrouter_bad_model_table(tmp_path: Path) -> None:
    llm = tmp_path / "llm.json"
    llm.write_text(json.dumps({"a": {"feature": "x", "input_price": 0.1}}), encoding="utf-8")
    with pytest.raises(RecordError, match="output_price") as info:
        read_llmrouter(_dump(tmp_path / "t.json", _items()[:1]), llm)
    assert str(llm) in str(info.value)


# --- RouterArena JSONL, broken ----------------------------------------------------------------


def _arena_item(index: str, model: str, score: float = 1.0) -> dict[str, object]:
    return {
        "global_index": index,
        "question": f"question {index}",
        "llm_selected": model,
        "generated_answer": "42",
        "token_usage": {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15},
        "success": True,
        "error": None,
        "evaluation_result": {"score": score, "metric": "exact_match", "inference_cost": 1e-5},
    }


def _arena(tmp_path: Path, extra_in_first: bool = False) -> tuple[list[Path], Path]:
    costs = tmp_path / "cost.json"
    costs.write_text(
        json.dumps(
            {
                m: {"input_token_price_per_million": 1, "output_token_price_per_million": 2}
                for m in ("x", "y")
            }
        ),
        encoding="utf-8",
    )
    files = []
    for model in ("x", "y"):
        indices = ["GSM8K_1", "MMLUPro_math_2"]
        if extra_in_first and model == "x":
            indices.append("AIME_3")
        path = tmp_path / f"{model}.jsonl"
        path.write_text(
            "".join(json.dumps(_arena_item(i, model)) + "\n" for i in indices), encoding="utf-8"
        )
        files.append(path)
    return files, costs


def test_routerarena_small_join(tmp_path: Path) -> None:
    files, costs = _arena(tmp_path)
    rs = read_routerarena(files, costs)
    m = rs.matrix()
    assert len(m) == 2 and len(m.pairs) == 2
    assert sorted(set(m.sources)) == ["GSM8K", "MMLUPro_math"]
    assert rs.models["x"].description  # a fallback names the model


def test_routerarena_index_in_one_file_only(tmp_path: Path) -> None:
    files, costs = _arena(tmp_path, extra_in_first=True)
    with pytest.raises(RecordError, match="AIME_3.*missing from \\['y.jsonl'\\]") as info:
        read_routerarena(files, costs)
    assert f"{files[0]}:3:" in str(info.value)
    skipped: list[SkippedRow] = []
    rs = read_routerarena(files, costs, skipped=skipped)
    assert len(rs.matrix()) == 2
    assert [(s.file, s.line) for s in skipped] == [(str(files[0]), 3)]


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (lambda d: d.pop("global_index"), "global_index"),
        (lambda d: d["evaluation_result"].update(score=1.5), r"\[0, 1\]"),
        (lambda d: d["token_usage"].update(output_tokens="5"), "output_tokens"),
        (lambda d: d.update(llm_selected="nobody"), "no price"),
    ],
)
def test_routerarena_bad_line(tmp_path: Path, mutate: object, problem: str) -> None:
    files, costs = _arena(tmp_path)
    lines = files[1].read_text(encoding="utf-8").splitlines()
    item = json.loads(lines[1])
    mutate(item)  # type: ignore[operator]
    lines[1] = json.dumps(item)
    files[1].write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(RecordError, match=problem) as info:
        read_routerarena(files, costs)
    assert f"{files[1]}:2:" in str(info.value)


def test_routerarena_truncated_and_failed_call(tmp_path: Path) -> None:
    files, costs = _arena(tmp_path)
    text = files[0].read_text(encoding="utf-8")
    files[0].write_text(text[: len(text) - 30], encoding="utf-8")
    with pytest.raises(RecordError, match="truncated") as info:
        read_routerarena(files, costs)
    assert f"{files[0]}:2:" in str(info.value)

    files, costs = _arena(tmp_path)
    item = _arena_item("GSM8K_1", "x")
    item.update(success=False, error="rate limited")
    rest = files[0].read_text(encoding="utf-8").splitlines()[1]
    files[0].write_text(json.dumps(item) + "\n" + rest + "\n", encoding="utf-8")
    rs = read_routerarena(files, costs)
    failed = [r for r in rs.records if not r.ok]
    assert len(failed) == 1 and failed[0].error == "rate limited" and failed[0].score is None
