"""Training time: the ensemble's members one after the other against at once in processes.

    python benchmarks/bench_training.py                          # bundled faithful-cot, train part
    python benchmarks/bench_training.py --max-questions 2000 --workers 2

Both runs train the default predictor (``TrainConfig()``, five members) on the same questions,
put in the encoder's on-disk cache beforehand, so both read the same vectors and only training
differs; the weights must come out identical (one torch thread per member either way), which is
checked. Printed: seconds for each and their ratio.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from langchain_rtr import TrainConfig, load_data
from langchain_rtr.predictor import RTRPredictor, default_encoder
from langchain_rtr.workflow import split


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="faithful-cot")
    ap.add_argument("--max-questions", type=int, default=0, help="0: the whole train part")
    ap.add_argument("--workers", type=int, default=None, help="default: the usable cores")
    args = ap.parse_args()

    data = load_data(args.data)
    train, _ = split(data, test_fraction=0.2, seed=0, max_questions=args.max_questions or None)
    # The default encoder caches vectors on disk: encode once here, so both runs only read them.
    encoder = default_encoder()
    descriptions = {name: spec.description for name, spec in data.models.items()}
    encoder.encode([*train.questions, *descriptions.values(), *data.strategies.values()])
    cores = len(os.sched_getaffinity(0))
    size = f"{len(train.questions)} questions x {len(train.pairs)} pairs"
    print(f"{args.data}: {size}; {cores} cores")

    # One short training first: torch's first optimiser steps pay one-time set-up that would
    # otherwise land on whichever run goes first.
    RTRPredictor.train(
        train,
        descriptions,
        data.strategies,
        encoder=encoder,
        config=TrainConfig(ensemble=1, max_epochs=1),
    )
    timings: dict[str, float] = {}
    trained: dict[str, RTRPredictor] = {}
    for name, workers in (("in turn", 1), ("in processes", args.workers)):
        started = time.perf_counter()
        trained[name] = RTRPredictor.train(
            train,
            descriptions,
            data.strategies,
            encoder=encoder,
            config=TrainConfig(workers=workers),
        )
        timings[name] = time.perf_counter() - started
        print(f"{name:>13}: {timings[name]:7.1f} s  (epochs {trained[name].summary.epochs})")
    same = all(
        np.array_equal(a.numpy(), b.numpy())
        for a, b in zip(
            trained["in turn"].net.state_dict().values(),
            trained["in processes"].net.state_dict().values(),
            strict=True,
        )
    )
    print(f"ratio in processes / in turn: {timings['in processes'] / timings['in turn']:.2f}")
    print(f"identical weights: {same}")


if __name__ == "__main__":
    main()
