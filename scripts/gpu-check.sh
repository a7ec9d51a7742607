#!/usr/bin/env bash
# The GPU check, ready to run as is on a Linux host with an NVIDIA GPU (the
# NVIDIA driver installed; the Vulkan ICD too for the wgpu backend):
#   1. builds the agent with the `cuda` and `gpu` (wgpu) features;
#   2. runs the burn engine's conformance tests on CUDA and on wgpu (the
#      GPU's Vulkan driver): every fixture within 1e-4 + 1e-3 relative of
#      onnxruntime;
#   3. benchmarks a CNN at batch 1, 8 and 64 on burn (CUDA, wgpu), tract and
#      onnxruntime's CPU provider, printing one table.
# Record its output in docs/BENCHMARKS.md with the date and the GPU's name.
#
#   scripts/gpu-check.sh            # everything
#   FERRY_GPU_BACKENDS=wgpu scripts/gpu-check.sh   # a host without CUDA
set -euo pipefail
cd "$(dirname "$0")/.."
backends="${FERRY_GPU_BACKENDS:-cuda,wgpu}"

echo "== host"
date -u +%Y-%m-%dT%H:%MZ
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
  || echo "nvidia-smi: no NVIDIA driver"
command -v vulkaninfo >/dev/null && vulkaninfo --summary 2>/dev/null | grep -E 'deviceName|driverName' || true
nproc

features=gpu
[[ ",$backends," == *",cuda,"* ]] && features=cuda

echo "== build (ferry-agent --features $features)"
cargo build --release -p ferry-agent --features "$features" --bin ferry-agent
cargo build -p ferry --bin ferry

echo "== conformance on the GPU"
burn_features=wgpu
[[ $features == cuda ]] && burn_features=wgpu,cuda
cargo test --release -p ferry-burn \
  --features "$burn_features" --test conformance -- --nocapture

echo "== python (onnxruntime, numpy)"
scripts/python-env.sh

echo "== CNN at batch 1, 8, 64: burn ($backends), tract, onnxruntime CPU"
.venv/bin/python scripts/bench/gpu_engines.py --agent target/release/ferry-agent \
  --ferry target/debug/ferry --backends "$backends"
