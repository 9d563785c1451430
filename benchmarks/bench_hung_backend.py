"""Load test of the RTR endpoint in front of one hung and one healthy backend (issue 15, item 5).

    python benchmarks/bench_hung_backend.py          # 200 clients, 60 s per hung variant

What runs, all on 127.0.0.1, each in its own process:
- `smol-a`, the router's usual pick, is *hung*: it accepts every connection and reads the
  request, then sends nothing (`--variants silent`), or only a 200's status line and headers
  (`headers`), and holds the connection; `--variants trickle` sends headers, then one SSE
  comment line every `--trickle-s` seconds forever (never a token);
- `smol-b` is the healthy stub backend of `bench_server_load.py`;
- the RTR server (`run_server`) with the router of `bench_server_load.py` for those two names,
  and a models file whose `timeouts` set the backends' connect and first-byte bounds;
- this process: `--clients` concurrent clients for `--duration` seconds per variant, each request
  with a unique `x-request-id`, streamed and non-streamed. Most ask for `rtr` (routed: the hung
  pick must fall back to `smol-b`); `--passthrough-clients` of them name `smol-a` directly
  (pass-through: a clear 504/502, or an error event in a stream, is the right answer);
- `--slowloris` raw connections that send half a request's headers and stop, opened while the
  load runs: each must be closed by the server within its header bound.

The bar: every request answered (routed: 200 from `smol-b`; pass-through: its clear error)
within the configured bound, none lost (an id sent with no response) or duplicated. The bound of
a routed call is the hung backend's tries times its first-byte timeout (it accepts at once, so
its connect timeout is not spent; the openai client retries a timeout `DEFAULT_MAX_RETRIES`
times, pausing at most 0.5 s first), plus `--healthy-s` for the healthy backend's answer; a
pass-through stream's is its first-byte timeout, a non-streamed pass-through's the server's
`passthrough_timeout_s`, each plus the same allowance. Printed per variant and kind: answered,
lost, duplicated, client latency p50/p99/max against the bound, the share within it, errors by
kind, and the server's own counts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_server_load import (  # noqa: E402  (the benchmarks folder is not a package)
    NAMES,
    PRICES,
    CpuMeter,
    LoadResult,
    free_port,
    pct,
    print_cpu,
    run_load,
    start_process,
    stop_process,
    summarise,
    train_synthetic_router,
    wait_http,
)

from langchain_rtr.models import (  # noqa: E402
    DEFAULT_CONNECT_TIMEOUT_S,
    DEFAULT_FIRST_BYTE_TIMEOUT_S,
    DEFAULT_MAX_RETRIES,
)
from langchain_rtr.server import ServerSettings  # noqa: E402
from langchain_rtr.specs import ModelSpec  # noqa: E402

HUNG, HEALTHY = NAMES
VARIANTS = ("silent", "headers", "trickle")
RETRY_PAUSE_S = 0.5  # the openai client's first retry pause, at most (INITIAL_RETRY_DELAY)
HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


# --------------------------------------------------------------------------- the hung backend
def serve_hung(port: int, variant: str, trickle_s: float) -> None:
    """Accept, read, and never answer (``silent``), answer only headers, or trickle comments."""

    tasks: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tail, answered = b"", False
        try:
            while data := await reader.read(65536):
                if variant != "silent" and not answered and b"\r\n\r\n" in tail + data:
                    writer.write(HEAD)  # once: the server gives up on the connection after
                    answered = True
                    if variant == "trickle":
                        task = asyncio.get_running_loop().create_task(trickle(writer))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                tail = (tail + data)[-3:]
        except ConnectionError:
            pass
        writer.close()

    async def trickle(writer: asyncio.StreamWriter) -> None:
        while not writer.is_closing():
            writer.write(b"2\r\n:\n\r\n")  # one SSE comment line, one chunk: never a token
            await asyncio.sleep(trickle_s)

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=2048)
        await server.serve_forever()

    asyncio.run(main())


def wait_tcp(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port} after {timeout:.0f} s")


# --------------------------------------------------------------------------- slowloris
async def slowloris(port: int, count: int, guard_s: float) -> list[float | None]:
    """Open ``count`` connections that stop mid-headers; seconds until each was closed."""

    async def one() -> float | None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        t0 = time.perf_counter()
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: rtr\r\nContent-Le")
        try:
            await asyncio.wait_for(reader.read(), guard_s)  # b"" (EOF) once closed
            return time.perf_counter() - t0
        except (TimeoutError, ConnectionError):
            return None if not writer.is_closing() else time.perf_counter() - t0
        finally:
            writer.close()

    return list(await asyncio.gather(*(one() for _ in range(count))))


# --------------------------------------------------------------------------- figures
def within(res: LoadResult, bounds_s: dict[str, float], expect_error: bool) -> dict[str, Any]:
    """Answered as expected and within the bound, streamed and non-streamed (``bounds_s``)."""
    out: dict[str, Any] = {}
    for kind, stream in (("streamed", True), ("non-streamed", False)):
        bound_s = bounds_s[kind]
        mine = [o for o in res.outcomes if o.stream == stream]
        right = [o for o in mine if (o.error is not None) == expect_error and o.status is not None]
        lat = [o.latency_s for o in mine]
        inside = [o for o in right if o.latency_s <= bound_s]
        out[kind] = {
            "requests": len(mine),
            "answered_as_expected": len(right),
            "within_bound": len(inside),
            "share_within_bound": len(inside) / len(mine) if mine else float("nan"),
            "p50_s": pct(lat, 50),
            "p99_s": pct(lat, 99),
            "max_s": max(lat, default=float("nan")),
            "outcomes": dict(Counter(o.error or f"ok {o.model}" for o in mine)),
        }
        print(
            f"  {kind:13s} {len(mine):6d} requests, as expected {len(right):6d}, within the "
            f"{bound_s:.1f} s bound {len(inside):6d} ({out[kind]['share_within_bound']:.1%}); "
            f"latency p50 {out[kind]['p50_s']:.2f} s, p99 {out[kind]['p99_s']:.2f} s, "
            f"max {out[kind]['max_s']:.2f} s"
        )
        print(f"  {'':13s} outcomes {out[kind]['outcomes']}")
    return out


# --------------------------------------------------------------------------- one variant
async def load(args: argparse.Namespace, base: str, header_port: int) -> dict[str, Any]:
    """Routed and pass-through clients together, and the slowloris connections meanwhile."""
    url = base + "/v1/chat/completions"
    common = {
        "duration": args.duration,
        "max_requests": 10_000_000,
        "stream_fraction": args.stream_fraction,
        "max_tokens": 8,
        "timeout": args.timeout,
    }
    routed = run_load(
        url, "rtr", clients=args.clients - args.passthrough_clients, prefix="rtr", **common
    )
    direct = run_load(url, HUNG, clients=args.passthrough_clients, prefix="pt", **common)

    async def late_slowloris() -> list[float | None]:
        await asyncio.sleep(min(5.0, args.duration / 4))  # once the load is on
        return await slowloris(header_port, args.slowloris, args.header_timeout + 30)

    r, d, s = await asyncio.gather(routed, direct, late_slowloris())
    return {"routed": r, "passthrough": d, "slowloris": s}


def start_rtr(
    args: argparse.Namespace, router_dir: Path, models: Path, log: Path, env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], str]:
    """The RTR server with this run's settings, up and warmed (encoder, connections)."""
    port = free_port()
    settings = {
        "passthrough_timeout_s": args.passthrough_timeout,
        "header_timeout_s": args.header_timeout,
        "backend_deadline_s": args.deadline,
        "backend_cooldown_s": args.cooldown,
    }
    serve = (
        "import sys, json; from langchain_rtr.server import run_server;"
        "run_server(sys.argv[1], sys.argv[2], port=int(sys.argv[3]), log_level='warning',"
        " workers=int(sys.argv[4]), **json.loads(sys.argv[5]))"
    )
    server = start_process(
        [sys.executable, "-c", serve, str(router_dir), str(models), str(port)]
        + [str(args.workers), json.dumps(settings)],
        log,
        env,
    )
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/health", 180, server)
    warm_model = f"rtr:pairs={HEALTHY}/direct|{HEALTHY}/cot"  # the hung backend is met by
    asyncio.run(  # the load first, so its first wave all pays the bound
        run_load(
            base + "/v1/chat/completions",
            warm_model,
            clients=4,
            duration=2,
            max_requests=8,
            stream_fraction=0.5,
            max_tokens=8,
            timeout=args.timeout,
            prefix="warm",
        )
    )
    return server, base


def run_baseline(
    args: argparse.Namespace, router_dir: Path, models: Path, work: Path, env: dict[str, str]
) -> dict[str, Any]:
    """The same clients, routed, with both backends healthy: what a healthy answer takes here."""
    server, base = start_rtr(args, router_dir, models, work / "rtr-server-baseline.log", env)
    try:
        meter = CpuMeter({"rtr": server.pid})
        res = asyncio.run(
            run_load(
                base + "/v1/chat/completions",
                "rtr",
                clients=args.clients,
                duration=args.baseline_seconds,
                max_requests=10_000_000,
                stream_fraction=args.stream_fraction,
                max_tokens=8,
                timeout=args.timeout,
                prefix="base",
            )
        )
        out = summarise("baseline: routed, both backends healthy", res)
        out["cpu_ms_per_request"] = meter.per_request_ms(out["answered_ok"])
        print_cpu(out["cpu_ms_per_request"])
        out["p99_s"] = pct([o.latency_s for o in res.outcomes if o.error is None], 99)
        return out
    finally:
        stop_process(server)


def run_variant(
    args: argparse.Namespace,
    variant: str,
    work: Path,
    router_dir: Path,
    models: Path,
    port_a: int,
    env: dict[str, str],
    healthy_s: float,
) -> dict[str, Any]:
    """A fresh hung backend and RTR server for ``variant``; the load; the figures."""
    here = str(Path(__file__).parent)
    code = "import sys; sys.path.insert(0, sys.argv[1]); from bench_hung_backend import serve_hung;"
    code += "serve_hung(int(sys.argv[2]), sys.argv[3], float(sys.argv[4]))"
    hung = start_process(
        [sys.executable, "-c", code, here, str(port_a), variant, str(args.trickle_s)],
        work / f"hung-{variant}.log",
    )
    server = None
    try:
        wait_tcp(port_a)
        server, base = start_rtr(args, router_dir, models, work / f"rtr-{variant}.log", env)
        tries = 1 + DEFAULT_MAX_RETRIES
        if variant == "trickle":  # bytes keep coming: only the total deadline ends a call
            hung_s, stream_hung_s = args.deadline, args.deadline
            how = f"{args.deadline:g} s deadline"
        else:
            hung_s = tries * args.first_byte_timeout + RETRY_PAUSE_S
            stream_hung_s = args.first_byte_timeout
            how = f"{tries} x {args.first_byte_timeout:g} s first byte + {RETRY_PAUSE_S:g} s pause"
        bounds = {
            "routed": hung_s + healthy_s,
            "passthrough streamed": stream_hung_s + healthy_s,
            "passthrough non-streamed": args.passthrough_timeout + healthy_s,
        }
        print(
            f"  bounds: routed {how} + {healthy_s:.2f} s healthy = {bounds['routed']:.2f} s; "
            f"pass-through streamed {bounds['passthrough streamed']:.2f} s, non-streamed "
            f"{bounds['passthrough non-streamed']:.2f} s; headers {args.header_timeout:g} s"
        )
        meter = CpuMeter({"rtr": server.pid})
        t0 = time.perf_counter()
        res = asyncio.run(load(args, base, int(base.rsplit(":", 1)[1])))
        print(f"  load ran {time.perf_counter() - t0:.1f} s")
        out: dict[str, Any] = {"bounds_s": bounds}
        out["routed"] = summarise(f"{variant}: routed (rtr), hung pick {HUNG}", res["routed"])
        routed_bounds = {"streamed": bounds["routed"], "non-streamed": bounds["routed"]}
        out["routed"]["by_kind"] = within(res["routed"], routed_bounds, expect_error=False)
        out["passthrough"] = summarise(f"{variant}: pass-through to {HUNG}", res["passthrough"])
        pt_bounds = {
            "streamed": bounds["passthrough streamed"],
            "non-streamed": bounds["passthrough non-streamed"],
        }
        out["passthrough"]["by_kind"] = within(res["passthrough"], pt_bounds, expect_error=True)
        answered = out["routed"]["answered_ok"] + len(res["passthrough"].outcomes)
        out["cpu_ms_per_request"] = meter.per_request_ms(answered)
        print_cpu(out["cpu_ms_per_request"])
        closed = res["slowloris"]
        shut = [c for c in closed if c is not None]
        out["slowloris"] = {
            "opened": len(closed),
            "closed": len(shut),
            "max_s": max(shut, default=float("nan")),
        }
        print(
            f"\n== {variant}: slowloris: {len(shut)} of {len(closed)} half-header connections "
            f"closed by the server, the last after {out['slowloris']['max_s']:.2f} s "
            f"(bound {args.header_timeout:g} s)"
        )
        stats = httpx.get(base + "/rtr/stats", timeout=10).json()
        sent = len(res["routed"].sent) + len(res["passthrough"].sent)
        print(
            f"  server: {stats['requests']} requests counted (clients sent {sent} chat requests, "
            f"plus warm-up, health polls and this one), statuses {stats['statuses']}, in flight "
            f"{stats['in_flight']}, fallbacks {stats['fallbacks']}, faults {stats.get('faults')}"
        )
        out["server_stats"] = stats
        return out
    finally:
        if server is not None:
            stop_process(server)
        stop_process(hung)


# --------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=200, help="routed and pass-through together")
    ap.add_argument("--passthrough-clients", type=int, default=20)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds per variant")
    ap.add_argument("--variants", default="silent,headers", help=f"of {','.join(VARIANTS)}")
    ap.add_argument("--stream-fraction", type=float, default=0.5)
    ap.add_argument(
        "--connect-timeout", type=float, default=DEFAULT_CONNECT_TIMEOUT_S, help="backends' (s)"
    )
    ap.add_argument(
        "--first-byte-timeout", type=float, default=DEFAULT_FIRST_BYTE_TIMEOUT_S, help="(s)"
    )
    ap.add_argument("--passthrough-timeout", type=float, default=30.0, help="the server's (s)")
    ap.add_argument("--header-timeout", type=float, default=ServerSettings().header_timeout_s)
    ap.add_argument(
        "--healthy-s",
        type=float,
        default=None,
        help="healthy answer allowance (s; default: the baseline's p99)",
    )
    ap.add_argument("--baseline-seconds", type=float, default=20.0)
    ap.add_argument(
        "--deadline", type=float, default=ServerSettings().backend_deadline_s, help="server's (s)"
    )
    ap.add_argument(
        "--cooldown", type=float, default=ServerSettings().backend_cooldown_s, help="server's (s)"
    )
    ap.add_argument("--trickle-s", type=float, default=1.0)
    ap.add_argument("--slowloris", type=int, default=20, help="half-header connections")
    ap.add_argument("--workers", type=int, default=1, help="RTR server processes")
    ap.add_argument("--timeout", type=float, default=120.0, help="per request, client side")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    if not set(variants) <= set(VARIANTS):
        ap.error(f"--variants: expected some of {VARIANTS}, got {variants}")

    work = Path(tempfile.mkdtemp(prefix="rtr-hung-"))
    env = {"RTR_CACHE_DIR": str(work / "cache"), "HF_HUB_OFFLINE": "1"}
    stub = (
        "import sys, uvicorn; sys.path.insert(0, sys.argv[3]);"
        "from bench_server_load import stub_app;"
        "uvicorn.run(stub_app(sys.argv[1]), host='127.0.0.1', port=int(sys.argv[2]),"
        " log_level='warning', access_log=False)"
    )
    port_a, port_b = free_port(), free_port()
    healthy = start_process(
        [sys.executable, "-c", stub, HEALTHY, str(port_b), str(Path(__file__).parent)],
        work / "healthy.log",
    )
    figures: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    try:
        wait_http(f"http://127.0.0.1:{port_b}/health", 60, healthy)
        urls = {HUNG: f"http://127.0.0.1:{port_a}/v1", HEALTHY: f"http://127.0.0.1:{port_b}/v1"}
        specs = {
            n: ModelSpec(
                name=n,
                description="SmolLM2 135M instruct, " + ("cheap" if n == HUNG else "pricier"),
                input_price=PRICES[n][0],
                output_price=PRICES[n][1],
                base_url=urls[n],
                served_name=n,
                max_tokens=32,
            )
            for n in NAMES
        }
        router_dir = train_synthetic_router(specs, work / "router")
        timeouts = {"connect_s": args.connect_timeout, "first_byte_s": args.first_byte_timeout}

        def models_file(path: Path, urls: dict[str, str]) -> Path:
            entries = [s.model_copy(update={"base_url": urls[n]}) for n, s in specs.items()]
            models = [s.model_dump(exclude_none=True) for s in entries]
            path.write_text(json.dumps({"timeouts": timeouts, "models": models}))
            return path

        healthy_s = args.healthy_s
        if args.baseline_seconds > 0:
            both = models_file(work / "models-healthy.yaml", {n: urls[HEALTHY] for n in NAMES})
            figures["baseline"] = run_baseline(args, router_dir, both, work, env)
            if healthy_s is None:
                healthy_s = figures["baseline"]["p99_s"]
        healthy_s = 2.0 if healthy_s is None else healthy_s
        models = models_file(work / "models.yaml", urls)
        for variant in variants:
            print(f"\n######## {HUNG} hung ({variant}), {HEALTHY} healthy")
            figures[variant] = run_variant(
                args, variant, work, router_dir, models, port_a, env, healthy_s
            )
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2, default=str))
        print(f"\nlogs in {work}")
    finally:
        stop_process(healthy)


if __name__ == "__main__":
    main()
