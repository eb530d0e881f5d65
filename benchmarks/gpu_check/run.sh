#!/usr/bin/env bash
# The GPU checks of issue 24 in one command, for the device machine (its python3 holds torch; the other
# packages come as wheels from fetch_wheels.sh). From the device tool, in the repository root:
#   run(command="bash benchmarks/gpu_check/run.sh", carry=[".whl"], timeout_s=600)
# Writes each step's output to $OUT (the files come back): the GPU tests, the CNN stage's throughput
# against the bare network (float32 with and without CUDA graphs, bfloat16), the precision table.
set -uo pipefail
OUT=${OUT:-/tmp/opso-gpu-check}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "the wheels did not install: run benchmarks/gpu_check/fetch_wheels.sh here first"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 DASK_LOGGING__DISTRIBUTED=error
(nvidia-smi -L; python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())") \
  2>&1 | tee "$OUT/device.txt"
step() {  # step NAME SECONDS COMMAND...: one check, its output in $OUT/NAME.txt, never more than SECONDS
  local name=$1 seconds=$2; shift 2
  echo "== $name"
  timeout "$seconds" "$@" > "$OUT/$name.txt" 2>&1
  echo "   exit $? ($(wc -l < "$OUT/$name.txt") lines)"
  tail -n 25 "$OUT/$name.txt"
}
step gpu_tests 170 python3 -m pytest -q -p no:cacheprovider -m gpu -s \
  tests/integration/test_pipeline_gpu.py tests/opso_core/ml/test_cnn.py
# 12 generated files x 150 s, hard-linked into 32 recorders: 16 audio-hours, 28,800 clips of 2 s
bench=(python3 benchmarks/cnn_inference_throughput.py --device cuda --minutes 30 --copies 32 --batch 64
       --predict-minutes 0)
step throughput_float32 100 "${bench[@]}"
step throughput_float32_eager 100 "${bench[@]}" --no-cuda-graphs
step throughput_bfloat16 100 "${bench[@]}" --precision bfloat16
step precision 60 python3 benchmarks/cnn_precision.py --device cuda --clips 512 --batch 64
