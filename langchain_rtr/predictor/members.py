"""Training an ensemble's members: one after the other, or at once in forked processes.

Members are independent (each has its own seed, validation part and batch order) and each trains
on one torch thread, so on a machine with spare cores they can train side by side. A member's
arithmetic does not change with the process it runs in: with the default one thread per member
the weights are the same either way (``tests/unit/test_predictor.py`` checks it); only the wall
time shrinks. Processes are forked (as PyTorch's own data-loader workers are), so a script that
trains at top level, with no ``if __name__ == "__main__"`` guard, still works; where fork is
missing, members train in turn.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from langchain_rtr.predictor.types import ProgressFn, TrainConfig

if TYPE_CHECKING:
    from langchain_rtr.predictor.model import RTRNet

#: Below this many training cells (questions x pairs), forking costs more than it saves.
PARALLEL_MIN_CELLS = 50_000


@dataclass(frozen=True)
class MemberData:
    """What every member trains on (picklable: numpy arrays and the config)."""

    model_text: np.ndarray
    strategy_text: np.ndarray
    pair_model: np.ndarray
    pair_strategy: np.ndarray
    questions: np.ndarray
    score: np.ndarray
    length: np.ndarray | None  # log1p(tokens) / length_scale; None without a length head
    length_scale: float | None
    config: TrainConfig


@dataclass
class MemberRun:
    """One trained member and what the ensemble needs from its validation part."""

    net: RTRNet
    epochs: int
    best_epoch: int
    best_validation_loss: float
    history: list[tuple[int, float, float]]
    train_size: int
    val_idx: np.ndarray
    val_tokens: np.ndarray | None  # predicted tokens on the validation rows
    val_logits: np.ndarray | None


def default_workers(config: TrainConfig, cells: int) -> int:
    """Processes for ``config.ensemble`` members: the usable cores, if the job is big enough."""
    if config.workers is not None:
        return max(1, min(config.workers, config.ensemble))
    if cells < PARALLEL_MIN_CELLS or "fork" not in multiprocessing.get_all_start_methods():
        return 1
    return max(1, min(config.ensemble, len(os.sched_getaffinity(0))))


def train_members(
    data: MemberData, seeds: Sequence[int], workers: int, progress: ProgressFn | None
) -> list[MemberRun]:
    """Train one member per seed, in member order; ``progress`` counts epochs across members.

    In parallel, a member's epochs are reported when it finishes, not as they happen.
    """
    if workers <= 1 or len(seeds) <= 1 or multiprocessing.current_process().daemon:
        runs: list[MemberRun] = []
        for seed in seeds:
            done = sum(run.epochs for run in runs)
            on_epoch = (
                None
                if progress is None
                else lambda epoch, tl, vl, done=done: progress(done + epoch, tl, vl)
            )
            runs.append(train_member(data, seed, on_epoch))
        return runs
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        states = list(pool.map(_train_member_state, [data] * len(seeds), seeds))
    runs = [_run_from_state(data, state) for state in states]
    if progress is not None:
        done = 0
        for run in runs:
            for epoch, train_loss, val_loss in run.history:
                progress(done + epoch, train_loss, val_loss)
            done += run.epochs
    return runs


def train_member(data: MemberData, seed: int, progress: ProgressFn | None) -> MemberRun:
    """One member: seeded initialisation, its own validation part, early-stopped training."""
    import torch

    from langchain_rtr.predictor.training import (
        fit_network,
        predicted_tokens,
        torch_threads,
        validation_split,
    )

    config = data.config
    rng = np.random.default_rng(seed)
    train_idx, val_idx = validation_split(len(data.questions), config.validation_fraction, rng)
    with torch.random.fork_rng(devices=[]):  # seeded init, callers' RNG untouched
        torch.manual_seed(seed)
        net = _new_net(data)
    questions = torch.from_numpy(np.ascontiguousarray(data.questions))
    length = torch.from_numpy(data.length) if data.length is not None else None
    val_tokens = val_logits = None
    with torch_threads(config.num_threads):
        fit = fit_network(
            net,
            questions=questions,
            score=torch.from_numpy(data.score),
            length=length,
            train_idx=train_idx,
            val_idx=val_idx,
            config=config,
            rng=rng,
            progress=progress,
        )
        if len(val_idx):
            val_questions = questions[torch.from_numpy(val_idx)]
            if data.length_scale is not None:
                val_tokens = predicted_tokens(net, val_questions, data.length_scale)
            with torch.no_grad():
                val_logits = net.raw(val_questions)[0].numpy()
    return MemberRun(
        net=net,
        epochs=fit.epochs,
        best_epoch=fit.best_epoch,
        best_validation_loss=fit.best_validation_loss,
        history=list(fit.history),
        train_size=len(train_idx),
        val_idx=val_idx,
        val_tokens=val_tokens,
        val_logits=val_logits,
    )


def _new_net(data: MemberData) -> RTRNet:
    import torch

    from langchain_rtr.predictor.model import RTRNet

    config = data.config
    return RTRNet(
        torch.from_numpy(data.model_text),
        torch.from_numpy(data.strategy_text),
        torch.from_numpy(data.pair_model),
        torch.from_numpy(data.pair_strategy),
        question_dim=data.questions.shape[1],
        learnable_dim=config.learnable_dim,
        hidden=config.hidden,
        length_head=data.length is not None,
        embedding_std=config.embedding_std,
    )


def _train_member_state(data: MemberData, seed: int) -> tuple[dict[str, np.ndarray], MemberRun]:
    """In a worker process: train, and send the weights back as numpy (no torch pickling).

    One torch thread for everything the worker runs: the forked copy of the parent's OpenMP
    pool cannot be used (a parallel region in a forked child hangs).
    """
    import torch

    torch.set_num_threads(1)
    run = train_member(data, seed, None)
    state = {k: v.detach().numpy().copy() for k, v in run.net.state_dict().items()}
    run.net = None  # type: ignore[assignment]  # rebuilt from ``state`` in the parent
    return state, run


def _run_from_state(data: MemberData, sent: tuple[dict[str, np.ndarray], MemberRun]) -> MemberRun:
    import torch

    state, run = sent
    with torch.random.fork_rng(devices=[]):  # initial values are overwritten below
        net = _new_net(data)
    net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    run.net = net.eval()
    return run
