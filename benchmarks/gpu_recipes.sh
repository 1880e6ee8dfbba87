#!/usr/bin/env bash
# The GPU rows of the results table (issue #16) in one run on the GPU machine (../shared/device/README.md):
#   source .device/on_device.sh && bash benchmarks/gpu_recipes.sh
# Each recipe twice (seeds 42 and 7), timed as a user runs it: the whole command, start-up and final test included.
# Logs and a summary under $OUT (or gpu_recipes_logs/); checkpoints stay on the machine (too big to bring back).
set -u
cd "$(dirname "$0")/.."
out=${OUT:-gpu_recipes_logs}
mkdir -p "$out" && out=$(cd "$out" && pwd)
data=${CIFAR10:-${1:-}}
[ -n "$data" ] || { echo "set CIFAR10 (or pass the CIFAR-10 folder) first" >&2; exit 2; }
export NO_ALBUMENTATIONS_UPDATE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader | tee -a "$out/summary.txt"
for recipe in "recipe_cnn_gpu:configs/experiments/recipe_cnn_gpu.yaml" \
              "recipe_mlp_gpu:configs/experiments/best_mlp.yaml configs/experiments/recipe_mlp_gpu.yaml"; do
  name=${recipe%%:*}
  configs=(-c configs/default.yaml)
  for c in ${recipe#*:}; do configs+=(-c "$c"); done
  for seed in 42 7; do
    start=$SECONDS
    timeout 280 python3 -m cifarlit fit "${configs[@]}" --data.data_dir "$data" --seed_everything "$seed" \
      --trainer.logger.init_args.save_dir /tmp/gpu_recipes 2>&1 | tr '\r' '\n' | grep -v -e 'it/s]' -e 's/it]' \
      > "$out/$name-$seed.log"
    acc=$(grep -h "test/acc " "$out/$name-$seed.log" | head -1 | tr -s ' │' ' ')
    echo "$name seed $seed: $((SECONDS - start)) s whole command; $acc" | tee -a "$out/summary.txt"
  done
done
find /tmp/gpu_recipes \( -name "*.yaml" -o -name "*.json" -o -name "*.csv" -o -name "events.out.*" \) \
  -exec cp --parents {} "$out" \; 2>/dev/null
