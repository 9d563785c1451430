"""Run every ``benchmarks/bench_*.py`` in turn with short, self-contained settings.

Each bench runs in its own process (so one's memory and threads do not colour the next), with
the arguments in :data:`QUICK` -- chosen so that none needs a live server: the server and
runnable benches start their own stub backends on 127.0.0.1. A bench not listed there runs
with ``--quick`` if its ``--help`` offers it, else with no arguments. A failing or timed-out
bench is reported and the others still run; the exit status is 1 if any failed.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/run_all.py
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/run_all.py --only routing predictor
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/run_all.py --list

Figures are printed by the benches themselves; this prints the load average before and after
each, and a summary table. The machine is shared: compare ratios, not absolute figures.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

QUICK: dict[str, list[str]] = {
    "bench_encoders.py": ["speed", "--batch", "200", "--single", "20"],
    "bench_predictor.py": [],
    "bench_routing.py": ["--quick"],
    "bench_runnable.py": ["-n", "20"],
    "bench_server_load.py": [
        "--backend",
        "stub",
        "--clients",
        "20",
        "--duration",
        "10",
        "--baseline-seconds",
        "3",
    ],
}
"""Quick, self-contained arguments per bench (stub backends, fewer questions or calls)."""


@dataclass
class Outcome:
    name: str
    args: list[str]
    rc: int | None
    seconds: float
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]


def benches() -> list[Path]:
    return sorted(HERE.glob("bench_*.py"))


def quick_args(path: Path) -> list[str]:
    """:data:`QUICK`'s arguments, else ``--quick`` when the bench's ``--help`` lists it."""
    if path.name in QUICK:
        return list(QUICK[path.name])
    try:
        helptext = subprocess.run(
            [sys.executable, str(path), "--help"],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
            check=False,
        ).stdout
    except subprocess.TimeoutExpired:
        return []
    return ["--quick"] if "--quick" in helptext else []


def run_one(path: Path, args: list[str], timeout: float, console: Console) -> Outcome:
    console.rule(f"[bold]{path.name} {' '.join(args)}")
    load_before = os.getloadavg()
    console.print(f"load before: {load_before}")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    t = time.perf_counter()
    rc: int | None
    try:
        rc = subprocess.run(
            [sys.executable, str(path), *args], cwd=ROOT, env=env, timeout=timeout, check=False
        ).returncode
    except subprocess.TimeoutExpired:
        rc = None
        console.print(f"[red]{path.name}: timed out after {timeout:.0f} s")
    seconds = time.perf_counter() - t
    load_after = os.getloadavg()
    console.print(f"{path.name}: rc {rc}, {seconds:.1f} s, load after: {load_after}")
    return Outcome(path.name, args, rc, seconds, load_before, load_after)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--only", nargs="+", default=None, help="run these (names without bench_ and .py)"
    )
    parser.add_argument("--skip", nargs="+", default=[], help="skip these")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per bench")
    parser.add_argument("--list", action="store_true", help="print what would run, and exit")
    args = parser.parse_args(argv)

    def short(p: Path) -> str:
        return p.stem.removeprefix("bench_")

    chosen = [
        p
        for p in benches()
        if (args.only is None or short(p) in args.only) and short(p) not in args.skip
    ]
    console = Console()
    plan = [(p, quick_args(p)) for p in chosen]
    if args.list:
        for p, a in plan:
            console.print(f"{p.name} {' '.join(a)}")
        return 0
    console.print(f"{len(plan)} benches, {os.cpu_count()} CPUs, load {os.getloadavg()}")
    outcomes = [run_one(p, a, args.timeout, console) for p, a in plan]

    table = Table(title="benchmarks/run_all.py", title_justify="left")
    for col in ("bench", "args", "status", "seconds", "load before", "load after"):
        table.add_column(col)
    for o in outcomes:
        status = "timeout" if o.rc is None else ("ok" if o.rc == 0 else f"rc {o.rc}")
        table.add_row(
            o.name,
            " ".join(o.args),
            status,
            f"{o.seconds:.0f}",
            f"{o.load_before[0]:.1f}",
            f"{o.load_after[0]:.1f}",
        )
    console.print(table)
    return 0 if all(o.rc == 0 for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
