"""`rlhfctl report` on small run folders and result files written here (no training)."""

import json
import re
import shlex
from pathlib import Path

import pytest

from rlhfctl.report.figures import moving_average
from rlhfctl.report.runs import unique_names

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
POLICY_OPTIONS = {"prompts": "data/train.jsonl", "model": "runs/sft", "n": 8, "lr": 1e-4, "seed": 0, "resume": False}
# step -> eval pass@1; GRPO peaks at step 3, PPO ends highest
EVALS = {"grpo": {0: 0.5, 3: 0.7, 6: 0.6}, "ppo": {0: 0.5, 3: 0.55, 6: 0.65}}


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _policy_run(folder: Path, algo: str, kl_coef: float) -> None:
    folder.mkdir(parents=True)
    options = {**POLICY_OPTIONS, "out": str(folder), "algo": algo, "kl_coef": kl_coef}
    (folder / "rlhfctl.json").write_text(json.dumps({"command": "train-policy", "version": "0.1.0", "options": options,
                                                     "inputs": {}, "results": {"algo": algo, "steps": 6}}))
    rows = [{"step": 0, "eval_pass@1": EVALS[algo][0]}]
    for step in range(1, 7):
        row = {"step": step, "reward_raw_mean": 0.1 * step, "reward_shaped_mean": 0.0, "kl": 0.01 * step,
               "response_length": 30.0 + step, "entropy": 0.5, "policy_loss": 0.0, "grad_norm": 0.2,
               "clip_fraction": 0.0, "seconds": 2.0 if algo == "grpo" else 3.0}
        if step in EVALS[algo]:
            row["eval_pass@1"] = EVALS[algo][step]
        rows.append(row)
    _write_jsonl(folder / "metrics.jsonl", rows)


def _sft_run(folder: Path) -> None:
    folder.mkdir(parents=True)
    (folder / "rlhfctl.json").write_text(json.dumps({"command": "train-sft", "options": {"lr": 3e-3, "out": str(folder)},
                                                     "results": {"final_loss": 0.25, "steps": 4}}))
    _write_jsonl(folder / "metrics.jsonl", [{"step": s, "loss": 2.0 / s, "lr": 1e-3} for s in range(1, 5)])


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inputs")
    _policy_run(root / "runs" / "grpo", "grpo", 0.04)
    _policy_run(root / "runs" / "ppo", "ppo", 0.005)
    _sft_run(root / "runs" / "sft")
    bon = root / "runs" / "bon.json"
    bon.write_text(json.dumps({"n": [1, 2, 4, 8, 16, 32], "num_prompts": 10, "source": "runs/rollouts-test.jsonl",
                               "curves": {"oracle": [0.5, 0.6, 0.7, 0.8, 0.9, 0.95], "rm": [0.5, 0.52, 0.54, 0.53, 0.51, 0.48]}}))
    ev = root / "runs" / "eval.json"
    ev.write_text(json.dumps({"n": 4, "num_prompts": 10, "pass@1": 0.55, "pass@2": 0.65, "maj@2": 0.56,
                              "pass@4": 0.75, "maj@4": 0.58, "temperature": 1.0}))
    return {"grpo": root / "runs" / "grpo", "ppo": root / "runs" / "ppo", "sft": root / "runs" / "sft", "bon": bon, "eval": ev}


@pytest.fixture(scope="module")
def made(inputs, cli, tmp_path_factory):
    """One real ``rlhfctl report ... --json`` over every input: (summary, report folder)."""
    out = tmp_path_factory.mktemp("made") / "report"
    proc = cli("report", *inputs.values(), "--out", out, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), out


def test_figures_are_pngs(made):
    summary, out = made
    expected = {"policy.png", "policy-reward.png", "policy-kl.png", "policy-response-length.png",
                "policy-eval-pass1.png", "sft-loss.png", "best-of-n.png"}
    assert {Path(f).name for f in summary["figures"]} == expected
    for name in expected:
        data = (out / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 1000, name
    assert sorted(p.name for p in out.iterdir()) == sorted(expected | {"report.md"})


def test_report_embeds_figures_by_relative_path(made):
    _, out = made
    text = (out / "report.md").read_text()
    for name in ("policy.png", "sft-loss.png", "best-of-n.png"):
        assert f"]({name})" in text
    assert str(out) not in text


def _table_row(text: str, first_cell: str, after: str) -> list[str]:
    """The cells of the first table row starting with ``first_cell`` below the heading ``after``."""
    section = text.split(after, 1)[1]
    line = next(l for l in section.splitlines() if l.startswith(f"| {first_cell} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_policy_table_numbers(made):
    _, out = made
    text = (out / "report.md").read_text()
    grpo = _table_row(text, "grpo", "## Policy runs")
    ppo = _table_row(text, "ppo", "## Policy runs")
    # run, algo, steps, first, last, best (step), final reward, final KL, mean length, wall time
    assert grpo == ["grpo", "grpo", "6", "0.5", "0.6", "0.7 (3)", "0.6", "0.06", "33.5", "12 s"]
    assert ppo == ["ppo", "ppo", "6", "0.5", "0.65", "0.65 (6)", "0.6", "0.06", "33.5", "18 s"]


def test_settings_that_differ(made):
    _, out = made
    text = (out / "report.md").read_text()
    policy = text.split("## Policy runs", 1)[1].split("\n## ", 1)[0]
    assert "| `algo` | grpo | ppo |" in policy
    assert "| `kl_coef` | 0.04 | 0.005 |" in policy
    for same in ("`lr`", "`n`", "`seed`", "`model`", "`out`", "`resume`"):
        assert same not in policy, same


def test_other_tables(made):
    _, out = made
    text = (out / "report.md").read_text()
    assert _table_row(text, "sft", "## SFT runs") == ["sft", "4", "0.5"]
    # run, selector, prompts, N=1, N=4, N=16, N_max, at N_max
    assert _table_row(text, "bon", "## Best-of-N") == ["bon", "oracle", "10", "0.5", "0.7", "0.9", "32", "0.95"]
    assert "| bon | rm | 10 | 0.5 | 0.54 | 0.51 | 32 | 0.48 |" in text
    evals = text.split("## Evaluations", 1)[1]
    assert "| run | n | prompts | pass@1 | pass@2 | pass@4 | maj@2 | maj@4 |" in evals
    assert "| eval | 4 | 10 | 0.55 | 0.65 | 0.75 | 0.56 | 0.58 |" in evals


def test_json_summary(made):
    summary, out = made
    runs = {r["name"]: r for r in summary["runs"]}
    assert list(runs) == ["grpo", "ppo", "sft", "bon", "eval"]
    assert (runs["grpo"]["eval_pass@1_best"], runs["grpo"]["eval_pass@1_best_step"]) == (0.7, 3)
    assert (runs["ppo"]["eval_pass@1_best"], runs["ppo"]["eval_pass@1_best_step"]) == (0.65, 6)
    assert runs["ppo"]["wall_seconds"] == 18.0 and runs["ppo"]["kind"] == "train-policy"
    assert runs["sft"]["final_loss"] == 0.5
    assert runs["bon"]["selectors"]["rm"] == {"1": 0.5, "4": 0.54, "16": 0.51, "max": 0.48}
    assert runs["eval"]["maj@4"] == 0.58
    assert summary["report"] == str(out / "report.md")


# --- bad input: one line, exit 2, no report folder -----------------------------------------------------------

def _bad_metrics(folder: Path) -> str:
    _policy_run(folder, "grpo", 0.04)
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    lines[2] = lines[2][:20]
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return re.escape(str(folder / "metrics.jsonl")) + r":3: invalid JSON"


def _bad_result_json(folder: Path) -> str:
    path = folder.with_suffix(".json")
    path.write_text('{"n": [1, 2],\n "curves": {"oracle": [0.5, 0.6]\n')
    return re.escape(str(path)) + r":3: invalid JSON"


def _not_a_run(folder: Path) -> str:
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    return re.escape(str(folder)) + r": not a training run folder \(no rlhfctl.json and no metrics.jsonl\)"


def _missing(folder: Path) -> str:
    return re.escape(str(folder)) + r": no such file or folder"


def _unknown_json(folder: Path) -> str:
    path = folder.with_suffix(".json")
    path.write_text('{"hello": 1}\n')
    return re.escape(str(path)) + r": not a result file rlhfctl knows"


def _bad_curve(folder: Path) -> str:
    path = folder.with_suffix(".json")
    path.write_text('{"n": [1, 2, 4], "curves": {"rm": [0.5, 0.6]}}\n')
    return re.escape(str(path)) + r": field 'curves': selector 'rm': expected 3 numbers"


BAD = {"missing-path": _missing, "not-a-run": _not_a_run, "bad-metrics-line": _bad_metrics,
       "bad-result-json": _bad_result_json, "unknown-json": _unknown_json, "bad-curve": _bad_curve}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input(case, inputs, run_main, tmp_path):
    bad = tmp_path / "bad"
    pattern = BAD[case](bad)
    bad_path = bad if bad.exists() or case == "missing-path" else bad.with_suffix(".json")
    out = tmp_path / "reports" / "r"
    before = sorted(tmp_path.rglob("*"))
    r = run_main("report", inputs["grpo"], bad_path, "--out", out)
    assert r.code == 2, r.err
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and re.search(pattern, lines[0]), r.err
    assert r.out == ""
    assert sorted(tmp_path.rglob("*")) == before  # neither --out nor its parent nor a temporary folder


def test_bad_smooth(inputs, run_main, tmp_path):
    r = run_main("report", inputs["grpo"], "--out", tmp_path / "r", "--smooth", "0")
    assert r.code == 2 and r.err.strip() == "error: --smooth must be at least 1, got 0"
    assert list(tmp_path.iterdir()) == []


def test_refuses_an_out_folder_that_is_no_report(inputs, run_main, tmp_path):
    keep = tmp_path / "keep.txt"
    keep.write_text("precious")
    r = run_main("report", inputs["sft"], "--out", tmp_path)
    assert r.code == 2 and "holds no earlier report" in r.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_torn_last_line_is_skipped_and_run_json_stands_in(run_main, tmp_path):
    """A killed run: no rlhfctl.json yet (only the run.json written at start), metrics cut mid-line."""
    run = tmp_path / "killed"
    _policy_run(run, "grpo", 0.04)
    manifest = json.loads((run / "rlhfctl.json").read_text())
    (run / "rlhfctl.json").unlink()
    (run / "run.json").write_text(json.dumps({"command": manifest["command"], "options": manifest["options"]}))
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "reward_raw_mean": 0.')
    r = run_main("report", run, "--out", tmp_path / "r", "--json")
    assert r.code == 0, r.err
    (summary,) = json.loads(r.out)["runs"]
    assert summary["steps"] == 6 and summary["final_reward_raw_mean"] == pytest.approx(0.6)
    assert summary["algo"] == "grpo"


def test_rerun_replaces_an_earlier_report(inputs, run_main, tmp_path):
    out = tmp_path / "r"
    assert run_main("report", inputs["sft"], inputs["bon"], "--out", out).code == 0
    assert (out / "best-of-n.png").is_file()
    r = run_main("report", inputs["sft"], "--out", out)
    assert r.code == 0, r.err
    assert sorted(p.name for p in out.iterdir()) == ["report.md", "sft-loss.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]


# --- names ----------------------------------------------------------------------------------------------

def test_names_clash_then_take_the_parent(tmp_path):
    for d in ("a/grpo", "b/grpo", "c/ppo"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "a" / "bon.json").write_text("{}")
    paths = [tmp_path / "a/grpo", tmp_path / "b/grpo", tmp_path / "c/ppo", tmp_path / "a" / "bon.json"]
    assert unique_names(paths) == ["a/grpo", "b/grpo", "ppo", "bon"]


def test_clashing_runs_are_told_apart_in_the_report(run_main, tmp_path):
    _policy_run(tmp_path / "n4" / "grpo", "grpo", 0.04)
    _policy_run(tmp_path / "n8" / "grpo", "grpo", 0.02)
    r = run_main("report", tmp_path / "n4" / "grpo", tmp_path / "n8" / "grpo", "--out", tmp_path / "r", "--smooth", "1", "--json")
    assert r.code == 0, r.err
    assert [x["name"] for x in json.loads(r.out)["runs"]] == ["n4/grpo", "n8/grpo"]
    assert "| `kl_coef` | 0.04 | 0.02 |" in (tmp_path / "r" / "report.md").read_text()


def test_moving_average_is_trailing():
    assert moving_average([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert moving_average([1.0, 2.0], 1) == [1.0, 2.0]


# --- the documented examples -----------------------------------------------------------------------------

def test_documented_examples_parse():
    import typer

    from rlhfctl.cli import app

    root = Path(__file__).parents[2]
    section = (root / "docs" / "commands.md").read_text().split("\n## report\n", 1)[1].split("\n## ", 1)[0]
    examples = [line for line in section.splitlines() + (root / "README.md").read_text().splitlines()
                if line.startswith("rlhfctl report ")]
    assert examples
    command = typer.main.get_command(app).commands["report"]
    for line in examples:
        assert command.make_context("report", shlex.split(line)[2:]).params["inputs"]
