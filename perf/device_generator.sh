#!/bin/bash
# tritonkit perf vs perf_analyzer 2.41 on the GPU host: one Triton server (llama2-7b random weights,
# vLLM backend, built by perf/device_run.sh p2), loaded in turn by both generators, closed loop,
# classification preset (same prompts and sampling for both), 128 and 256 users; then a starved
# tritonkit run (--workers 1 pinned to one core, 512 users, beside HOGS=12 busy loops started as its load
# begins: h2 kept its schedule beside 3 or 6) that must be flagged client-limited.
# vLLM's prefix cache is off unless PREFIX_CACHE=1 (below: why).
# Prints one table (perf/bench_vs_perf_analyzer.py --url mode) with tritonkit's gRPC transports side by side
# (MODES, each TRANSPORT[/STREAMS[/CHANNELS]] per worker):
#   aio       grpc.aio, one event loop, no threads of ours; 64 streams a worker (a stream per user)
#   aio/16    the same with 16 streams a worker (at 256 users: 2 users a stream; does sharing cost?)
#   aio/64/8  8 TCP connections a worker (perf_analyzer puts at most 6 contexts on a connection)
#   threads   the sync-gRPC transport before (two threads a stream, 16 streams a worker)
#   h2        tritonkit's own HTTP/2 framing, no grpcio (64 streams a worker); any MODE@N runs with --workers N
# and for every run, perf_analyzer's too, vLLM's own e2e latency (its metrics) and so the users inside vLLM.
#
# Here, once (network): bash perf/device_generator.sh prepare   # -> .whl/pa (perf_analyzer + libb64, ~18 MiB)
# On the device, on the warm machine after `device_run.sh p1` and `p2` (vLLM installed, model built):
#   run: bash perf/device_generator.sh run     carry: [".whl/pa"] (+ ".whl/p3", the pytriton wheel, unless
#        device_run.sh p3 already installed the Triton runtime on this machine; mind the 64 MiB carry limit)
# Output: $OUT/device_generator.log (the table at its end).
set -u
STEP=${1:-run}
cd "$(dirname "$0")/.."
if [ "$STEP" = prepare ]; then
  set -e
  T=$(mktemp -d)
  pip download --no-deps tritonclient==2.41.0 -d "$T" -q
  (cd "$T" && unzip -q tritonclient-2.41.0-*.whl)
  mkdir -p .whl/pa
  cp "$T"/tritonclient-2.41.0.data/data/bin/perf_analyzer .whl/pa/
  (cd "$T" && apt-get download libb64-0d >/dev/null 2>&1 && dpkg -x libb64-0d_*.deb deb) \
    && cp "$T"/deb/usr/lib/x86_64-linux-gnu/libb64.so.0d .whl/pa/ \
    || cp /usr/lib/x86_64-linux-gnu/libb64.so.0d .whl/pa/
  git check-ignore -q .whl/pa || echo '/.whl/' >> "$(git rev-parse --git-path info/exclude)"
  du -sh .whl/pa; exit 0
fi
STASH=/root/stash
WORK=/root/gpu-reality
OUT=${OUT:-/tmp/device-generator-out}
MODEL=${MODEL:-llama2-7b}
mkdir -p "$OUT" "$STASH"
PY=$(command -v python3)
export TRITONKIT_HOME=/root/tritonkit-home HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 VLLM_USE_FLASHINFER_SAMPLER=0
exec > >(tee -a "$OUT/device_generator.log") 2>&1
T0=$(date +%s)
echo "== device_generator on $(hostname) at $(date -u +%FT%TZ); $(nproc) cores"
# The Triton runtime: from .whl/p3 when carried, else the one device_run.sh p3 installed earlier.
if [ -d .whl/p3/triton ]; then
  cp -r .whl/p3/. "$STASH"/ && "$PY" -m tritonkit runtime --from-wheel "$STASH"/triton | tail -2
else
  "$PY" -m tritonkit runtime | head -2
fi
PADIR=$PWD/.whl/pa; [ -f "$PADIR/perf_analyzer" ] || PADIR=$STASH/pa  # carried, else stashed by device_run.sh p2
PA=$PADIR/perf_analyzer; chmod +x "$PA"
LIBS=$(mktemp -d); cp "$PADIR"/libb64.so.0d "$LIBS"/
CUDART=$(ls "$TRITONKIT_HOME"/runtime/triton-*/lib/libcudart*.so.12* 2>/dev/null | head -1)
[ -n "$CUDART" ] && ln -sf "$CUDART" "$LIBS"/libcudart.so.12
export PA_LIB=$LIBS
LD_LIBRARY_PATH=$LIBS "$PA" --version 2>&1 | head -2 || { echo "perf_analyzer does not start"; exit 3; }
[ -f "$WORK/repo/$MODEL/build.json" ] || { echo "no build at $WORK/repo/$MODEL: run device_run.sh p1 and p2 first"; exit 4; }
# vLLM's prefix cache off (PREFIX_CACHE=1 keeps it): perf_analyzer's --input-data order hits it far more than
# tritonkit's 2,000 distinct prompts in turn (hits per run are printed), and a hit skips that prefill: with it on,
# the H100 gave perf_analyzer's load a faster server, not a faster generator (perf/results/generator-h100-prefix-cache.log).
"$PY" - "$WORK/repo/$MODEL/1/model.json" "${PREFIX_CACHE:-0}" <<'EOF'
import json, sys
path, keep = sys.argv[1], sys.argv[2] == "1"
engine = json.load(open(path))
engine.pop("enable_prefix_caching", None) if keep else engine.update(enable_prefix_caching=False)
json.dump(engine, open(path, "w"))
print("vLLM prefix cache:", "on (vLLM's default)" if keep else "off")
EOF
PORTS=$("$PY" -c "from tritonkit.runtime.spec import free_port; print(free_port(), free_port(), free_port())")
set -- $PORTS
"$PY" -m tritonkit stop --all >/dev/null 2>&1
"$PY" -m tritonkit serve -r "$WORK/repo" --runtime local --detach --name gen-vs-pa \
  --http-port "$1" --grpc-port "$2" --metrics-port "$3" --timeout 300 || { echo "Triton did not start"; exit 5; }
echo "triton ready after $(( $(date +%s) - T0 )) s"
timeout $(( 560 - ($(date +%s) - T0) )) "$PY" perf/bench_vs_perf_analyzer.py --pa "$PA" --url "127.0.0.1:$2" \
  --model "$MODEL" --repository "$WORK/repo" --preset classification --concurrency "${CONCURRENCY-128,256}" \
  --streams "${MODES:-h2}" --metrics-url "http://127.0.0.1:$3/metrics" \
  --seconds "${SECONDS_PER_RUN:-10}" --repeat "${REPEAT:-2}" --starved "${STARVED-512}" --starved-hogs "${HOGS:-12}"
echo "bench exit $? after $(( $(date +%s) - T0 )) s"
"$PY" -m tritonkit stop --name gen-vs-pa >/dev/null 2>&1
cp "$TRITONKIT_HOME"/servers/gen-vs-pa/server.log "$OUT"/triton-server.log 2>/dev/null
echo "== done in $(( $(date +%s) - T0 )) s"
