"""The one dispatch engine every front end drives (see `langchain_rtr.dispatch.engine`)."""

from langchain_rtr.dispatch.calls import (
    Attempt,
    CallRequest,
    CallRun,
    Fallback,
    StrategyLike,
    failed_attempt,
    stream_answer,
)
from langchain_rtr.dispatch.engine import CONTINUE_BODY, DispatchEngine
from langchain_rtr.dispatch.messages import (
    InputError,
    InputTypeError,
    RTRInput,
    merge_messages,
    merge_system,
    split_input,
)
from langchain_rtr.dispatch.results import (
    AllPairsFailedError,
    FailedAttempt,
    RoutingRow,
    RTRResult,
    Usage,
    is_endpoint_failure,
    routing_row,
)

__all__ = [
    "CONTINUE_BODY",
    "AllPairsFailedError",
    "Attempt",
    "CallRequest",
    "CallRun",
    "DispatchEngine",
    "FailedAttempt",
    "Fallback",
    "InputError",
    "InputTypeError",
    "RTRInput",
    "RTRResult",
    "RoutingRow",
    "StrategyLike",
    "Usage",
    "failed_attempt",
    "is_endpoint_failure",
    "merge_messages",
    "merge_system",
    "routing_row",
    "split_input",
    "stream_answer",
]
