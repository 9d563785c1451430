"""The RTR network: correctness and length heads over [question; model; strategy].

Kept free of training and I/O so that the scorer can be read (and benchmarked) on its own.
"""

from __future__ import annotations

import torch
from torch import nn


class FactorisedHead(nn.Module):
    """A one-hidden-layer MLP over ``[q; pair]``, with its first layer split in two.

    This is exactly the MLP ``w2 · relu(W [q; p] + b) + b2`` of the paper: writing
    ``W = [W_q | W_p]`` gives ``W [q; p] + b = W_q q + (W_p p + b)``. The question block
    ``W_q q`` is computed once per question and the pair block ``W_p p + b`` once per pair, then
    broadcast to ``[n_questions, n_pairs, hidden]``. Scoring P pairs costs one
    ``[n, d_q] x [d_q, hidden]`` product instead of P products over the full concatenation.

    Args:
        question_dim: Size of a question vector.
        pair_dim: Size of a pair's feature vector.
        hidden: Hidden units.
    """

    def __init__(self, question_dim: int, pair_dim: int, hidden: int) -> None:
        super().__init__()
        self.question = nn.Linear(question_dim, hidden, bias=False)
        self.pair = nn.Linear(pair_dim, hidden, bias=True)
        self.out = nn.Linear(hidden, 1)
        # nn.Linear initialises from each block's own fan-in; re-draw both blocks as one layer
        # of fan-in question_dim + pair_dim would, so the split changes nothing about the model.
        bound = 1.0 / float(question_dim + pair_dim) ** 0.5
        for weight in (self.question.weight, self.pair.weight, self.pair.bias):
            nn.init.uniform_(weight, -bound, bound)

    def pair_bias(self, pair_features: torch.Tensor) -> torch.Tensor:
        """``W_p p + b`` for every pair: ``[P, pair_dim] -> [P, hidden]``."""
        bias: torch.Tensor = self.pair(pair_features)
        return bias

    def forward(self, questions: torch.Tensor, pair_bias: torch.Tensor) -> torch.Tensor:
        """Raw outputs ``[n, P]`` from questions ``[n, d_q]`` and pair biases ``[P, hidden]``."""
        return self.from_projected(self.question(questions), pair_bias)

    def from_projected(self, projected: torch.Tensor, pair_bias: torch.Tensor) -> torch.Tensor:
        """Raw outputs ``[n, P]`` from question blocks ``W_q q`` ``[n, hidden]``.

        For fitting pair features alone: the question blocks are then computed once.
        """
        hidden = torch.relu(projected.unsqueeze(1) + pair_bias.unsqueeze(0))
        out: torch.Tensor = self.out(hidden)
        return out.squeeze(-1)


class RTRNet(nn.Module):
    """Both heads plus the model and strategy representations.

    A pair's features are ``[m_text; s_text; m_learn; s_learn]``: the frozen encodings of the
    descriptions (buffers, saved with the weights) and learnable embeddings.

    Args:
        model_text: Frozen description encodings of the models, ``[M, d]``.
        strategy_text: Frozen description encodings of the strategies, ``[S, d]``.
        pair_model: For each pair, the index of its model, ``[P]``.
        pair_strategy: For each pair, the index of its strategy, ``[P]``.
        question_dim: Size of a question vector.
        learnable_dim: Size of each learnable embedding (0 for none).
        hidden: Hidden units of each head.
        length_head: Whether to build the length head.
    """

    model_text: torch.Tensor
    strategy_text: torch.Tensor
    pair_model: torch.Tensor
    pair_strategy: torch.Tensor

    def __init__(
        self,
        model_text: torch.Tensor,
        strategy_text: torch.Tensor,
        pair_model: torch.Tensor,
        pair_strategy: torch.Tensor,
        *,
        question_dim: int,
        learnable_dim: int,
        hidden: int,
        length_head: bool,
        embedding_std: float = 0.1,
    ) -> None:
        super().__init__()
        self.register_buffer("model_text", model_text.float().clone())
        self.register_buffer("strategy_text", strategy_text.float().clone())
        self.register_buffer("pair_model", pair_model.long().clone())
        self.register_buffer("pair_strategy", pair_strategy.long().clone())
        n_models, n_strategies = model_text.shape[0], strategy_text.shape[0]
        self.model_learn = nn.Parameter(torch.randn(n_models, learnable_dim) * embedding_std)
        self.strategy_learn = nn.Parameter(torch.randn(n_strategies, learnable_dim) * embedding_std)
        pair_dim = model_text.shape[1] + strategy_text.shape[1] + 2 * learnable_dim
        self.correctness = FactorisedHead(question_dim, pair_dim, hidden)
        self.length: FactorisedHead | None = (
            FactorisedHead(question_dim, pair_dim, hidden) if length_head else None
        )

    def pair_features(self) -> torch.Tensor:
        """``[P, pair_dim]``: each pair's ``[m_text; s_text; m_learn; s_learn]``."""
        m, s = self.pair_model, self.pair_strategy
        return torch.cat(
            [
                self.model_text[m],
                self.strategy_text[s],
                self.model_learn[m],
                self.strategy_learn[s],
            ],
            dim=1,
        )

    def pair_biases(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-pair biases of the correctness and length heads (they change only with weights)."""
        features = self.pair_features()
        length = self.length.pair_bias(features) if self.length is not None else None
        return self.correctness.pair_bias(features), length

    def raw(self, questions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Correctness logits and length outputs before the Softplus, both ``[n, P]``."""
        correct_bias, length_bias = self.pair_biases()
        logits = self.correctness(questions, correct_bias)
        length = None
        if self.length is not None:
            assert length_bias is not None
            length = self.length(questions, length_bias)
        return logits, length

    def forward(self, questions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Correctness logits ``[n, P]`` and length outputs ``[n, P]`` (Softplus, >= 0)."""
        logits, length = self.raw(questions)
        return logits, nn.functional.softplus(length) if length is not None else None


class RTREnsemble(nn.Module):
    """Several :class:`RTRNet` trained apart (own seed, validation part and batch order).

    Its outputs average the members' raw outputs (the correctness logits, the length head
    before its Softplus). Averaging that way is exactly one wider network -- the members'
    hidden units side by side, output weights divided by their number -- so scoring an
    ensemble costs what one network of ``members x hidden`` units costs.

    Why: on a small training set one network's ranking of questions depends on its seed as
    much as on the data (RouteLLM GSM8K, ~950 training questions: APGR 0.52-0.62 over three
    seeds); averaging five gave 0.62-0.66.
    """

    def __init__(self, members: list[RTRNet]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one network")
        self.members = nn.ModuleList(members)

    @property
    def has_length_head(self) -> bool:
        """Whether the members predict output lengths."""
        first: RTRNet = self.members[0]  # type: ignore[assignment]
        return first.length is not None

    @property
    def question_dim(self) -> int:
        """Size of the question vectors the heads take."""
        first: RTRNet = self.members[0]  # type: ignore[assignment]
        return int(first.correctness.question.in_features)

    def forward(self, questions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Mean correctness logits and Softplus of the mean raw length, both ``[n, P]``."""
        outs = [member.raw(questions) for member in self.members]  # type: ignore[operator]
        logits = torch.stack([o[0] for o in outs]).mean(0)
        if outs[0][1] is None:
            return logits, None
        raw = torch.stack([o[1] for o in outs if o[1] is not None]).mean(0)
        return logits, nn.functional.softplus(raw)
