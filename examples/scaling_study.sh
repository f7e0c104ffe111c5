#!/usr/bin/env bash
# The paper's experiments in miniature, on the toy task, on a CPU
# (Hou et al., "Does RLHF Scale?", arXiv 2412.06000):
#   A. responses per prompt (n = 1, 2, 4, 8, 16) for PPO at the same number of updates;
#   B. ORM vs PRM at Best-of-N up to 64;
#   C. RM data: more prompts vs more responses per prompt at a fixed number of pairs;
#   D. PPO vs GRPO (accuracy, KL, response length);
#   E. policy size (toy:tiny vs toy:small, toy:base with SIZES) and RM size (toy:tiny vs toy:small RM).
# The data (toy-data) and the SFT policies (one per size) are made once and shared;
# every later stage runs once per seed s = 0 .. SEEDS-1 under WORKDIR/seed-s/
# (A/, B/, C/, D/, E/), with --seed s on every command that takes one.
# Then examples/scaling_study.py writes WORKDIR/study/scaling_study.md with, for
# each of the paper's findings, whether it holds here (mean over seeds and a
# 95% interval of the deciding difference) and the numbers, plus figures.
#
#   bash examples/scaling_study.sh [WORKDIR]          # wall time: see README
#
# Budget knobs (environment): SEEDS (seeds per stage after SFT, 3), STEPS (policy
# updates per run, 15), PPS (prompts per policy step, 8), SIZES (policy sizes,
# "tiny small"), PAIRS (RM pairs in C, 1600), BON_PROMPTS (200). Every stage is
# skipped when its output exists: rerun to resume.
set -euo pipefail
W=${1:-runs/study}
SEEDS=${SEEDS:-3}
STEPS=${STEPS:-15}
PPS=${PPS:-8}
SIZES=${SIZES:-"tiny small"}
PAIRS=${PAIRS:-1600}
BON_PROMPTS=${BON_PROMPTS:-200}
D="$W/data"
mkdir -p "$W"
resume() { [ -f "$1/run.json" ] && echo --resume || true; }
policy() {  # policy OUT SFT ALGO N [extra flags...]  (with the seed loop's --seed $s)
  local out=$1 sft=$2 algo=$3 n=$4; shift 4
  [ -f "$out/rlhfctl.json" ] || rlhfctl train-policy "$D/train.jsonl" --model "$sft" --out "$out" --algo "$algo" --n "$n" \
    --prompts-per-step "$PPS" --max-steps "$STEPS" --eval-data "$D/eval.jsonl" --eval-every 10 --seed "$s" "$@" $(resume "$out")
}

# 0. data and the SFT policies (one per size), shared by every seed
[ -f "$D/toy.json" ] || rlhfctl toy-data "$D"
head -n 200 "$D/test.jsonl" > "$D/eval.jsonl"
for size in $SIZES; do
  [ -f "$W/sft-$size/rlhfctl.json" ] || rlhfctl train-sft "$D/sft.jsonl" --model "toy:$size" --out "$W/sft-$size" $(resume "$W/sft-$size")
done
SFT="$W/sft-small"
head -n 800 "$D/train.jsonl" > "$W/C-prompts.jsonl"
head -n "$BON_PROMPTS" "$D/test.jsonl" > "$W/B-prompts.jsonl"

for ((s = 0; s < SEEDS; s++)); do
S="$W/seed-$s"
mkdir -p "$S"

# A. responses per prompt for PPO, same number of updates
# (batch reward normalisation for every n: group normalisation needs n >= 2)
for n in 1 2 4 8 16; do policy "$S/A/ppo-n$n" "$SFT" ppo "$n" --verifier math --reward-norm batch; done

# D. PPO vs GRPO at n = 8 (the PPO run is A's n = 8)
policy "$S/D/grpo-n8" "$SFT" grpo 8 --verifier math

# E1. policy size: GRPO from each size's SFT policy
for size in $SIZES; do policy "$S/E/grpo-$size" "$W/sft-$size" grpo 8 --verifier math; done

# C. RM data at a fixed number of pairs: many prompts x few pairs vs few prompts x many pairs
rlhfctl rollout "$W/C-prompts.jsonl" --model "$SFT" --out "$S/C/rollouts.jsonl" --n 16 --seed "$s"
rlhfctl rollout "$D/eval.jsonl" --model "$SFT" --out "$S/C/rollouts-eval.jsonl" --n 8 --seed "$s"
[ -f "$S/C/prefs-eval.jsonl" ] || rlhfctl build-prefs "$S/C/rollouts-eval.jsonl" --out "$S/C/prefs-eval.jsonl" --pairs-per-prompt 4 --seed "$s"
for shape in "wide 2" "deep 8"; do
  read -r name per <<< "$shape"; prompts=$((PAIRS / per))
  [ -f "$S/C/prefs-$name.jsonl" ] || rlhfctl build-prefs "$S/C/rollouts.jsonl" --out "$S/C/prefs-$name.jsonl" \
    --max-prompts "$prompts" --pairs-per-prompt "$per" --seed "$s"
  [ -f "$S/C/rm-$name/rlhfctl.json" ] || rlhfctl train-rm "$S/C/prefs-$name.jsonl" --model "$SFT" --out "$S/C/rm-$name" \
    --eval-data "$S/C/prefs-eval.jsonl" --epochs 2 --seed "$s" $(resume "$S/C/rm-$name")
  [ -f "$S/C/eval-rm-$name.json" ] || rlhfctl eval --rm "$S/C/rm-$name" --data "$S/C/prefs-eval.jsonl" --out "$S/C/eval-rm-$name.json" --seed "$s"
done

# E2. RM size: the same (wide) data on a toy:tiny RM; then GRPO with each RM as the only reward
if [[ " $SIZES " == *" tiny "* ]]; then
  [ -f "$S/E/rm-tiny/rlhfctl.json" ] || rlhfctl train-rm "$S/C/prefs-wide.jsonl" --model "$W/sft-tiny" --out "$S/E/rm-tiny" \
    --eval-data "$S/C/prefs-eval.jsonl" --epochs 2 --seed "$s" $(resume "$S/E/rm-tiny")
  [ -f "$S/E/eval-rm-tiny.json" ] || rlhfctl eval --rm "$S/E/rm-tiny" --data "$S/C/prefs-eval.jsonl" --out "$S/E/eval-rm-tiny.json" --seed "$s"
  policy "$S/E/grpo-rm-tiny" "$SFT" grpo 8 --rm "$S/E/rm-tiny"
  policy "$S/E/grpo-rm-small" "$SFT" grpo 8 --rm "$S/C/rm-wide"
fi

# B. ORM vs PRM at Best-of-N up to 64 on held-out prompts
head -n 300 "$S/C/rollouts.jsonl" > "$S/B-label.jsonl"
rlhfctl label-prm "$S/B-label.jsonl" --completer "$SFT" --out "$S/B/steps.jsonl" --n-completions 8 --max-solutions-per-prompt 2 --seed "$s"
[ -f "$S/B/prm/rlhfctl.json" ] || rlhfctl train-rm --prm "$S/B/steps.jsonl" --model "$SFT" --out "$S/B/prm" --epochs 2 --seed "$s" $(resume "$S/B/prm")
rlhfctl rollout "$W/B-prompts.jsonl" --model "$SFT" --out "$S/B/rollouts-test.jsonl" --n 64 --seed "$s"
[ -f "$S/B/bon.json" ] || rlhfctl best-of-n "$S/B/rollouts-test.jsonl" --rm "$S/C/rm-wide" --prm "$S/B/prm" --agg min --agg prod \
  --vote majority --out "$S/B/bon.json" --plot "$S/B/bon.png" --seed "$s"
done

# The write-up: figures (rlhfctl report, seed 0's runs) and the findings over all seeds
python "$(dirname "$0")/scaling_study.py" "$W" --out "$W/study" --sizes "$SIZES"
