"""Building the ONNX and static encoder artifacts from the shipped model, once and offline.

An artifact lives in ``default_cache_dir()/encoders/<model>-<fingerprint>/<backend>/``; a
manifest, written last, says what was built from what. Each build writes a temporary folder
and renames it into place. Building needs torch; running an artifact
(:mod:`~langchain_rtr.predictor.runners`) does not.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from langchain_rtr.predictor.backend_names import (
    EncoderBackend,
    EncoderBackendError,
    backend_encoder_id,
)
from langchain_rtr.predictor.encoder import (
    DEFAULT_MODEL_NAME,
    bundled_model_path,
    default_cache_dir,
)
from langchain_rtr.predictor.extras import require

ARTIFACT_RECIPE = 1
"""Bumped when an export or distillation recipe changes, so old artifacts are rebuilt."""

MANIFEST_FILE = "manifest.json"
ONNX_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
STATIC_PCA_DIMS = 256
"""The static encoder's vector size (model2vec's PCA default)."""


_ONNX_OPSET = 17
BUILT_BACKENDS: tuple[EncoderBackend, ...] = ("onnx", "onnx-int8", "static")
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


def log_to_stderr(message: str) -> None:
    """Where build progress goes by default: a build takes minutes, so the user is told."""
    print(message, file=sys.stderr, flush=True)


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
    if backend not in BUILT_BACKENDS:
        raise EncoderBackendError(f"backend {backend!r} has no artifact to build")
    src = Path(source) if source is not None else Path(bundled_model_path())
    name = DEFAULT_MODEL_NAME if source is None else src.name
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / "encoders" / f"{name}-{source_fingerprint(src)}" / backend


def read_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest of the artifact at ``path``, or ``None`` where there is none readable."""
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def artifact_ready(path: Path) -> bool:
    """Whether ``path`` holds a complete artifact (its manifest is written last)."""
    manifest = read_manifest(path)
    if manifest is None:
        return False
    return all((path / name).is_file() for name in manifest.get("files", []))


def build_artifact(
    backend: EncoderBackend,
    *,
    source: str | Path | None = None,
    cache_dir: str | Path | None = None,
    force: bool = False,
    log: Log | None = log_to_stderr,
) -> Artifact:
    """Build ``backend``'s artifact from the shipped model (offline) unless it is already there.

    The artifact is written into a temporary folder beside its final place and renamed into
    place, so a crash never leaves a half-written artifact; a lock file beside it makes a
    concurrent build, in this process or another, wait for the first and use its artifact.

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
    target.parent.mkdir(parents=True, exist_ok=True)
    # One build per artifact across threads and processes (server workers, test workers): the
    # others wait, then find it built. int8 takes onnx's lock inside its own to build its parent.
    with FileLock(target.parent / f"{backend}.lock"):
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
