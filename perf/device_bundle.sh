#!/bin/bash
# Prepare, on a machine with network, what perf/gpu_reality.py needs on a GPU host without one:
# vLLM 0.25.0 (pins torch 2.11.0 / CUDA 13, the device image's torch) trimmed of what a dense
# model on Hopper never loads, the packages the image lacks, and the nvidia-pytriton wheel with
# the stub's numpy -- in pieces of at most 60 MiB (the device tool's per-call limit is 64 MiB):
#
#   .whl/p1/vllm.part-aa                       first 60 MiB of vllm-trim.tar.xz
#   .whl/p2/vllm.part-ab, wheels/*.whl,        the rest of vLLM, its and tritonkit's missing deps,
#           triton/numpy-1.26.4-cp312-*.whl    numpy<2 for Triton's Python backend stub
#   .whl/p3/triton/nvidia_pytriton-0.7.0-*.whl the Triton server (tritonkit runtime --from-wheel)
#
# Trimmed from the vllm wheel (never imported for Llama on an H100; each import is guarded):
# vllm_flash_attn/_vllm_fa2_C (FA2, Ampere; Hopper uses FA3), _moe_C_stable_libtorch (MoE
# kernels), vllm-rs (Rust frontend), deep_gemm builds for other Pythons, fmha_sm100 headers.
# Left out of vLLM's requirements (imported lazily, only for other models/features): flashinfer,
# tilelang, cutlass-dsl, quack, tokenspeed-mla, humming-kernels, torchcodec, PyNvVideoCodec,
# cudnn-frontend, fastsafetensors, nvtx, mistral_common, compressed-tensors, outlines_core,
# lm-format-enforcer, anthropic, mcp, opentelemetry. The needed set was found by importing vLLM's
# serving path with those packages hidden (see the commit that added this file).
# One pin is not vLLM's: apache-tvm-ffi 0.1.15.post2 instead of ==0.1.9, because xgrammar 0.2.8
# needs >=0.1.11 (0.2.3, the newest that takes 0.1.9, is a 45 MB wheel); vLLM uses tvm-ffi itself
# only through flashinfer and FA4 (Blackwell), neither of which is installed or used here.
set -euo pipefail
cd "$(dirname "$0")/.."
W=${WORK:-/tmp/tritonkit-device-bundle}
mkdir -p "$W"/vllm "$W"/wheels "$W"/triton .whl
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
PLAT=""
for t in 2_35 2_34 2_31 2_28 2_27 2_24 2_17; do PLAT="$PLAT --platform manylinux_${t}_x86_64"; done
PLAT="$PLAT --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform linux_x86_64 --platform any"
DL="pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none $PLAT"

$DL -d "$W/vllm" vllm==0.25.0
$DL -d "$W/wheels" \
  pyzmq msgspec cachetools cbor2 pybase64 partial-json-parser "fastapi>=0.133.0,<0.137.0" "starlette>=1.0.1" \
  "pydantic>=2.12.0" pydantic-core annotated-types typing-inspection "typing-extensions>=4.14.1" python-multipart \
  "openai>=2.0.0,<3" distro jiter sniffio uvicorn "openai-harmony>=0.0.3" "llguidance>=1.7.0,<1.8.0" \
  "xgrammar>=0.2.1,<1.0.0" "apache-tvm-ffi==0.1.15.post2" watchfiles "model-hosting-container-standards>=0.1.14,<1.0.0" \
  jmespath "prometheus-fastapi-instrumentator>=8.0.0" setproctitle blake3 python-json-logger \
  depyf==0.20.0 astor dill diskcache==5.6.3 lark==1.2.2 email-validator dnspython pydantic-extra-types ijson \
  jsonschema jsonschema-specifications referencing rpds-py "tritonclient>=2.51,<3" python-rapidjson \
  "hdrhistogram>=0.10,<0.11" "hpack>=4,<5"
$DL -d "$W/triton" nvidia-pytriton==0.7.0 numpy==1.26.4

rm -rf "$W/vtrim" && mkdir "$W/vtrim"
(cd "$W/vtrim" && unzip -q "$W"/vllm/vllm-0.25.0-*.whl \
  && rm -f vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so vllm/_moe_C_stable_libtorch.abi3.so vllm/vllm-rs \
           vllm/third_party/deep_gemm/_C.cpython-31[0134]-*.so \
  && rm -rf vllm/third_party/fmha_sm100 \
  && tar cf - . | xz -9e -T0 > "$W/vllm-trim.tar.xz")

rm -rf .whl/p1 .whl/p2 .whl/p3
mkdir -p .whl/p1 .whl/p2/wheels .whl/p2/triton .whl/p3/triton
split -b 60M -a 2 "$W/vllm-trim.tar.xz" "$W/vllm.part-"
ls "$W"/vllm.part-* | wc -l | grep -qx 2 || { echo "expected 2 parts of vllm-trim.tar.xz"; exit 1; }
mv "$W/vllm.part-aa" .whl/p1/ && mv "$W/vllm.part-ab" .whl/p2/
cp "$W"/wheels/*.whl .whl/p2/wheels/
cp "$W"/triton/numpy-*.whl .whl/p2/triton/
cp "$W"/triton/nvidia_pytriton-*.whl .whl/p3/triton/
(cd "$W" && sha256sum vllm-trim.tar.xz) > .whl/p2/vllm-trim.sha256
du -sh .whl/p1 .whl/p2 .whl/p3
