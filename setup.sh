#!/usr/bin/env bash
# Set up Dirt in ./.venv: everything the code and the test suite use, in the one order that works.
#   bash setup.sh            then   .venv/bin/python -m pytest -q tests
# 1. torch first, so nothing later can swap it for another build (PyPI gives the CUDA build on a GPU machine;
#    on the CPU-only dev/CI machine pip finds the CPU build on local disk).
# 2. requirements.txt (core), requirements-eval.txt (Whisper, DNSMOS, speaker similarity),
#    requirements-corpora.txt (Parquet for prepare.py), requirements-serve.txt (serve.py's HTTP server, and the
#    browser driver its test uses).
# 3. requirements-codec.txt and resemblyzer with --no-deps: their own metadata pins an old torch and packages
#    that no longer build; the files list what the code really imports.
# 4. Test audio from Debian, when apt-get is there: real recorded prompts with transcripts, and a synthesiser;
#    and chromium with its chromedriver, in which tests/test_serve.py drives serve.py's web page.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
TORCH=${TORCH:-torch==2.13.0}

if command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "apt: flite asterisk-core-sounds-en-g722 asterisk-core-sounds-en chromium chromium-driver"
  { $SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends \
      flite asterisk-core-sounds-en-g722 asterisk-core-sounds-en chromium chromium-driver; } > /tmp/dirt-apt.log 2>&1 \
    || { tail -n 20 /tmp/dirt-apt.log; echo "apt-get failed (the audio tests will skip); see /tmp/dirt-apt.log"; }
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=".venv/bin/python -m pip"
$PIP install -q "$TORCH"
$PIP install -q -r requirements.txt -r requirements-eval.txt -r requirements-corpora.txt -r requirements-serve.txt
$PIP install -q --no-deps -r requirements-codec.txt resemblyzer==0.1.4
.venv/bin/python -c 'import torch; print("torch", torch.__version__, "cuda" if torch.cuda.is_available() else "cpu")'
echo "ready: . .venv/bin/activate"
