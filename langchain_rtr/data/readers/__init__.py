"""Readers for the public routing data sets, each into a :class:`RoutingSet`.

The formats (see ``shared/data/README.md`` in the project's workspace):

- RouteLLM (lm-sys/RouteLLM, Apache-2.0): ``gsm8k_responses.csv`` with correctness and full
  responses of two models, and ``mmlu_responses/mmlu_<subject>.csv`` with correctness only.
- LLMRouter (ulab-uiuc/LLMRouter, MIT): a JSON list of ``{question, scores, cluster_id}`` and a
  JSON table of models with descriptions and prices.
- RouterArena (RouteWorks/RouterArena, Apache-2.0): one JSONL file per model, joined on
  ``global_index``, and a JSON price table.

None of them varies the prompting strategy, so every record gets the one strategy ``direct``.
Every malformed row raises :class:`RecordError` naming the file and line, unless the caller
passes a ``skipped`` list: then bad rows are appended there (and left out) so they can be counted.

One module per format family (``routellm``, ``llmrouter``, ``routerarena``); what they share
(the one strategy, token counting, number checks) is in ``common``.
"""

from langchain_rtr.data.readers.common import (
    DIRECT,
    DIRECT_DESCRIPTION,
    TokenCounter,
    minilm_token_counter,
)
from langchain_rtr.data.readers.llmrouter import read_llmrouter, read_llmrouter_models
from langchain_rtr.data.readers.routellm import (
    ROUTELLM_GPT4,
    ROUTELLM_MIXTRAL,
    ROUTELLM_MODELS,
    read_routellm_gsm8k,
    read_routellm_mmlu,
)
from langchain_rtr.data.readers.routerarena import (
    ROUTERARENA_DESCRIPTIONS,
    read_model_costs,
    read_routerarena,
)

__all__ = [
    "DIRECT",
    "DIRECT_DESCRIPTION",
    "ROUTELLM_GPT4",
    "ROUTELLM_MIXTRAL",
    "ROUTELLM_MODELS",
    "ROUTERARENA_DESCRIPTIONS",
    "TokenCounter",
    "minilm_token_counter",
    "read_llmrouter",
    "read_llmrouter_models",
    "read_model_costs",
    "read_routellm_gsm8k",
    "read_routellm_mmlu",
    "read_routerarena",
]
