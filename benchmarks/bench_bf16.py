"""The default encoder in bf16: speed against fp32, and what oneDNN's per-shape kernels cost.

    .venv/bin/python benchmarks/bench_bf16.py

Each variant runs in its own process (one model per process: two models interleaved in one
process evict each other from the caches and slow both down):

* ``fp32``: what the package ships (sentence-transformers, oneDNN off);
* ``bf16``: the same model loaded with ``torch_dtype=bfloat16``, oneDNN on (bf16 needs it);
* ``bf16-bucketed``: bf16 with every input padded to a bounded set of shapes (length to a
  multiple of 8, batch to a power of two), which bounds oneDNN's kernel cache.

Printed per variant: one GSM8K question (median of 200), 1,000 questions batched (q/s), the
lowest cosine to fp32 vectors, and the process RSS before and after 1,500 encodes of mixed
lengths and batch sizes (the growth is oneDNN's per-shape kernels). Ratios against fp32.
Needs a CPU with native bf16 (AVX-512 BF16 or AMX) to be worth reading.
"""

from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

GSM8K = Path(os.environ.get("RTR_GSM8K_CSV", "/work/shared/data/routellm/gsm8k_responses.csv"))
VARIANTS = ("fp32", "bf16", "bf16-bucketed")


def questions(n: int) -> list[str]:
    with GSM8K.open(newline="", encoding="utf-8") as fh:
        return list(dict.fromkeys(row["prompt"] for row in csv.DictReader(fh)))[:n]


def rss_mb() -> float:
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def child(variant: str) -> dict[str, float]:
    import random
    import time

    import numpy as np
    import torch

    from langchain_rtr.predictor.encoder import SentenceTransformerEncoder

    qs = questions(1300)
    reference = SentenceTransformerEncoder().encode(qs[:200])
    if variant == "fp32":
        fp32 = SentenceTransformerEncoder()
        encode = fp32.encode
    else:
        encoder = SentenceTransformerEncoder(
            model_kwargs={"model_kwargs": {"torch_dtype": torch.bfloat16}}
        )
        model = encoder._load()
        torch.backends.mkldnn.enabled = True  # type: ignore[assignment]
        pad_id = model.tokenizer.pad_token_id or 0

        def forward(texts: list[str]) -> np.ndarray:
            if variant == "bf16":
                return np.asarray(model.encode(texts, batch_size=16), np.float32)
            out = np.empty((len(texts), encoder.dim), np.float32)
            order = np.argsort([len(t) for t in texts])
            for start in range(0, len(texts), 16):
                idx = order[start : start + 16]
                features = model.preprocess([texts[i] for i in idx])
                length, rows = features["input_ids"].shape[1], len(idx)
                padded_len, padded_rows = -(-length // 8) * 8, 1 << (rows - 1).bit_length()
                batch = {}
                for key, value in features.items():
                    if not (torch.is_tensor(value) and value.dim() == 2):
                        batch[key] = value
                        continue
                    fill = pad_id if key == "input_ids" else 0
                    grown = torch.full((padded_rows, padded_len), fill, dtype=value.dtype)
                    grown[:rows, :length] = value
                    batch[key] = grown
                with torch.inference_mode():
                    vectors = model(batch)["sentence_embedding"][:rows].float()
                out[idx] = torch.nn.functional.normalize(vectors, dim=1).numpy()
            return out

        encode = forward  # type: ignore[assignment]
    encode(qs[:64])
    singles = []
    for q in qs[:200]:
        t = time.perf_counter()
        encode([q])
        singles.append(time.perf_counter() - t)
    t = time.perf_counter()
    encode(qs[300:1300])
    batched = 1000 / (time.perf_counter() - t)
    vectors = encode(qs[:200])
    cos = (vectors * reference).sum(1) / (
        np.linalg.norm(vectors, axis=1) * np.linalg.norm(reference, axis=1)
    )
    before = rss_mb()
    rng = random.Random(0)
    for _ in range(1500):
        texts = [
            " ".join(rng.choice(qs).split()[: rng.randint(3, 120)])
            for _ in range(rng.randint(1, 8))
        ]
        encode(texts)
    return {
        "single_ms": 1000 * statistics.median(singles),
        "batched_qps": batched,
        "min_cosine": float(cos.min()),
        "rss_before_mb": before,
        "rss_after_mb": rss_mb(),
    }


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2])))
        return
    cpuinfo = Path("/proc/cpuinfo")
    flags = cpuinfo.read_text() if cpuinfo.exists() else ""
    print(f"native bf16: {'avx512_bf16' in flags or 'amx_bf16' in flags}; {os.cpu_count()} cores")
    rows = {}
    for variant in VARIANTS:
        out = subprocess.run(
            [sys.executable, __file__, "--child", variant],
            capture_output=True,
            text=True,
        )
        if out.returncode:
            raise SystemExit(f"{variant} failed:\n{out.stderr[-3000:]}")
        rows[variant] = json.loads(out.stdout.strip().splitlines()[-1])
        print(variant, json.dumps(rows[variant]), flush=True)
    base = rows["fp32"]
    print(
        "\n| variant | one question | vs fp32 | batched q/s | vs fp32 | min cosine "
        "| RSS over mixed shapes |"
    )
    print("|---|---|---|---|---|---|---|")
    for variant, r in rows.items():
        print(
            f"| {variant} | {r['single_ms']:.1f} ms | {base['single_ms'] / r['single_ms']:.2f}x "
            f"| {r['batched_qps']:.0f} | {r['batched_qps'] / base['batched_qps']:.2f}x "
            f"| {r['min_cosine']:.5f} | {r['rss_before_mb']:.0f} -> {r['rss_after_mb']:.0f} MB |"
        )


if __name__ == "__main__":
    main()
