"""Cheap question features that the heads can see beside the sentence vector (opt-in).

A mean-pooled, L2-normalised sentence vector keeps what a question is about but little of how
long it is or how many quantities it gives, and those set much of how long a reasoned answer
runs. Three numbers, computed from the text in microseconds, put that back: words, numbers
and sentences (full stops and question marks, a decimal point included), each as ``log1p``
with a fixed offset (no statistics of a training set, so a question's features never depend
on what a predictor was trained on). ``TrainConfig(question_features=True)`` turns them on;
docs/quality.md has the validation measurements that kept them off by default (better
lengths in distribution, no better routing under a shift of source).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

QUESTION_FEATURES: tuple[str, ...] = ("words", "numbers", "sentences")
"""What each feature column counts, in column order."""

_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_OFFSETS = np.array([3.5, 1.5, 1.5], np.float32)
"""Subtracted from each ``log1p`` count (about 32 words, 3.5 numbers and 3.5 sentences: a short
word problem), so the features start near zero like the vector's components."""


def question_features(questions: Sequence[str]) -> np.ndarray:
    """``[n, 3]`` float32: ``log1p`` of each question's words, numbers and sentences, offset."""
    counts = np.array(
        [(len(q.split()), len(_NUMBER.findall(q)), q.count(".") + q.count("?")) for q in questions],
        dtype=np.float32,
    ).reshape(len(questions), len(QUESTION_FEATURES))
    return np.log1p(counts) - _OFFSETS


def with_question_features(embeddings: np.ndarray, questions: Sequence[str]) -> np.ndarray:
    """``embeddings`` ``[n, d]`` with the questions' features appended: ``[n, d + 3]``."""
    vectors = np.asarray(embeddings, np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != len(questions):
        raise ValueError(
            f"embeddings have shape {vectors.shape}; expected one row per question "
            f"({len(questions)})"
        )
    return np.hstack([vectors, question_features(questions)])
