#!/usr/bin/env bash
# Every GPU check of cifarlit in one run of about 8 minutes on the GPU machine (../shared/device/README.md):
#   ../shared/device/prepare.sh   # here, with the extra wheels below:
#   EXTRA="optuna==5.0.0 optuna-integration==5.0.0 alembic==1.20.1 colorlog==6.12.0 Mako==1.4.3 SQLAlchemy==2.1.9 \
#     greenlet pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 pytest-xdist execnet onnxscript==0.7.2 onnx-ir==1.1.0"
#   then, there: source .device/on_device.sh && bash benchmarks/gpu_check.sh
# Stages, each with its own time limit so one that hangs cannot cost the others: `make test-gpu`, the epoch-time
# benchmark (benchmarks/gpu_epoch.py) and the GPU recipe (best_mlp_long.yaml: >= 67% test in <= 60 s of fit).
# Logs go to $OUT (or gpu_check_logs/), one per stage, plus summary.txt; progress bars are cut out of them.
set -u
cd "$(dirname "$0")/.."
out=${OUT:-gpu_check_logs}
mkdir -p "$out" && out=$(cd "$out" && pwd)
data=${CIFAR10:-${1:-}}
[ -n "$data" ] || { echo "set CIFAR10 (or pass the CIFAR-10 folder) first" >&2; exit 2; }
export NO_ALBUMENTATIONS_UPDATE=1 PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

stage() {  # stage NAME SECONDS COMMAND...: run it under a time limit, log it, print its tail
  local name=$1 limit=$2 start=$SECONDS
  shift 2
  echo "== $name: $* ($(date +%T))" | tee -a "$out/summary.txt"
  timeout "$limit" "$@" 2>&1 | tr '\r' '\n' | grep -v -e 'it/s]' -e 's/it]' > "$out/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $((SECONDS - start)) s" | tee -a "$out/summary.txt"
  tail -n 30 "$out/$name.log"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, lightning; print('torch', torch.__version__, '| lightning', lightning.__version__)"
} 2>&1 | tee -a "$out/summary.txt"

test_gpu=(make test-gpu PY=python3)
command -v make > /dev/null || test_gpu=(python3 -m pytest -m gpu)  # what `make test-gpu` runs
workers=$(python3 -c "import xdist" 2> /dev/null && echo "-n 8")  # 16 cores: tests in parallel when it can
CIFARLIT_SYNC_REPORT="$out/syncs.txt" PYTEST_ADDOPTS="$workers -v -p no:cacheprovider" stage test-gpu 150 "${test_gpu[@]}"
# The first run that needs the real images decodes them into a cache in $CIFAR10; later runs load it in a second.
stage gpu-epoch 300 python3 benchmarks/gpu_epoch.py --data.data_dir "$data" --epochs 3 --json "$out/gpu_epoch.json"
stage recipe 90 python3 -m cifarlit fit -c configs/default.yaml -c configs/experiments/best_mlp.yaml \
  -c configs/experiments/best_mlp_long.yaml --data.data_dir "$data" --trainer.callbacks+=benchmarks.timers.FitTimer \
  --trainer.logger.init_args.save_dir /tmp/gpu_check_runs  # checkpoints are too big to bring back
grep -h -e "FIT_SECONDS" -e "test/acc " "$out/recipe.log" | tee -a "$out/summary.txt"
find /tmp/gpu_check_runs \( -name "*.yaml" -o -name "*.json" -o -name "*.csv" -o -name "events.out.*" \) \
  -exec cp --parents {} "$out" \; 2>/dev/null
