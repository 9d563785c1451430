"""Routing: tables of predictions per pair, and the policies that pick one pair from them.

Parts: `types` (shared names, the predictor protocols), `costs` (the cost model), `tables`,
`policies`, `router` (`RTRRouter`, `Decision`) and `persistence` (save/load).

For each question the predictor gives every pair a predicted correctness ``â`` and (when the
training data had lengths) a predicted number of output tokens ``l̂``. This module turns those
into a :class:`RoutingTable` with a predicted cost per pair, and a :class:`Policy` picks a pair.

Costs:
    ``cost_unit="usd"``: ``(input_tokens x input_price + l̂ x output_price) / 1e6`` from the
    :class:`~langchain_rtr.specs.ModelSpec` prices. Input tokens are *estimated* from the text:
    ``ceil(len(question) / 4)`` (the usual ~4 characters per token of English BPE vocabularies)
    plus a fixed chat-template overhead (:data:`PROMPT_OVERHEAD_TOKENS`) plus the strategy's
    prompt overhead where the caller gives one. The estimate only has to rank pairs, and the
    input term is the same for every strategy of a model, so its error moves little.
    When the predictor has no length head (the data had no lengths), a call costs the model's
    mean price ``(input_price + output_price) / 2`` -- the LLMRouter definition of cost.
    ``cost_unit="tokens"``: the predicted output tokens.

Cost normalisation (why one λ means the same on any data):
    :class:`Tradeoff` scores ``λ·â − (1−λ)·cost/scale``. ``scale`` is fitted once
    (:meth:`RTRRouter.fit_cost_scale`) as the mean predicted cost of the *most expensive pair*
    over a set of questions, and stored with the router. Normalised costs then lie around
    [0, 1] whatever the unit or price level, so λ/(1−λ) reads the same everywhere: it is how many
    "typical calls of the priciest pair" one unit of correctness probability is worth. At λ=0.9
    a pair that costs the priciest pair's full price must be at least 1/9 ≈ 11 points more likely
    to be correct than a free one to win.
"""

from langchain_rtr.errors import NotCalibratedError, RoutingError
from langchain_rtr.routing.costs import CostModel, PredictedCosts, estimate_input_tokens
from langchain_rtr.routing.policies import (
    POLICIES,
    AccuracyFloor,
    AverageBudget,
    BestBet,
    Choice,
    Policy,
    TokenBudget,
    Tradeoff,
    policy_from_dict,
)
from langchain_rtr.routing.router import Decision, RTRRouter, fit_cost_scale
from langchain_rtr.routing.tables import RoutingTable, RoutingTables, SortKey, TableRow
from langchain_rtr.routing.types import (
    CHARS_PER_TOKEN,
    DEFAULT_LAMBDA,
    PROMPT_OVERHEAD_TOKENS,
    ROUTER_FORMAT,
    ROUTER_FORMAT_VERSION,
    STATUS_BELOW_FLOOR,
    STATUS_NO_ALLOWED_PAIR,
    STATUS_NO_PAIR_FITS,
    STATUS_OK,
    STATUS_OVER_BUDGET,
    CostUnit,
    EncoderLike,
    Pair,
    PairSelector,
    PredictionLike,
    PredictorLike,
)

__all__ = [
    "CHARS_PER_TOKEN",
    "DEFAULT_LAMBDA",
    "POLICIES",
    "PROMPT_OVERHEAD_TOKENS",
    "ROUTER_FORMAT",
    "ROUTER_FORMAT_VERSION",
    "STATUS_BELOW_FLOOR",
    "STATUS_NO_ALLOWED_PAIR",
    "STATUS_NO_PAIR_FITS",
    "STATUS_OK",
    "STATUS_OVER_BUDGET",
    "AccuracyFloor",
    "AverageBudget",
    "BestBet",
    "Choice",
    "CostModel",
    "CostUnit",
    "Decision",
    "EncoderLike",
    "NotCalibratedError",
    "Pair",
    "PairSelector",
    "Policy",
    "PredictedCosts",
    "PredictionLike",
    "PredictorLike",
    "RTRRouter",
    "RoutingError",
    "RoutingTable",
    "RoutingTables",
    "SortKey",
    "TableRow",
    "TokenBudget",
    "Tradeoff",
    "estimate_input_tokens",
    "fit_cost_scale",
    "policy_from_dict",
]
