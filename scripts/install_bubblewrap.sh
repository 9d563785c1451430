#!/usr/bin/env bash
# The PAL sandbox's OS layer (langchain_rtr/strategies/sandbox.py) needs bubblewrap. Install it
# where apt-get is available and we are root; anywhere else say so and carry on (the sandbox
# then warns once and names the weaker layer it uses). Never fails the caller.
if command -v bwrap >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "bubblewrap is not installed and cannot be installed here (needs root and apt-get);" \
         "the PAL sandbox will fall back to a weaker isolation layer" >&2
    exit 0
fi
{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap; } \
    >/dev/null 2>&1 || echo "apt-get could not install bubblewrap; the PAL sandbox will fall back" >&2
exit 0
