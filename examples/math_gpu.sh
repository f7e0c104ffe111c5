#!/usr/bin/env bash
# The paper's pipeline on a real model and real math prompts, on GPUs:
# rollout -> build-prefs -> train-rm -> best-of-n -> train-policy (GRPO) -> eval.
#
#   MODEL=/models/Qwen2.5-0.5B-Instruct TRAIN=data/gsm8k-train.jsonl TEST=data/math500.jsonl \
#     bash examples/math_gpu.sh [WORKDIR]
#
# MODEL is a Hugging Face folder (an SFT / instruct model); TRAIN and TEST are
# prompts JSONL with `answer` (examples/export_math.py writes them from the Hub).
# Generation uses vLLM when it is installed (`pip install 'rlhfctl[vllm]'`),
# otherwise the Hugging Face backend on the GPU. Training runs under
# `accelerate launch` with ACCELERATE_CONFIG (default: examples/accelerate/ddp.yaml;
# fsdp.yaml or zero3.yaml for models that do not fit one GPU).
# Every stage resumes when rerun. examples/README.md gives the hardware and times.
set -euo pipefail
W=${1:-runs/math}
MODEL=${MODEL:?set MODEL to a Hugging Face model folder}
TRAIN=${TRAIN:?set TRAIN to a prompts JSONL with answers}
TEST=${TEST:?set TEST to a prompts JSONL with answers}
ACCELERATE_CONFIG=${ACCELERATE_CONFIG:-examples/accelerate/ddp.yaml}
RM_PROMPTS=${RM_PROMPTS:-2000}   # train prompts rolled out for reward-model data
N=${N:-8}                        # responses per prompt
BON_N=${BON_N:-16}
STEPS=${STEPS:-200}              # GRPO updates
TOKENS=${TOKENS:-1024}           # max new tokens per response
TP=${TP:-1}                      # vLLM tensor parallelism
mkdir -p "$W"
resume() { [ -f "$1/run.json" ] && echo --resume || true; }
train() { accelerate launch --config_file "$ACCELERATE_CONFIG" -m rlhfctl "$@"; }

# 1. the SFT model's own level, and rollouts on train prompts for RM data
[ -f "$W/eval-sft.json" ] || rlhfctl eval --model "$MODEL" --data "$TEST" --n 4 --temperature 0.6 \
  --max-new-tokens "$TOKENS" --tp "$TP" --out "$W/eval-sft.json"
head -n "$RM_PROMPTS" "$TRAIN" > "$W/rm-prompts.jsonl"
rlhfctl rollout "$W/rm-prompts.jsonl" --model "$MODEL" --out "$W/rollouts.jsonl" --n "$N" --temperature 1.0 \
  --max-new-tokens "$TOKENS" --tp "$TP"

# 2. verified preference pairs -> outcome reward model (initialised from the SFT model)
[ -f "$W/prefs.jsonl" ] || rlhfctl build-prefs "$W/rollouts.jsonl" --out "$W/prefs.jsonl" --pairs-per-prompt 4 --binary-per-prompt 2
[ -f "$W/rm/rlhfctl.json" ] || train train-rm "$W/prefs.jsonl" --model "$MODEL" --out "$W/rm" --bf16 --gradient-checkpointing \
  --batch-size 64 --lr 5e-6 --epochs 1 --max-length 2048 $(resume "$W/rm")

# 3. Best-of-N on the test prompts with the reward model
rlhfctl rollout "$TEST" --model "$MODEL" --out "$W/rollouts-test.jsonl" --n "$BON_N" --temperature 1.0 \
  --max-new-tokens "$TOKENS" --tp "$TP"
[ -f "$W/bon.json" ] || rlhfctl best-of-n "$W/rollouts-test.jsonl" --rm "$W/rm" --vote majority --out "$W/bon.json" --plot "$W/bon.png"

# 4. GRPO with the rule reward (add --rm "$W/rm" --rm-weight 0.5 to mix in the RM)
[ -f "$W/grpo/rlhfctl.json" ] || train train-policy "$TRAIN" --model "$MODEL" --out "$W/grpo" --algo grpo --verifier math \
  --n "$N" --prompts-per-step 64 --lr 1e-6 --max-new-tokens "$TOKENS" --max-steps "$STEPS" --bf16 --gradient-checkpointing \
  --eval-data "$TEST" --eval-every 50 --eval-max-prompts 500 --save-every 50 $(resume "$W/grpo")
[ -f "$W/eval-grpo.json" ] || rlhfctl eval --model "$W/grpo" --data "$TEST" --n 4 --temperature 0.6 \
  --max-new-tokens "$TOKENS" --tp "$TP" --out "$W/eval-grpo.json"
