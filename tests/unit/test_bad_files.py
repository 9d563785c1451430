"""Files that are not what they claim: undecodable bytes and models-file URLs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from langchain_rtr.config import ModelsFileError, load_models_file, parse_models_file
from langchain_rtr.data.io import read_records
from langchain_rtr.data.readers import read_routellm_gsm8k
from langchain_rtr.data.records import RecordError, RoutingRecord


@pytest.mark.parametrize(
    "url",
    [
        "not a url",
        "ftp://host/v1",
        "http://",
        "localhost:8000/v1",
        "http://h:99999/v1",
        "http:// x",
    ],
)
def test_models_file_refuses_a_base_url_that_is_not_http(url: str) -> None:
    text = f"models:\n  - name: a\n    base_url: {json.dumps(url)}\n"
    with pytest.raises(ModelsFileError, match=r"<string>:3.*base_url must be an http\(s\) URL"):
        parse_models_file(text)


def test_models_file_keeps_good_urls_as_written() -> None:
    for url in ("http://127.0.0.1:8000/v1", "https://api.example.com/v1/"):
        text = f"models:\n  - name: a\n    base_url: {json.dumps(url)}\n"
        assert parse_models_file(text).specs["a"].base_url == url


def test_an_undecodable_models_file_names_file_and_offset(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    good = b"models:\n  - name: a\n    description: "
    path.write_bytes(good + b"caf\xe9\n")
    with pytest.raises(ModelsFileError) as info:
        load_models_file(path)
    assert str(path) in str(info.value) and f"byte offset {len(good) + 3}" in str(info.value)


def _record(i: int) -> str:
    record = RoutingRecord(question=f"q{i}", model="m", strategy="direct", score=1.0, source="t")
    return json.dumps(record.to_dict())


def test_an_undecodable_jsonl_line_is_named_or_skipped(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    first = (_record(0) + "\n").encode()
    bad = _record(1).encode().replace(b"q1", b"q\xff1") + b"\n"
    path.write_bytes(first + bad + (_record(2) + "\n").encode())
    with pytest.raises(RecordError) as info:
        read_records(path)
    message = str(info.value)
    offset = len(first) + bad.index(b"\xff")
    assert message.startswith(f"{path}:2:") and f"byte offset {offset}" in message
    result = read_records(path, skip_bad=True)
    assert [r.question for r in result.records] == ["q0", "q2"]
    assert [s.line for s in result.skipped] == [2]


def test_an_undecodable_csv_names_file_and_offset(tmp_path: Path) -> None:
    path = tmp_path / "gsm8k.csv"
    path.write_bytes(b"prompt,model_a\n\xff\xfe,1\n")
    with pytest.raises(RecordError, match=rf"{path}.*byte offset 15"):
        read_routellm_gsm8k(path)
