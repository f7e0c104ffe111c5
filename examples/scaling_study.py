"""Write up `scaling_study.sh`: for each of the paper's findings, whether it holds on the toy task, with numbers.

    python examples/scaling_study.py runs/study --out runs/study/study

Reads the run folders and result files the shell script made in every
`seed-*` folder, draws the figures with `rlhfctl report` (one report per
experiment, on the first seed's runs), and writes `scaling_study.md`: each
number is a mean over seeds with a 95% Student-t interval, and each verdict
rests on a difference between arms computed per seed. A missing experiment
is reported as not run, not guessed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Iterable

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
BON_N = 4  # B compares the reward model's pick with a random sample at this N, fixed in advance (not each seed's best N)
NS = (1, 2, 4, 8, 16)  # A's responses per prompt
UNRESOLVED, ONE_SEED = "unresolved", "one seed"

# Two-sided 95% quantiles of Student's t for df = 1 .. 30; the normal's 1.96 beyond.
T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
       2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t95(df: int) -> float:
    """The two-sided 95% quantile of Student's t with ``df`` degrees of freedom (1.96 beyond 30)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be at least 1, got {df}")
    return T95[df - 1] if df <= len(T95) else 1.96


@dataclass(frozen=True)
class Interval:
    """A mean over ``k`` seeds and the half-width of its 95% t-interval (None with one seed: no interval)."""

    mean: float
    half: float | None
    k: int

    def above_zero(self) -> bool:
        return self.half is not None and self.mean - self.half > 0

    def below_zero(self) -> bool:
        return self.half is not None and self.mean + self.half < 0


def interval(values: Iterable[float]) -> Interval | None:
    """Mean ± t(0.975, k − 1)·s/√k over ``values`` (one per seed); None when there are none."""
    values = [float(v) for v in values]
    k = len(values)
    if not k:
        return None
    mean = sum(values) / k
    if k == 1:
        return Interval(mean, None, 1)
    sd = (sum((v - mean) ** 2 for v in values) / (k - 1)) ** 0.5
    return Interval(mean, t95(k - 1) * sd / k ** 0.5, k)


def paired(combine: Callable[..., float], *columns: dict[int, float]) -> Interval | None:
    """The interval of ``combine(a, b, ...)`` computed per seed, over the seeds every column has."""
    common = sorted(set.intersection(*(set(c) for c in columns))) if columns else []
    return interval(combine(*(c[s] for c in columns)) for s in common)


def decide(*differences: Interval | None) -> bool | str | None:
    """The verdict on a claim that every deciding difference is > 0.

    Not run (None) when a difference has no seed; does not hold (False) when an interval lies below zero;
    holds (True) when every interval lies above zero; unresolved otherwise; one seed gives no interval.
    """
    if not differences or any(d is None for d in differences):
        return None
    if any(d.half is None for d in differences):
        return ONE_SEED
    if any(d.below_zero() for d in differences):
        return False
    if all(d.above_zero() for d in differences):
        return True
    return UNRESOLVED


def show(iv: Interval | None, signed: bool = False, digits: int = 3) -> str:
    """``mean ± half-width`` (the mean alone with one seed; – with none)."""
    if iv is None:
        return "–"
    mean = f"{iv.mean:+.{digits}f}" if signed else f"{iv.mean:.{digits}f}"
    return mean if iv.half is None else f"{mean} ± {iv.half:.{digits}f}"


def seeds_of(iv: Interval | None) -> str:
    return "no seed" if iv is None else "1 seed" if iv.k == 1 else f"{iv.k} seeds"


def verdict(holds: bool | str | None) -> str:
    return {True: "**holds**", False: "**does not hold**", None: "**not run**",
            UNRESOLVED: "**unresolved** (a deciding difference's 95% interval includes zero)",
            ONE_SEED: "**unresolved** (one seed: no interval)"}[holds]


def seed_dirs(w: Path) -> list[Path]:
    """The ``seed-*`` folders in seed order; a study folder without them (made before seeds) is one seed."""
    def key(d: Path) -> tuple[int, str]:
        tail = d.name[len("seed-"):]
        return (int(tail) if tail.isdigit() else 1 << 30, d.name)
    dirs = sorted((d for d in w.glob("seed-*") if d.is_dir()), key=key)
    return dirs or [w]


def per_seed(seeds: list[Path], read: Callable[[Path], Any]) -> dict[int, Any]:
    """{seed index: what ``read`` found in that seed's folder}, leaving out the seeds where it found nothing."""
    found = {i: read(d) for i, d in enumerate(seeds)}
    return {i: v for i, v in found.items() if v is not None}


def column(runs: dict[int, dict[str, Any]], key: str) -> dict[int, float]:
    return {i: r[key] for i, r in runs.items() if r.get(key) is not None}


def stat(runs: dict[int, dict[str, Any]], key: str) -> Interval | None:
    return interval(column(runs, key).values())


def section_a(seeds: list[Path]) -> tuple[bool | str | None, list[str]]:
    runs = {n: per_seed(seeds, lambda d, n=n: policy_numbers(d / "A" / f"ppo-n{n}")) for n in NS}
    runs = {n: r for n, r in runs.items() if r}
    if not runs:
        return None, []
    lines = ["| n | seeds | pass@1 start | pass@1 end | gain | final KL | Σ step time (s) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {n} | {len(r)} | {show(stat(r, 'first'))} | {show(stat(r, 'last'))} | {show(stat(r, 'gain'), True)} | "
              f"{show(stat(r, 'kl'))} | {show(stat(r, 'seconds'), digits=0)} |" for n, r in runs.items()]
    gain = {n: column(runs.get(n, {}), "gain") for n in NS}
    boost = paired(lambda g1, g4: g4 - g1, gain[1], gain[4])
    diminishing = paired(lambda g1, g4, g16: (g4 - g1) - (g16 - g4), gain[1], gain[4], gain[16])
    lines.append(f"\nBoost, gain(n = 4) − gain(n = 1): {show(boost, True)} ({seeds_of(boost)}); diminishing returns, "
                 f"[gain(4) − gain(1)] − [gain(16) − gain(4)]: {show(diminishing, True)} ({seeds_of(diminishing)}). "
                 "The finding holds when both lie above zero.")
    return decide(boost, diminishing), lines


def section_b(seeds: list[Path]) -> tuple[bool | str | None, list[str]]:
    bons = per_seed(seeds, lambda d: read_json(d / "B" / "bon.json"))
    bons = {i: b for i, b in bons.items() if isinstance(b.get("n"), list) and isinstance(b.get("curves"), dict)}
    if not bons:
        return None, []
    ns = sorted({n for b in bons.values() for n in b["n"]})
    keys = [k for k in ("oracle", "rm", "prm-min", "prm-prod", "majority") if any(k in b["curves"] for b in bons.values())]

    def at(key: str, n: int) -> dict[int, float]:
        return {i: b["curves"][key][b["n"].index(n)] for i, b in bons.items() if key in b["curves"] and n in b["n"]}

    lines = ["| N | seeds | " + " | ".join(keys) + " |", "|" + " --- |" * (len(keys) + 2)]
    lines += [f"| {n} | {len(at('oracle', n))} | " + " | ".join(show(interval(at(k, n).values())) for k in keys) + " |" for n in ns]
    random = at("oracle", 1)  # at N = 1 every selector takes the one sample: a random sample's pass@1
    rm_gain = paired(lambda rm, r: rm - r, at("rm", BON_N), random)
    lines.append(f"\nAt N = {BON_N} (fixed in advance, not each seed's best N): the reward model's pick minus a random "
                 f"sample {show(rm_gain, True)} ({seeds_of(rm_gain)}); the finding holds when this lies above zero "
                 "(the pick is at most the oracle's by construction).")
    for k in keys:
        if k.startswith("prm"):
            vs = paired(lambda p, o: p - o, at(k, BON_N), at("rm", BON_N))
            lines.append(f"PRM ({k}) minus ORM at N = {BON_N}: {show(vs, True)} ({seeds_of(vs)}).")
    top = ns[-1]
    worse = paired(lambda rm, r: rm - r, at("rm", top), random)
    if worse is not None and worse.below_zero():
        lines.append(f"At N = {top} the reward model's pick is significantly *worse* than a random sample "
                     f"({show(worse, True)}): the more samples a weak reward model chooses from, the more often its top "
                     "score is a wrong answer.")
    return decide(rm_gain), lines


def section_c(seeds: list[Path]) -> tuple[bool | str | None, list[str]]:
    acc = {}
    for name in ("wide", "deep"):
        found = per_seed(seeds, lambda d, name=name: read_json(d / "C" / f"eval-rm-{name}.json"))
        acc[name] = {i: r["pair_accuracy"] for i, r in found.items() if r.get("pair_accuracy") is not None}
    if not (acc["wide"] or acc["deep"]):
        return None, []
    lines = ["| RM data (same number of pairs) | seeds | held-out pair accuracy |", "| --- | --- | --- |",
             f"| many prompts, 2 pairs each (wide) | {len(acc['wide'])} | {show(interval(acc['wide'].values()))} |",
             f"| few prompts, 8 pairs each (deep) | {len(acc['deep'])} | {show(interval(acc['deep'].values()))} |"]
    diff = paired(lambda wide, deep: wide - deep, acc["wide"], acc["deep"])
    lines.append(f"\nWide minus deep pair accuracy: {show(diff, True)} ({seeds_of(diff)}); the finding holds when it lies above zero.")
    return decide(diff), lines


def section_d(seeds: list[Path]) -> tuple[bool | str | None, list[str]]:
    ppo = per_seed(seeds, lambda d: policy_numbers(d / "A" / "ppo-n8"))
    grpo = per_seed(seeds, lambda d: policy_numbers(d / "D" / "grpo-n8"))
    if not (ppo and grpo):
        return None, []
    lines = ["| algo | seeds | pass@1 start | pass@1 end | final KL | mean response length | Σ step time (s) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in (("PPO", ppo), ("GRPO", grpo)):
        lines.append(f"| {name} | {len(r)} | {show(stat(r, 'first'))} | {show(stat(r, 'last'))} | {show(stat(r, 'kl'))} | "
                     f"{show(stat(r, 'length'), digits=1)} | {show(stat(r, 'seconds'), digits=0)} |")
    return None, lines  # a comparison, not a claim with a direction


def section_e1(seeds: list[Path], sizes: list[str]) -> tuple[bool | str | None, list[str]]:
    runs = {s: per_seed(seeds, lambda d, s=s: policy_numbers(d / "E" / f"grpo-{s}")) for s in sizes}
    runs = {s: r for s, r in runs.items() if r}
    if not runs:
        return None, []
    lines = ["| policy | seeds | SFT pass@1 | after GRPO | gain |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| toy:{s} | {len(r)} | {show(stat(r, 'first'))} | {show(stat(r, 'last'))} | {show(stat(r, 'gain'), True)} |"
              for s, r in runs.items()]
    if len(sizes) < 2:
        return None, lines
    small, large = sizes[0], sizes[-1]
    diff = paired(lambda a, b: a - b, column(runs.get(small, {}), "gain"), column(runs.get(large, {}), "gain"))
    lines.append(f"\ngain(toy:{small}) − gain(toy:{large}): {show(diff, True)} ({seeds_of(diff)}); the finding "
                 "(the smaller policy gains more) holds when it lies above zero.")
    return decide(diff), lines


def section_e2(seeds: list[Path]) -> tuple[bool | str | None, list[str]]:
    tiny = per_seed(seeds, lambda d: policy_numbers(d / "E" / "grpo-rm-tiny"))
    small = per_seed(seeds, lambda d: policy_numbers(d / "E" / "grpo-rm-small"))
    if not (tiny or small):
        return None, []
    acc_tiny = per_seed(seeds, lambda d: read_json(d / "E" / "eval-rm-tiny.json"))
    acc_small = per_seed(seeds, lambda d: read_json(d / "C" / "eval-rm-wide.json"))
    lines = ["| reward model | seeds | held-out pair accuracy | policy pass@1 start | end | gain |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, r, acc in (("toy:tiny RM", tiny, acc_tiny), ("toy:small RM", small, acc_small)):
        lines.append(f"| {name} | {len(r)} | {show(stat(acc, 'pair_accuracy'))} | {show(stat(r, 'first'))} | "
                     f"{show(stat(r, 'last'))} | {show(stat(r, 'gain'), True)} |")
    diff = paired(lambda s, t: s - t, column(small, "gain"), column(tiny, "gain"))
    lines.append(f"\ngain with the toy:small RM − gain with the toy:tiny RM: {show(diff, True)} ({seeds_of(diff)}); the "
                 "verdict is on the direction, the size is for the reader to call modest or not.")
    return decide(diff), lines


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


def study_doc(seeds: list[Path], sizes: list[str], runtime: str | None = None, figures: dict[str, str] | None = None) -> str:
    """The text of `scaling_study.md` for the seed folders ``seeds`` (figures: {experiment: report folder})."""
    figures = figures or {}
    sections = {"A": section_a(seeds), "B": section_b(seeds), "C": section_c(seeds), "D": section_d(seeds),
                "E1": section_e1(seeds, sizes), "E2": section_e2(seeds)}
    names = ", ".join(d.name for d in seeds)
    doc = ["# The paper's findings at toy scale", "",
           "Made by `examples/scaling_study.sh` and `examples/scaling_study.py` on the toy task "
           f"(Hou et al., *Does RLHF Scale?*, arXiv 2412.06000). Greedy pass@1 on {EVAL_PROMPTS} held-out prompts. "
           "The data and the SFT policies are shared; every later stage ran once per seed "
           f"({len(seeds)} {'seed' if len(seeds) == 1 else 'seeds'}: {names}).", "",
           "Each number is the mean over the seeds that have it (the *seeds* column says how many; a point missing in "
           "a seed is averaged over the others) ± the half-width of its 95% Student-t interval, t(0.975, seeds − 1) · "
           "s / √seeds with s the standard deviation over seeds. A finding is decided by one or two *deciding "
           "differences*, each computed per seed between arms of the same seed (paired) and then averaged with its "
           "95% t-interval, over the seeds that have every arm it needs: the finding **holds** when every deciding "
           "interval lies above zero (the claimed direction), **does not hold** when one lies below zero, and is "
           "**unresolved** when an interval includes zero. With one seed there is no interval: the verdict is "
           "unresolved (one seed: no interval). D is a comparison, with no verdict.", ""]
    if runtime:
        doc += [runtime, ""]
    for key, (holds, lines) in sections.items():
        doc += [f"## {key}. {FINDINGS[key]}", "", f"Verdict: {verdict(holds) if key != 'D' or not lines else '**comparison**'}", ""]
        doc += lines or ["(not run)"]
        fig = figures.get(key[0]) if key[0] in "ABDE" else None
        if fig:
            doc += ["", f"Figures and run table ({seeds[0].name}'s runs): [{fig}/report.md]({fig}/report.md)"]
        doc.append("")
    return "\n".join(doc)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workdir")
    p.add_argument("--out", required=True)
    p.add_argument("--sizes", default="tiny small", help="policy sizes run in E1, smallest first (default: tiny small)")
    p.add_argument("--runtime", default=None, help="a sentence on how long the runs took, put under the title")
    args = p.parse_args(argv)
    w, out = Path(args.workdir), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = seed_dirs(w)
    figures = draw_figures(seeds[0], out)
    (out / "scaling_study.md").write_text(study_doc(seeds, args.sizes.split(), args.runtime, figures))
    print(out / "scaling_study.md")


if __name__ == "__main__":
    main()
