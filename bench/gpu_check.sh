#!/usr/bin/env bash
# The GPU check of issue 14 (bench/gpu_check.py): CPU-GPU parity in bf16, then decode and text-to-image speed,
# with the released 14B layout drawing one 1024 x 1024 image (50 steps, guidance). Within 8 minutes on one
# H100 / H200. Without a GPU it runs the CPU half and stops at the device check (exit 0).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/setup.sh
FULL=--full-t2i
if ! .venv/bin/python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then FULL=; fi
timeout 480 .venv/bin/python bench/gpu_check.py --config "${GPU_CHECK_CONFIG:-small}" $FULL --json "${GPU_CHECK_JSON:-gpu_check.json}" "$@"
