"""OpenAI's error body, and the 400s the endpoint answers bad requests with."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi.responses import JSONResponse
from pydantic import ValidationError

from langchain_rtr.errors import RTRError
from langchain_rtr.knobs import KNOBS
from langchain_rtr.server.jsonio import FastJSONResponse


class OpenAIError(RTRError):
    """An error answered with OpenAI's error body and an HTTP status.

    Attributes:
        status: The HTTP status code.
        message: What went wrong, for the client.
        type: OpenAI's error type (`invalid_request_error`, `authentication_error`, ...).
        param: The request field at fault, if any.
        code: A machine-readable code (`model_not_found`, `request_too_large`, ...).
        extra: More top-level fields of the error body (e.g. `rtr` with the fallbacks).
        headers: Response headers to add.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        extra: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.extra = dict(extra or {})
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        """The JSON body: `{"error": {...}}` plus any extra fields."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            },
            **self.extra,
        }

    def response(self) -> JSONResponse:
        """The error as a response."""
        return FastJSONResponse(self.body(), status_code=self.status, headers=self.headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> OpenAIError:
    """A 400 with OpenAI's error body."""
    return OpenAIError(400, message, param=param, code=code)


def validation_error(exc: ValidationError) -> OpenAIError:
    """The first validation error, named by its field, as a 400."""
    err = exc.errors(include_url=False)[0]
    loc = [p for p in err["loc"] if not (isinstance(p, str) and p in TYPE_TAGS)]
    param = ".".join(str(p) for p in loc) or None
    kind = err["type"]
    if kind == "missing":
        return bad_request(
            f"missing required parameter: {param!r}", param, "missing_required_parameter"
        )
    if kind == "extra_forbidden":
        knobs = ", ".join(k for k in KNOBS if k != "policy")
        return bad_request(
            f"unknown RTR knob {param!r}; known knobs: {knobs}", param, "unknown_rtr_knob"
        )
    if kind in ("too_short",) and param == "messages":
        return bad_request("'messages' must contain at least one message", param, "empty_array")
    shown = err.get("input")
    shown_text = repr(shown)
    if len(shown_text) > 80:
        shown_text = shown_text[:77] + "..."
    return bad_request(
        f"invalid value for {param!r}: {err['msg']} (got {shown_text})", param, "invalid_type"
    )


TYPE_TAGS = {"str", "list[dict[str,any]]", "list[str]", "function-after", "int", "float", "bool"}
