"""A predictor's checkpoint on disk: the format, writing it atomically, reading and checking it.

``config.json`` says what the weights are (pairs, encoder, hyperparameters, calibration);
``model.safetensors`` holds them; ``digests.json`` vouches for every file. Reading never
imports torch: the weights come back as numpy arrays.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from safetensors.numpy import load_file, save_file

from langchain_rtr.jsonfile import read_json_object
from langchain_rtr.predictor.backends import (
    backend_of_id,
    checkpoint_encoder,
    make_encoder,
    save_artifact,
)
from langchain_rtr.predictor.calibration import CalibrationError, PlattCalibration
from langchain_rtr.predictor.digests import record_digests, verify_digests
from langchain_rtr.predictor.encoder import (
    SENTENCE_TRANSFORMERS_ID,
    CachedEncoder,
    QuestionEncoder,
    SentenceTransformerEncoder,
    default_encoder,
    uncached,
)
from langchain_rtr.predictor.extras import require
from langchain_rtr.predictor.features import QUESTION_FEATURES
from langchain_rtr.predictor.scoring import NumpyScorer, ScoringError, member_prefixes
from langchain_rtr.predictor.types import CheckpointError, Pair, TrainConfig
from langchain_rtr.quantiles import LengthQuantiles, QuantileError

if TYPE_CHECKING:
    from langchain_rtr.predictor.model import RTREnsemble
    from langchain_rtr.predictor.predictor import RTRPredictor

FORMAT_NAME = "langchain-rtr-predictor"
FORMAT_VERSION = 2
"""Bumped whenever the checkpoint layout or the meaning of a stored tensor changes."""

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def write_checkpoint(predictor: RTRPredictor, directory: str | Path) -> None:
    """The body of :meth:`RTRPredictor.save <langchain_rtr.predictor.RTRPredictor.save>`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: np.ascontiguousarray(v) for k, v in predictor.state_dict().items()}
    inner = uncached(predictor.encoder)
    encoder_info: dict[str, Any] = {"id": predictor.encoder.id, "dim": predictor.encoder_dim}
    if isinstance(inner, SentenceTransformerEncoder) and inner.id != SENTENCE_TRANSFORMERS_ID:
        encoder_info["name_or_path"] = inner._source or inner.name
    config: dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "encoder": encoder_info,
        "models": predictor.models,
        "strategies": predictor.strategies,
        "pairs": [list(p) for p in predictor.pairs],
        "has_length_head": predictor.has_length_head,
        "length_normalisation": (
            {"target": "log1p(output_tokens) / scale", "scale": predictor.length_scale}
            if predictor.has_length_head
            else None
        ),
        "hyperparameters": asdict(predictor.config),
        "model_descriptions": predictor.model_descriptions,
        "strategy_descriptions": predictor.strategy_descriptions,
        "training": {k: v for k, v in asdict(predictor.summary).items() if k != "history"},
        "calibration": predictor.calibration.to_dict()
        if predictor.calibration is not None
        else None,
    }
    if predictor.length_quantiles is not None:
        config["length_quantiles"] = predictor.length_quantiles.to_dict()
    atomic_write(
        directory / WEIGHTS_FILE,
        lambda path: save_file(tensors, path, metadata={"format": FORMAT_NAME}),
    )
    text = json.dumps(config, indent=2, allow_nan=True)
    atomic_write(directory / CONFIG_FILE, lambda path: Path(path).write_text(text, "utf-8"))
    artifact = save_artifact(predictor.encoder, directory)  # so a torch-free install can route it
    names = [WEIGHTS_FILE, CONFIG_FILE]
    if artifact is not None:  # the encoder's bytes are part of what the checkpoint vouches for
        names += [
            path.relative_to(directory).as_posix()
            for path in sorted(artifact.iterdir())
            if path.is_file()
        ]
    record_digests(directory, names)


@dataclass
class StoredPredictor:
    """A checkpoint as read and checked by :func:`read_checkpoint` (numpy weights, no encoder)."""

    config: dict[str, Any]
    tensors: dict[str, np.ndarray]
    pairs: list[Pair]
    encoder_id: str
    encoder_dim: int
    hyper: TrainConfig
    length_scale: float | None
    length_quantiles: LengthQuantiles | None
    calibration: PlattCalibration | None


def read_checkpoint(
    directory: Path,
    *,
    expected_models: Sequence[str] | None = None,
    expected_strategies: Sequence[str] | None = None,
) -> StoredPredictor:
    """Read a checkpoint and check it against itself and the names expected.

    Raises:
        CheckpointError: See :meth:`RTRPredictor.load <langchain_rtr.predictor.RTRPredictor.load>`.
    """
    verify_digests(directory)
    config = _read_config(directory)
    version = config.get("format_version")
    if config.get("format") != FORMAT_NAME or version != FORMAT_VERSION:
        raise CheckpointError(
            f"{directory / CONFIG_FILE}: format {config.get('format')!r} version {version!r}; "
            f"expected format {FORMAT_NAME!r} version {FORMAT_VERSION}"
        )
    try:
        models = [str(m) for m in config["models"]]
        strategies = [str(s) for s in config["strategies"]]
        pairs = [(str(m), str(s)) for m, s in config["pairs"]]
        enc_id, enc_dim = str(config["encoder"]["id"]), int(config["encoder"]["dim"])
        # A checkpoint from before the knob was trained without question features.
        hyper = TrainConfig.from_dict({"question_features": False, **config["hyperparameters"]})
        has_length = bool(config["has_length_head"])
        norm = config.get("length_normalisation") or {}
        length_scale = float(norm["scale"]) if has_length else None
        quantiles = (
            LengthQuantiles.from_dict(config["length_quantiles"], len(pairs))
            if has_length and config.get("length_quantiles") is not None
            else None
        )
        stored = config.get("calibration")
        calibration = None if stored is None else PlattCalibration.from_dict(stored, len(pairs))
    except QuantileError as exc:
        raise CheckpointError(f"{directory / CONFIG_FILE}: length_quantiles: {exc}") from exc
    except (KeyError, TypeError, ValueError, CalibrationError) as exc:
        raise CheckpointError(f"{directory / CONFIG_FILE}: malformed config ({exc!r})") from exc
    _check_names("models", models, expected_models, directory)
    _check_names("strategies", strategies, expected_strategies, directory)

    weights_path = directory / WEIGHTS_FILE
    if not weights_path.is_file():
        raise CheckpointError(f"checkpoint {directory} has no {WEIGHTS_FILE}")
    model_index = {m: i for i, m in enumerate(models)}
    strategy_index = {s: i for i, s in enumerate(strategies)}
    unknown = [p for p in pairs if p[0] not in model_index or p[1] not in strategy_index]
    if unknown:
        raise CheckpointError(f"{directory / CONFIG_FILE}: pairs {unknown} name unknown names")
    try:
        tensors = load_file(str(weights_path))
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{weights_path}: unreadable safetensors ({exc})") from exc
    expected = _expected_shapes(
        len(models), len(strategies), len(pairs), enc_dim, hyper, has_length
    )
    _check_tensors(tensors, expected, weights_path, directory)
    want_models = [model_index[m] for m, _ in pairs]
    want_strategies = [strategy_index[s] for _, s in pairs]
    if not all(
        np.array_equal(tensors[f"{p}pair_model"], want_models)
        and np.array_equal(tensors[f"{p}pair_strategy"], want_strategies)
        for p in member_prefixes(tensors)
    ):
        raise CheckpointError(
            f"{weights_path}: pair indices do not match the pairs of {directory / CONFIG_FILE}"
        )

    return StoredPredictor(
        config=config,
        tensors=tensors,
        pairs=pairs,
        encoder_id=enc_id,
        encoder_dim=enc_dim,
        hyper=hyper,
        length_scale=length_scale,
        length_quantiles=quantiles,
        calibration=calibration,
    )


def atomic_write(path: Path, write: Callable[[str], Any]) -> None:
    """Write via a temporary file renamed into place, so a crash never leaves a torn file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a predictor checkpoint: no {CONFIG_FILE}")
    return read_json_object(path, CheckpointError)


def _check_names(
    kind: str, found: Sequence[str], expected: Sequence[str] | None, directory: Path
) -> None:
    if expected is None or set(found) == set(expected):
        return
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    raise CheckpointError(
        f"checkpoint {directory} was trained for {kind} {list(found)}; expected "
        f"{list(expected)} (missing {missing}, unexpected {extra})"
    )


def rebuild_encoder(
    info: Mapping[str, Any], directory: Path, *, cache: bool = True
) -> QuestionEncoder:
    """The encoder a checkpoint records: the copy it carries, else the installed (or built) one.

    ``cache``: behind the on-disk embedding cache (:class:`CachedEncoder`), or not.
    """
    enc_id = str(info.get("id"))
    carried = checkpoint_encoder(directory, enc_id, cache=cache)
    if carried is not None:
        return carried
    if enc_id == SENTENCE_TRANSFORMERS_ID:
        return default_encoder(cache=cache, backend="sentence-transformers")
    backend = backend_of_id(enc_id)
    if backend is not None:
        return make_encoder(backend, cache=cache)
    source = info.get("name_or_path")
    if source and enc_id.startswith("sentence-transformers:"):
        named = SentenceTransformerEncoder(str(source), encoder_id=enc_id)
        return CachedEncoder(named) if cache else named
    raise CheckpointError(
        f"checkpoint {directory} was trained with encoder {enc_id!r}, which cannot be rebuilt "
        "from the checkpoint; pass encoder= to load()"
    )


def _expected_shapes(
    n_models: int,
    n_strategies: int,
    n_pairs: int,
    dim: int,
    hyper: TrainConfig,
    has_length: bool,
) -> dict[str, tuple[int, ...]]:
    """The tensors of an ``RTREnsemble`` with this configuration, and their shapes.

    ``dim`` is the encoder's; the heads take it plus the question features, if any.
    """
    learn, hidden = hyper.learnable_dim, hyper.hidden
    pair_dim = 2 * dim + 2 * learn
    question_dim = dim + (len(QUESTION_FEATURES) if hyper.question_features else 0)
    one: dict[str, tuple[int, ...]] = {
        "model_text": (n_models, dim),
        "strategy_text": (n_strategies, dim),
        "pair_model": (n_pairs,),
        "pair_strategy": (n_pairs,),
        "model_learn": (n_models, learn),
        "strategy_learn": (n_strategies, learn),
    }
    for head in ("correctness", "length") if has_length else ("correctness",):
        one |= {
            f"{head}.question.weight": (hidden, question_dim),
            f"{head}.pair.weight": (hidden, pair_dim),
            f"{head}.pair.bias": (hidden,),
            f"{head}.out.weight": (1, hidden),
            f"{head}.out.bias": (1,),
        }
    return {f"members.{i}.{k}": v for i in range(hyper.ensemble) for k, v in one.items()}


def _check_tensors(
    tensors: Mapping[str, np.ndarray],
    expected: Mapping[str, tuple[int, ...]],
    weights_path: Path,
    directory: Path,
) -> None:
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    wrong = [
        f"{k} {tuple(tensors[k].shape)} (expected {shape})"
        for k, shape in expected.items()
        if k in tensors and tuple(tensors[k].shape) != shape
    ]
    if missing or extra or wrong:
        raise CheckpointError(
            f"{weights_path}: tensors do not match {directory / CONFIG_FILE} "
            f"(missing {missing}, unexpected {extra}, wrong shapes {wrong})"
        )
    try:
        NumpyScorer.from_state_dict(tensors, 1.0)
    except ScoringError as exc:
        raise CheckpointError(f"{weights_path}: {exc}") from exc


def net_from_state(
    state: Mapping[str, np.ndarray], pairs: Sequence[Pair], hyper: TrainConfig
) -> RTREnsemble:
    """The torch networks holding ``state`` (imports torch)."""
    torch = require("torch", "the torch network of a predictor (`predictor.net`)")

    from langchain_rtr.predictor.model import RTREnsemble, RTRNet

    prefixes = member_prefixes(state)
    first = prefixes[0]
    dim = int(state[f"{first}correctness.question.weight"].shape[1])
    text_dim = int(state[f"{first}model_text"].shape[1])
    with torch.random.fork_rng(devices=[]):  # initial values are overwritten below
        members = [
            RTRNet(
                torch.zeros(state[f"{p}model_text"].shape[0], text_dim),
                torch.zeros(state[f"{p}strategy_text"].shape[0], text_dim),
                torch.from_numpy(np.asarray(state[f"{p}pair_model"], dtype=np.int64)),
                torch.from_numpy(np.asarray(state[f"{p}pair_strategy"], dtype=np.int64)),
                question_dim=dim,
                learnable_dim=hyper.learnable_dim,
                hidden=hyper.hidden,
                length_head=f"{first}length.out.weight" in state,
            )
            for p in prefixes
        ]
    net = RTREnsemble(members)
    net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, strict=True)
    return net.eval()
