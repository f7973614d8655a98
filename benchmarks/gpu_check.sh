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
#
#   bash benchmarks/gpu_check.sh --smoke "$OUT"    # every step tiny (each script's --smoke): a minute
#   bash benchmarks/gpu_check.sh --dry-run DIR     # no GPU: each step's script and options are checked
#                                                  # (--help; pytest --collect-only), nothing runs;
#                                                  # DIR/dry-run.txt: "ok <step>" or "FAIL <step>: why";
#                                                  # exit status 1 when a step fails
# Both work by a python3 stand-in first on PATH, so every step, however written, is covered.
set -uo pipefail
mode=full
case "${1:-}" in --smoke | --dry-run) mode=${1#--}; shift ;; esac
out=${1:-/tmp/gpu-check}
mkdir -p "$out"
export RAY_USAGE_STATS_ENABLED=0
if [ "$mode" != full ]; then
  shim=$(mktemp -d)  # a dry run's status: 1 when a step would not start
  trap 'rm -rf "$shim"; if [ "$mode" = dry-run ]; then ! grep -q "^FAIL" "$out/dry-run.txt"; exit $?; fi' EXIT
  : > "$out/dry-run.txt"
  cat > "$shim/python3" <<SHIM
#!/usr/bin/env bash
# gpu_check.sh --$mode: python3 as the steps call it. A benchmark script gets --smoke (smoke) or is
# only checked (dry-run): it imports, and every option the step passes is one its --help lists.
real=$(command -v python3); mode=$mode; log="$out/dry-run.txt"
SHIM
  cat >> "$shim/python3" <<'SHIM'
if [ "$1" = -m ] && [ "$2" = pytest ]; then
  shift 2
  [ "$mode" = smoke ] && exec "$real" -m pytest "$@"
  "$real" -m pytest --collect-only -q "$@" > /dev/null && echo "ok pytest $*" >> "$log"     || echo "FAIL pytest $*: collection failed" >> "$log"
  exit 0
fi
script=$1; shift
[ "$mode" = smoke ] && exec "$real" "$script" "$@" --smoke
if ! help=$("$real" "$script" --help 2>&1); then
  echo "FAIL $script: --help failed: $(tail -1 <<<"$help")" >> "$log"; exit 0
fi
for a in "$@"; do
  case $a in --*) grep -qE -- "(^|[[:space:],[])${a%%=*}([[:space:]=,]|\]|$)" <<<"$help"     || { echo "FAIL $script: no option ${a%%=*}" >> "$log"; exit 0; } ;; esac
done
echo "ok $script $*" >> "$log"; echo '{"dry_run": true}'
SHIM
  chmod +x "$shim/python3"
  if [ "$mode" = dry-run ]; then printf '#!/bin/sh\necho "dry run: no GPU queried"\n' > "$shim/nvidia-smi"; chmod +x "$shim/nvidia-smi"; fi
  export PATH="$shim:$PATH"
fi
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
