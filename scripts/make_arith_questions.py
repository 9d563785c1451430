"""Generate the smol-arith question set: arithmetic and short word problems of graded difficulty.

Every question is generated from a template with seeded random numbers, and its gold answer is
computed exactly (integers only, never negative), so grading needs no judgement.

Levels (the ``source`` of each question):
    arith-1  one-digit + one-digit                        "What is 4 + 7?"
    arith-2  two-digit +/- one-digit                      "What is 53 - 8?"
    arith-3  two-digit + two-digit, one-digit x one-digit "What is 47 + 38?"
    arith-4  two-digit x one-digit, three-digit + three-digit
    arith-5  two steps, or two-digit x two-digit          "What is (23 + 19) * 4?"
    word-1   one step, small numbers                      "Tom has 3 apples and buys 4 more..."
    word-2   one step, multiplication or division         "A box holds 6 eggs. How many eggs..."
    word-3   two steps with units                         "A car drives 45 km per hour for..."

Usage:
    python scripts/make_arith_questions.py --per-level 16 --seed 0 \
        --out langchain_rtr/data/bundled/smol-arith/questions.jsonl
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable
from pathlib import Path

from langchain_rtr.questions import Question, write_questions

Maker = Callable[[random.Random], tuple[str, int]]

NAMES = ["Tom", "Mia", "Sam", "Ana", "Leo", "Zoe", "Ben", "Ivy", "Max", "Eva", "Raj", "Kim"]
ITEMS = ["apples", "pencils", "stickers", "marbles", "cookies", "books", "stamps", "shells"]


def arith_1(r: random.Random) -> tuple[str, int]:
    a, b = r.randint(1, 9), r.randint(1, 9)
    return f"What is {a} + {b}?", a + b


def arith_2(r: random.Random) -> tuple[str, int]:
    a, b = r.randint(10, 99), r.randint(1, 9)
    if r.random() < 0.5:
        return f"What is {a} + {b}?", a + b
    return f"What is {a} - {b}?", a - b


def arith_3(r: random.Random) -> tuple[str, int]:
    if r.random() < 0.5:
        a, b = r.randint(10, 99), r.randint(10, 99)
        return f"What is {a} + {b}?", a + b
    a, b = r.randint(2, 9), r.randint(2, 9)
    return f"What is {a} * {b}?", a * b


def arith_4(r: random.Random) -> tuple[str, int]:
    if r.random() < 0.5:
        a, b = r.randint(11, 99), r.randint(3, 9)
        return f"What is {a} * {b}?", a * b
    a, b = r.randint(100, 999), r.randint(100, 999)
    return f"What is {a} + {b}?", a + b


def arith_5(r: random.Random) -> tuple[str, int]:
    kind = r.randrange(3)
    if kind == 0:
        a, b, c = r.randint(10, 49), r.randint(10, 49), r.randint(2, 9)
        return f"What is ({a} + {b}) * {c}?", (a + b) * c
    if kind == 1:
        a, b = r.randint(3, 9), r.randint(11, 49)
        c = r.randint(1, a * b - 1)
        return f"What is {a} * {b} - {c}?", a * b - c
    a, b = r.randint(11, 49), r.randint(11, 49)
    return f"What is {a} * {b}?", a * b


def word_1(r: random.Random) -> tuple[str, int]:
    name, item = r.choice(NAMES), r.choice(ITEMS)
    a, b = r.randint(2, 9), r.randint(2, 9)
    if r.random() < 0.5:
        return f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?", (
            a + b
        )
    a = a + b
    return f"{name} has {a} {item} and gives away {b}. How many {item} are left?", a - b


def word_2(r: random.Random) -> tuple[str, int]:
    if r.random() < 0.5:
        per, n = r.randint(3, 12), r.randint(3, 9)
        item = r.choice(ITEMS)
        return f"A box holds {per} {item}. How many {item} are in {n} boxes?", per * n
    each, n = r.randint(2, 9), r.randint(3, 9)
    name = r.choice(NAMES)
    total = each * n
    return (
        f"{name} shares {total} cookies equally among {n} friends. "
        f"How many cookies does each friend get?",
        each,
    )


def word_3(r: random.Random) -> tuple[str, int]:
    kind = r.randrange(3)
    if kind == 0:
        speed, hours, extra = r.randint(20, 60), r.randint(2, 5), r.randint(5, 30)
        return (
            f"A car drives {speed} km per hour for {hours} hours, then {extra} km more. "
            f"How many km does it drive in total?",
            speed * hours + extra,
        )
    if kind == 1:
        price, n, paid = r.randint(2, 9), r.randint(2, 6), 50
        return (
            f"A notebook costs {price} dollars. Ana buys {n} notebooks and pays with a "
            f"{paid} dollar bill. How many dollars of change does she get?",
            paid - price * n,
        )
    per_day, days, used = r.randint(3, 9), r.randint(4, 7), r.randint(1, 9)
    return (
        f"A hen lays {per_day} eggs a day. After {days} days the farmer has used {used} eggs. "
        f"How many eggs are left?",
        per_day * days - used,
    )


LEVELS: dict[str, Maker] = {
    "arith-1": arith_1,
    "arith-2": arith_2,
    "arith-3": arith_3,
    "arith-4": arith_4,
    "arith-5": arith_5,
    "word-1": word_1,
    "word-2": word_2,
    "word-3": word_3,
}


def make_questions(per_level: int, seed: int = 0) -> list[Question]:
    """``per_level`` distinct questions per level, reproducible from ``seed``."""
    out: list[Question] = []
    for level, maker in LEVELS.items():
        r = random.Random(f"{seed}:{level}")
        seen: set[str] = set()
        tries = 0
        while len(seen) < per_level:
            tries += 1
            if tries > per_level * 200:
                raise RuntimeError(f"{level}: cannot make {per_level} distinct questions")
            text, answer = maker(r)
            if text in seen or answer < 0:
                continue
            seen.add(text)
            out.append(
                Question(
                    id=f"{level}-{len(seen):03d}",
                    question=text,
                    answer=str(answer),
                    answer_type="number",
                    source=level,
                )
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--per-level", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    questions = make_questions(args.per_level, args.seed)
    write_questions(args.out, questions)
    print(f"wrote {len(questions)} questions ({args.per_level} per level) to {args.out}")


if __name__ == "__main__":
    main()
