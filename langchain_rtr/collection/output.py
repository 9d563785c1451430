"""The collection's output file: appended one durable line per call, repaired, read back.

Each finished call is one line, written in one ``write`` and fsync'd; a partial last line (a
crash mid-write) is cut off with a warning; a cell's record that counts is its first success,
else its last error.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

from langchain_rtr.collection.results import Cell, CollectError, PairStats
from langchain_rtr.data.io import read_records
from langchain_rtr.data.matrix import RoutingSet
from langchain_rtr.data.records import RecordError, RoutingRecord
from langchain_rtr.specs import ModelSpec
from langchain_rtr.strategies.base import Strategy

# The collection's one logger, as before the output file had its own module.
logger = logging.getLogger("langchain_rtr.collect")


def repair_tail(path: str | os.PathLike[str]) -> int:
    """Make the file end on a complete line; returns the bytes cut (0 if none).

    A crash in the middle of a write leaves a partial last line. If that line is a whole JSON
    object (only the newline is missing) the newline is added; otherwise the partial line is cut
    and a warning logged: its call is redone by the next run, so nothing is lost silently.
    """
    file = Path(path)
    if not file.is_file():
        return 0
    with file.open("rb+") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size == 0:
            return 0
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return 0
        # find the start of the last line
        chunk = 1 << 16
        pos = size
        start = 0
        while pos > 0:
            read_from = max(0, pos - chunk)
            f.seek(read_from)
            block = f.read(pos - read_from)
            nl = block.rfind(b"\n")
            if nl >= 0:
                start = read_from + nl + 1
                break
            pos = read_from
        f.seek(start)
        tail = f.read()
        try:
            row = json.loads(tail.decode("utf-8"))
            RoutingRecord.from_dict(row)
        except (UnicodeDecodeError, json.JSONDecodeError, RecordError, TypeError):
            f.truncate(start)
            f.flush()
            os.fsync(f.fileno())
            logger.warning(
                "%s: cut a partial last line of %d bytes (a crash mid-write); its call will be "
                "run again",
                file,
                len(tail),
            )
            return len(tail)
        f.seek(size)
        f.write(b"\n")
        f.flush()
        os.fsync(f.fileno())
        return 0


class RecordWriter:
    """Appends records, one line per call, each written whole and made durable."""

    def __init__(self, path: Path, fsync: bool) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._fsync = fsync

    def write(self, record: RoutingRecord) -> None:
        """Append ``record`` as one line (fsync'd when asked)."""
        line = json.dumps(record.to_dict(), ensure_ascii=False, allow_nan=False) + "\n"
        data = line.encode("utf-8")
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        if self._fsync:
            os.fsync(self._fd)

    def close(self) -> None:
        """Make what was written durable and close the file (a second call does nothing)."""
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1


def check_out_path(out_path: str | os.PathLike[str]) -> Path:
    """``out_path`` as a path, refused unless it can be a JSONL file to append to."""
    path = Path(out_path)
    if path.suffix.lower() not in (".jsonl", ".ndjson"):
        raise CollectError(
            f"{path}: the collection output must be a .jsonl file (appended line by line); "
            "convert it to a routing set afterwards with collected_routing_set()"
        )
    if path.exists() and not path.is_file():
        raise CollectError(f"{path}: exists and is not a file")
    return path


def final_by_cell(records: Sequence[RoutingRecord]) -> dict[Cell, RoutingRecord]:
    """The record that counts for each cell: the first success, else the last error."""
    final: dict[Cell, RoutingRecord] = {}
    for r in records:
        cell = (r.key, r.model, r.strategy)
        old = final.get(cell)
        if old is None or (not old.ok):
            final[cell] = r
    return final


def collected_records(path: str | os.PathLike[str]) -> list[RoutingRecord]:
    """The records of a collection file, one per cell: successes, and errors never redone.

    A cell that failed and then succeeded on a rerun keeps only its success; if a file somehow
    holds two successes of one cell (two runs at once), the first is kept.
    """
    file = Path(path)
    repair_tail(file)
    return list(final_by_cell(read_records(file).records).values())


def collected_routing_set(
    path: str | os.PathLike[str],
    name: str,
    models: Mapping[str, ModelSpec],
    strategies: Sequence[Strategy] | Mapping[str, str],
    *,
    attribution: str = "",
    include_errors: bool = False,
) -> RoutingSet:
    """A :class:`RoutingSet` from a collection file, ready for ``save_routing_set``.

    Args:
        path: The JSONL written by :func:`collect`.
        name: The set's name.
        models: Specs of the models (descriptions, prices); endpoints and keys are dropped.
        strategies: The strategies (or name -> description) the records use.
        attribution: Text of ATTRIBUTION.md.
        include_errors: Keep cells whose only record is an error (``score=None``).
    """
    records = [r for r in collected_records(path) if include_errors or r.ok]
    used_models = {r.model for r in records}
    specs = {
        n: s.model_copy(update={"base_url": None, "api_key": None, "served_name": None})
        for n, s in models.items()
        if n in used_models
    }
    if isinstance(strategies, Mapping):
        descriptions = dict(strategies)
    else:
        descriptions = {s.name: s.description for s in strategies}
    used_strategies = {r.strategy for r in records}
    descriptions = {k: v for k, v in descriptions.items() if k in used_strategies}
    return RoutingSet(name, records, specs, descriptions, attribution)


def pair_stats(path: Path, cells: Sequence[Cell]) -> dict[str, PairStats]:
    """What the file holds for each ``model/strategy`` pair of ``cells`` (the run's grid)."""
    records = read_records(path).records if path.is_file() else []
    final = final_by_cell(records)
    stats: dict[str, PairStats] = defaultdict(PairStats)
    for cell in cells:
        p = stats[f"{cell[1]}/{cell[2]}"]
        p.cells += 1
        r = final.get(cell)
        if r is None:
            continue
        if r.ok and r.score is not None:
            p.ok += 1
            p.correct += r.score
            p.output_tokens += r.output_tokens or 0
        else:
            p.errors += 1
    return dict(stats)
