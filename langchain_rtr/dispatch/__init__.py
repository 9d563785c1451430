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
from langchain_rtr.dispatch.steps import (
    Call,
    Parse,
    Step,
    Steps,
    Stream,
    adrive,
    adrive_stream,
    drive,
    drive_stream,
)

__all__ = [
    "CONTINUE_BODY",
    "AllPairsFailedError",
    "Attempt",
    "Call",
    "CallRequest",
    "CallRun",
    "DispatchEngine",
    "FailedAttempt",
    "Fallback",
    "InputError",
    "InputTypeError",
    "Parse",
    "RTRInput",
    "RTRResult",
    "RoutingRow",
    "Step",
    "Steps",
    "StrategyLike",
    "Stream",
    "Usage",
    "adrive",
    "adrive_stream",
    "drive",
    "drive_stream",
    "failed_attempt",
    "is_endpoint_failure",
    "merge_messages",
    "merge_system",
    "routing_row",
    "split_input",
    "stream_answer",
]
