#!/usr/bin/env bash
# Issue 9's device check in one run: the GPU-only tests, then embed_throughput --gpu on 1024^2 PNG
# and JPEG inputs (ViT-B/14 and ViT-g/14, random weights: the device reaches no hub).
#
#   bash ../shared/tools/device-wheels.sh pytest pluggy iniconfig     # here, once: builds .whl/
#   device run, carry [".whl"]:
#     <the install line device-wheels.sh prints> && bash benchmarks/gpu_check.sh "$OUT"
#
# Each step's log and JSON line lands in $1 (default /tmp/gpu-check); a failing step does not stop
# the others. Sized for about 8 minutes on one H100 with 16 cores.
set -uo pipefail
out=${1:-/tmp/gpu-check}
mkdir -p "$out"
export RAY_USAGE_STATS_ENABLED=0
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv | tee "$out/gpu.txt"
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/embed/test_forward.py tests/backbones/test_embedder.py \
  tests/data/test_device_decode.py \
  > "$out/tests.log" 2>&1; tail -3 "$out/tests.log"
run() {  # name, then embed_throughput arguments
  local name=$1; shift
  timeout 200 python3 benchmarks/embed_throughput.py --gpu --rows 6144 --small-rows 2048 "$@" > "$out/$name.log" 2>&1
  tail -1 "$out/$name.log" > "$out/$name.json"; grep -E "img/s|GPU choices" "$out/$name.log" | tail -8
}
run png_vitb14 --backbones dinov2_vitb14
run png_vitg14 --backbones dinov2_vitg14
run jpeg_vitb14 --backbones dinov2_vitb14 --jpeg
# Issue 28: one fine-tuning step of ViT-L/14 and ViT-g/14 at batch 128, planned for each GPU node type of
# cluster.yaml (micro-batch, accumulation, checkpointing), run here: peak memory against the estimate.
timeout 300 python3 benchmarks/train_memory.py --backbones dinov2_vitl14 dinov2_vitg14 --batch-size 128 \
  > "$out/train_memory.log" 2>&1
tail -1 "$out/train_memory.log" > "$out/train_memory.json"; grep -E "measured peak|Error" "$out/train_memory.log" | tail -6
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/protocols/trainable/test_memory.py -k measured \
  > "$out/train_memory_test.log" 2>&1; tail -3 "$out/train_memory_test.log"
