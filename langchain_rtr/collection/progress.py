"""The collection's progress bar on stderr (rate, ETA, ok/error counts), or nothing."""

from __future__ import annotations

from typing import Any


class CollectProgress:
    """A rich progress bar (rate, ETA, ok/error counts) or nothing."""

    def __init__(self, enabled: bool, total: int, description: str) -> None:
        self._progress: Any = None
        self._task: Any = None
        self.ok = 0
        self.errors = 0
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            ProgressColumn,
            Task,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.text import Text

        class RateColumn(ProgressColumn):
            def render(self, task: Task) -> Text:
                speed = task.finished_speed or task.speed
                if speed is None:
                    return Text("- calls/s", style="progress.data.speed")
                if speed < 1:
                    return Text(f"{speed * 60:.1f} calls/min", style="progress.data.speed")
                return Text(f"{speed:.2f} calls/s", style="progress.data.speed")

        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("[green]{task.fields[ok]} ok[/] [red]{task.fields[err]} err[/]"),
            RateColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(description, total=total, ok=0, err=0)

    def advance(self, ok: bool) -> None:
        """Count one finished call."""
        if ok:
            self.ok += 1
        else:
            self.errors += 1
        if self._progress is not None:
            self._progress.update(self._task, advance=1, ok=self.ok, err=self.errors)

    def stop(self) -> None:
        """Take the bar off the terminal."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
