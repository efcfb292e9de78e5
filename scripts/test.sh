#!/usr/bin/env bash
# The test command: set up (idempotent), then run the whole suite with real Triton and vLLM.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/install_container_engine.sh  # podman + a local base image where no Docker engine answers
exec .venv/bin/python -m pytest "$@"
