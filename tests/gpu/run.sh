#!/usr/bin/env bash
# The GPU checks, end to end on one CUDA GPU, in about 8 minutes:
#   1. the `gpu` tests (the commands on the GPU: inference, bf16, gradient checkpointing, LoRA, RM, PPO/GRPO);
#   2. the `vllm` tests, where vllm is installed;
#   3. benchmarks/gpu_throughput.py: new tokens/s (rlhfctl's HF backend vs model.generate), training tokens/s and MFU.
# Usage, from the repository root:  bash tests/gpu/run.sh [LOG_DIR] [all|tests|throughput]
# (tests: 1 and 2; throughput: 3, which wants the GPU to itself.)
set -uo pipefail
log_dir=${1:-gpu-logs}
stages=${2:-all}
mkdir -p "$log_dir"
status=0
export PYTHONUNBUFFERED=1

python3 -c 'import torch; assert torch.cuda.is_available(), "no CUDA GPU"; print("GPU:", torch.cuda.get_device_name())' || exit 2

if [ "$stages" != throughput ]; then
    echo "== gpu tests"
    python3 -m pytest tests/gpu -m gpu -q -p no:cacheprovider -rs 2>&1 | tee "$log_dir/gpu-tests.log" || status=1
    if python3 -c 'import vllm' 2>/dev/null; then
        echo "== vllm tests"
        python3 -m pytest tests -m vllm -q -p no:cacheprovider -rs 2>&1 | tee "$log_dir/vllm-tests.log" || status=1
    else
        echo "== vllm tests: skipped (vllm is not installed; pip install 'rlhfctl[vllm]')"
    fi
fi
[ "$stages" = tests ] && exit $status

echo "== throughput"
python3 benchmarks/gpu_throughput.py 2>&1 | tee "$log_dir/throughput.log" || status=1
exit $status
