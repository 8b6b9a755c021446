#!/usr/bin/env bash
# Fit on CUDA and on the CPU of the same machine, score both models with the CLI, and
# compare: the flags must agree and the scores differ only by float rounding. Then run the
# test suite with a GPU visible (tests must pass there too).
#
#   bench/cuda_check.sh DATA_DIR OUT_DIR [PYTEST_ARGS...]
#
# DATA_DIR is an MVTec-layout folder (e.g. ../shared/data/mvtec/hazelnut_reduced).
set -euo pipefail
data=$1 out=$2
shift 2
py=${PYTHON:-python3}
mkdir -p "$out"
"$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
    torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")'
for device in ${DEVICES:-cuda cpu}; do
    SECONDS=0
    "$py" make_model.py --data-dir "$data" \
        --dataset check --backbone efficientnet_lite0 --device "$device" \
        --model "$out/$device.safetensors" >"$out/fit_$device.log" 2>&1 || {
        tail -20 "$out/fit_$device.log"
        exit 1
    }
    echo "$device fit: $SECONDS s"
    tail -2 "$out/fit_$device.log"
    find "$data/test" -name '*.png' -not -path '*ground_truth*' | sort |
        xargs "$py" anomaly_detector.py --model "$out/$device.safetensors" >"$out/scores_$device.csv"
done
"$py" - "$out/scores_${DEVICES:-cuda}.csv" "$out/scores_cpu.csv" <<'EOF'
import sys
rows = [dict((line.split(",")[0], line.strip().split(",")[1:]) for line in open(f)) for f in sys.argv[1:]]
cuda, cpu = rows
worst = max(abs(float(cuda[k][0]) / float(cpu[k][0]) - 1) for k in cpu)
flips = [k for k in cpu if cuda[k][1] != cpu[k][1]]
print(f"{len(cpu)} images: largest relative score difference {worst:.2e}, flags differing: {flips}")
EOF
"$py" -m pytest -q -p no:cacheprovider "$@" >"$out/pytest.log" 2>&1 || true
tail -25 "$out/pytest.log"
