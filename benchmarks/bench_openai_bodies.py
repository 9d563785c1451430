"""What writing the server's bodies as `openai` objects would cost against the dicts it writes.

    python benchmarks/bench_openai_bodies.py [--n 5000]

For a whole answer (`ChatCompletion`, with the `rtr` field) and one streamed chunk
(`ChatCompletionChunk`), microseconds per body and the ratio to the dict path, in one process:
- dict: the builder of `langchain_rtr.server.responses` and orjson (what the server does);
- validate: `Model.model_validate(dict)` then `model_dump_json(exclude_unset=True)`;
- construct: `Model.model_construct(**dict)` then `model_dump_json(exclude_unset=True)`.
docs/server.md ("Response bodies and the openai types") quotes the figures.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from langchain_core.messages import AIMessage
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from langchain_rtr.server.jsonio import dumps
from langchain_rtr.server.responses import chunk_body, completion_body

RTR = {
    "call_id": "c0ffee",
    "model": "small",
    "strategy": "cot",
    "predicted_correctness": 0.8123,
    "predicted_tokens": 42.0,
    "cost_usd": 1.2e-6,
    "fallbacks": [],
    "timing_ms": {"route": 0.9, "backend": 40.0, "overhead": 1.1, "total": 41.1},
}
MESSAGE = AIMessage("The answer is 4.", response_metadata={"finish_reason": "stop"})
USAGE = {"prompt_tokens": 12, "completion_tokens": 6, "total_tokens": 18}


def whole() -> dict[str, object]:
    return completion_body("chatcmpl-1", 1_700_000_000, "small", MESSAGE, USAGE, RTR)


def chunk() -> dict[str, object]:
    return chunk_body("chatcmpl-1", 1_700_000_000, "small", {"content": "The"})


def per_call_us(fn: Callable[[], object], n: int) -> float:
    fn()
    best = float("inf")
    for _ in range(3):  # the best of three: the machine is shared
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n * 1e6)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000, help="bodies per timing")
    n = ap.parse_args().n
    for label, build, kind in (
        ("whole answer", whole, ChatCompletion),
        ("stream chunk", chunk, ChatCompletionChunk),
    ):
        ways: dict[str, Callable[[], object]] = {
            "dict + orjson": lambda build=build: dumps(build()),
            "model_validate + dump": lambda build=build, kind=kind: kind.model_validate(
                build()
            ).model_dump_json(exclude_unset=True),
            "model_construct + dump": lambda build=build, kind=kind: kind.model_construct(
                **build()
            ).model_dump_json(exclude_unset=True, warnings=False),
        }
        base = None
        for name, fn in ways.items():
            us = per_call_us(fn, n if "construct" not in name else max(n // 10, 1))
            base = base or us
            print(f"{label:13s} {name:24s} {us:8.1f} us  x{us / base:5.1f}")


if __name__ == "__main__":
    main()
