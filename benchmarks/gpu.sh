#!/usr/bin/env bash
# One-command GPU benchmark (issue 14 item 2): ResShift-v3 and S3Diff, full-size architectures with
# random weights, 128->512 and 512->2048, batch 1 and 8, fp32/bf16/fp16, eager/graphs/compile.
# Installs nothing: needs the Python that has torch (with CUDA) and, for S3Diff, diffusers.
# Writes the markdown table to reports/speed_gpu.md (override: --out PATH); extra arguments go to
# benchmarks/gpu_bench.py (e.g. --budget 300, --models resshift). Finishes within the budget
# (default 400 s) plus the case running when it expires.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'benchmarks/gpu.sh: torch sees no CUDA device (torch ' + torch.__version__ + '); try: python benchmarks/gpu_bench.py --cpu-smoke')"
exec "$PY" benchmarks/gpu_bench.py --out reports/speed_gpu.md "$@"
