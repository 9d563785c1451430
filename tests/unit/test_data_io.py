"""Own-format routing records: JSONL/Parquet round trips, located errors, skip counting."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from langchain_rtr.data.io import (
    RECORD_SCHEMA,
    ReadResult,
    load_routing_set,
    read_records,
    save_routing_set,
    write_records,
)
from langchain_rtr.data.matrix import RoutingSet
from langchain_rtr.data.records import FIELD_NAMES, RecordError, RoutingRecord
from langchain_rtr.specs import ModelSpec


def _records() -> list[RoutingRecord]:
    return [
        RoutingRecord("What is 2+2?", "toy", "m1", "direct", 1.0, 3, 7, 0.001, "q1"),
        RoutingRecord("What is 2+2?", "toy", "m2", "cot", 0.25, None, None, None, "q1"),
        RoutingRecord(
            "Name a prime ≥ 10 \n with a newline",
            "toy",
            "m1",
            "cot",
            None,
            error="timeout",
            latency_s=1.5,
            response="partial",
        ),
    ]


def _row(**overrides: object) -> dict[str, object]:
    row: dict[str, object] = {
        "question": "q",
        "source": "s",
        "model": "m",
        "strategy": "direct",
        "score": 1.0,
    }
    row.update(overrides)
    return row


def _write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_schema_matches_record_fields() -> None:
    assert tuple(RECORD_SCHEMA.names) == FIELD_NAMES


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_round_trip_keeps_every_field_and_none(tmp_path: Path, suffix: str) -> None:
    records = _records()
    path = write_records(tmp_path / f"recs{suffix}", records)
    result = read_records(path)
    assert isinstance(result, ReadResult)
    assert result.records == records
    assert result.skipped == []
    assert result.records[1].output_tokens is None
    assert result.records[2].score is None


def test_parquet_has_explicit_types(tmp_path: Path) -> None:
    path = write_records(tmp_path / "r.parquet", _records())
    schema = pq.read_schema(path)
    assert schema.field("output_tokens").type == pa.int64()
    assert schema.field("score").type == pa.float64()


def test_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    write_records(tmp_path / "r.jsonl", _records())
    assert [p.name for p in tmp_path.iterdir()] == ["r.jsonl"]


def test_unknown_suffix_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\.csv"):
        write_records(tmp_path / "r.csv", _records())
    with pytest.raises(ValueError, match=r"\.txt"):
        read_records(tmp_path / "r.txt")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_records(tmp_path / "nope.jsonl")


@pytest.mark.parametrize(
    ("bad_line", "problem"),
    [
        ('{"question": "q", "source": ', "bad JSON"),
        (json.dumps({"question": "q", "source": "s", "model": "m", "score": 1.0}), "strategy"),
        (json.dumps(_row(score=1.5)), r"score must be in \[0, 1\]"),
        (json.dumps(_row(score="1")), "score must be a number"),
        (json.dumps(_row(output_tokens="12")), "output_tokens"),
        (json.dumps(_row(question=7)), "question"),
        (json.dumps(_row(colour="red")), "unknown field"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps(_row(score=None)), "score is missing"),
    ],
)
def test_bad_jsonl_line_names_file_and_line(tmp_path: Path, bad_line: str, problem: str) -> None:
    path = _write_jsonl(tmp_path / "r.jsonl", [json.dumps(_row()), "", bad_line])
    with pytest.raises(RecordError, match=problem) as info:
        read_records(path)
    assert f"{path}:3:" in str(info.value)


def test_truncated_jsonl_is_an_error_on_the_last_line(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    full = json.dumps(_row())
    path.write_text(full + "\n" + full[: len(full) // 2], encoding="utf-8")
    with pytest.raises(RecordError, match="truncated") as info:
        read_records(path)
    assert f"{path}:2:" in str(info.value)


def test_skip_bad_returns_good_records_and_what_was_skipped(tmp_path: Path) -> None:
    lines = [
        json.dumps(_row(question="a")),
        "not json",
        json.dumps(_row(question="b", score=2)),
        json.dumps(_row(question="c")),
    ]
    path = _write_jsonl(tmp_path / "r.jsonl", lines)
    result = read_records(path, skip_bad=True)
    assert [r.question for r in result.records] == ["a", "c"]
    assert [s.line for s in result.skipped] == [2, 3]
    assert all(s.file == str(path) for s in result.skipped)
    assert "score" in result.skipped[1].reason
    assert str(result.skipped[0]).startswith(f"{path}:2: ")


def test_bad_parquet_row_names_row(tmp_path: Path) -> None:
    rows = [_row(), _row(), _row(score=1.5)]
    table = pa.Table.from_pylist(rows)
    path = tmp_path / "r.parquet"
    pq.write_table(table, path)
    with pytest.raises(RecordError, match="score") as info:
        read_records(path)
    assert f"{path}: row 3:" in str(info.value)
    result = read_records(path, skip_bad=True)
    assert len(result.records) == 2
    assert [s.line for s in result.skipped] == [3]


def test_parquet_missing_column_and_wrong_type(tmp_path: Path) -> None:
    path = tmp_path / "r.parquet"
    pq.write_table(pa.Table.from_pylist([{"question": "q", "source": "s", "model": "m"}]), path)
    with pytest.raises(RecordError, match="missing.*strategy") as info:
        read_records(path)
    assert str(path) in str(info.value)

    pq.write_table(pa.Table.from_pylist([_row(output_tokens="many")]), path)
    with pytest.raises(RecordError, match="output_tokens") as info:
        read_records(path)
    assert str(path) in str(info.value)


def test_parquet_narrower_types_are_accepted(tmp_path: Path) -> None:
    table = pa.table(
        {
            "question": ["q"],
            "source": ["s"],
            "model": ["m"],
            "strategy": ["direct"],
            "score": pa.array([1], pa.int8()),
            "output_tokens": pa.array([5], pa.int32()),
        }
    )
    path = tmp_path / "r.parquet"
    pq.write_table(table, path)
    (record,) = read_records(path).records
    assert record.score == 1.0 and record.output_tokens == 5 and record.cost is None


def test_truncated_parquet_names_file(tmp_path: Path) -> None:
    path = write_records(tmp_path / "r.parquet", _records())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(RecordError, match="Parquet") as info:
        read_records(path)
    assert str(path) in str(info.value)


def _routing_set() -> RoutingSet:
    records = _records()
    models = {
        "m1": ModelSpec(name="m1", description="small", input_price=0.1, api_key="secret"),
        "m2": ModelSpec(name="m2", description="big", output_price=2.0, reasoning=True),
    }
    strategies = {"direct": "the question alone", "cot": "step by step"}
    return RoutingSet("toy", records, models, strategies, "made up for a test")


def test_routing_set_round_trip(tmp_path: Path) -> None:
    original = _routing_set()
    folder = save_routing_set(tmp_path / "toy", original, license_text="MIT text")
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(
        ["records.parquet", "models.json", "strategies.json", "ATTRIBUTION.md", "LICENSE"]
    )
    loaded = load_routing_set(folder)
    assert loaded.name == "toy"
    assert loaded.records == original.records
    assert loaded.strategies == original.strategies
    assert loaded.attribution.strip() == original.attribution
    assert loaded.models["m2"] == original.models["m2"]
    # API keys never reach disk.
    assert "secret" not in (folder / "models.json").read_text()
    assert loaded.models["m1"].api_key is None
    assert loaded.models["m1"].input_price == 0.1


def test_routing_set_broken_files_are_named(tmp_path: Path) -> None:
    folder = save_routing_set(tmp_path / "toy", _routing_set())
    (folder / "models.json").write_text('[{"name": "m1"}', encoding="utf-8")
    with pytest.raises(RecordError, match="models.json"):
        load_routing_set(folder)

    folder = save_routing_set(tmp_path / "toy2", _routing_set())
    (folder / "models.json").write_text('[{"name": "m1"}]', encoding="utf-8")
    with pytest.raises(RecordError, match="m2"):
        load_routing_set(folder)

    folder = save_routing_set(tmp_path / "toy3", _routing_set())
    (folder / "strategies.json").write_text('{"direct": 3}', encoding="utf-8")
    with pytest.raises(RecordError, match="strategies.json"):
        load_routing_set(folder)

    (tmp_path / "empty").mkdir()
    with pytest.raises(RecordError, match="records.parquet"):
        load_routing_set(tmp_path / "empty")
