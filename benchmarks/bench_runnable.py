"""Time RTRRunnable adds over calling the same ChatOpenAI directly (issue 3, item 8).

    python benchmarks/bench_runnable.py                       # in-process stub server
    python benchmarks/bench_runnable.py --base-url http://127.0.0.1:8001/v1 --model smol
    python benchmarks/bench_runnable.py --router rtr-out/router   # a trained router
    python benchmarks/bench_runnable.py --router default --questions gsm8k   # issue 16, item 3

Both paths call the same `ChatOpenAI` client against the same server; calls are interleaved
(direct, routed, direct, ...) after a warm-up so drift in the server hits both alike. The
default backend is a tiny OpenAI-compatible HTTP server started in this process on 127.0.0.1,
which answers instantly, so the difference isolates the router's overhead. Without `--router`,
routing is a constant-time stub (the dispatch overhead only); with it, the trained router's
encoder and MLPs are included. `--router default` first trains a small router on the bundled
LLMRouter set with the default encoder (onnx-int8) into a temporary folder.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from langchain_core.prompts import ChatPromptTemplate

from langchain_rtr.models import ModelRegistry
from langchain_rtr.routing import Decision
from langchain_rtr.runnable import RTRRunnable
from langchain_rtr.specs import ModelSpec
from langchain_rtr.strategies.base import Strategy

QUESTIONS = [f"What is {a} + {b}?" for a, b in zip(range(3, 60), range(17, 80), strict=False)]
GSM8K = Path(os.environ.get("RTR_GSM8K_CSV", "/work/shared/data/routellm/gsm8k_responses.csv"))


def gsm8k_questions(n: int) -> list[str]:
    """``n`` distinct GSM8K problems (the same file as the routing benchmarks)."""
    with GSM8K.open(newline="", encoding="utf-8") as fh:
        return list(dict.fromkeys(row["prompt"] for row in csv.DictReader(fh)))[:n]


# --------------------------------------------------------------------------- stub server
class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else delayed ACKs add ~40 ms per call

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        model = body.get("model", "stub")
        text = "The answer is \\boxed{4}."
        usage = {"prompt_tokens": 12, "completion_tokens": 8, "total_tokens": 20}
        if body.get("stream"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            events = []
            for i, word in enumerate(text.split(" ")):
                delta = (
                    {"role": "assistant", "content": word + " "}
                    if i == 0
                    else {"content": word + " "}
                )
                events.append(
                    {
                        "id": "c",
                        "object": "chat.completion.chunk",
                        "created": 0,
                        "model": model,
                        "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
                    }
                )
            events.append(
                {
                    "id": "c",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": model,
                    "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                }
            )
            events.append(
                {
                    "id": "c",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": model,
                    "choices": [],
                    "usage": usage,
                }
            )
            for ev in events:
                self._chunk(f"data: {json.dumps(ev)}\n\n".encode())
            self._chunk(b"data: [DONE]\n\n")
            self._chunk(b"")
            return
        payload = json.dumps(
            {
                "id": "c",
                "object": "chat.completion",
                "created": 0,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


class _StubServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet about clients closing their kept-alive connections at exit (not a failure)."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def start_stub_server() -> tuple[ThreadingHTTPServer, str]:
    """An OpenAI-compatible /v1/chat/completions on 127.0.0.1 (usage also when streaming)."""
    server = _StubServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/v1"


# --------------------------------------------------------------------------- routers
class StubRouter:
    """Constant-time routing to one pair: measures dispatch overhead without a predictor."""

    def __init__(self, spec: ModelSpec, strategy: str) -> None:
        self.models = {spec.name: spec}
        self.pairs = [(spec.name, strategy)]

    def route(self, question: str, policy: Any = None, allowed: Any = None) -> Decision:
        name, strategy = self.pairs[0]
        return Decision(
            question=question,
            model=name,
            strategy=strategy,
            correctness=0.9,
            output_tokens=8.0,
            cost=0.0,
            usd=0.0,
            cost_unit="usd",
            policy={"name": "stub"},
            status="ok",
            ranking=tuple(self.pairs),
        )

    def route_batch(self, questions: Sequence[str], policy: Any = None, allowed: Any = None):
        return [self.route(q) for q in questions]


def default_router() -> Path:
    """A router trained with the default encoder (one epoch: routing cost does not depend on it)."""
    import tempfile

    from langchain_rtr.predictor import DEFAULT_ENCODER_ID, TrainConfig
    from langchain_rtr.workflow import fit_router, load_data, split

    data = load_data("llmrouter")
    train, _ = split(data, seed=0)
    router = fit_router(data, train, config=TrainConfig(seed=0, max_epochs=1))
    out = Path(tempfile.mkdtemp(prefix="rtr-bench-runnable-")) / "router"
    router.save(out)
    print(f"trained a router with {DEFAULT_ENCODER_ID} into {out}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-url", help="a running OpenAI-compatible server (default: stub)")
    ap.add_argument("--model", default="stub", help="served model name at --base-url")
    ap.add_argument(
        "--router",
        help="directory of a saved RTRRouter, or `default` to train one with the default "
        "encoder (default: stub routing)",
    )
    ap.add_argument("-n", type=int, default=50, help="calls per side (default 50)")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument(
        "--questions",
        choices=["arith", "gsm8k"],
        default="arith",
        help="short sums, or GSM8K problems from ../shared/data (longer: encoding costs more)",
    )
    args = ap.parse_args()

    server = None
    base_url = args.base_url
    if base_url is None:
        server, base_url = start_stub_server()
    strategy = Strategy(
        name="direct",
        description="the question alone",
        prompt=ChatPromptTemplate.from_messages([("human", "{question}")]),
    )
    if args.router:
        from langchain_rtr.predictor.encoder import uncached
        from langchain_rtr.routing import RTRRouter
        from langchain_rtr.strategies import builtin_strategies

        router: Any = RTRRouter.load(default_router() if args.router == "default" else args.router)
        # every question encoded afresh: the on-disk cache would hide the encoder's cost
        router.predictor.encoder = uncached(router.predictor.encoder)
        # every model of the router is served by the one endpoint, as the same client
        spec = ModelSpec(name=args.model, base_url=base_url, max_tokens=args.max_tokens)
        client = ModelRegistry.from_specs({"x": spec})["x"]
        registry = ModelRegistry({m: client for m in router.models})
        known = {s for _, s in router.pairs}
        strategies = {n: s for n, s in builtin_strategies().items() if n in known}
        rtr = RTRRunnable(router=router, models=registry, strategies=strategies)
    else:
        spec = ModelSpec(name=args.model, base_url=base_url, max_tokens=args.max_tokens)
        router = StubRouter(spec, "direct")
        registry = ModelRegistry.from_specs({spec.name: spec})
        client = registry[spec.name]
        rtr = RTRRunnable(router=router, models=registry, strategies={"direct": strategy})

    def direct(q: str) -> None:
        client.invoke(strategy.render(q), max_tokens=args.max_tokens)

    def routed(q: str) -> None:
        result = rtr.invoke(q)
        assert result.ok, result.error

    questions = gsm8k_questions(args.n + 5) if args.questions == "gsm8k" else QUESTIONS
    for q in questions[-5:]:  # warm up connections, encoder, imports (not measured again)
        direct(q)
        routed(q)
    t_direct: list[float] = []
    t_routed: list[float] = []
    for i in range(args.n):
        q = questions[i % (len(questions) - 5)]
        t0 = time.perf_counter()
        direct(q)
        t1 = time.perf_counter()
        routed(q)
        t2 = time.perf_counter()
        t_direct.append(t1 - t0)
        t_routed.append(t2 - t1)
    md, mr = statistics.median(t_direct), statistics.median(t_routed)
    backend = "in-process stub server" if server else base_url
    routing = f"router {args.router}" if args.router else "stub routing (dispatch only)"
    print(f"backend: {backend}; {routing}; {args.questions} questions; n={args.n}")
    print(f"direct ChatOpenAI  median {md * 1e3:8.2f} ms")
    print(f"RTRRunnable        median {mr * 1e3:8.2f} ms")
    print(f"overhead           median {(mr - md) * 1e3:8.2f} ms (target < 5 ms)")
    print(f"load average {' / '.join(f'{x:.1f}' for x in os.getloadavg())} (1 / 5 / 15 min)")
    if server:
        server.shutdown()


if __name__ == "__main__":
    main()
