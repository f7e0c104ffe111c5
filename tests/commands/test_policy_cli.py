"""`rlhfctl train-policy` through the command line: GRPO and PPO tiny runs, their artifacts, and bad input.

The two runs are module-scoped (one subprocess each) and start from the
test run's tiny SFT model; the error cases run in-process (`run_main`), since
they must fail before any model is loaded.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

import pytest

from conftest import read_jsonl
from rlhfctl.training.loop import MEMORY_KEYS

STEP_KEYS = {"step", "epoch", "reward_raw_mean", "reward_shaped_mean", "kl", "entropy", "response_length", "clip_fraction",
             "policy_loss", "grad_norm", "seconds"}
TINY = ["--n", "2", "--prompts-per-step", "2", "--max-new-tokens", "10", "--seed", "0"]
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "rlhfctl.json")


class Run:
    def __init__(self, path: Path, proc, max_steps: int):
        self.path, self.proc, self.max_steps = path, proc, max_steps
        assert proc.returncode == 0, proc.stderr[-3000:]
        self.summary = json.loads(proc.stdout)
        self.metrics = read_jsonl(path / "metrics.jsonl")
        self.manifest = json.loads((path / "rlhfctl.json").read_text())
        self.steps = [m for m in self.metrics if m["step"] > 0]


@pytest.fixture(scope="module")
def grpo_run(cli, toy_dir, sft_run, tmp_path_factory) -> Run:
    """3 GRPO steps, greedy eval at step 0, every 2 steps and at the end (so at 0, 2, 3)."""
    out = tmp_path_factory.mktemp("grpo") / "run"
    proc = cli("train-policy", toy_dir / "train.jsonl", "--model", sft_run.path, "--out", out, "--algo", "grpo",
               "--verifier", "math", *TINY, "--max-steps", "3", "--eval-data", toy_dir / "test.jsonl", "--eval-every", "2",
               "--eval-max-prompts", "4", "--json")
    return Run(out, proc, 3)


@pytest.fixture(scope="module")
def ppo_run(cli, toy_dir, sft_run, tmp_path_factory) -> Run:
    out = tmp_path_factory.mktemp("ppo") / "run"
    proc = cli("train-policy", toy_dir / "train.jsonl", "--model", sft_run.path, "--out", out, "--algo", "ppo",
               "--verifier", "math", *TINY, "--max-steps", "2", "--save-every", "1", "--json")
    return Run(out, proc, 2)


# --- the runs ------------------------------------------------------------------------------

@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_metrics_have_the_documented_keys(algo, request):
    run = request.getfixturevalue(f"{algo}_run")
    assert [m["step"] for m in run.steps] == list(range(1, run.max_steps + 1))
    for m in run.steps:
        want = STEP_KEYS | ({"value_loss"} if algo == "ppo" else set())
        assert want <= m.keys(), want - m.keys()
        assert m["peak_rss_mb"] > 0 and run.summary["peak_rss_mb"] >= m["peak_rss_mb"]
        if algo == "grpo":
            assert "value_loss" not in m
        for k in want - {"step", "epoch"}:
            assert isinstance(m[k], (int, float)) and math.isfinite(m[k]), (k, m[k])
        assert 0.0 <= m["clip_fraction"] <= 1.0
        assert 1.0 <= m["response_length"] <= 10.0  # --max-new-tokens 10
        assert m["entropy"] > 0
        assert m["grad_norm"] >= 0
        assert 0.0 <= m["accuracy"] <= 1.0 and m["reward_raw_mean"] == pytest.approx(m["accuracy"])  # verifier weight 1
    # the first rollout is sampled by a policy equal to the reference: KL exactly 0
    assert run.steps[0]["kl"] == pytest.approx(0.0, abs=1e-6)


def test_grpo_eval_rows(grpo_run):
    m = grpo_run.metrics
    assert m[0] == {"step": 0, "eval_pass@1": m[0]["eval_pass@1"]}  # before training: only the eval
    evals = {r["step"]: r["eval_pass@1"] for r in m if "eval_pass@1" in r}
    assert sorted(evals) == [0, 2, 3]  # --eval-every 2, and the last step
    assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in evals.values())
    assert grpo_run.summary["eval_pass@1"] == {str(k): v for k, v in evals.items()}
    assert grpo_run.summary["initial_eval_pass@1"] == evals[0] and grpo_run.summary["final_eval_pass@1"] == evals[3]


def test_no_eval_without_eval_data(ppo_run):
    assert all("eval_pass@1" not in m for m in ppo_run.metrics)
    assert ppo_run.metrics[0]["step"] == 1
    assert ppo_run.summary["eval_pass@1"] is None


@pytest.mark.parametrize("algo,kl_coef,estimator,kl_in", [("grpo", 0.04, "k3", "loss"), ("ppo", 0.005, "k1", "reward")])
def test_manifest_has_the_resolved_options(algo, kl_coef, estimator, kl_in, request, toy_dir, sft_run):
    run = request.getfixturevalue(f"{algo}_run")
    man = run.manifest
    assert man["command"] == "train-policy"
    opts = man["options"]
    assert (opts["algo"], opts["kl_coef"], opts["kl_estimator"], opts["kl_in"]) == (algo, kl_coef, estimator, kl_in)
    assert (opts["n"], opts["prompts_per_step"], opts["max_steps"], opts["loss_agg"]) == (2, 2, run.max_steps, "token-mean")
    assert (opts["reward_norm"], opts["reward_clip"], opts["neg_reward_scale"], opts["reward_clip_range"]) == ("group", 5.0, 1.0, None)
    assert opts["rm"] is None and opts["verifier"] == "math"
    prompts = toy_dir / "train.jsonl"
    assert man["inputs"]["prompts"] == {"path": str(prompts), "sha256": hashlib.sha256(prompts.read_bytes()).hexdigest()}
    res = man["results"]
    assert res["algo"] == algo and res["steps"] == run.max_steps
    assert res["final_reward_raw_mean"] == run.steps[-1]["reward_raw_mean"] and res["final_kl"] == run.steps[-1]["kl"]
    assert {k: v for k, v in run.summary.items() if k not in {"out", *MEMORY_KEYS}} == res


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_policy_folder_loads_with_plain_transformers(algo, request):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = request.getfixturevalue(f"{algo}_run")
    for f in MODEL_FILES:
        assert (run.path / f).is_file(), f
    model = AutoModelForCausalLM.from_pretrained(run.path)
    tok = AutoTokenizer.from_pretrained(run.path)
    ids = tok("Compute 1+2.\n", return_tensors="pt")
    assert model(**ids).logits.shape[-1] == model.config.vocab_size
    # the published weights are the last checkpoint's policy; the critic stays in the checkpoint only
    ckpt = load_file(str(run.path / "checkpoints" / f"step-{run.max_steps}" / "model.safetensors"))
    assert any(k.startswith("critic::") for k in ckpt) == (algo == "ppo")
    final = model.state_dict()
    for k, v in ckpt.items():
        if not k.startswith("critic::"):
            assert torch.equal(final[k], v), k
    assert not any("score" in k for k in load_file(str(run.path / "model.safetensors")))


def test_ppo_checkpoints(ppo_run):
    assert sorted(p.name for p in (ppo_run.path / "checkpoints").iterdir()) == ["step-1", "step-2"]


# --- bad input ---------------------------------------------------------------------------------

def _one_line_error(r, pattern):
    assert r.code == 2, (r.code, r.err)
    lines = r.err.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), r.err
    assert re.search(pattern, lines[-1]), lines[-1]
    assert "Traceback" not in r.err


def _policy_args(toy_dir, sft_run, out, *extra):
    return ["train-policy", toy_dir / "train.jsonl", "--model", sft_run.path, "--out", out, *TINY, "--max-steps", "1", *extra]


def test_verifier_needs_answers(run_main, sft_run, tmp_path):
    data = tmp_path / "prompts.jsonl"
    data.write_text('{"prompt": "Compute 1+2.\\n", "answer": "3"}\n{"prompt": "Compute 2+2.\\n"}\n')
    r = run_main("train-policy", data, "--model", sft_run.path, "--out", tmp_path / "run", "--verifier", "math", *TINY)
    _one_line_error(r, re.escape(f"{data}:2: field 'answer':"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prompts.jsonl"]


def test_eval_data_needs_answers(run_main, toy_dir, sft_run, tmp_path):
    data = tmp_path / "eval.jsonl"
    data.write_text('{"prompt": "Compute 1+2.\\n"}\n')
    r = run_main(*_policy_args(toy_dir, sft_run, tmp_path / "run", "--verifier", "math", "--eval-data", data))
    _one_line_error(r, re.escape(f"{data}:1: field 'answer':"))
    assert not (tmp_path / "run").exists()


def _bare_model_folder(path: Path) -> Path:
    path.mkdir()
    (path / "config.json").write_text("{}")
    return path


def _fake_prm_folder(path: Path) -> Path:
    """What train-rm --prm leaves behind, as far as the check reads it: a model folder whose manifest says 'prm'."""
    path.mkdir()
    (path / "config.json").write_text("{}")
    (path / "rlhfctl.json").write_text(json.dumps({"command": "train-rm", "options": {"prm": True}, "results": {"kind": "prm"}}))
    return path


@pytest.mark.parametrize("case", ["prm", "sft", "no-manifest", "missing"])
def test_bad_reward_model(case, run_main, toy_dir, sft_run, tmp_path):
    rm, pattern = {
        "prm": (lambda: _fake_prm_folder(tmp_path / "prm"), r"holds a PRM model, but --rm needs an ORM"),
        "sft": (lambda: sft_run.path, r"made by 'train-sft', not train-rm: not a reward model \(--rm\)"),
        "no-manifest": (lambda: _bare_model_folder(tmp_path / "bare"), r"no rlhfctl.json"),
        "missing": (lambda: tmp_path / "nope", r"no such model folder"),
    }[case]
    rm = rm()
    before = sorted(p.name for p in tmp_path.iterdir())
    r = run_main(*_policy_args(toy_dir, sft_run, tmp_path / "run", "--rm", rm))
    _one_line_error(r, pattern)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no run folder left behind


@pytest.mark.parametrize(
    "extra,pattern",
    [
        (["--n", "1", "--algo", "grpo", "--verifier", "math"], r"--algo grpo needs --n >= 2"),
        (["--reward-clip-range", "1,0", "--verifier", "math"], r"--reward-clip-range needs LO < HI, got 1.0,0.0"),
        (["--reward-clip-range", "1", "--verifier", "math"], r"--reward-clip-range takes LO,HI"),
        ([], r"no reward: give --rm DIR and/or --verifier"),
        (["--algo", "a2c", "--verifier", "math"], r"unknown --algo 'a2c'"),
        (["--loss-agg", "sum", "--verifier", "math"], r"unknown --loss-agg 'sum'"),
        (["--kl-estimator", "k4", "--verifier", "math"], r"unknown --kl-estimator 'k4'"),
        (["--mini-batch-size", "3", "--verifier", "math"], r"--mini-batch-size must divide prompts-per-step × n = 4, got 3"),
        (["--algo", "ppo", "--critic-init", "rm", "--verifier", "math"], r"--critic-init rm needs --rm DIR"),
        (["--model", "toy:huge", "--verifier", "math"], r"unknown toy size 'huge'"),
        (["--verifier", "poetry"], r"unknown --verifier 'poetry': choose one of code, math, mcq, or auto"),
        (["--verifier", "mcq"], r"train.jsonl:1: field 'answer': mcq answer '\d+' is neither a letter nor one of the choices"),
        (["--verifier", "code"], r"train.jsonl:1: field 'tests': missing: --verifier code needs tests on every prompt"),
    ],
    ids=["grpo-n1", "clip-range-order", "clip-range-form", "no-reward", "algo", "loss-agg", "kl-estimator", "mini-batch",
         "critic-init", "model", "verifier", "mcq-gold", "code-tests"],
)
def test_bad_flags(extra, pattern, run_main, toy_dir, sft_run, tmp_path):
    r = run_main(*_policy_args(toy_dir, sft_run, tmp_path / "run", *extra))
    _one_line_error(r, pattern)
    assert list(tmp_path.iterdir()) == []


def _snapshot(folder: Path) -> tuple[list[str], bytes, bytes]:
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))
    return files, (folder / "metrics.jsonl").read_bytes(), (folder / "run.json").read_bytes()


def test_resume_with_another_algo_is_refused_and_changes_nothing(run_main, grpo_run, toy_dir, sft_run):
    before = _snapshot(grpo_run.path)
    r = run_main(*_policy_args(toy_dir, sft_run, grpo_run.path, "--algo", "ppo", "--verifier", "math", "--resume"))
    _one_line_error(r, r"was started with --algo grpo, cannot resume it with ppo")
    assert _snapshot(grpo_run.path) == before


def test_rerun_into_a_run_folder_needs_resume(run_main, grpo_run, toy_dir, sft_run):
    before = _snapshot(grpo_run.path)
    r = run_main(*_policy_args(toy_dir, sft_run, grpo_run.path, "--verifier", "math"))
    _one_line_error(r, r"already holds a run: pass --resume")
    assert _snapshot(grpo_run.path) == before
