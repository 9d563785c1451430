"""Reading and writing routing records (JSONL, Parquet) and whole routing sets (a folder).

Every malformed row is an error that names the file, the line (JSONL) or row (Parquet) and the
problem. A caller that would rather keep going asks for it (``skip_bad=True``) and gets back
what was skipped, so a count can always be reported: nothing is dropped silently.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import ValidationError

try:
    from importlib.resources.abc import Traversable
except ImportError:  # pragma: no cover - Python 3.10
    from importlib.abc import Traversable

from langchain_rtr.data.matrix import RoutingSet
from langchain_rtr.data.records import FIELD_NAMES, RecordError, RoutingRecord
from langchain_rtr.specs import ModelSpec

PathLike: TypeAlias = "str | os.PathLike[str]"
"""A file system path."""

RECORD_SCHEMA = pa.schema(
    [
        pa.field("question", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("strategy", pa.string(), nullable=False),
        pa.field("score", pa.float64()),
        pa.field("output_tokens", pa.int64()),
        pa.field("input_tokens", pa.int64()),
        pa.field("cost", pa.float64()),
        pa.field("question_id", pa.string()),
        pa.field("latency_s", pa.float64()),
        pa.field("response", pa.string()),
        pa.field("error", pa.string()),
    ]
)
"""The Parquet schema of :class:`RoutingRecord`, one column per field, in field order."""

if tuple(RECORD_SCHEMA.names) != FIELD_NAMES:  # pragma: no cover - guards a future field edit
    raise RuntimeError(
        f"RECORD_SCHEMA {RECORD_SCHEMA.names} is out of step with RoutingRecord {FIELD_NAMES}"
    )

_REQUIRED_COLUMNS = ("question", "source", "model", "strategy")
_JSONL_SUFFIXES = (".jsonl", ".ndjson")
_PARQUET_SUFFIXES = (".parquet", ".pq")

RECORDS_FILE = "records.parquet"
MODELS_FILE = "models.json"
STRATEGIES_FILE = "strategies.json"
LICENSE_FILE = "LICENSE"
ATTRIBUTION_FILE = "ATTRIBUTION.md"


@dataclass(frozen=True, slots=True)
class SkippedRow:
    """A row left out because it was malformed.

    Attributes:
        file: The file it was in.
        line: The line (text files; for CSV, the line the row starts on) or the 1-based row
            (Parquet) it was at.
        reason: What was wrong.
        row: Whether ``line`` counts rows (Parquet) rather than lines.
    """

    file: str
    line: int
    reason: str
    row: bool = False

    def __str__(self) -> str:
        return str(located(self.file, self.line, self.reason, row=self.row))


@dataclass(frozen=True)
class ReadResult:
    """The records read from a file and the rows skipped on the way (empty unless asked to skip).

    Attributes:
        records: The good records, in file order.
        skipped: What was left out and why.
    """

    records: list[RoutingRecord]
    skipped: list[SkippedRow] = field(default_factory=list)


def located(file: object, line: int | None, problem: str, *, row: bool = False) -> RecordError:
    """A :class:`RecordError` whose message starts with ``file:line:`` (``file: row N:``)."""
    if line is None:
        where = f"{file}"
    elif row:
        where = f"{file}: row {line}"
    else:
        where = f"{file}:{line}"
    return RecordError(f"{where}: {problem}")


def read_utf8(file: Path | Traversable) -> str:
    """A whole file as text, decoded as UTF-8.

    Bytes that are not UTF-8 are a :class:`RecordError` naming the file and the byte offset
    (not a bare ``UnicodeDecodeError`` that names neither).
    """
    data = file.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise located(file, None, _not_utf8(exc, 0)) from None


def utf8_lines(path: Path, sink: RowSink) -> Iterator[tuple[int, str]]:
    """(line number, text) of each line of a UTF-8 text file, read as bytes.

    A line that is not valid UTF-8 goes to ``sink`` (raised, or skipped with the rest kept)
    with its byte offset in the file; the following lines still decode.
    """
    offset = 0
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                yield line_no, raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                sink.bad(path, line_no, _not_utf8(exc, offset))
            offset += len(raw)


def _not_utf8(exc: UnicodeDecodeError, offset: int) -> str:
    bad = exc.object[exc.start : exc.start + 4]
    at = offset + exc.start
    return f"not valid UTF-8 at byte offset {at} ({bytes(bad)!r}); expected UTF-8 text"


class RowSink:
    """Collects skipped rows for a reader, or raises at the first bad one.

    Readers funnel every row-level failure through :meth:`bad`, so "raise or count" is decided
    in one place.
    """

    def __init__(self, skip_bad: bool, skipped: list[SkippedRow] | None = None) -> None:
        self.skip_bad = skip_bad
        self.skipped: list[SkippedRow] = skipped if skipped is not None else []

    def bad(self, file: object, line: int, problem: str, *, row: bool = False) -> None:
        """Record a bad row; raise :class:`RecordError` unless skipping."""
        if not self.skip_bad:
            raise located(file, line, problem, row=row)
        self.skipped.append(SkippedRow(str(file), line, problem, row))


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in _JSONL_SUFFIXES:
        return "jsonl"
    if suffix in _PARQUET_SUFFIXES:
        return "parquet"
    raise ValueError(
        f"{path}: unknown routing-record file type {suffix!r}; "
        f"expected one of {_JSONL_SUFFIXES + _PARQUET_SUFFIXES}"
    )


def write_records(path: PathLike, records: Iterable[RoutingRecord]) -> Path:
    """Write records: JSONL for ``.jsonl``/``.ndjson``, Parquet for ``.parquet``/``.pq``.

    The file is written beside its final name and renamed into place, so a crash never leaves a
    half-written file that reads as a shorter data set.

    Returns:
        The path written.
    """
    target = Path(path)
    kind = _kind(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        if kind == "jsonl":
            with tmp.open("w", encoding="utf-8") as f:
                for record in records:
                    f.write(json.dumps(record.to_dict(), ensure_ascii=False, allow_nan=False))
                    f.write("\n")
        else:
            table = records_to_table(records)
            pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def records_to_table(records: Iterable[RoutingRecord]) -> pa.Table:
    """Records as an Arrow table with :data:`RECORD_SCHEMA`."""
    columns: dict[str, list[Any]] = {name: [] for name in FIELD_NAMES}
    for record in records:
        for name, value in record.to_dict().items():
            columns[name].append(value)
    return pa.Table.from_pydict(columns, schema=RECORD_SCHEMA)


def read_records(path: PathLike, *, skip_bad: bool = False) -> ReadResult:
    """Read records from a JSONL or Parquet file (chosen by suffix).

    Args:
        path: The file.
        skip_bad: Leave malformed rows out (they are listed in the result) instead of raising.

    Raises:
        RecordError: A row is malformed (``skip_bad`` false), or the file as a whole cannot be
            read (not JSON lines, not Parquet, columns missing); the message names the file and,
            for a row, its line or row number.
        FileNotFoundError: There is no such file.
    """
    source = Path(path)
    kind = _kind(source)
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such routing-record file")
    sink = RowSink(skip_bad)
    if kind == "jsonl":
        records = list(_read_jsonl(source, sink))
    else:
        records = list(_iter_table_rows(_read_parquet_table(source, source), source, sink))
    return ReadResult(records, sink.skipped)


def _read_jsonl(path: Path, sink: RowSink) -> Iterator[RoutingRecord]:
    for line_no, raw in utf8_lines(path, sink):
        line = raw.strip()
        if not line:
            continue  # blank lines separate nothing in JSONL; they hold no row
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            truncated = not raw.endswith("\n")
            hint = " (the file looks truncated)" if truncated else ""
            sink.bad(path, line_no, f"bad JSON: {exc.msg} at column {exc.colno}{hint}")
            continue
        if not isinstance(row, dict):
            sink.bad(path, line_no, f"expected a JSON object, got {type(row).__name__}")
            continue
        record = _record_or_none(row, path, line_no, sink)
        if record is not None:
            yield record


def _record_or_none(
    data: dict[str, Any], file: object, line: int, sink: RowSink, *, row: bool = False
) -> RoutingRecord | None:
    try:
        return RoutingRecord.from_dict(data)
    except (RecordError, TypeError) as exc:
        sink.bad(file, line, str(exc), row=row)
        return None


def _read_parquet_table(source: object, where: object) -> pa.Table:
    try:
        table = pq.read_table(source)
    except (pa.ArrowInvalid, OSError) as exc:
        raise located(where, None, f"not a readable Parquet file: {exc}") from exc
    missing = [name for name in _REQUIRED_COLUMNS if name not in table.column_names]
    unknown = [name for name in table.column_names if name not in FIELD_NAMES]
    if missing or unknown:
        raise located(
            where,
            None,
            f"Parquet columns missing {missing} / unknown {unknown}; expected {list(FIELD_NAMES)}",
        )
    for name in table.column_names:
        expected = RECORD_SCHEMA.field(name).type
        actual = table.schema.field(name).type
        if actual == expected or pa.types.is_null(actual):
            continue
        try:
            column = table.column(name).cast(expected)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise located(
                where, None, f"column {name!r} is {actual}, expected {expected}: {exc}"
            ) from exc
        table = table.set_column(table.column_names.index(name), name, column)
    return table


def _iter_table_rows(table: pa.Table, where: object, sink: RowSink) -> Iterator[RoutingRecord]:
    for row_no, data in enumerate(table.to_pylist(), start=1):
        record = _record_or_none(data, where, row_no, sink, row=True)
        if record is not None:
            yield record


# --- routing sets -------------------------------------------------------------------------------

Folder: TypeAlias = "PathLike | Traversable"
"""A folder on disk, or a package-resource folder (see :mod:`importlib.resources`)."""


def save_routing_set(
    directory: PathLike, routing_set: RoutingSet, *, license_text: str | None = None
) -> Path:
    """Write a routing set to a folder.

    Layout: ``records.parquet``, ``models.json`` (a list of model specs, API keys left out),
    ``strategies.json`` (name to description), ``ATTRIBUTION.md`` (the set's attribution) and,
    when given, ``LICENSE``. The set's name is the folder's name.

    Returns:
        The folder.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    write_records(folder / RECORDS_FILE, routing_set.records)
    models = [
        spec.model_dump(exclude={"api_key"}, exclude_defaults=True)
        for spec in routing_set.models.values()
    ]
    (folder / MODELS_FILE).write_text(
        json.dumps(models, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    (folder / STRATEGIES_FILE).write_text(
        json.dumps(routing_set.strategies, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    attribution = routing_set.attribution
    (folder / ATTRIBUTION_FILE).write_text(
        attribution if attribution.endswith("\n") or not attribution else attribution + "\n",
        encoding="utf-8",
    )
    if license_text is not None:
        (folder / LICENSE_FILE).write_text(license_text, encoding="utf-8")
    return folder


def load_routing_set(directory: Folder, *, name: str | None = None) -> RoutingSet:
    """Read a folder written by :func:`save_routing_set`.

    Args:
        directory: The folder, on disk or inside a package.
        name: The set's name; defaults to the folder's name.

    Raises:
        RecordError: A file is missing or malformed; the message names it (and the row for a
            bad record).
    """
    folder: Path | Traversable = (
        Path(directory) if isinstance(directory, (str, os.PathLike)) else directory
    )
    set_name = name or folder.name

    records_file = folder / RECORDS_FILE
    if not records_file.is_file():
        raise located(records_file, None, "missing: a routing set folder needs records.parquet")
    table = _read_parquet_table(pa.BufferReader(records_file.read_bytes()), records_file)
    records = list(_iter_table_rows(table, records_file, RowSink(False)))

    models_file = folder / MODELS_FILE
    models_raw = read_json(models_file)
    if not isinstance(models_raw, list):
        raise located(models_file, None, "expected a JSON list of model specs")
    models: dict[str, ModelSpec] = {}
    for i, item in enumerate(models_raw):
        try:
            spec = ModelSpec.model_validate(item)
        except ValidationError as exc:
            raise located(models_file, None, f"model spec #{i}: {exc}") from exc
        if spec.name in models:
            raise located(models_file, None, f"model {spec.name!r} is listed twice")
        models[spec.name] = spec

    strategies_file = folder / STRATEGIES_FILE
    strategies = read_json(strategies_file)
    if not isinstance(strategies, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in strategies.items()
    ):
        raise located(strategies_file, None, "expected a JSON object of name -> description")

    attribution_file = folder / ATTRIBUTION_FILE
    attribution = read_utf8(attribution_file) if attribution_file.is_file() else ""
    try:
        return RoutingSet(set_name, records, models, strategies, attribution)
    except ValueError as exc:
        raise located(folder, None, str(exc)) from exc


def read_json(file: Path | Traversable) -> Any:
    """A JSON data file's value; a missing file or bad JSON is a :class:`RecordError` naming it."""
    if not file.is_file():
        raise located(file, None, "missing")
    try:
        return json.loads(read_utf8(file))
    except json.JSONDecodeError as exc:
        raise located(file, exc.lineno, f"bad JSON: {exc.msg}") from exc
