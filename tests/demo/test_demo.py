"""`rlhfctl demo`: stage planning, skip/resume on rerun, failure, and (slow) the real pipeline at tiny budgets."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from rlhfctl import demo as pipeline

TINY = ["--sft-steps", "20", "--policy-steps", "2", "--train-prompts", "16", "--test-prompts", "16"]


class FakeCommands:
    """Stands in for the subprocesses: records each command and creates the stage's output."""

    def __init__(self, stages: list[pipeline.Stage], fail: str | None = None):
        self.by_args = {tuple(s.args): s for s in stages}
        self.calls: list[list[str]] = []
        self.fail = fail

    def __call__(self, argv, **kwargs):
        args = argv[3:]  # after python -m rlhfctl
        self.calls.append(args)
        stage = self.by_args[tuple(a for a in args if a != "--resume")]
        if stage.name == self.fail:
            return subprocess.CompletedProcess(argv, 2)
        stage.output.parent.mkdir(parents=True, exist_ok=True)
        stage.output.write_text("{}")
        return subprocess.CompletedProcess(argv, 0)


def test_plan_chains_every_stage_of_the_pipeline(tmp_path):
    stages = pipeline.plan(tmp_path, pipeline.DEFAULT)
    commands = [s.args[0] for s in stages]
    assert commands == ["toy-data", "train-sft", "eval", "rollout", "build-prefs", "train-rm", "label-prm", "train-rm",
                        "rollout", "build-prefs", "eval", "best-of-n", "train-policy", "eval", "train-policy", "eval", "report"]
    by_name = {s.name: s for s in stages}
    assert "--prm" in by_name["train-rm --prm"].args
    assert by_name["train-policy PPO"].args[by_name["train-policy PPO"].args.index("--algo") + 1] == "ppo"
    # every input a stage reads is the output folder or file of an earlier stage (or toy data)
    assert str(tmp_path / "sft") in by_name["rollout (RM data)"].args


def test_rerun_skips_finished_stages_and_resumes_training(tmp_path, monkeypatch):
    stages = pipeline.plan(tmp_path, pipeline.DEFAULT)
    fake = FakeCommands(stages, fail="train-rm (ORM)")
    monkeypatch.setattr(pipeline.subprocess, "run", fake)
    with pytest.raises(pipeline.StageFailed, match=r"train-rm \(ORM\).*exit 2.*rerun `rlhfctl demo`"):
        pipeline.run(tmp_path, pipeline.DEFAULT, echo=lambda line: None)
    assert [c[0] for c in fake.calls] == ["toy-data", "train-sft", "eval", "rollout", "build-prefs", "train-rm"]
    (tmp_path / "rm").mkdir()
    (tmp_path / "rm" / "run.json").write_text("{}")  # the killed run left its run folder

    fake = FakeCommands(stages)
    monkeypatch.setattr(pipeline.subprocess, "run", fake)
    result = pipeline.run(tmp_path, pipeline.DEFAULT, echo=lambda line: None)
    assert result.stages_skipped == ["toy-data", "train-sft", "eval SFT", "rollout (RM data)", "build-prefs"]
    assert fake.calls[0][0] == "train-rm" and fake.calls[0][-1] == "--resume"
    assert "--resume" not in fake.calls[1]  # label-prm appends on its own


def test_append_stages_are_done_only_once_they_finish(tmp_path, monkeypatch):
    stages = pipeline.plan(tmp_path, pipeline.DEFAULT)
    rollout = next(s for s in stages if s.name == "rollout (RM data)")
    (tmp_path / "rollouts.jsonl").write_text("")  # a rollout cut off mid-run leaves its JSONL behind
    assert not rollout.done


def test_no_held_out_pairs_ends_that_stage_and_skips_the_orm_eval(tmp_path, monkeypatch):
    """A weak policy gets every test prompt wrong: build-prefs finds no pair, the demo goes on without eval ORM."""
    stages = pipeline.plan(tmp_path, pipeline.DEFAULT)
    fake = FakeCommands(stages)

    def run(argv, **kwargs):
        if argv[3:5] == ["build-prefs", str(tmp_path / "rollouts-test.jsonl")]:
            fake.calls.append(argv[3:])
            return subprocess.CompletedProcess(argv, 2, stderr=f"error: x.jsonl: {pipeline.NOTHING_BUILT} (16 prompts: all wrong)\n")
        return fake(argv, **kwargs)

    monkeypatch.setattr(pipeline.subprocess, "run", run)
    result = pipeline.run(tmp_path, pipeline.DEFAULT, echo=lambda line: None)
    assert "eval ORM" in result.stages_skipped and "report" in result.stages_run
    assert ["eval", "--rm"] not in [c[:2] for c in fake.calls]
    assert result.table["ORM pair accuracy (test prompts)"] is None
    assert (tmp_path / "prefs-test.jsonl.nothing").exists()  # a rerun counts the stage as done
    assert next(s for s in pipeline.plan(tmp_path, pipeline.DEFAULT) if s.name == "build-prefs (held-out)").done


def test_summary_table_reads_the_artifacts(tmp_path):
    (tmp_path / "eval-sft.json").write_text(json.dumps({"pass@1": 0.5}))
    (tmp_path / "eval-grpo.json").write_text(json.dumps({"pass@1": 0.75}))
    (tmp_path / "bon.json").write_text(json.dumps({"n": [1, 2, 4], "curves": {"oracle": [0.4, 0.6, 0.8], "rm": [0.4, 0.5, 0.55],
                                                                              "prm-min": [0.4, 0.45, 0.5]}}))
    (tmp_path / "eval-rm.json").write_text(json.dumps({"pair_accuracy": 0.7}))
    table = pipeline.summary_table(tmp_path)
    assert table["SFT pass@1 (greedy)"] == 0.5 and table["GRPO pass@1 (greedy)"] == 0.75
    assert table["PPO pass@1 (greedy)"] is None
    assert table["Best-of-4 ORM"] == 0.55 and table["Best-of-4 PRM (min)"] == 0.5 and table["Best-of-4 oracle"] == 0.8
    assert table["Best-of-4 majority vote"] is None and table["sampled pass@1 (T=1)"] == 0.4
    assert table["ORM pair accuracy (test prompts)"] == 0.7 and table["PRM held-out step accuracy"] is None


@pytest.mark.parametrize("flag", ["--sft-steps", "--policy-steps", "--train-prompts"])
def test_a_budget_of_zero_is_a_one_line_error(flag, run_main, tmp_path):
    r = run_main("demo", "--workdir", tmp_path / "w", flag, "0")
    assert r.code == 2
    assert r.err.strip().count("\n") == 0 and "must be positive" in r.err
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_demo_runs_every_stage_and_a_rerun_skips_them_all(cli, tmp_path):
    work = tmp_path / "demo"
    proc = cli("demo", "--workdir", work, *TINY, "--json", timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = json.loads(proc.stdout)
    assert 0.0 <= table["SFT pass@1 (greedy)"] <= 1.0 and 0.0 <= table["GRPO pass@1 (greedy)"] <= 1.0
    assert table["Best-of-16 oracle"] >= table["Best-of-16 ORM"]
    assert (work / "report" / "report.md").is_file() and (work / "bon.png").stat().st_size > 0
    for line in proc.stderr.splitlines():
        if line.strip().startswith("$ rlhfctl "):
            assert str(work) in line  # every stage's exact command is printed
    again = cli("demo", "--workdir", work, *TINY, "--json", timeout=600)
    assert again.returncode == 0 and json.loads(again.stdout) == table
    # every stage is done; at these budgets the test responses may be all wrong, leaving no held-out pairs for eval ORM
    assert again.stderr.count("done, skipped") + again.stderr.count("found nothing for prefs-test.jsonl") == 17


def test_each_stage_prints_its_headline_number_as_it_finishes(tmp_path, monkeypatch):
    stages = pipeline.plan(tmp_path, pipeline.DEFAULT)
    contents = {tmp_path / "eval-sft.json": {"pass@1": 0.25},
                tmp_path / "rm" / "rlhfctl.json": {"results": {"pair_accuracy": 0.875}},
                tmp_path / "bon.json": {"n": [1, 2, 4], "curves": {"oracle": [0.2, 0.4, 0.6], "rm": [0.2, 0.3, 0.35]}}}

    def fake(argv, **kwargs):
        stage = next(s for s in stages if s.args == [a for a in argv[3:] if a != "--resume"])
        stage.output.parent.mkdir(parents=True, exist_ok=True)
        stage.output.write_text(json.dumps(contents.get(stage.output, {})))
        return subprocess.CompletedProcess(argv, 0)

    monkeypatch.setattr(pipeline.subprocess, "run", fake)
    lines: list[str] = []
    pipeline.run(tmp_path, pipeline.DEFAULT, echo=lines.append)
    text = "\n".join(lines)
    assert "  pass@1 0.250 (finished in" in text
    assert "  held-out pair accuracy 0.875 (finished in" in text
    assert "  Best-of-4: oracle 0.600, rm 0.350 (finished in" in text
    report = next(s for s in stages if s.name == "report")
    assert str(tmp_path / "sft") in report.args and str(tmp_path / "rm") in report.args


PRM_STAGES = ("toy-data", "train-sft", "rollout (RM data)", "label-prm", "train-rm --prm", "rollout (Best-of-N)")


@pytest.mark.slow
def test_default_pipeline_prm_picks_better_than_a_random_sample(cli, tmp_path):
    """The default budget's PRM stages, command for command; its Best-of-16 pick (min of the step
    scores, the demo's curve) is right more often than a random sample of the 16 (sampled pass@1)."""
    work = tmp_path / "demo"
    stages = {s.name: s for s in pipeline.plan(work, pipeline.DEFAULT)}
    for name in PRM_STAGES:
        proc = cli(*stages[name].args, timeout=1800)
        assert proc.returncode == 0, (name, proc.stderr[-3000:])
    proc = cli("best-of-n", work / "rollouts-test.jsonl", "--prm", work / "prm", "--out", work / "bon.json", "--json", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    curves = json.loads((work / "bon.json").read_text())["curves"]
    assert curves["prm-min"][-1] > curves["oracle"][0] + 0.03, curves
