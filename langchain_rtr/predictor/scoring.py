"""Scoring the two heads in numpy: the inference path that never imports torch.

The network (``model.RTRNet``, or an ``RTREnsemble`` of them merged into one wider network) is
a pair of factorised one-hidden-layer MLPs. At inference
everything but the question block is constant, so a head is three arrays: the question weight
``W_q`` ``[d, hidden]``, the per-pair bias ``W_p p + b`` ``[P, hidden]`` and the output layer.
This module rebuilds those from the checkpoint's tensors (``safetensors.numpy``) and scores
``relu(q W_q + pair_bias) · w_out + b_out``; correctness is its sigmoid, length is
``expm1(softplus(raw) · length_scale)`` -- the same transforms as the torch path, so the two
agree to float32 rounding.

Why numpy and not torch at inference: a routing process with an ONNX or static encoder then
never loads torch (about a second and a few hundred MB), and for the small batches of live
routing numpy's single BLAS call is faster than torch's per-op thread dispatch on a busy machine.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from langchain_rtr.errors import RTRError

MAX_LOG_TOKENS = np.float32(np.log1p(1e7))
"""Predicted lengths stop at ten million tokens: far-off inputs (the question features are not
bounded) must not overflow float32 into an infinite length."""

SCORE_BLOCK_ELEMENTS = 2_048 * 768
"""Elements per ``[questions, pairs, hidden]`` block (6 MB of float32), whatever the hidden
width: a block that stays in cache is what keeps batched scoring fast."""

SMALL_BATCH_ROWS = 2_048
"""Up to this many question x pair rows, products run as ``einsum`` loops, not BLAS calls.

A multi-threaded BLAS call on a tiny product costs more in thread wake-ups than it computes
(docs/encoders.md has the measurement); ``einsum`` never calls BLAS without ``optimize``, and
live routing is always this case."""

_HEAD_KEYS = ("question.weight", "pair.weight", "pair.bias", "out.weight", "out.bias")
_REQUIRED = (
    "model_text",
    "strategy_text",
    "pair_model",
    "pair_strategy",
    "model_learn",
    "strategy_learn",
)


class ScoringError(RTRError, ValueError):
    """The tensors given do not make a complete, consistent pair of heads."""


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function (no overflow for large ``|x|``)."""
    return (0.5 * (1.0 + np.tanh(0.5 * x))).astype(np.float32, copy=False)


def softplus(x: np.ndarray) -> np.ndarray:
    """``log(1 + exp(x))``, stable for large ``x`` (torch's Softplus with beta 1)."""
    out: np.ndarray = np.logaddexp(np.float32(0.0), x)
    return out.astype(np.float32, copy=False)


@dataclass(frozen=True)
class NumpyHead:
    """One head at inference.

    Attributes:
        bias: ``[P, hidden]``: ``W_p p + b`` for every pair.
        out_weight: ``[hidden]``.
        out_bias: The output layer's bias.
    """

    bias: np.ndarray
    out_weight: np.ndarray
    out_bias: float

    def apply(self, projected: np.ndarray) -> np.ndarray:
        """Question blocks ``[n, hidden]`` to raw outputs ``[n, P]``."""
        hidden = projected[:, None, :] + self.bias[None, :, :]
        np.maximum(hidden, 0.0, out=hidden)
        out: np.ndarray
        if hidden.shape[0] * hidden.shape[1] <= SMALL_BATCH_ROWS:
            out = np.einsum("nph,h->np", hidden, self.out_weight)
        else:
            out = hidden @ self.out_weight
        out += np.float32(self.out_bias)
        return out


@dataclass(frozen=True)
class NumpyScorer:
    """Both heads, precomputed from a state dict; scores question vectors in numpy.

    Attributes:
        question_weight: ``[d, hidden]`` or ``[d, 2 * hidden]``: both heads' ``W_q`` (every
            member's, side by side), so one matrix product projects a batch for both.
        correctness: The correctness head.
        length: The length head, or ``None`` when the predictor has none.
        length_scale: Length targets are ``log1p(tokens) / length_scale``.
    """

    question_weight: np.ndarray
    correctness: NumpyHead
    length: NumpyHead | None
    length_scale: float

    @property
    def question_dim(self) -> int:
        """Size of the question vectors the heads take."""
        return int(self.question_weight.shape[0])

    @property
    def n_pairs(self) -> int:
        """Number of (model, strategy) columns."""
        return int(self.correctness.bias.shape[0])

    @classmethod
    def from_state_dict(
        cls, state: Mapping[str, np.ndarray], length_scale: float | None
    ) -> NumpyScorer:
        """Build from the tensors of an ``RTREnsemble`` (or of one ``RTRNet``) as numpy arrays.

        An ensemble's members become one wider network: their hidden units side by side and
        the output weights divided by their number, which averages the raw outputs.

        Raises:
            ScoringError: A tensor is missing or the shapes do not fit together.
        """
        prefixes = member_prefixes(state)
        has_length = any(k.startswith(f"{prefixes[0]}length.") for k in state)
        members = [_member_heads(state, prefix, has_length) for prefix in prefixes]

        def merged(index: int) -> tuple[list[np.ndarray], NumpyHead]:
            parts = [m[index] for m in members]
            head = NumpyHead(
                bias=np.ascontiguousarray(np.concatenate([h.bias for _, h in parts], axis=1)),
                out_weight=np.concatenate([h.out_weight for _, h in parts]) / len(parts),
                out_bias=float(np.mean([h.out_bias for _, h in parts])),
            )
            return [w.T for w, _ in parts], head

        blocks, correctness = merged(0)
        length = None
        if has_length:
            length_blocks, length = merged(1)
            blocks += length_blocks
        if len({w.shape for w in blocks}) != 1:
            raise ScoringError(
                f"the question weights differ in shape: {[w.shape[::-1] for w in blocks]}"
            )
        return cls(
            question_weight=np.ascontiguousarray(np.concatenate(blocks, axis=1)),
            correctness=correctness,
            length=length,
            length_scale=float(length_scale or 1.0),
        )

    def score(self, questions: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Correctness probabilities and output tokens ``[n, P]`` for question vectors ``[n, d]``.

        The ``[n, P, hidden]`` part runs in blocks of at most :data:`SCORE_BLOCK_ELEMENTS`.
        """
        q = np.ascontiguousarray(questions, dtype=np.float32)
        n, n_pairs = q.shape[0], self.n_pairs
        hidden = self.correctness.bias.shape[1]
        if n * n_pairs <= SMALL_BATCH_ROWS:
            projected = np.einsum("nd,dh->nh", q, self.question_weight)
        else:
            projected = q @ self.question_weight
        correctness = np.empty((n, n_pairs), np.float32)
        length = np.empty((n, n_pairs), np.float32) if self.length is not None else None
        step = max(1, SCORE_BLOCK_ELEMENTS // max(n_pairs * hidden, 1))
        for start in range(0, n, step):
            block = projected[start : start + step]
            correctness[start : start + step] = sigmoid(self.correctness.apply(block[:, :hidden]))
            if length is not None and self.length is not None:
                raw = softplus(self.length.apply(block[:, hidden:]))
                log_tokens = np.minimum(raw * np.float32(self.length_scale), MAX_LOG_TOKENS)
                length[start : start + step] = np.expm1(log_tokens)
        return correctness, length


def member_prefixes(state: Mapping[str, object]) -> list[str]:
    """Key prefixes of an ensemble's members (``members.0.``, ...); ``[""]`` for one network."""
    n = 0
    while f"members.{n}.pair_model" in state:
        n += 1
    return [f"members.{i}." for i in range(n)] if n else [""]


def _member_heads(
    state: Mapping[str, np.ndarray], prefix: str, has_length: bool
) -> list[tuple[np.ndarray, NumpyHead]]:
    """One network's heads: ``(W_q [hidden, d], head)`` for correctness (and length)."""
    heads = ("correctness", "length") if has_length else ("correctness",)
    wanted = [*_REQUIRED, *(f"{h}.{k}" for h in heads for k in _HEAD_KEYS)]
    missing = [prefix + k for k in wanted if prefix + k not in state]
    if missing:
        raise ScoringError(f"state dict lacks tensors {missing}")

    def f32(key: str) -> np.ndarray:
        return np.ascontiguousarray(np.asarray(state[prefix + key], dtype=np.float32))

    pm = np.asarray(state[prefix + "pair_model"], dtype=np.int64)
    ps = np.asarray(state[prefix + "pair_strategy"], dtype=np.int64)
    try:
        features = np.concatenate(
            [
                f32("model_text")[pm],
                f32("strategy_text")[ps],
                f32("model_learn")[pm],
                f32("strategy_learn")[ps],
            ],
            axis=1,
        )
    except (IndexError, ValueError) as exc:
        raise ScoringError(f"{prefix}pair features do not fit together ({exc})") from exc

    def head(name: str) -> tuple[np.ndarray, NumpyHead]:
        w_p, b_p = f32(f"{name}.pair.weight"), f32(f"{name}.pair.bias")
        if w_p.shape[1] != features.shape[1]:
            raise ScoringError(
                f"{prefix}{name}.pair.weight has shape {w_p.shape}; pair features are "
                f"{features.shape[1]}-d"
            )
        # float64 for the constant part: it is computed once, so rounding stays minimal.
        bias = (features.astype(np.float64) @ w_p.T.astype(np.float64) + b_p).astype(np.float32)
        out_w = f32(f"{name}.out.weight").reshape(-1)
        out_b = float(f32(f"{name}.out.bias").reshape(-1)[0])
        return f32(f"{name}.question.weight"), NumpyHead(bias, out_w, out_b)

    return [head(h) for h in heads]
