#!/usr/bin/env bash
# The paper's experiments in miniature, on the toy task, on a CPU
# (Hou et al., "Does RLHF Scale?", arXiv 2412.06000):
#   A. responses per prompt (n = 1, 2, 4, 8, 16) for PPO at the same number of updates;
#   B. ORM vs PRM at Best-of-N up to 64;
#   C. RM data: more prompts vs more responses per prompt at a fixed number of pairs;
#   D. PPO vs GRPO (accuracy, KL, response length);
#   E. policy size (toy:tiny vs toy:small, toy:base with SIZES) and RM size (toy:tiny vs toy:small RM).
# Then examples/scaling_study.py writes WORKDIR/study/scaling_study.md with, for
# each of the paper's findings, whether it holds here and the numbers, plus figures.
#
#   bash examples/scaling_study.sh [WORKDIR]          # about 15 minutes on a 2-core CPU (most of it the SFT runs)
#
# Budget knobs (environment): STEPS (policy updates per run, 15), PPS (prompts per
# policy step, 8), SIZES (policy sizes, "tiny small"), PAIRS (RM pairs in C, 1600),
# BON_PROMPTS (200). Every stage is skipped when its output exists: rerun to resume.
set -euo pipefail
W=${1:-runs/study}
STEPS=${STEPS:-15}
PPS=${PPS:-8}
SIZES=${SIZES:-"tiny small"}
PAIRS=${PAIRS:-1600}
BON_PROMPTS=${BON_PROMPTS:-200}
D="$W/data"
mkdir -p "$W"
resume() { [ -f "$1/run.json" ] && echo --resume || true; }
policy() {  # policy OUT SFT ALGO N [extra flags...]
  local out=$1 sft=$2 algo=$3 n=$4; shift 4
  [ -f "$out/rlhfctl.json" ] || rlhfctl train-policy "$D/train.jsonl" --model "$sft" --out "$out" --algo "$algo" --n "$n" \
    --prompts-per-step "$PPS" --max-steps "$STEPS" --eval-data "$D/eval.jsonl" --eval-every 10 "$@" $(resume "$out")
}

# 0. data and the SFT policies (one per size)
[ -f "$D/toy.json" ] || rlhfctl toy-data "$D"
head -n 200 "$D/test.jsonl" > "$D/eval.jsonl"
for size in $SIZES; do
  [ -f "$W/sft-$size/rlhfctl.json" ] || rlhfctl train-sft "$D/sft.jsonl" --model "toy:$size" --out "$W/sft-$size" $(resume "$W/sft-$size")
done
SFT="$W/sft-small"

# A. responses per prompt for PPO, same number of updates
# (batch reward normalisation for every n: group normalisation needs n >= 2)
for n in 1 2 4 8 16; do policy "$W/A/ppo-n$n" "$SFT" ppo "$n" --verifier math --reward-norm batch; done

# D. PPO vs GRPO at n = 8 (the PPO run is A's n = 8)
policy "$W/D/grpo-n8" "$SFT" grpo 8 --verifier math

# E1. policy size: GRPO from each size's SFT policy
for size in $SIZES; do policy "$W/E/grpo-$size" "$W/sft-$size" grpo 8 --verifier math; done

# C. RM data at a fixed number of pairs: many prompts x few pairs vs few prompts x many pairs
head -n 800 "$D/train.jsonl" > "$W/C-prompts.jsonl"
rlhfctl rollout "$W/C-prompts.jsonl" --model "$SFT" --out "$W/C/rollouts.jsonl" --n 16
rlhfctl rollout "$D/eval.jsonl" --model "$SFT" --out "$W/C/rollouts-eval.jsonl" --n 8
[ -f "$W/C/prefs-eval.jsonl" ] || rlhfctl build-prefs "$W/C/rollouts-eval.jsonl" --out "$W/C/prefs-eval.jsonl" --pairs-per-prompt 4
for shape in "wide 2" "deep 8"; do
  set -- $shape; name=$1; per=$2; prompts=$((PAIRS / per))
  [ -f "$W/C/prefs-$name.jsonl" ] || rlhfctl build-prefs "$W/C/rollouts.jsonl" --out "$W/C/prefs-$name.jsonl" \
    --max-prompts "$prompts" --pairs-per-prompt "$per"
  [ -f "$W/C/rm-$name/rlhfctl.json" ] || rlhfctl train-rm "$W/C/prefs-$name.jsonl" --model "$SFT" --out "$W/C/rm-$name" \
    --eval-data "$W/C/prefs-eval.jsonl" --epochs 2 $(resume "$W/C/rm-$name")
  [ -f "$W/C/eval-rm-$name.json" ] || rlhfctl eval --rm "$W/C/rm-$name" --data "$W/C/prefs-eval.jsonl" --out "$W/C/eval-rm-$name.json"
done

# E2. RM size: the same (wide) data on a toy:tiny RM; then GRPO with each RM as the only reward
if [[ " $SIZES " == *" tiny "* ]]; then
  [ -f "$W/E/rm-tiny/rlhfctl.json" ] || rlhfctl train-rm "$W/C/prefs-wide.jsonl" --model "$W/sft-tiny" --out "$W/E/rm-tiny" \
    --eval-data "$W/C/prefs-eval.jsonl" --epochs 2 $(resume "$W/E/rm-tiny")
  [ -f "$W/E/eval-rm-tiny.json" ] || rlhfctl eval --rm "$W/E/rm-tiny" --data "$W/C/prefs-eval.jsonl" --out "$W/E/eval-rm-tiny.json"
  policy "$W/E/grpo-rm-tiny" "$SFT" grpo 8 --rm "$W/E/rm-tiny"
  policy "$W/E/grpo-rm-small" "$SFT" grpo 8 --rm "$W/C/rm-wide"
fi

# B. ORM vs PRM at Best-of-N up to 64 on held-out prompts
head -n 300 "$W/C/rollouts.jsonl" > "$W/B-label.jsonl"
rlhfctl label-prm "$W/B-label.jsonl" --completer "$SFT" --out "$W/B/steps.jsonl" --n-completions 8 --max-solutions-per-prompt 2
[ -f "$W/B/prm/rlhfctl.json" ] || rlhfctl train-rm --prm "$W/B/steps.jsonl" --model "$SFT" --out "$W/B/prm" --epochs 2 $(resume "$W/B/prm")
head -n "$BON_PROMPTS" "$D/test.jsonl" > "$W/B-prompts.jsonl"
rlhfctl rollout "$W/B-prompts.jsonl" --model "$SFT" --out "$W/B/rollouts-test.jsonl" --n 64
[ -f "$W/B/bon.json" ] || rlhfctl best-of-n "$W/B/rollouts-test.jsonl" --rm "$W/C/rm-wide" --prm "$W/B/prm" --agg min --agg prod \
  --vote majority --out "$W/B/bon.json" --plot "$W/B/bon.png"

# The write-up: figures (rlhfctl report) and the findings
python "$(dirname "$0")/scaling_study.py" "$W" --out "$W/study"
