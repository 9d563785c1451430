"""Checkpoint integrity: a damaged saved router is refused on load, and NaN is never routed on."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from langchain_rtr.predictor import CheckpointError, RTRPredictor, TrainConfig
from langchain_rtr.predictor.cascade import CascadePredictor
from langchain_rtr.predictor.digests import DIGEST_FILE
from langchain_rtr.routing import RoutingError, RTRRouter
from langchain_rtr.specs import ModelSpec
from tests.unit.test_predictor import MODELS, STRATEGIES, TopicEncoder, planted_matrix

CONFIG = TrainConfig(hidden=16, learnable_dim=4, max_epochs=3, seed=0)


@pytest.fixture(scope="module")
def predictor() -> RTRPredictor:
    return RTRPredictor.train(
        planted_matrix(60, seed=3), MODELS, STRATEGIES, encoder=TopicEncoder(), config=CONFIG
    )


def saved_router(predictor: object, directory: Path) -> Path:
    specs = {m: ModelSpec(name=m, description=d) for m, d in MODELS.items()}
    router = RTRRouter(predictor, specs, cost_unit="tokens")  # type: ignore[arg-type]
    router.fit_cost_scale(planted_matrix(20, seed=4).questions)
    return router.save(directory)


def overwrite_tensor_bytes(weights: Path, count: int, fill: bytes, tensor: str = "") -> None:
    """Overwrite ``count`` bytes of tensor data in place, from the start of ``tensor``'s data
    (default: of all tensor data), keeping the file's size."""
    data = bytearray(weights.read_bytes())
    size = len(data)
    header_len = struct.unpack("<Q", bytes(data[:8]))[0]
    start = 8 + header_len
    if tensor:
        header = json.loads(bytes(data[8:start]))
        begin, end = header[tensor]["data_offsets"]
        start, count = start + begin, min(count, end - begin)
    assert size - start >= count, "the test checkpoint must hold enough tensor data"
    data[start : start + count] = (fill * count)[:count]
    weights.write_bytes(bytes(data))
    assert weights.stat().st_size == size


def load(directory: Path) -> RTRRouter:
    return RTRRouter.load(directory, encoder=TopicEncoder())


def test_a_saved_router_routes_after_loading(predictor: RTRPredictor, tmp_path: Path) -> None:
    root = saved_router(predictor, tmp_path / "r")
    for folder in (root, root / "predictor"):
        assert (folder / DIGEST_FILE).is_file()
    question = planted_matrix(4, seed=9).questions[0]
    assert load(root).route(question).model is not None


def test_overwritten_tensor_data_is_refused_naming_the_file(
    predictor: RTRPredictor, tmp_path: Path
) -> None:
    root = saved_router(predictor, tmp_path / "r")
    weights = root / "predictor" / "model.safetensors"
    overwrite_tensor_bytes(weights, 2_000, b"\x7f", tensor="members.0.correctness.question.weight")
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*changed since it was saved"):
        load(root)


@pytest.mark.parametrize("name", ["router.json", "models.json", "predictor/config.json"])
def test_an_edited_json_file_is_refused_naming_it(
    predictor: RTRPredictor, tmp_path: Path, name: str
) -> None:
    root = saved_router(predictor, tmp_path / "r")
    path = root / name
    path.write_text(path.read_text() + "\n")  # still the same JSON: only the digest can tell
    with pytest.raises(CheckpointError, match=str(path).replace(".", r"\.")):
        load(root)


def test_a_deleted_file_and_a_broken_digest_file_are_refused(
    predictor: RTRPredictor, tmp_path: Path
) -> None:
    root = saved_router(predictor, tmp_path / "r")
    (root / "models.json").unlink()
    with pytest.raises(CheckpointError, match=r"models\.json: missing"):
        load(root)
    root = saved_router(predictor, tmp_path / "s")
    (root / "predictor" / DIGEST_FILE).write_text("{")
    with pytest.raises(CheckpointError, match="unreadable digests"):
        load(root)


def test_a_damaged_cascade_file_is_refused(predictor: RTRPredictor, tmp_path: Path) -> None:
    other = RTRPredictor.train(
        planted_matrix(60, seed=5),
        MODELS,
        STRATEGIES,
        encoder=TopicEncoder(encoder_id="fake:other"),
        config=CONFIG,
    )
    cascade = CascadePredictor.fit(
        predictor, other, planted_matrix(20, seed=6).questions, share=0.5
    )
    cascade.save(tmp_path / "c")
    for half in ("fast", "full"):
        assert (tmp_path / "c" / half / DIGEST_FILE).is_file()
    path = tmp_path / "c" / "cascade.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "share": 0.9}))
    with pytest.raises(CheckpointError, match=r"cascade\.json"):
        CascadePredictor.load(
            tmp_path / "c", fast_encoder=TopicEncoder(), full_encoder=other.encoder
        )


def test_nan_predictions_are_never_routed_on(predictor: RTRPredictor, tmp_path: Path) -> None:
    root = saved_router(predictor, tmp_path / "r")
    weights = root / "predictor" / "model.safetensors"
    nan = np.array([np.nan], np.float32).tobytes()
    overwrite_tensor_bytes(weights, 2_000, nan, tensor="members.0.correctness.question.weight")
    (root / "predictor" / DIGEST_FILE).unlink(
        missing_ok=True
    )  # as a checkpoint saved before digests existed
    router = load(root)
    questions = planted_matrix(3, seed=9).questions
    with pytest.raises(RoutingError, match="non-finite"):
        router.route(questions[0])
    with pytest.raises(RoutingError, match="non-finite"):
        router.route_batch(questions)
    with pytest.raises(RoutingError, match="non-finite"):
        router.table(questions[0])
