"""What a collection run reports: per-pair state of the file and the run's own counts."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from langchain_rtr.errors import ConfigError

Cell = tuple[str, str, str]
"""(question_id, model, strategy): what one call covers and what resuming keys on."""


class CollectError(ConfigError):
    """The collection cannot start: bad output path, unknown model or strategy, empty grid."""


@dataclass
class PairStats:
    """What the output file holds for one (model, strategy) pair of the grid.

    Attributes:
        cells: Cells of the grid for this pair.
        ok: Cells with a successful (graded) record.
        correct: Sum of scores over ``ok`` cells.
        output_tokens: Sum of output tokens over ``ok`` cells that report them.
        errors: Cells whose last record is an error.
    """

    cells: int = 0
    ok: int = 0
    correct: float = 0.0
    output_tokens: int = 0
    errors: int = 0

    @property
    def accuracy(self) -> float:
        """Mean score of the successful cells (NaN when none)."""
        return self.correct / self.ok if self.ok else math.nan

    @property
    def mean_output_tokens(self) -> float:
        """Mean output tokens of the successful cells (NaN when none)."""
        return self.output_tokens / self.ok if self.ok else math.nan

    @property
    def missing(self) -> int:
        """Cells with no record at all."""
        return self.cells - self.ok - self.errors


@dataclass
class CollectSummary:
    """What one :func:`collect` run did, and where the file stands afterwards.

    Attributes:
        out_path: The JSONL file.
        cells: Cells in the grid (questions x applicable pairs).
        done_before: Cells that already had a successful record when the run started.
        attempted: Cells this run finished a call for (success or error).
        succeeded: Of those, calls that returned an answer (graded).
        failed: Of those, calls recorded as errors.
        not_run: Cells this run left without a record (interrupted, or endpoint abandoned).
        interrupted: The run was stopped (Ctrl-C) before the grid was done.
        abandoned: Endpoints given up on after too many failures in a row.
        skipped_pairs: Pairs not run, with why (a thinking strategy on a non-reasoning model).
        repaired_bytes: Bytes of a partial last line cut from the file before the run.
        elapsed_s: Wall-clock seconds.
        pairs: Per pair ``"model/strategy"``: the state of the file after the run.
    """

    out_path: Path
    cells: int = 0
    done_before: int = 0
    attempted: int = 0
    succeeded: int = 0
    failed: int = 0
    not_run: int = 0
    interrupted: bool = False
    abandoned: list[str] = field(default_factory=list)
    skipped_pairs: dict[str, str] = field(default_factory=dict)
    repaired_bytes: int = 0
    elapsed_s: float = 0.0
    pairs: dict[str, PairStats] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """Whether every cell of the grid now has a successful record."""
        return all(p.ok == p.cells for p in self.pairs.values())

    @property
    def remaining(self) -> int:
        """Cells still without a successful record (a rerun would do these)."""
        return sum(p.cells - p.ok for p in self.pairs.values())

    def format(self) -> str:
        """A plain-text summary: counts, then one line per pair."""
        state = "interrupted" if self.interrupted else "complete" if self.complete else "partial"
        lines = [
            f"collect {state}: {self.out_path}",
            f"  cells {self.cells}: {self.done_before} done before, {self.attempted} run now "
            f"({self.succeeded} ok, {self.failed} errors), {self.not_run} not run; "
            f"{self.remaining} still to do; {self.elapsed_s:.1f} s",
        ]
        if self.repaired_bytes:
            lines.append(f"  cut a partial last line ({self.repaired_bytes} bytes) before resuming")
        for endpoint in self.abandoned:
            lines.append(f"  gave up on endpoint {endpoint} after repeated failures")
        for pair, why in self.skipped_pairs.items():
            lines.append(f"  skipped {pair}: {why}")
        if self.pairs:
            width = max(len(p) for p in self.pairs)
            lines.append(
                f"  {'pair':<{width}}  {'ok':>5} {'err':>4} {'miss':>5} {'acc':>6} {'out tok':>8}"
            )
            for name, p in self.pairs.items():
                acc = f"{p.accuracy:.3f}" if p.ok else "-"
                tok = f"{p.mean_output_tokens:.1f}" if p.ok else "-"
                lines.append(
                    f"  {name:<{width}}  {p.ok:>5} {p.errors:>4} {p.missing:>5} {acc:>6} {tok:>8}"
                )
        return "\n".join(lines)
