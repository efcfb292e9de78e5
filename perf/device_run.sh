#!/bin/bash
# On the lent GPU host (no network), from the repository root, one piece per `run` call, back to
# back on the same warm machine (see perf/device_bundle.sh for the pieces):
#
#   bash perf/device_run.sh p1   # carry .whl/p1: stash it; print what the image has
#   bash perf/device_run.sh p2   # carry .whl/p2 (+ .whl/pa for device_generator.sh): install vLLM + deps,
#                                #   build llama2-7b (random weights) for this GPU
#   bash perf/device_run.sh p3   # carry .whl/p3: Triton from the wheel, perf/gpu_reality.py (its compare, table)
#
# Results and logs go to $OUT (gpu_reality.json, gpu_reality.md, run-*.log, logs.tar.gz).
set -u
STEP=$1
STASH=/root/stash
WORK=/root/gpu-reality
OUT=${OUT:-/tmp/gpu-reality-out}
mkdir -p "$STASH" "$WORK" "$OUT"
PY=$(command -v python3)
export TRITONKIT_HOME=/root/tritonkit-home HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
# flashinfer is not carried: vLLM 0.25's sampler imports it unguarded unless told not to use it
# (seen on the H100: "No module named 'flashinfer'" in EngineCore). Both servers run without it.
export VLLM_USE_FLASHINFER_SAMPLER=0
export TRITONKIT_PYTRITON_WHEEL=$STASH/triton
LOG=$OUT/run-$STEP.log
exec > >(tee -a "$LOG") 2>&1
T0=$(date +%s)
echo "== $STEP on $(hostname) at $(date -u +%FT%TZ); python $PY"
cp -r .whl/"$STEP"/. "$STASH"/ && echo "stashed: $(du -sh $STASH | cut -f1)"

cleanup() {  # a standalone vLLM server left by a killed run holds the GPU: end its process group
  [ -f "$WORK"/vllm-server.pid ] && kill -9 -- -"$(cat "$WORK"/vllm-server.pid)" 2>/dev/null
  rm -f "$WORK"/vllm-server.pid
}

bench() {  # gpu_reality (it reuses p2's build), bounded so the call ends before the device's 600 s limit;
  # RATES / CONCURRENCY override the sweeps (the second H100 run: RATES=320,480,640,960,1280
  # CONCURRENCY=128,256,512, to find where each server misses the SLO)
  timeout "$1" "$PY" perf/gpu_reality.py --out "$OUT" --work "$WORK" \
    --rates "${RATES:-10,20,40,80,160,320}" --concurrency "${CONCURRENCY:-1,8,32,128}" --window 3 --max-step 12 --warmup 2 \
    --start-timeout 300
  echo "gpu_reality exit $? after $(( $(date +%s) - T0 )) s"
  cleanup
}

logs() {
  cp "$TRITONKIT_HOME"/servers/gpu-reality/server.log "$WORK"/triton-server.log 2>/dev/null
  (cd "$WORK" && tar czf "$OUT/logs-$STEP.tar.gz" *.log state.json perf/*/results.json perf/*/steps.csv \
     perf/*/report.md 2>/dev/null)
  ls -la "$OUT"; cat "$OUT"/gpu_reality.md 2>/dev/null
}

case "$STEP" in
p1)
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PY" - <<'EOF'
import sys, sysconfig, os, platform, glob, importlib.metadata as md
print(sys.version, platform.libc_ver())
libdir = sysconfig.get_config_var("LIBDIR")
print("LIBDIR", libdir, sysconfig.get_config_var("LDLIBRARY"), glob.glob(os.path.join(libdir or "/", "libpython3*")))
print("purelib", sysconfig.get_paths()["purelib"], os.access(sysconfig.get_paths()["purelib"], os.W_OK))
for p in ("torch", "transformers", "tokenizers", "numpy", "protobuf", "typing_extensions", "anyio", "h11",
          "httpx", "grpcio", "triton", "numba", "setuptools", "aiohttp", "rich", "click", "pillow", "huggingface-hub"):
    try: print(p, md.version(p))
    except Exception as e: print(p, "MISSING")
EOF
  df -h /root | tail -1; nproc; free -g | head -2
  # The random llama2-7b needs only torch/transformers (in the image): make it now; `tritonkit build
  # --random-weights` in p2 finds and reuses it (same architecture, dtype and seed).
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
  echo "installed after $(( $(date +%s) - T0 )) s"
  "$PY" -c "import vllm, vllm.entrypoints.openai.api_server, vllm.v1.engine.async_llm, tritonclient.grpc, jsonschema, hdrh, hpack; print('vllm', vllm.__version__, 'imports OK')" || exit 6
  # The model repository for this GPU (random weights, from p1's files); p3 and device_generator.sh use it.
  PROFILE=$("$PY" -c "import sys; sys.path.insert(0, 'perf'); from gpu_reality import detect_gpu, profile_for; print(profile_for(detect_gpu()) or 'h100')")
  "$PY" -m tritonkit build llama2-7b --gpu "$PROFILE" --random-weights -o "$WORK/repo" --force 2>&1 | tail -3
  [ -d .whl/pa ] && cp -r .whl/pa "$STASH"/ && echo "perf_analyzer stashed for device_generator.sh"
  ;;
p3)
  cleanup
  "$PY" -m tritonkit runtime --from-wheel "$STASH"/triton
  bench 540
  logs
  ;;
esac
echo "== $STEP done in $(( $(date +%s) - T0 )) s"
