"""What the routing-only install lacks, and the error that names the extra bringing it.

``pip install langchain-rtr`` routes and serves saved routers with numpy, ONNX Runtime and
model2vec; training, exporting and distilling encoders, and the sentence-transformers backend need
torch, transformers and the shipped model, which ``pip install 'langchain-rtr[train]'`` adds.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from langchain_rtr.errors import RTRError

TRAIN_EXTRA = "langchain-rtr[train]"


class MissingExtraError(RTRError, ImportError):
    """A feature needs a package of the ``[train]`` extra that this install does not have."""


def require(module: str, feature: str) -> ModuleType:
    """Import ``module`` for ``feature``, or say which extra brings it.

    Raises:
        MissingExtraError: ``module`` is not installed.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{feature} needs {module.split('.')[0]!r}, which this install lacks: "
            f"pip install '{TRAIN_EXTRA}' (the routing-only install routes and serves saved "
            f"routers without it)"
        ) from exc
