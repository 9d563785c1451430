"""JSON out of the server with orjson, several times faster than `json` on the hot path.

Request bodies are still read with `json`: orjson turns an integer past 64 bits into a float
(a `seed` would silently change), and `json` names the line and column of a syntax error.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import JSONResponse

DUMP_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


def dumps(obj: Any) -> str:
    """``obj`` as compact JSON text."""
    return orjson.dumps(obj, option=DUMP_OPTIONS).decode()


class FastJSONResponse(JSONResponse):
    """A `JSONResponse` rendered by orjson."""

    def render(self, content: Any) -> bytes:
        """The body's bytes."""
        return orjson.dumps(content, option=DUMP_OPTIONS)
