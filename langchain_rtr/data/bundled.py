"""The routing sets shipped inside the package, so the demo and the tests need no download.

Each lives in ``langchain_rtr/data/bundled/<name>/`` with its upstream LICENSE and an
ATTRIBUTION.md; ``scripts/build_bundled.py`` rebuilds them from the public files.
"""

from __future__ import annotations

from importlib.resources import files

try:
    from importlib.resources.abc import Traversable
except ImportError:  # pragma: no cover - Python 3.10
    from importlib.abc import Traversable

from langchain_rtr.data.io import RECORDS_FILE, load_routing_set
from langchain_rtr.data.matrix import RoutingSet

DEFAULT_BUNDLED = "faithful-cot"
"""The default set: 6 models x 5 prompting strategies on 6,411 questions, with lengths (MIT)."""


def _root() -> Traversable:
    return files("langchain_rtr.data") / "bundled"


def list_bundled() -> list[str]:
    """Names of the bundled routing sets, sorted."""
    return sorted(
        entry.name
        for entry in _root().iterdir()
        if entry.is_dir() and (entry / RECORDS_FILE).is_file()
    )


def load_bundled(name: str = DEFAULT_BUNDLED) -> RoutingSet:
    """Load a bundled routing set by name (default: :data:`DEFAULT_BUNDLED`).

    Raises:
        ValueError: There is no bundled set of that name; the message lists those there are.
    """
    available = list_bundled()
    if name not in available:
        raise ValueError(f"no bundled routing set {name!r}; available: {available}")
    return load_routing_set(_root() / name, name=name)
