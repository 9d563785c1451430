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

Names and ids are in :mod:`~langchain_rtr.predictor.backend_names`, building in
:mod:`~langchain_rtr.predictor.artifacts`, running in :mod:`~langchain_rtr.predictor.runners`;
this module picks and builds the encoder a caller asks for, and copies artifacts into
checkpoints. Each backend has its own encoder id, so the embedding cache never mixes their
vectors and a predictor trained with one is refused with another (see
:meth:`RTRPredictor.load`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from langchain_rtr.predictor.artifacts import (
    ARTIFACT_RECIPE,
    BUILT_BACKENDS,
    MANIFEST_FILE,
    ONNX_FILE,
    STATIC_PCA_DIMS,
    TOKENIZER_FILE,
    Artifact,
    Log,
    artifact_dir,
    artifact_ready,
    build_artifact,
    distill_static,
    export_onnx,
    log_to_stderr,
    quantize_onnx,
    read_manifest,
    source_fingerprint,
)
from langchain_rtr.predictor.backend_names import (
    BACKEND_ENV,
    BACKENDS,
    DEFAULT_BACKEND,
    DEFAULT_ENCODER_ID,
    THREADS_ENV,
    EncoderBackend,
    EncoderBackendError,
    backend_encoder_id,
    backend_of_id,
    resolve_backend,
)
from langchain_rtr.predictor.encoder import (
    CachedEncoder,
    QuestionEncoder,
    SentenceTransformerEncoder,
    uncached,
)
from langchain_rtr.predictor.runners import ONNX_FP32_BATCH, OnnxEncoder, StaticEncoder, runner_for

__all__ = [  # this module's own names and those of the three it was split into
    "ARTIFACT_RECIPE",
    "BACKENDS",
    "BACKEND_ENV",
    "CHECKPOINT_ARTIFACT_DIR",
    "DEFAULT_BACKEND",
    "DEFAULT_ENCODER_ID",
    "MANIFEST_FILE",
    "ONNX_FILE",
    "ONNX_FP32_BATCH",
    "STATIC_PCA_DIMS",
    "THREADS_ENV",
    "TOKENIZER_FILE",
    "Artifact",
    "EncoderBackend",
    "EncoderBackendError",
    "OnnxEncoder",
    "StaticEncoder",
    "artifact_dir",
    "artifact_of",
    "artifact_ready",
    "backend_encoder_id",
    "backend_of_id",
    "build_artifact",
    "checkpoint_encoder",
    "distill_static",
    "export_onnx",
    "make_encoder",
    "quantize_onnx",
    "resolve_backend",
    "save_artifact",
    "source_fingerprint",
]

CHECKPOINT_ARTIFACT_DIR = "encoder"
"""Where a saved predictor keeps a copy of its encoder's artifact (see :func:`save_artifact`)."""


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
    manifest = read_manifest(source)
    assert manifest is not None  # artifact_of checked it
    if target.exists() and (
        _same_dir(source, target) or (artifact_ready(target) and read_manifest(target) == manifest)
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
    manifest = read_manifest(path)
    if manifest is None or manifest.get("encoder_id") != encoder_id or not artifact_ready(path):
        return None
    backend = manifest.get("backend")
    if backend not in BUILT_BACKENDS:
        return None
    encoder = runner_for(backend, path, encoder_id, threads=None)
    return CachedEncoder(encoder) if cache else encoder


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def make_encoder(
    backend: str | None = None,
    *,
    cache: bool = True,
    cache_dir: str | Path | None = None,
    build: bool = True,
    threads: int | None = None,
    log: Log | None = log_to_stderr,
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
        encoder = runner_for(name, path, backend_encoder_id(name), threads)
    return CachedEncoder(encoder, cache_dir) if cache else encoder
