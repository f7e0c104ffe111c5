#!/usr/bin/env bash
# How well Math-Shepherd's Monte-Carlo step labels agree with the true step
# correctness of the toy task, for N = 1, 2, 4, 8, 16 completions per step,
# hard and soft. One soft run per N gives both: a hard label is "soft > 0".
#
#   bash examples/prm_label_agreement.sh ROLLOUTS COMPLETER OUT_DIR [SOLUTIONS]
#
# ROLLOUTS: toy rollouts (e.g. runs/toy/rollouts.jsonl); COMPLETER: the SFT
# policy; SOLUTIONS: how many rollout lines to label (default 100), at most 2
# distinct solutions each. Writes OUT_DIR/steps-N.jsonl and prints a table.
set -euo pipefail
ROLLOUTS=$1; COMPLETER=$2; OUT=$3; SOLUTIONS=${4:-100}
mkdir -p "$OUT"
head -n "$SOLUTIONS" "$ROLLOUTS" > "$OUT/rollouts.jsonl"
for n in 1 2 4 8 16; do
  rlhfctl label-prm "$OUT/rollouts.jsonl" --completer "$COMPLETER" --out "$OUT/steps-$n.jsonl" \
    --method soft --n-completions "$n" --max-solutions-per-prompt 2 --json > "$OUT/summary-$n.json"
done
python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
from rlhfctl.rm.prm_label import label_agreement

out = Path(sys.argv[1])
print(f"{'N':>3} {'method':>6} {'step agreement':>15} {'first-error P':>14} {'first-error R':>14}")
for n in (1, 2, 4, 8, 16):
    soft = [json.loads(line) for line in (out / f"steps-{n}.jsonl").read_text().splitlines()]
    hard = [{**r, "labels": [lab > 0 for lab in r["labels"]]} for r in soft]
    for method, records in (("hard", hard), ("soft", soft)):
        a = label_agreement(records)
        print(f"{n:>3} {method:>6} {a['step_agreement']:>15.3f} {a['first_error_precision']:>14.3f} {a['first_error_recall']:>14.3f}")
PY
