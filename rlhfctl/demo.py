"""`rlhfctl demo`: the whole pipeline on the toy task, one real command per stage.

Each stage is an ordinary `rlhfctl` command run in a subprocess, printed
before it runs so that it can be rerun by hand. A stage is finished when its
output exists (a model folder's ``rlhfctl.json``, a result JSON), so a rerun
skips what is done and resumes what was cut off: training stages get
``--resume`` when their run folder holds a ``run.json``, and rollout /
label-prm append to their JSONL. The closing table reads the artifacts, not
the logs, so it is the same however many reruns it took.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rlhfctl.errors import ConfigError, RlhfctlError


@dataclass(frozen=True)
class Budget:
    """How much each stage does. `DEFAULT` shows every stage in minutes; `FULL` spends more on data and policy updates."""

    sft_steps: int
    train_prompts: int
    test_prompts: int
    rollout_n: int
    rm_epochs: float
    label_completions: int
    label_solutions: int  # distinct responses labelled per prompt (label-prm --max-solutions-per-prompt)
    prm_epochs: float
    bon_n: int
    policy_steps: int
    prompts_per_step: int
    eval_every: int


# The PRM needs a right and a slipped version of the same carry step to learn the arithmetic rather than
# "a carry step is wrong" (most sampled carries are slips): every distinct response of a prompt is labelled.
DEFAULT = Budget(sft_steps=1000, train_prompts=400, test_prompts=200, rollout_n=8, rm_epochs=4.0, label_completions=4,
                 label_solutions=8, prm_epochs=12.0, bon_n=16, policy_steps=15, prompts_per_step=8, eval_every=5)
FULL = Budget(sft_steps=1000, train_prompts=2000, test_prompts=500, rollout_n=8, rm_epochs=4.0, label_completions=8,
              label_solutions=1, prm_epochs=4.0, bon_n=16, policy_steps=60, prompts_per_step=32, eval_every=10)
SFT_BATCH = 64


@dataclass
class Stage:
    name: str
    args: list[str]  # after `rlhfctl`
    output: Path  # the stage is done when this exists
    resume_folder: Path | None = None  # training: --resume when this folder holds run.json
    may_find_nothing: bool = False  # a failure that says there was nothing to build ends the stage, not the demo
    needs: Path | None = None  # skipped (not failed) when an earlier stage found nothing to put here
    appends: bool = False  # rollout / label-prm append to their JSONL as they go, so ``output`` is a marker the demo writes
    headline: Callable[[Path], str | None] | None = None  # the stage's number, read from ``output`` when it finishes

    def command(self) -> list[str]:
        if self.resume_folder is not None and (self.resume_folder / "run.json").exists():
            return [*self.args, "--resume"]
        return list(self.args)

    @property
    def nothing_marker(self) -> Path:
        return self.output.with_name(self.output.name + ".nothing")

    @property
    def done(self) -> bool:
        return self.output.exists() or self.nothing_marker.exists()


@dataclass
class DemoResult:
    stages_run: list[str] = field(default_factory=list)
    stages_skipped: list[str] = field(default_factory=list)
    table: dict[str, Any] = field(default_factory=dict)


def _number(value: Any) -> str | None:
    return f"{value:.3f}" if isinstance(value, (int, float)) else None


def _pass_at_1(path: Path) -> str | None:
    value = _number((_read(path) or {}).get("pass@1"))
    return value and f"pass@1 {value}"


def _manifest_number(label: str, key: str) -> Callable[[Path], str | None]:
    """A headline from a run folder's ``rlhfctl.json`` results."""
    def read(path: Path) -> str | None:
        value = _number((_read(path) or {}).get("results", {}).get(key))
        return value and f"{label} {value}"
    return read


def _pair_accuracy(path: Path) -> str | None:
    value = _number((_read(path) or {}).get("pair_accuracy"))
    return value and f"pair accuracy {value}"


def _best_of_n(path: Path) -> str | None:
    """Every curve at the largest N: ``Best-of-16: oracle 0.810, rm 0.640, ...``."""
    result = _read(path) or {}
    if not result.get("n") or not result.get("curves"):
        return None
    return f"Best-of-{result['n'][-1]}: " + ", ".join(f"{name} {ys[-1]:.3f}" for name, ys in result["curves"].items())


def plan(work: Path, budget: Budget, seed: int = 0) -> list[Stage]:
    """The stages in order, with every path under ``work``."""
    d = work / "data"
    test, train = str(d / "test.jsonl"), str(d / "train.jsonl")
    s = str(seed)
    stages = [
        Stage("toy-data", ["toy-data", str(d), "--sft", str(budget.sft_steps * SFT_BATCH), "--train", str(budget.train_prompts),
                           "--test", str(budget.test_prompts), "--seed", s], d / "toy.json"),
        Stage("train-sft", ["train-sft", str(d / "sft.jsonl"), "--model", "toy:small", "--out", str(work / "sft"),
                            "--max-steps", str(budget.sft_steps), "--seed", s], work / "sft" / "rlhfctl.json", work / "sft",
              headline=_manifest_number("final loss", "final_loss")),
        Stage("eval SFT", ["eval", "--model", str(work / "sft"), "--data", test, "--out", str(work / "eval-sft.json")],
              work / "eval-sft.json", headline=_pass_at_1),
        Stage("rollout (RM data)", ["rollout", train, "--model", str(work / "sft"), "--out", str(work / "rollouts.jsonl"),
                                    "--n", str(budget.rollout_n), "--seed", s], work / "rollouts.done", appends=True),
        Stage("build-prefs", ["build-prefs", str(work / "rollouts.jsonl"), "--out", str(work / "prefs.jsonl"),
                              "--pairs-per-prompt", "4", "--binary-per-prompt", "2", "--seed", s], work / "prefs.jsonl"),
        Stage("train-rm (ORM)", ["train-rm", str(work / "prefs.jsonl"), str(d / "prefs_style.jsonl"), "--model", str(work / "sft"),
                                 "--out", str(work / "rm"), "--epochs", str(budget.rm_epochs), "--seed", s],
              work / "rm" / "rlhfctl.json", work / "rm", headline=_manifest_number("held-out pair accuracy", "pair_accuracy")),
        Stage("label-prm", ["label-prm", str(work / "rollouts.jsonl"), "--completer", str(work / "sft"), "--out", str(work / "steps.jsonl"),
                            "--n-completions", str(budget.label_completions), "--max-solutions-per-prompt", str(budget.label_solutions),
                            "--seed", s],
              work / "steps.done", appends=True),
        Stage("train-rm --prm", ["train-rm", "--prm", str(work / "steps.jsonl"), "--model", str(work / "sft"), "--out", str(work / "prm"),
                                 "--epochs", str(budget.prm_epochs), "--seed", s], work / "prm" / "rlhfctl.json", work / "prm",
              headline=_manifest_number("held-out step accuracy", "step_accuracy")),
        Stage("rollout (Best-of-N)", ["rollout", test, "--model", str(work / "sft"), "--out", str(work / "rollouts-test.jsonl"),
                                      "--n", str(budget.bon_n), "--seed", s], work / "rollouts-test.done", appends=True),
        Stage("build-prefs (held-out)", ["build-prefs", str(work / "rollouts-test.jsonl"), "--out", str(work / "prefs-test.jsonl"),
                                         "--pairs-per-prompt", "4", "--seed", s], work / "prefs-test.jsonl", may_find_nothing=True),
        Stage("eval ORM", ["eval", "--rm", str(work / "rm"), "--data", str(work / "prefs-test.jsonl"), "--out", str(work / "eval-rm.json")],
              work / "eval-rm.json", needs=work / "prefs-test.jsonl", headline=_pair_accuracy),
        Stage("best-of-n", ["best-of-n", str(work / "rollouts-test.jsonl"), "--rm", str(work / "rm"), "--prm", str(work / "prm"),
                            "--vote", "majority", "--out", str(work / "bon.json"), "--plot", str(work / "bon.png")],
              work / "bon.json", headline=_best_of_n),
    ]
    for algo in ("ppo", "grpo"):
        out = work / algo
        stages.append(Stage(f"train-policy {algo.upper()}", [
            "train-policy", train, "--model", str(work / "sft"), "--out", str(out), "--algo", algo, "--verifier", "math",
            "--max-steps", str(budget.policy_steps), "--prompts-per-step", str(budget.prompts_per_step),
            "--eval-data", test, "--eval-every", str(budget.eval_every), "--seed", s], out / "rlhfctl.json", out))
        stages.append(Stage(f"eval {algo.upper()}", ["eval", "--model", str(out), "--data", test, "--out", str(work / f"eval-{algo}.json")],
                            work / f"eval-{algo}.json", headline=_pass_at_1))
    runs = [str(work / name) for name in ("sft", "rm", "ppo", "grpo", "bon.json", "eval-sft.json", "eval-ppo.json", "eval-grpo.json")]
    stages.append(Stage("report", ["report", *runs, "--out", str(work / "report")], work / "report" / "report.md"))
    return stages


# What build-prefs says when no prompt has both a right and a wrong response
# (a policy trained for a few steps gets every test prompt wrong).
NOTHING_BUILT = "no preference records could be built"


def check_budget(budget: Budget) -> None:
    """One line for a budget no stage can run with."""
    for name, value in vars(budget).items():
        if value <= 0:
            raise ConfigError(f"demo: {name.replace('_', '-')} must be positive, got {value}")
    if budget.train_prompts < budget.prompts_per_step:
        raise ConfigError(f"demo: --train-prompts {budget.train_prompts} is below the {budget.prompts_per_step} prompts per policy step")


def shown(args: list[str]) -> str:
    return "rlhfctl " + " ".join(shlex.quote(a) for a in args)


def run(work: Path, budget: Budget, seed: int = 0, echo=print) -> DemoResult:
    """Run every unfinished stage in order; raise `StageFailed` on the first that fails."""
    work.mkdir(parents=True, exist_ok=True)
    stages = plan(work, budget, seed)
    result = DemoResult()
    echo_overview(stages, echo)
    for i, stage in enumerate(stages, 1):
        head = f"[{i}/{len(stages)}] {stage.name}"
        if stage.done:
            echo(f"{head}: done, skipped")
            result.stages_skipped.append(stage.name)
            continue
        if stage.needs is not None and not stage.needs.exists():
            echo(f"{head}: skipped, an earlier stage found nothing for {stage.needs.name}")
            result.stages_skipped.append(stage.name)
            continue
        args = stage.command()
        echo(f"{head}\n  $ {shown(args)}")
        tic = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "rlhfctl", *args], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE if stage.may_find_nothing else None, text=True)
        if proc.returncode != 0 and stage.may_find_nothing and NOTHING_BUILT in (proc.stderr or ""):
            stage.nothing_marker.write_text(proc.stderr)
            echo(f"  nothing to build: {proc.stderr.strip().removeprefix('error: ')}")
            result.stages_run.append(stage.name)
            continue
        if proc.returncode != 0:
            if proc.stderr:
                sys.stderr.write(proc.stderr)
            raise StageFailed(stage.name, shown(args), proc.returncode)
        if stage.appends:  # its JSONL existing does not mean it finished: mark it done
            stage.output.write_text("")
        headline = stage.headline(stage.output) if stage.headline else None
        echo(f"  {headline} (finished in {time.perf_counter() - tic:.0f} s)" if headline else f"  finished in {time.perf_counter() - tic:.0f} s")
        result.stages_run.append(stage.name)
    result.table = summary_table(work)
    return result


def echo_overview(stages: list[Stage], echo) -> None:
    todo = [s.name for s in stages if not s.done]
    echo(f"{len(stages)} stages, {len(stages) - len(todo)} done already: " + " → ".join(s.name for s in stages))


class StageFailed(RlhfctlError):
    def __init__(self, name: str, command: str, code: int):
        super().__init__(f"demo stage '{name}' failed (exit {code}): {command}; fix it and rerun `rlhfctl demo` to resume")
        self.exit_code = code if code in (1, 2) else 1


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def summary_table(work: Path) -> dict[str, Any]:
    """The closing numbers, read from the artifacts (None where one is missing)."""
    table: dict[str, Any] = {}
    for name, file in (("SFT pass@1 (greedy)", "eval-sft.json"), ("PPO pass@1 (greedy)", "eval-ppo.json"),
                       ("GRPO pass@1 (greedy)", "eval-grpo.json")):
        data = _read(work / file)
        table[name] = data.get("pass@1") if data else None
    bon = _read(work / "bon.json")
    if bon:
        n_max = bon["n"][-1]
        for label, key in (("oracle", "oracle"), ("ORM", "rm"), ("PRM (min)", "prm-min"), ("majority vote", "majority")):
            curve = bon["curves"].get(key)
            table[f"Best-of-{n_max} {label}"] = curve[-1] if curve else None
        table["sampled pass@1 (T=1)"] = bon["curves"]["oracle"][0]
    rm = _read(work / "eval-rm.json")
    table["ORM pair accuracy (test prompts)"] = rm.get("pair_accuracy") if rm else None
    prm = _read(work / "prm" / "rlhfctl.json")
    table["PRM held-out step accuracy"] = prm.get("results", {}).get("step_accuracy") if prm else None
    return table
