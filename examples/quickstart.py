"""Route a few questions end to end against a models file.

    # 1. serve the file's models:  rtr serve examples/models.cpu.yaml
    # 2. a trained router (rtr train ...) saved under rtr-out/router
    python examples/quickstart.py --models examples/models.cpu.yaml --router rtr-out/router

Each answer shows the (model, strategy) the router chose, what it predicted, what the call
used, and any fallback; the totals per model come from LangChain's usage callback.
"""

from __future__ import annotations

import argparse
import asyncio

from langchain_core.callbacks import get_usage_metadata_callback

from langchain_rtr.config import load_models_file
from langchain_rtr.routing import RTRRouter
from langchain_rtr.runnable import RTRRunnable

QUESTIONS = [
    "What is 2 + 2?",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in "
    "May. How many clips did Natalia sell altogether in April and May?",
    "What is the remainder when 2^10 is divided by 7?",
]


def _fmt(value: float | None, spec: str) -> str:
    return "?" if value is None else format(value, spec)


async def main() -> None:
    ap = argparse.ArgumentParser(description="Route a few questions end to end.")
    ap.add_argument("--models", default="examples/models.cpu.yaml", help="the models file (YAML)")
    ap.add_argument("--router", default="rtr-out/router", help="a saved, trained RTRRouter")
    ap.add_argument("--lam", type=float, default=None, help="accuracy/cost trade-off in [0, 1]")
    ap.add_argument("--max-tokens", type=int, default=None, help="per-question token budget")
    args = ap.parse_args()

    specs = load_models_file(args.models).specs  # prices and endpoints
    router = RTRRouter.load(args.router, models=specs)
    rtr = RTRRunnable(router=router)  # ChatOpenAI clients from the specs' base_urls

    configurable = {}
    if args.lam is not None:
        configurable["rtr_lambda"] = args.lam
    if args.max_tokens is not None:
        configurable["rtr_max_tokens"] = args.max_tokens

    with get_usage_metadata_callback() as usage:
        results = await rtr.abatch(QUESTIONS, config={"configurable": configurable})
    for r in results:
        print(f"\nQ: {r.question[:80]}")
        row = r.routing
        print(
            f"  routed to {row.model}/{row.strategy}: "
            f"predicted correct {_fmt(row.predicted_correctness, '.2f')}, "
            f"{_fmt(row.predicted_tokens, '.0f')} tokens, ${_fmt(row.predicted_usd, '.2e')}"
        )
        for f in r.fallbacks:
            print(f"  fell back from {f.model}/{f.strategy}: {f.error}")
        if r.ok:
            answer = repr(r.answer) if r.answer is not None else f"no answer ({r.parse_error})"
            print(
                f"  answered by {r.model}/{r.strategy} in {r.latency_s:.2f}s: {answer} "
                f"({r.usage.output_tokens if r.usage else '?'} output tokens, "
                f"${_fmt(r.cost, '.2e')})"
            )
        else:
            print(f"  failed: {r.error}")
    print("\nusage per model:", usage.usage_metadata)


if __name__ == "__main__":
    asyncio.run(main())
