#!/usr/bin/env bash
# GPU check (issues 12, 21): pre-annotation throughput of every preset on one CUDA device
# (fast: SAM 2.1 Hiera-T + DINOv3 ViT-S/16, 32 prompts; default: SAM ViT-H + DINOv2 ViT-L;
# quality: SAM 2.1 Hiera-L + DINOv3 ViT-L/16), fp32 vs bf16: images/s, per-stage seconds, peak
# GPU memory, fp32/bf16 mask IoU. RANDOM weights: throughput figures only. Each preset runs in
# well under 2 minutes on an H200; fails clearly without CUDA.
#   scripts/bench_gpu.sh                      # cuda:0, 32 images, every preset
#   PRESETS="default" DEVICE=cuda:1 scripts/bench_gpu.sh --images 64 --encode-batch 16
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
for preset in ${PRESETS:-fast default quality}; do
  timeout "${BENCH_TIMEOUT_S:-170}" "$PYTHON" -m gfsam benchmark --gpu \
      --device "${DEVICE:-cuda:0}" --preset "$preset" "$@"
done
