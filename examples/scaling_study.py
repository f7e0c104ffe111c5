"""Write up `scaling_study.sh`: for each of the paper's findings, whether it holds on the toy task, with numbers.

    python examples/scaling_study.py runs/study --out runs/study/study

Reads the run folders and result files the shell script made, draws the
figures with `rlhfctl report` (one report per experiment), and writes
`scaling_study.md`. A missing experiment is reported as not run, not guessed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

FINDINGS = {
    "A": "More responses per prompt boost policy performance at first, but the gains plateau quickly.",
    "B": "Best-of-N: a reward model's pick beats a random sample and stays below the oracle; PRM vs ORM.",
    "C": "More diverse RM data (more prompts) beats more responses per prompt at the same number of pairs.",
    "D": "PPO vs GRPO: accuracy, KL and response length side by side.",
    "E1": "Larger policy models benefit less from RLHF.",
    "E2": "A larger reward model gives (modest) gains in policy training.",
}


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_metrics(run: Path) -> list[dict[str, Any]]:
    rows = []
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return rows
    for line in lines:
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # a torn last line
    return rows


def policy_numbers(run: Path) -> dict[str, Any] | None:
    """First and last eval pass@1, the gain, final KL, mean response length, Σ step seconds."""
    rows = read_metrics(run)
    evals = [(r["step"], r["eval_pass@1"]) for r in rows if r.get("eval_pass@1") is not None]
    steps = [r for r in rows if "kl" in r]
    if not evals or not steps:
        return None
    return {"first": evals[0][1], "last": evals[-1][1], "gain": evals[-1][1] - evals[0][1], "steps": steps[-1]["step"],
            "kl": steps[-1]["kl"], "length": sum(r["response_length"] for r in steps) / len(steps),
            "seconds": sum(r.get("seconds", 0.0) for r in steps)}


EVAL_PROMPTS = 200  # scaling_study.sh evaluates greedy pass@1 on the first 200 test prompts
UNRESOLVED = "unresolved"


def noise(p: float, count: int) -> float:
    """Two standard errors of the difference of two accuracies near ``p``, each measured on ``count`` items."""
    p = min(max(p, 0.05), 0.95)
    return 2 * (2 * p * (1 - p) / count) ** 0.5


def decide(claim: bool, effect: float, p: float, count: int = EVAL_PROMPTS) -> bool | str:
    """The verdict on a claim whose deciding difference is ``effect``: unresolved when it is within the noise."""
    return claim if abs(effect) > noise(p, count) else UNRESOLVED


def fmt(x: Any) -> str:
    return f"{x:.3f}" if isinstance(x, float) else str(x)


def verdict(holds: bool | str | None) -> str:
    return {True: "**holds**", False: "**does not hold**", None: "**not run**",
            UNRESOLVED: "**unresolved at this budget** (the deciding difference is within two standard errors)"}[holds]


def section_a(w: Path) -> tuple[bool | None, list[str]]:
    runs = {n: policy_numbers(w / "A" / f"ppo-n{n}") for n in (1, 2, 4, 8, 16)}
    runs = {n: r for n, r in runs.items() if r}
    if len(runs) < 3:
        return None, []
    lines = ["| n | pass@1 start | pass@1 end | gain | final KL | Σ step time |", "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {n} | {fmt(r['first'])} | {fmt(r['last'])} | {r['gain']:+.3f} | {fmt(r['kl'])} | {r['seconds']:.0f} s |" for n, r in runs.items()]
    gains = {n: r["gain"] for n, r in runs.items()}
    small, mid, large = min(gains), sorted(gains)[len(gains) // 2], max(gains)
    boost = max(gains[n] for n in gains if n > small) > gains[small] + 0.01
    plateau = gains[large] - gains[mid] <= max(gains[mid] - gains[small], 0.0) / 2 + 0.01
    p = runs[small]["first"]
    lines.append(f"\nGain from n = {small} to {mid}: {gains[mid] - gains[small]:+.3f}; from n = {mid} to {large}: "
                 f"{gains[large] - gains[mid]:+.3f} (boost: {boost}, plateau: {plateau}); two standard errors of a "
                 f"difference of two pass@1 on {EVAL_PROMPTS} prompts: {noise(p, EVAL_PROMPTS):.3f}.")
    best_boost = max(gains[n] for n in gains if n > small) - gains[small]
    return decide(boost and plateau, best_boost, p), lines


def section_b(w: Path) -> tuple[bool | None, list[str]]:
    bon = read_json(w / "B" / "bon.json")
    if not bon:
        return None, []
    ns, curves = bon["n"], bon["curves"]
    keys = [k for k in ("oracle", "rm", "prm-min", "prm-prod", "majority") if k in curves]
    lines = ["| N | " + " | ".join(keys) + " |", "|" + " --- |" * (len(keys) + 1)]
    lines += [f"| {n} | " + " | ".join(fmt(curves[k][i]) for k in keys) + " |" for i, n in enumerate(ns)]
    base, top = curves["oracle"][0], len(ns) - 1
    rm_best = max(curves["rm"])
    below_oracle = all(curves["rm"][i] <= curves["oracle"][i] + 1e-9 for i in range(len(ns)))
    holds = decide(rm_best > base and below_oracle, rm_best - base, base, bon.get("num_prompts", EVAL_PROMPTS))
    prm = max((curves[k][top], k) for k in keys if k.startswith("prm")) if any(k.startswith("prm") for k in keys) else None
    lines.append(f"\nSampled pass@1 {fmt(base)}; ORM best {fmt(rm_best)}, at N = {ns[top]} {fmt(curves['rm'][top])}"
                 + (f"; PRM ({prm[1]}) at N = {ns[top]} {fmt(prm[0])}" if prm else "") + ".")
    worst = min(curves["rm"][top], prm[0] if prm else 1.0)
    if base - worst > noise(base, bon.get("num_prompts", EVAL_PROMPTS)):
        lines.append(f"At N = {ns[top]} the reward models' picks are significantly *worse* than a random sample "
                     f"(two standard errors: {noise(base, bon.get('num_prompts', EVAL_PROMPTS)):.3f}): the more samples "
                     "a weak reward model chooses from, the more often its top score is a wrong answer.")
    return holds, lines


def section_c(w: Path) -> tuple[bool | None, list[str]]:
    acc, pairs = {}, EVAL_PROMPTS
    for name in ("wide", "deep"):
        result = read_json(w / "C" / f"eval-rm-{name}.json")
        if result:
            acc[name] = result.get("pair_accuracy")
            pairs = result.get("num_pairs") or pairs
    if len(acc) < 2:
        return None, []
    lines = ["| RM data (same number of pairs) | held-out pair accuracy |", "| --- | --- |",
             f"| many prompts, 2 pairs each (wide) | {fmt(acc['wide'])} |", f"| few prompts, 8 pairs each (deep) | {fmt(acc['deep'])} |"]
    return decide(acc["wide"] > acc["deep"], acc["wide"] - acc["deep"], acc["deep"], pairs), lines


def section_d(w: Path) -> tuple[bool | None, list[str]]:
    ppo, grpo = policy_numbers(w / "A" / "ppo-n8"), policy_numbers(w / "D" / "grpo-n8")
    if not (ppo and grpo):
        return None, []
    lines = ["| algo | pass@1 start | pass@1 end | final KL | mean response length | Σ step time |", "| --- | --- | --- | --- | --- | --- |"]
    for name, r in (("PPO", ppo), ("GRPO", grpo)):
        lines.append(f"| {name} | {fmt(r['first'])} | {fmt(r['last'])} | {fmt(r['kl'])} | {r['length']:.1f} | {r['seconds']:.0f} s |")
    return None, lines  # a comparison, not a claim with a direction


def section_e1(w: Path, sizes: list[str]) -> tuple[bool | None, list[str]]:
    runs = {s: policy_numbers(w / "E" / f"grpo-{s}") for s in sizes}
    runs = {s: r for s, r in runs.items() if r}
    if len(runs) < 2:
        return None, []
    lines = ["| policy | SFT pass@1 | after GRPO | gain |", "| --- | --- | --- | --- |"]
    lines += [f"| toy:{s} | {fmt(r['first'])} | {fmt(r['last'])} | {r['gain']:+.3f} |" for s, r in runs.items()]
    ordered = [runs[s]["gain"] for s in sizes if s in runs]
    p = min(r["first"] for r in runs.values())
    return decide(all(a >= b for a, b in zip(ordered, ordered[1:])), ordered[0] - ordered[-1], p), lines


def section_e2(w: Path) -> tuple[bool | None, list[str]]:
    tiny, small = policy_numbers(w / "E" / "grpo-rm-tiny"), policy_numbers(w / "E" / "grpo-rm-small")
    acc_tiny, acc_small = read_json(w / "E" / "eval-rm-tiny.json"), read_json(w / "C" / "eval-rm-wide.json")
    if not (tiny and small):
        return None, []
    lines = ["| reward model | held-out pair accuracy | policy pass@1 start | end | gain |", "| --- | --- | --- | --- | --- |"]
    for name, r, acc in (("toy:tiny RM", tiny, acc_tiny), ("toy:small RM", small, acc_small)):
        lines.append(f"| {name} | {fmt(acc.get('pair_accuracy')) if acc else '–'} | {fmt(r['first'])} | {fmt(r['last'])} | {r['gain']:+.3f} |")
    diff = small["gain"] - tiny["gain"]
    lines.append(f"\nThe larger RM's gain minus the smaller's: {diff:+.3f} (two standard errors: {noise(small['first'], EVAL_PROMPTS):.3f}); "
                 "the verdict is on the direction, the size is for the reader to call modest or not.")
    return decide(diff > 0.0, diff, small["first"]), lines


def draw_figures(w: Path, out: Path) -> dict[str, str]:
    """One `rlhfctl report` per experiment; returns {experiment: report folder relative to out}."""
    groups = {"A": sorted((w / "A").glob("ppo-n*")), "D": [w / "A" / "ppo-n8", w / "D" / "grpo-n8"],
              "E": sorted((w / "E").glob("grpo-*")), "B": [w / "B" / "bon.json"]}
    made = {}
    for name, inputs in groups.items():
        inputs = [p for p in inputs if (p / "metrics.jsonl").exists() or p.suffix == ".json" and p.exists()]
        if not inputs:
            continue
        proc = subprocess.run([sys.executable, "-m", "rlhfctl", "report", *map(str, inputs), "--out", str(out / f"report-{name}")],
                              capture_output=True, text=True)
        if proc.returncode == 0:
            made[name] = f"report-{name}"
        else:
            print(f"report for {name} failed: {proc.stderr.strip()}", file=sys.stderr)
    return made


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workdir")
    p.add_argument("--out", required=True)
    p.add_argument("--sizes", default="tiny small", help="policy sizes run in E1 (default: tiny small)")
    p.add_argument("--runtime", default=None, help="a sentence on how long the runs took, put under the title")
    args = p.parse_args(argv)
    w, out = Path(args.workdir), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    figures = draw_figures(w, out)
    sections = {"A": section_a(w), "B": section_b(w), "C": section_c(w), "D": section_d(w),
                "E1": section_e1(w, args.sizes.split()), "E2": section_e2(w)}
    doc = ["# The paper's findings at toy scale", "",
           "Made by `examples/scaling_study.sh` and `examples/scaling_study.py` on the toy task "
           "(Hou et al., *Does RLHF Scale?*, arXiv 2412.06000). Greedy pass@1 on 200 held-out prompts. A verdict is "
           "*unresolved* when the difference that decides it is within two standard errors.", ""]
    if args.runtime:
        doc += [args.runtime, ""]
    for key, (holds, lines) in sections.items():
        doc += [f"## {key}. {FINDINGS[key]}", "", f"Verdict: {verdict(holds) if key != 'D' or not lines else '**comparison**'}", ""]
        doc += lines or ["(not run)"]
        fig = figures.get(key[0]) if key[0] in "ABDE" else None
        if fig:
            doc += ["", f"Figures and run table: [{fig}/report.md]({fig}/report.md)"]
        doc.append("")
    (out / "scaling_study.md").write_text("\n".join(doc))
    print(out / "scaling_study.md")


if __name__ == "__main__":
    main()
