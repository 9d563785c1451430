"""Reading a saved JSON object (a checkpoint's or a router's config) with errors that name it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from langchain_rtr.errors import RTRError


def read_json_object(path: Path, error: type[RTRError]) -> dict[str, Any]:
    """The JSON object in ``path``; any failure is an ``error`` naming the file (and line).

    Each caller passes its own error type (``CheckpointError``, ``RoutingError``), so what a
    caller catches does not change with where the file was read.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise error(f"{path}: missing") from exc
    except json.JSONDecodeError as exc:
        raise error(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: unreadable ({exc})") from exc
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data
