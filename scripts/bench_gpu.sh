#!/usr/bin/env bash
# GPU check (issue 12): pre-annotation throughput of SAM ViT-H + DINOv2 ViT-L on one CUDA device,
# fp32 vs bf16 (images/s, per-stage seconds, peak GPU memory, fp32/bf16 mask IoU). RANDOM weights:
# throughput figures only. Runs in well under 5 minutes on an H200; fails clearly without CUDA.
#   scripts/bench_gpu.sh                      # cuda:0, 32 images
#   DEVICE=cuda:1 scripts/bench_gpu.sh --images 64 --encode-batch 16
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
exec timeout "${BENCH_TIMEOUT_S:-290}" "$PYTHON" -m gfsam benchmark --gpu \
    --device "${DEVICE:-cuda:0}" --sam sam_vit_h --dino dinov2_vitl14 "$@"
