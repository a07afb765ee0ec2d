#!/usr/bin/env bash
# The meta-iteration, pre-training and ICFIL benchmarks on one CUDA GPU, in under 9 minutes.
#
#   OUT=/some/folder bash benchmarks/run_gpu.sh
#
# Installs nothing: it needs a Python with torch (CUDA), pyyaml, pillow and tqdm (PYTHON, default
# python3) and runs the package from this checkout (PYTHONPATH). Writes under $OUT (default
# benchmarks/results): gpu_info.txt, meta_iteration_cuda.csv (+ _limits.csv), meta_iteration_cuda.md,
# pretrain_cuda.csv, pretrain_cuda.md, icfil_cuda.csv and icfil_cuda.md. Each benchmark has its own
# time limit; the meta-iteration CSV is rewritten after every configuration, so a run stopped by its
# limit keeps what it measured.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PURER_NO_PROGRESS=1

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
} > "$OUT/gpu_info.txt" 2>&1
cat "$OUT/gpu_info.txt"

# 16 configurations, one subprocess each (CUDA start-up included), the compiled ones last.
timeout 420 "$PY" benchmarks/bench_meta_iteration.py --device cuda --iters 30 --warmup 5 \
  --configs gpu --limits --out "$OUT/meta_iteration_cuda.csv" 2>&1 | tee "$OUT/meta_iteration_cuda.md"

# 3 architectures x 2 sizes x 3 modes in one process.
timeout 75 "$PY" benchmarks/bench_pretrain.py --device cuda --iters 20 --warmup 3 --max-seconds 2 \
  --modes fp32,fp32-cl,bf16-cl --out "$OUT/pretrain_cuda.csv" 2>&1 | tee "$OUT/pretrain_cuda.md"

# ICFIL test episodes: the per-episode path vs vmapped episode groups.
timeout 75 "$PY" benchmarks/bench_icfil.py --device cuda --episodes 25 --repeats 2 --shots 5 --groups 1,5,25 \
  --out "$OUT/icfil_cuda.csv" 2>&1 | tee "$OUT/icfil_cuda.md"
date -u
