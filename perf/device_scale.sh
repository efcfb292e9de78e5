#!/bin/bash
# The load generator at fleet scale (issue 13's 16-core goal): on the device host's CPUs (no GPU
# used), the server on half the cores, tritonkit perf's worker processes on the other half, open
# loop, 4 one-token chunks per request (first after 5 ms, then 5 ms apart: TTFT 5 ms, E2E 20 ms):
#   1. gRPC streaming against real Triton serving the ground-truth model with one instance per server core,
#      tritonkit's gRPC transports (MODES, default h2 and aio) side by side at each rate;
#   2. the OpenAI SSE path against perf/sse_ground_truth.py (aiohttp) with one process per server core;
#   3. one worker against the same Triton server, the before (what one Python process holds).
# Each prints per rate: started req/s, p99 send lag, TTFT/E2E p50 and client CPU per 1,000 requests.
#
# Also perf_analyzer 2.41 at PA_RATES on the gRPC server (where p2 stashed it): the server's own TTFT/E2E floor
# at that rate, and the C++ client's CPU per 1,000 requests beside tritonkit's.
# On the warm machine after `device_run.sh p1` and `p2` (p2 installs tritonclient and the stub's numpy):
#   run: bash perf/device_scale.sh   carry: [".whl/p3"] (installs the Triton runtime from it)
# SERVER_CPUS (default half the cores; as many model instances / SSE processes), WORKERS (the rest less one).
# Output: $OUT/device_scale.log
set -u
cd "$(dirname "$0")/.."
STASH=/root/stash
OUT=${OUT:-/tmp/device-scale-out}
mkdir -p "$OUT" "$STASH"
PY=$(command -v python3)
export TRITONKIT_HOME=/root/tritonkit-home PYTHONUNBUFFERED=1
exec > >(tee -a "$OUT/device_scale.log") 2>&1
T0=$(date +%s)
N=$(nproc); S=${SERVER_CPUS:-$((N / 2))}; W=${WORKERS:-$((N - S - 1))}
echo "== device_scale on $(hostname) at $(date -u +%FT%TZ); $N cores: server $S, generator $((N - S)) ($W workers + the parent)"
if [ -d .whl/p3/triton ]; then
  cp -r .whl/p3/. "$STASH"/ && "$PY" -m tritonkit runtime --from-wheel "$STASH"/triton | tail -2
fi
left() { echo $(( ${1} - ($(date +%s) - T0) )); }
SECS=${SECONDS_PER_RATE:-4}
# perf_analyzer 2.41 (stashed by device_run.sh p2, or carried as .whl/pa) as the peer on the gRPC server
PADIR=$PWD/.whl/pa; [ -f "$PADIR/perf_analyzer" ] || PADIR=$STASH/pa
PA_ARGS=()
if [ -f "$PADIR/perf_analyzer" ]; then  # its libraries (libb64 beside it, the runtime's libcudart): bench_generator
  chmod +x "$PADIR/perf_analyzer"
  PA_ARGS=(--pa "$PADIR/perf_analyzer" --pa-rates "${PA_RATES:-1000,5000}")
fi
# RATES, SSE_RATES, ONE_RATES: an empty one skips that part
[ -n "${RATES-x}" ] && { timeout "$(left 300)" "$PY" perf/bench_generator.py --split-cores --server-cpus "$S" --instances "$S" \
  --workers "$W" --rates "${RATES:-1000,2500,4000,5000,6000,8000}" --seconds "$SECS" --streams "${MODES:-h2,aio}" "${PA_ARGS[@]}"
  echo "grpc exit $? after $(( $(date +%s) - T0 )) s"; }
[ -n "${SSE_RATES-x}" ] && { timeout "$(left 430)" "$PY" perf/bench_generator.py --protocol openai --split-cores --server-cpus "$S" \
  --server-processes "$S" --workers "$W" --rates "${SSE_RATES:-1000,2500,4000,5000,6000}" --seconds "$SECS"
  echo "openai exit $? after $(( $(date +%s) - T0 )) s"; }
[ -n "${ONE_RATES-x}" ] && { timeout "$(left 540)" "$PY" perf/bench_generator.py --split-cores --server-cpus "$S" --instances "$S" \
  --workers 1 --rates "${ONE_RATES:-500,1000,2000}" --seconds "$SECS" --streams "${ONE_MODES:-h2,aio}" "${PA_ARGS[@]}"
  echo "one worker exit $? after $(( $(date +%s) - T0 )) s"; }
echo "== done in $(( $(date +%s) - T0 )) s"
