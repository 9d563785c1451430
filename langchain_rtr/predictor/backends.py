"""Fast question-encoder backends: ONNX Runtime (fp32, int8) and a static (model2vec) encoder.

One setting picks the backend (:data:`EncoderBackend`): the ``backend=`` argument of
:func:`make_encoder`, else ``$RTR_ENCODER_BACKEND``, else :data:`DEFAULT_BACKEND`
(``"onnx-int8"``). That constant is the one place the default is chosen: ``rtr train``,
``rtr demo``, ``fit_router`` and ``RTRPredictor.train`` all come here when given no encoder, and a
saved router reloads the encoder its checkpoint records, whatever the default is now.

=====================  ====================================================================
backend                what it runs
=====================  ====================================================================
sentence-transformers  the shipped all-MiniLM-L6-v2 in torch
onnx                   the same network exported to ONNX (fused), run by ONNX Runtime; the
                       vectors equal sentence-transformers' to ~1e-7
onnx-int8              that export with per-channel dynamic int8 weights (the default)
static                 a model2vec static embedding table distilled from the same model
=====================  ====================================================================

The ONNX and static artifacts are built once, offline, from the shipped model into
``default_cache_dir()/encoders/<model>-<fingerprint>/<backend>/`` (a manifest says what was
built from what), written to a temporary folder and renamed into place, and reused after that.
``rtr encoder export`` / ``rtr encoder distill`` build them explicitly; :func:`make_encoder`
builds a missing one on first use and says so on stderr. Building needs torch; running does not:
the ONNX and static encoders import only numpy, ``tokenizers``, ``onnxruntime`` or ``model2vec``.

Each backend has its own encoder id, so the embedding cache never mixes their vectors and a
predictor trained with one is refused with another (see :meth:`RTRPredictor.load`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from langchain_rtr.errors import ConfigError
from langchain_rtr.predictor.encoder import (
    DEFAULT_MODEL_NAME,
    CachedEncoder,
    QuestionEncoder,
    SentenceTransformerEncoder,
    as_matrix,
    bundled_model_path,
    default_cache_dir,
    uncached,
)
from langchain_rtr.predictor.extras import require

EncoderBackend = Literal["sentence-transformers", "onnx", "onnx-int8", "static"]
BACKENDS: tuple[EncoderBackend, ...] = get_args(EncoderBackend)
DEFAULT_BACKEND: EncoderBackend = "onnx-int8"
"""The encoder backend wherever none is given (docs/encoders.md has the measurements behind it)."""
BACKEND_ENV = "RTR_ENCODER_BACKEND"
THREADS_ENV = "RTR_ENCODER_THREADS"

ARTIFACT_RECIPE = 1
"""Bumped when an export or distillation recipe changes, so old artifacts are rebuilt."""

MANIFEST_FILE = "manifest.json"
ONNX_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
STATIC_PCA_DIMS = 256
"""The static encoder's vector size (model2vec's PCA default)."""

ONNX_FP32_BATCH = 16
"""Most texts per ONNX Runtime run of the fp32 encoder: small runs keep the activations in cache
(docs/encoders.md, "Batch sizes", has the measurement)."""

CHECKPOINT_ARTIFACT_DIR = "encoder"
"""Where a saved predictor keeps a copy of its encoder's artifact (see :func:`save_artifact`)."""

_ONNX_OPSET = 17
_BUILT_BACKENDS: tuple[EncoderBackend, ...] = ("onnx", "onnx-int8", "static")
_BUILD_NEEDS: dict[EncoderBackend, tuple[str, ...]] = {
    "onnx": ("torch", "transformers", "onnx", "onnxruntime.transformers.optimizer"),
    "onnx-int8": ("onnx", "onnxruntime.quantization"),
    "static": ("torch", "transformers", "model2vec.distill"),
}
_BUILD_STEPS: dict[EncoderBackend, str] = {
    "onnx": "exporting the model to ONNX and fusing its graph",
    "onnx-int8": "quantising the ONNX graph to int8 weights",
    "static": "distilling a static table (one forward pass per vocabulary token)",
}

Log = Callable[[str], None]


class EncoderBackendError(ConfigError):
    """An unknown backend name, or an artifact that cannot be built or read."""


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def resolve_backend(backend: str | None = None) -> EncoderBackend:
    """The backend to use: ``backend`` if given, else ``$RTR_ENCODER_BACKEND``, else the default.

    Raises:
        EncoderBackendError: The name is not one of :data:`BACKENDS`.
    """
    where = "backend"
    if backend is None:
        backend = os.environ.get(BACKEND_ENV) or DEFAULT_BACKEND
        where = f"${BACKEND_ENV}"
    name = backend.strip().lower()
    for known in BACKENDS:
        if name == known:
            return known
    raise EncoderBackendError(
        f"{where}={backend!r} is not an encoder backend; expected one of {', '.join(BACKENDS)}"
    )


def backend_encoder_id(backend: EncoderBackend, model_name: str = DEFAULT_MODEL_NAME) -> str:
    """The encoder id of ``backend`` over ``model_name`` (``"onnx-int8:all-MiniLM-L6-v2"``)."""
    return f"{backend}:{model_name}"


DEFAULT_ENCODER_ID = backend_encoder_id(DEFAULT_BACKEND)
"""The id of the default encoder: the shipped MiniLM run by :data:`DEFAULT_BACKEND`."""


def backend_of_id(encoder_id: str) -> EncoderBackend | None:
    """The backend whose encoder over the shipped model has this id, or ``None``."""
    for backend in BACKENDS:
        if encoder_id == backend_encoder_id(backend):
            return backend
    return None


# ------------------------------------------------------------------------------- artifacts


@dataclass(frozen=True)
class Artifact:
    """A built encoder artifact.

    Attributes:
        backend: Which backend it serves.
        path: Its folder.
        built: Whether this call built it (``False``: it was already there and was reused).
        seconds: Time spent building (0 when reused).
    """

    backend: EncoderBackend
    path: Path
    built: bool
    seconds: float


def source_fingerprint(source: str | Path) -> str:
    """A short digest of a sentence-transformers model folder (cheap: no 90 MB hashing).

    It covers the configuration and tokenizer files, the weights' size and mtime-free identity
    (size only), and the recipe version, so a different model or recipe gets another folder.
    """
    root = Path(source)
    digest = hashlib.sha256(f"recipe={ARTIFACT_RECIPE}".encode())
    for name in (
        "config.json",
        "tokenizer.json",
        "sentence_bert_config.json",
        "1_Pooling/config.json",
    ):
        path = root / name
        digest.update(name.encode())
        digest.update(path.read_bytes() if path.is_file() else b"-")
    for name in ("model.safetensors", "pytorch_model.bin"):
        path = root / name
        digest.update(f"{name}:{path.stat().st_size if path.is_file() else -1}".encode())
    return digest.hexdigest()[:12]


def artifact_dir(
    backend: EncoderBackend,
    *,
    source: str | Path | None = None,
    cache_dir: str | Path | None = None,
) -> Path:
    """Where ``backend``'s artifact for ``source`` (default: the shipped model) lives."""
    if backend not in _BUILT_BACKENDS:
        raise EncoderBackendError(f"backend {backend!r} has no artifact to build")
    src = Path(source) if source is not None else Path(bundled_model_path())
    name = DEFAULT_MODEL_NAME if source is None else src.name
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / "encoders" / f"{name}-{source_fingerprint(src)}" / backend


def _read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def artifact_ready(path: Path) -> bool:
    """Whether ``path`` holds a complete artifact (its manifest is written last)."""
    manifest = _read_manifest(path)
    if manifest is None:
        return False
    return all((path / name).is_file() for name in manifest.get("files", []))


_build_lock = threading.RLock()  # int8 builds its fp32 parent while holding it


def build_artifact(
    backend: EncoderBackend,
    *,
    source: str | Path | None = None,
    cache_dir: str | Path | None = None,
    force: bool = False,
    log: Log | None = _stderr,
) -> Artifact:
    """Build ``backend``'s artifact from the shipped model (offline) unless it is already there.

    The artifact is written into a temporary folder beside its final place and renamed into
    place, so a crash or a concurrent build never leaves a half-written artifact: the loser of
    a race discards its copy and uses the winner's.

    Args:
        backend: ``"onnx"``, ``"onnx-int8"`` or ``"static"``.
        source: A sentence-transformers model folder; default the shipped all-MiniLM-L6-v2.
        cache_dir: The cache root; default :func:`default_cache_dir`.
        force: Rebuild even if the artifact exists.
        log: Where progress lines go (``None``: silent).

    Raises:
        EncoderBackendError: The backend has no artifact, or building failed.
    """
    src = Path(source) if source is not None else Path(bundled_model_path())
    target = artifact_dir(backend, source=source, cache_dir=cache_dir)
    if not force and artifact_ready(target):
        return Artifact(backend, target, built=False, seconds=0.0)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with _build_lock:
        if not force and artifact_ready(target):
            return Artifact(backend, target, built=False, seconds=0.0)
        for module in _BUILD_NEEDS[backend]:
            require(module, f"building the {backend} encoder")
        started = time.perf_counter()
        fp32 = None
        if backend == "onnx-int8":
            fp32 = build_artifact("onnx", source=source, cache_dir=cache_dir, log=log).path
        if log:
            log(f"building the {backend} encoder (once, into {target}): {_BUILD_STEPS[backend]}")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{backend}.", dir=target.parent))
        try:
            if backend == "onnx":
                files = export_onnx(src, tmp)
            elif backend == "onnx-int8":
                assert fp32 is not None
                files = quantize_onnx(fp32, tmp)
            else:
                files = distill_static(src, tmp)
            manifest = {
                "backend": backend,
                "encoder_id": backend_encoder_id(
                    backend, DEFAULT_MODEL_NAME if source is None else src.name
                ),
                "source": str(src),
                "fingerprint": source_fingerprint(src),
                "recipe": ARTIFACT_RECIPE,
                "files": files,
                "versions": _versions(),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", "utf-8")
            if target.exists():  # forced rebuild, or a torn folder from an older crash
                shutil.rmtree(target)
            try:
                os.replace(tmp, target)
            except OSError:
                if not artifact_ready(target):  # not a lost race: a real failure
                    raise
        except EncoderBackendError:
            raise
        except Exception as exc:
            raise EncoderBackendError(
                f"building the {backend} encoder into {target} failed: {type(exc).__name__}: {exc}"
            ) from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        seconds = time.perf_counter() - started
        if log:
            log(f"{backend} encoder built in {seconds:.0f} s")
        return Artifact(backend, target, built=True, seconds=seconds)


def artifact_of(encoder: QuestionEncoder) -> Path | None:
    """The built artifact an encoder runs from (``None`` for sentence-transformers and others)."""
    inner = uncached(encoder)
    if isinstance(inner, OnnxEncoder | StaticEncoder) and artifact_ready(inner.directory):
        return inner.directory
    return None


def save_artifact(encoder: QuestionEncoder, directory: str | Path) -> Path | None:
    """Copy ``encoder``'s artifact into ``directory/encoder/``: a saved predictor carries it.

    Building an artifact needs torch and the shipped model (the ``[train]`` extra), which the
    routing-only install lacks; with the copy, that install routes a router trained elsewhere,
    and with the very vectors it was trained with (a rebuild by other library versions could
    differ). The copy is written beside and renamed into place; an identical one is kept.

    Returns:
        The copy's folder, or ``None`` for an encoder without an artifact (nothing written).
    """
    source = artifact_of(encoder)
    if source is None:
        return None
    target = Path(directory) / CHECKPOINT_ARTIFACT_DIR
    manifest = _read_manifest(source)
    assert manifest is not None  # artifact_of checked it
    if target.exists() and (
        _same_dir(source, target) or (artifact_ready(target) and _read_manifest(target) == manifest)
    ):
        return target
    tmp = Path(tempfile.mkdtemp(prefix=".encoder.", dir=target.parent))
    os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide it from other users of the router
    try:
        for name in [*manifest["files"], MANIFEST_FILE]:  # the manifest last, as in a build
            shutil.copyfile(source / name, tmp / name)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def checkpoint_encoder(
    directory: str | Path, encoder_id: str, *, cache: bool = True
) -> QuestionEncoder | None:
    """The encoder a saved predictor carries (:func:`save_artifact`), if it has the given id."""
    path = Path(directory) / CHECKPOINT_ARTIFACT_DIR
    manifest = _read_manifest(path)
    if manifest is None or manifest.get("encoder_id") != encoder_id or not artifact_ready(path):
        return None
    backend = manifest.get("backend")
    if backend not in _BUILT_BACKENDS:
        return None
    encoder = _runner(backend, path, encoder_id, threads=None)
    return CachedEncoder(encoder) if cache else encoder


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str] = {}
    for dist in ("torch", "transformers", "onnx", "onnxruntime", "model2vec", "tokenizers"):
        with contextlib.suppress(PackageNotFoundError):
            out[dist] = version(dist)
    return out


def _max_seq_length(source: Path) -> int:
    try:
        config = json.loads((source / "sentence_bert_config.json").read_text("utf-8"))
        return int(config.get("max_seq_length") or 256)
    except (OSError, ValueError):
        return 256


def _write_tokenizer(source: Path, out: Path) -> None:
    """The model's tokenizer, truncating like sentence-transformers and padding per batch."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(source / TOKENIZER_FILE))
    tokenizer.no_padding()
    tokenizer.enable_truncation(_max_seq_length(source))
    pad_id = tokenizer.token_to_id("[PAD]")
    tokenizer.enable_padding(pad_id=pad_id or 0, pad_token="[PAD]")
    tokenizer.save(str(out / TOKENIZER_FILE))


def export_onnx(source: Path, out: Path) -> list[str]:
    """Export the transformer + mean pooling + L2 normalisation to one fused ONNX graph.

    ``torch.onnx.export`` (TorchScript exporter, opset 17, eager attention) and then
    onnxruntime's BERT graph fusions (attention, layer norm, GELU). The graph takes
    ``input_ids`` and ``attention_mask`` and returns ``sentence_embedding`` ``[batch, dim]``.
    """
    import torch
    from onnxruntime.transformers.optimizer import optimize_model
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(str(source))
    model = AutoModel.from_pretrained(str(source), attn_implementation="eager").eval()

    class _Sentence(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.inner(input_ids=input_ids, attention_mask=attention_mask)[0]
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    # A padded example, so the traced graph keeps the masking path.
    ids = torch.tensor([[101, 7592, 2088, 102], [101, 7592, 102, 0]], dtype=torch.long)
    mask = (ids != 0).long()
    raw = out / "raw.onnx"
    import warnings

    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Sentence(model),
            (ids, mask),
            str(raw),
            input_names=["input_ids", "attention_mask"],
            output_names=["sentence_embedding"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
                "sentence_embedding": {0: "batch"},
            },
            opset_version=_ONNX_OPSET,
            dynamo=False,
        )
    fused = optimize_model(
        str(raw),
        model_type="bert",
        num_heads=int(config.num_attention_heads),
        hidden_size=int(config.hidden_size),
        opt_level=1,
    )
    fused.save_model_to_file(str(out / ONNX_FILE))
    raw.unlink()
    _write_tokenizer(source, out)
    return [ONNX_FILE, TOKENIZER_FILE]


def quantize_onnx(fp32_dir: Path, out: Path) -> list[str]:
    """Dynamic int8 quantisation of the fused fp32 export, per output channel.

    Per-tensor scales lose too much (cosine 0.958 against the fp32 vectors); per-channel keeps
    about 0.994.
    """
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic logs a generic pre-processing hint
    try:
        quantize_dynamic(
            str(fp32_dir / ONNX_FILE),
            str(out / ONNX_FILE),
            per_channel=True,
            weight_type=QuantType.QInt8,
            extra_options={"DefaultTensorType": 1},  # TensorProto.FLOAT, for fused ops' outputs
        )
    finally:
        root.setLevel(level)
    shutil.copyfile(fp32_dir / TOKENIZER_FILE, out / TOKENIZER_FILE)
    return [ONNX_FILE, TOKENIZER_FILE]


def distill_static(source: Path, out: Path, *, pca_dims: int = STATIC_PCA_DIMS) -> list[str]:
    """Distil a model2vec static embedding table from the model (every vocabulary token once)."""
    import logging

    from model2vec.distill import distill

    logging.getLogger("model2vec").setLevel(logging.WARNING)
    model = distill(model_name=str(source), pca_dims=pca_dims)
    model.save_pretrained(str(out))
    return sorted(p.name for p in out.iterdir() if p.is_file())


# -------------------------------------------------------------------------------- encoders


def _threads(threads: int | None) -> int:
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
                options.intra_op_num_threads = _threads(self.threads)
                options.inter_op_num_threads = 1
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
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


def make_encoder(
    backend: str | None = None,
    *,
    cache: bool = True,
    cache_dir: str | Path | None = None,
    build: bool = True,
    threads: int | None = None,
    log: Log | None = _stderr,
) -> QuestionEncoder:
    """The shipped all-MiniLM-L6-v2 run by ``backend``, behind the embedding cache by default.

    Args:
        backend: One of :data:`BACKENDS`; default ``$RTR_ENCODER_BACKEND`` or
            :data:`DEFAULT_BACKEND`.
        cache: Wrap in :class:`CachedEncoder` (vectors keyed by this backend's id).
        cache_dir: Root of the embedding cache and of the built artifacts.
        build: Build a missing artifact now (needs torch, once); ``False`` raises instead.
        threads: ONNX Runtime threads (ONNX backends only).
        log: Where the "building..." lines go.

    Raises:
        EncoderBackendError: Unknown backend, or a missing artifact with ``build=False``.
    """
    name = resolve_backend(backend)
    encoder: QuestionEncoder
    if name == "sentence-transformers":
        encoder = SentenceTransformerEncoder()
    else:
        path = artifact_dir(name, cache_dir=cache_dir)
        if not artifact_ready(path):
            if not build:
                command = "distill" if name == "static" else "export"
                raise EncoderBackendError(
                    f"the {name} encoder is not built ({path} is missing); run "
                    f"`rtr encoder {command} --backend {name}`"
                )
            path = build_artifact(name, cache_dir=cache_dir, log=log).path
        encoder = _runner(name, path, backend_encoder_id(name), threads)
    return CachedEncoder(encoder, cache_dir) if cache else encoder


def _runner(
    backend: EncoderBackend, path: Path, encoder_id: str, threads: int | None
) -> QuestionEncoder:
    """The encoder that runs a built artifact of ``backend`` found at ``path``."""
    if backend == "static":
        return StaticEncoder(path, encoder_id)
    max_batch = 1 if backend == "onnx-int8" else ONNX_FP32_BATCH
    return OnnxEncoder(path, encoder_id, threads=threads, max_batch=max_batch)
