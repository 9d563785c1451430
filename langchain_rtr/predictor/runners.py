"""Running a built artifact: the ONNX Runtime and model2vec encoders (numpy, no torch)."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from langchain_rtr.predictor.artifacts import ONNX_FILE, TOKENIZER_FILE
from langchain_rtr.predictor.backend_names import THREADS_ENV, EncoderBackend, EncoderBackendError
from langchain_rtr.predictor.encoder import QuestionEncoder, as_matrix

ONNX_FP32_BATCH = 16
"""Most texts per ONNX Runtime run of the fp32 encoder: small runs keep the activations in cache
(docs/encoders.md, "Batch sizes", has the measurement)."""


def onnx_threads(threads: int | None) -> int:
    """ONNX Runtime's intra-op threads: ``threads``, else ``$RTR_ENCODER_THREADS``, else 0."""
    if threads is not None:
        return threads
    env = os.environ.get(THREADS_ENV)
    return int(env) if env else 0  # 0: onnxruntime's default (the physical cores)


class OnnxEncoder:
    """Sentence vectors from an exported ONNX graph, with the Rust ``tokenizers`` (no torch).

    Args:
        directory: An artifact folder written by :func:`export_onnx` or :func:`quantize_onnx`.
        encoder_id: The id (``"onnx:all-MiniLM-L6-v2"``).
        threads: ONNX Runtime intra-op threads (default ``$RTR_ENCODER_THREADS`` or all cores).
        max_batch: Texts per run. Dynamic int8 quantises activations per run, so an int8
            vector would depend on its batch-mates; one text per run keeps it a function of the
            text alone (and costs little on a few cores: docs/encoders.md).
    """

    def __init__(
        self,
        directory: str | Path,
        encoder_id: str,
        *,
        threads: int | None = None,
        max_batch: int | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.id = encoder_id
        self.threads = threads
        self.max_batch = max_batch
        self._session: Any = None
        self._tokenizer: Any = None
        self._dim: int | None = None
        self._lock = threading.Lock()

    def _load(self) -> tuple[Any, Any]:
        with self._lock:
            if self._session is None:
                import onnxruntime as ort
                from tokenizers import Tokenizer

                options = ort.SessionOptions()
                options.intra_op_num_threads = onnx_threads(self.threads)
                options.inter_op_num_threads = 1
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                # Spin while a run is on (waking threads per op is slower) but not after it:
                # threads left spinning take the cores from the caller's own work between runs
                # (the HTTP call that follows routing, a server's event loop).
                options.add_session_config_entry("session.force_spinning_stop", "1")
                path = self.directory / ONNX_FILE
                if not path.is_file():
                    raise EncoderBackendError(
                        f"{path} is missing; build it with `rtr encoder export`"
                    )
                session = ort.InferenceSession(
                    str(path), options, providers=["CPUExecutionProvider"]
                )
                shape = session.get_outputs()[0].shape
                self._tokenizer = Tokenizer.from_file(str(self.directory / TOKENIZER_FILE))
                self._dim = int(shape[1]) if isinstance(shape[1], int) else None
                self._session = session
                if self._dim is None:
                    self._dim = int(self._run(["x"]).shape[1])
        return self._session, self._tokenizer

    def _run(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 1:  # the live-routing case: no batch machinery
            one = self._tokenizer.encode(texts[0])
            ids = np.asarray(one.ids, dtype=np.int64)[None, :]
            mask = np.ones_like(ids)
        else:
            encodings = self._tokenizer.encode_batch(list(texts))
            ids = np.array([e.ids for e in encodings], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        out: np.ndarray = self._session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        return out

    @property
    def dim(self) -> int:
        """The vector size (opens the session if needed)."""
        if self._dim is None:
            self._load()
        assert self._dim is not None
        return self._dim

    def encode(
        self, texts: Sequence[str], *, batch_size: int = 64, show_progress: bool = False
    ) -> np.ndarray:
        """Encode ``texts`` to unit float32 vectors ``[n, dim]``, in input order.

        Texts are run in order of length, so a batch pads little.
        """
        texts = list(texts)
        if self._session is None:
            self._load()
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        if len(texts) == 1:
            return as_matrix(self._run(texts), 1, self._dim, self.id)
        step = max(1, min(batch_size, self.max_batch or batch_size))
        order = np.argsort([len(t) for t in texts], kind="stable")
        out = np.empty((len(texts), self.dim), np.float32)
        for start in range(0, len(texts), step):
            idx = order[start : start + step]
            out[idx] = self._run([texts[i] for i in idx])
        return as_matrix(out, len(texts), self._dim, self.id)

    def __repr__(self) -> str:
        return f"OnnxEncoder(id={self.id!r}, directory={str(self.directory)!r})"


class StaticEncoder:
    """A model2vec static embedding model: tokenise, average token vectors, normalise.

    Args:
        directory: A model2vec folder written by :func:`distill_static`.
        encoder_id: The id (``"static:all-MiniLM-L6-v2"``).
    """

    def __init__(self, directory: str | Path, encoder_id: str) -> None:
        self.directory = Path(directory)
        self.id = encoder_id
        self._model: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                from model2vec import StaticModel

                self._model = StaticModel.from_pretrained(str(self.directory))
        return self._model

    @property
    def dim(self) -> int:
        """The vector size."""
        return int(self._load().dim)

    def encode(
        self, texts: Sequence[str], *, batch_size: int = 1024, show_progress: bool = False
    ) -> np.ndarray:
        """Encode ``texts`` to unit float32 vectors ``[n, dim]``, in input order."""
        texts = list(texts)
        model = self._load()
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        vectors = np.asarray(
            model.encode(
                texts,
                batch_size=max(batch_size, 1024),
                show_progress_bar=show_progress,
                use_multiprocessing=False,
            ),
            dtype=np.float32,
        )
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors /= np.maximum(norms, 1e-12)
        return as_matrix(vectors, len(texts), None, self.id)

    def __repr__(self) -> str:
        return f"StaticEncoder(id={self.id!r}, directory={str(self.directory)!r})"


def runner_for(
    backend: EncoderBackend, path: Path, encoder_id: str, threads: int | None
) -> QuestionEncoder:
    """The encoder that runs a built artifact of ``backend`` found at ``path``."""
    if backend == "static":
        return StaticEncoder(path, encoder_id)
    max_batch = 1 if backend == "onnx-int8" else ONNX_FP32_BATCH
    return OnnxEncoder(path, encoder_id, threads=threads, max_batch=max_batch)
