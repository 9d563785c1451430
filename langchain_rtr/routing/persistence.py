"""Saving and loading a router: ``predictor/``, ``models.json`` and ``router.json``."""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

from langchain_rtr.errors import RoutingError
from langchain_rtr.jsonfile import read_json_object
from langchain_rtr.routing.policies import policy_from_dict
from langchain_rtr.routing.router import RTRRouter
from langchain_rtr.routing.types import (
    CHARS_PER_TOKEN,
    PROMPT_OVERHEAD_TOKENS,
    ROUTER_FORMAT,
    ROUTER_FORMAT_VERSION,
    PredictorLike,
)
from langchain_rtr.specs import ModelSpec


def router_config(router: RTRRouter) -> dict[str, Any]:
    """What ``router.json`` holds."""
    return {
        "format": ROUTER_FORMAT,
        "version": ROUTER_FORMAT_VERSION,
        "pairs": [list(p) for p in router.pairs],
        "cost_unit": router.cost_unit,
        "cost_scale": router.cost_scale,
        "default_policy": router.default_policy.to_dict(),
        "strategy_overhead_tokens": router.cost_model.strategy_overhead_tokens,
        "input_token_estimate": {
            "chars_per_token": CHARS_PER_TOKEN,
            "prompt_overhead_tokens": PROMPT_OVERHEAD_TOKENS,
        },
    }


_DIGESTS = "langchain_rtr.predictor.digests"  # imported on use, like the predictor itself


def save_router(router: RTRRouter, directory: str | Path) -> Path:
    """Write ``predictor/`` (the checkpoint), ``models.json`` and ``router.json``.

    API keys are never written: supply them again with ``load(..., models=...)`` or the
    environment.
    """
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    router.predictor.save(root / "predictor")
    models = {
        name: spec.model_dump(mode="json", exclude={"api_key"})
        for name, spec in sorted(router.models.items())
    }
    (root / "models.json").write_text(json.dumps(models, indent=2) + "\n", encoding="utf-8")
    (root / "router.json").write_text(
        json.dumps(router_config(router), indent=2) + "\n", encoding="utf-8"
    )
    importlib.import_module(_DIGESTS).record_digests(root, ["models.json", "router.json"])
    return root


def trained_models(directory: str | Path) -> set[str]:
    """The models a saved router routes among, read from its ``router.json`` without loading it.

    For a caller holding a whole models file (the server) that must pass only these to `load`.
    """
    path = Path(directory) / "router.json"
    pairs = read_json_object(path, RoutingError).get("pairs")
    if not pairs:  # save_router always writes them: an empty set would drop every endpoint
        raise RoutingError(f"{path}: no pairs (not a router saved by save_router?)")
    try:
        return {str(model) for model, _ in pairs}
    except (TypeError, ValueError) as exc:
        raise RoutingError(f"{path}: pairs must be [model, strategy] lists ({exc})") from exc


def load_router(
    directory: str | Path,
    *,
    models: Mapping[str, ModelSpec] | None = None,
    predictor_loader: Callable[[Path], PredictorLike] | None = None,
    **predictor_kw: Any,
) -> RTRRouter:
    """Read a router written by :meth:`save`.

    Args:
        directory: The directory.
        models: Specs that replace the saved ones by name (to add endpoints or API keys).
            A model the router was not trained on is refused where the router is run
            (`UnknownPairError`); `trained_models` says which names a router knows.
        predictor_loader: Reads ``directory/predictor``; default
            ``langchain_rtr.predictor.load_predictor`` (a single predictor or a cascade).
        **predictor_kw: Passed to the default loader.
    """
    root = Path(directory)
    importlib.import_module(_DIGESTS).verify_digests(root)
    config = read_json_object(root / "router.json", RoutingError)
    if config.get("format") != ROUTER_FORMAT:
        raise RoutingError(f"{root / 'router.json'}: not a langchain-rtr router file")
    if int(config.get("version", 0)) > ROUTER_FORMAT_VERSION:
        raise RoutingError(
            f"{root / 'router.json'}: format version {config.get('version')} is newer than "
            f"this library reads ({ROUTER_FORMAT_VERSION})"
        )
    saved = read_json_object(root / "models.json", RoutingError)
    try:
        specs = {name: ModelSpec.model_validate(spec) for name, spec in saved.items()}
    except ValueError as exc:
        raise RoutingError(f"{root / 'models.json'}: {exc}") from exc
    if predictor_loader is None:
        # Imported here: routing itself needs neither the predictor package nor safetensors.
        load = importlib.import_module("langchain_rtr.predictor.cascade").load_predictor

        def predictor_loader(path: Path) -> PredictorLike:
            return cast(PredictorLike, load(path, **predictor_kw))

    specs.update(models or {})
    predictor = predictor_loader(root / "predictor")
    pairs = [tuple(p) for p in config.get("pairs", [])]
    if pairs and [tuple(p) for p in predictor.pairs] != pairs:
        raise RoutingError(
            f"{root}: the predictor's pairs {predictor.pairs} differ from router.json's {pairs}"
        )
    return RTRRouter(
        predictor,
        specs,
        cost_unit=config.get("cost_unit", "usd"),
        cost_scale=config.get("cost_scale"),
        default_policy=policy_from_dict(config["default_policy"])
        if config.get("default_policy")
        else None,
        strategy_overhead_tokens=config.get("strategy_overhead_tokens") or None,
    )
