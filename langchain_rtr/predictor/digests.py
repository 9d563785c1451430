"""Checkpoint integrity: a sha256 of every file a save wrote, checked before a load reads it.

A damaged checkpoint (a torn copy, flipped bits, tensor bytes overwritten in place without
changing the size) would otherwise load and route every question on garbage predictions. Each
saving directory (a predictor checkpoint, a cascade, a router) gets one ``digests.json`` for the
files it wrote itself; subdirectories carry their own. A checkpoint saved before digests existed
has no such file and loads as before.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from langchain_rtr.predictor.types import CheckpointError

DIGEST_FILE = "digests.json"
DIGEST_FORMAT = "langchain-rtr-digests"
_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    """The hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def record_digests(directory: str | Path, names: Iterable[str]) -> None:
    """Write ``directory/digests.json`` with the sha256 of each named file in ``directory``."""
    root = Path(directory)
    files = {name: file_sha256(root / name) for name in sorted(names)}
    text = json.dumps({"format": DIGEST_FORMAT, "sha256": files}, indent=2) + "\n"
    tmp = root / f".{DIGEST_FILE}.tmp"
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(root / DIGEST_FILE)


def verify_digests(directory: str | Path) -> None:
    """Refuse a directory whose files differ from the digests its save recorded.

    Raises:
        CheckpointError: A recorded file is missing or its bytes changed (the message names
            the file), or ``digests.json`` itself is unreadable.
    """
    root = Path(directory)
    path = root / DIGEST_FILE
    if not path.is_file():
        return
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
        files = recorded["sha256"]
        if recorded.get("format") != DIGEST_FORMAT or not isinstance(files, dict):
            raise ValueError("not a digests file")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: unreadable digests file ({exc})") from exc
    for name, expected in sorted(files.items()):
        target = root / str(name)
        if not target.is_file():
            raise CheckpointError(f"{target}: missing (its save recorded it in {path})")
        actual = file_sha256(target)
        if actual != expected:
            raise CheckpointError(
                f"{target}: contents changed since it was saved (sha256 {actual[:16]}..., "
                f"recorded {str(expected)[:16]}... in {path}); the checkpoint is damaged: "
                "save it again or restore a good copy"
            )
