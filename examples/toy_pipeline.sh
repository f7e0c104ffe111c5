#!/usr/bin/env bash
# The whole pipeline on the toy task, one command per stage, on a CPU.
# Every stage reads the artifacts of the one before; rerunning resumes
# (rollout and label-prm append, training runs continue with --resume).
#
#   bash examples/toy_pipeline.sh [WORKDIR]
#
# Budget knobs (environment): PROMPTS (train prompts rolled out for the RM),
# N (responses per prompt), BON_PROMPTS and BON_N (Best-of-N), STEPS (policy
# updates; 0 skips policy training).
set -euo pipefail
W=${1:-runs/toy}
PROMPTS=${PROMPTS:-1000}
N=${N:-8}
BON_PROMPTS=${BON_PROMPTS:-200}
BON_N=${BON_N:-64}
STEPS=${STEPS:-40}
mkdir -p "$W"
resume() { [ -f "$1/run.json" ] && echo --resume || true; }

# 1. data and SFT policy
[ -f "$W/data/test.jsonl" ] || rlhfctl toy-data "$W/data"
[ -f "$W/sft/rlhfctl.json" ] || rlhfctl train-sft "$W/data/sft.jsonl" --model toy:small --out "$W/sft" $(resume "$W/sft")
[ -f "$W/eval-sft.json" ] || rlhfctl eval --model "$W/sft" --data "$W/data/test.jsonl" --out "$W/eval-sft.json"
[ -f "$W/eval-sft-16.json" ] || rlhfctl eval --model "$W/sft" --data "$W/data/test.jsonl" --n 16 --out "$W/eval-sft-16.json"

# 2. rollouts -> preferences -> outcome reward model
head -n "$PROMPTS" "$W/data/train.jsonl" > "$W/rm-prompts.jsonl"
rlhfctl rollout "$W/rm-prompts.jsonl" --model "$W/sft" --out "$W/rollouts.jsonl" --n "$N"
[ -f "$W/prefs.jsonl" ] || rlhfctl build-prefs "$W/rollouts.jsonl" --out "$W/prefs.jsonl" --pairs-per-prompt 4 --binary-per-prompt 2
[ -f "$W/rm/rlhfctl.json" ] || rlhfctl train-rm "$W/prefs.jsonl" "$W/data/prefs_style.jsonl" --model "$W/sft" --out "$W/rm" --epochs 4 $(resume "$W/rm")

# 3. Math-Shepherd step labels -> process reward model
head -n 300 "$W/rollouts.jsonl" > "$W/prm-rollouts.jsonl"
rlhfctl label-prm "$W/prm-rollouts.jsonl" --completer "$W/sft" --out "$W/steps.jsonl" --n-completions 8 --max-solutions-per-prompt 4
[ -f "$W/prm/rlhfctl.json" ] || rlhfctl train-rm --prm "$W/steps.jsonl" --model "$W/sft" --out "$W/prm" $(resume "$W/prm")

# 4. Best-of-N on held-out prompts: ORM vs PRM vs votes
head -n "$BON_PROMPTS" "$W/data/test.jsonl" > "$W/bon-prompts.jsonl"
rlhfctl rollout "$W/bon-prompts.jsonl" --model "$W/sft" --out "$W/rollouts-test.jsonl" --n "$BON_N"
rlhfctl best-of-n "$W/rollouts-test.jsonl" --rm "$W/rm" --prm "$W/prm" --agg min --agg prod --vote majority --vote weighted \
  --logprob "$W/sft" --out "$W/bon.json" --plot "$W/bon.png" --picks "$W/picks.jsonl"

# 5. policy optimisation: GRPO and PPO with the verifier (STEPS=0 skips it)
[ "$STEPS" -gt 0 ] || exit 0
for algo in grpo ppo; do
  [ -f "$W/$algo/rlhfctl.json" ] || rlhfctl train-policy "$W/data/train.jsonl" --model "$W/sft" --out "$W/$algo" --algo "$algo" \
    --verifier math --max-steps "$STEPS" --eval-data "$W/data/test.jsonl" --eval-every 10 $(resume "$W/$algo")
  [ -f "$W/eval-$algo.json" ] || rlhfctl eval --model "$W/$algo" --data "$W/data/test.jsonl" --out "$W/eval-$algo.json"
done
