"""train-rm --prm end to end: the folder as plain transformers sees it, its manifest, eval --prm, best-of-n --prm."""

import json
import math
import os
import re

import pytest

from conftest import read_jsonl
from rlhfctl.eval.best_of_n_sweep import model_key
from rlhfctl.records import write_jsonl
from rlhfctl.toy.task import apply_op, parse_prompt, step_correctness

PRM_ARGS = ["--model", "toy:tiny", "--max-steps", "4", "--save-every", "2", "--batch-size", "4", "--lr", "5e-3", "--seed", "0"]


def _sigmoid(x):
    return 1 / (1 + math.exp(-x))


def _solution(prompt, wrong_at=None):
    """The clean steps of a toy prompt; with ``wrong_at``, that step's result is off by one and later steps follow it."""
    problem = parse_prompt(prompt)
    a, lines = problem.start, []
    for i, (op, b) in enumerate(problem.ops):
        c = apply_op(a, op, b) + (1 if i == wrong_at else 0)
        lines.append(f"{a}{op}{b}={c}")
        a = c
    return lines + [f"Answer: {a}"]


def _steps_records(prompts):
    out = []
    for i, p in enumerate(prompts):
        for wrong_at in (None, i % 2):
            steps = _solution(p, wrong_at)
            truth = step_correctness(p, steps)
            labels = truth if wrong_at is None else [1.0 if ok else 0.25 for ok in truth]  # hard and soft labels
            out.append({"prompt": p, "completions": steps, "labels": labels})
    return out


@pytest.fixture(scope="module")
def prm_run(toy_dir, tmp_path_factory, cli):
    root = tmp_path_factory.mktemp("prm")
    write_jsonl(root / "steps.jsonl", _steps_records([r["prompt"] for r in read_jsonl(toy_dir / "train.jsonl")]))
    write_jsonl(root / "held.jsonl", _steps_records([r["prompt"] for r in read_jsonl(toy_dir / "test.jsonl")]))
    out = root / "prm"
    proc = cli("train-rm", "--prm", root / "steps.jsonl", "--eval-data", root / "held.jsonl", "--out", out, *PRM_ARGS, "--json")
    assert proc.returncode == 0, proc.stderr
    return out, json.loads(proc.stdout), root


def _end_positions(prompt, steps, sep="\n"):
    """For the character-level toy tokenizer (one bos, one token per character): the index of the separator
    after each step, where the documented layout (prompt, then each step and the separator) reads its score."""
    ends, text = [], prompt
    for step in steps:
        text += step + sep
        ends.append(len(text))  # bos shifts by one, the last character is at len - 1
    return ends


def _hf_step_logits(folder, records):
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    model = AutoModelForTokenClassification.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    assert model.config.num_labels == 1
    out = []
    with torch.no_grad():
        for r in records:
            text = r["prompt"] + "".join(step + "\n" for step in r["completions"])
            ids = torch.tensor([tok(text)["input_ids"]])
            logits = model(input_ids=ids).logits[0, :, 0]
            out.append([float(logits[p]) for p in _end_positions(r["prompt"], r["completions"])])
    return out, model, tok


def test_folder_loads_as_token_classification_and_step_scores_agree(prm_run):
    from rlhfctl.rm.data import encode_steps
    from rlhfctl.rm.model import TokenValues
    from rlhfctl.rm.model import step_scores

    folder, _, root = prm_run
    records = read_jsonl(root / "held.jsonl")
    hf, model, tok = _hf_step_logits(folder, records)
    flat = [s for row in hf for s in row]
    assert max(flat) - min(flat) > 1e-3
    seqs, positions = zip(*(encode_steps(tok, r["prompt"], r["completions"], 512) for r in records))
    ours = step_scores(TokenValues(model), list(seqs), list(positions), tok.pad_token_id, batch_size=5)  # right-padded batches
    for got, want in zip(ours, hf):
        assert got == pytest.approx(want, abs=1e-5)


def test_manifest_holds_step_metrics(prm_run):
    folder, summary, root = prm_run
    manifest = json.loads((folder / "rlhfctl.json").read_text())
    results = manifest["results"]
    assert manifest["command"] == "train-rm" and manifest["options"]["prm"] is True
    assert results["kind"] == "prm" and results["step_sep"] == "\n"
    assert {"step_accuracy", "first_error_accuracy", "reward_mean", "reward_std"} <= results.keys()
    assert summary["step_accuracy"] == results["step_accuracy"]
    # recomputed from plain transformers' logits
    records = read_jsonl(root / "held.jsonl")
    hf, *_ = _hf_step_logits(folder, records)
    pairs = [(s, y) for row, r in zip(hf, records) for s, y in zip(row, r["labels"])]
    assert results["num_steps"] == len(pairs) and results["num_solutions"] == len(records)
    assert results["step_accuracy"] == pytest.approx(sum((s > 0) == (y >= 0.5) for s, y in pairs) / len(pairs))
    hits = 0
    for row, r in zip(hf, records):
        predicted = next((i for i, s in enumerate(row) if s <= 0), None)
        actual = next((i for i, y in enumerate(r["labels"]) if y < 0.5), None)
        hits += predicted == actual
    assert results["first_error_accuracy"] == pytest.approx(hits / len(records))
    metrics = read_jsonl(folder / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert metrics[0]["loss"] > 0 and all(math.isfinite(m["loss"]) for m in metrics)


def test_eval_prm_prints_step_metrics(prm_run, run_main):
    folder, _, root = prm_run
    r = run_main("eval", "--rm", folder, "--prm", "--data", root / "held.jsonl", "--json")
    assert r.code == 0, r.err
    got = json.loads(r.out)
    results = json.loads((folder / "rlhfctl.json").read_text())["results"]
    for key in ("step_accuracy", "first_error_accuracy", "num_steps", "num_solutions", "reward_mean", "reward_std"):
        assert got[key] == pytest.approx(results[key], abs=1e-6), key


def test_eval_prm_bad_steps_file(prm_run, tmp_path, run_main):
    folder, *_ = prm_run
    data = tmp_path / "steps.jsonl"
    write_jsonl(data, [{"prompt": "Compute 2+3.\n", "completions": ["2+3=5", "Answer: 5"], "labels": [True]}])
    r = run_main("eval", "--rm", folder, "--prm", "--data", data)
    assert r.code == 2 and r.err.strip().splitlines() == [f"error: {data}:1: field 'labels': has 1 labels for 2 completions (steps)"]


def _rollouts(toy_dir):
    out = []
    for r in read_jsonl(toy_dir / "test.jsonl")[:3]:
        responses = ["\n".join(_solution(r["prompt"])), "\n".join(_solution(r["prompt"], 0)), "\n".join(_solution(r["prompt"], 1))]
        out.append({"id": r["id"], "prompt": r["prompt"], "answer": r["answer"], "task": "math", "responses": responses,
                    "correct": [True, False, False]})
    return out


def test_best_of_n_with_the_prm(prm_run, toy_dir, tmp_path, run_main):
    """Each aggregation's cached scores are min/last/prod of σ(step logits) as plain transformers computes them."""
    folder, *_ = prm_run
    rollouts = _rollouts(toy_dir)
    write_jsonl(tmp_path / "rollouts.jsonl", rollouts)
    out = tmp_path / "bon.json"
    r = run_main("best-of-n", tmp_path / "rollouts.jsonl", "--prm", folder, "--agg", "min", "--agg", "last", "--agg", "prod",
                 "--out", out, "--json")
    assert r.code == 0, r.err
    result = json.loads(r.out)
    assert set(result["curves"]) == {"oracle", "prm-min", "prm-last", "prm-prod"} and result["n"] == [1, 2, 3]
    cache = json.loads((tmp_path / "bon.json.scores.json").read_text())
    records = [{"prompt": r["prompt"], "completions": t.split("\n")} for r in rollouts for t in r["responses"]]
    hf, *_ = _hf_step_logits(folder, records)
    cached = [steps for r in rollouts for steps in cache[model_key("prm-steps", str(folder))][r["id"]]]
    assert [len(c) for c in cached] == [len(row) for row in hf]
    assert [x for c in cached for x in c] == pytest.approx([x for row in hf for x in row], abs=1e-5)
    probs = [[_sigmoid(s) for s in row] for row in hf]
    from rlhfctl.eval.selection import best_of_n_accuracy

    for agg, fn in (("min", min), ("last", lambda p: p[-1]), ("prod", math.prod)):
        scores = [fn(p) for p in probs]
        per_prompt = [scores[3 * i:3 * i + 3] for i in range(len(rollouts))]
        want = [sum(best_of_n_accuracy(s, r["correct"], k) for s, r in zip(per_prompt, rollouts)) / len(rollouts)
                for k in result["n"]]
        assert result["curves"][f"prm-{agg}"] == pytest.approx(want, abs=1e-6), agg


def test_best_of_n_scores_each_response_with_the_prm_once_for_every_agg(prm_run, toy_dir, tmp_path, run_main, monkeypatch):
    """A rerun with another --agg reads the cached step logits: the PRM is not loaded again."""
    folder, *_ = prm_run
    write_jsonl(tmp_path / "rollouts.jsonl", _rollouts(toy_dir))
    out = tmp_path / "bon.json"
    assert run_main("best-of-n", tmp_path / "rollouts.jsonl", "--prm", folder, "--agg", "min", "--out", out).code == 0
    import rlhfctl.eval.best_of_n_sweep

    def fail(*args, **kwargs):
        raise AssertionError("the PRM scored the responses again")

    monkeypatch.setattr(rlhfctl.eval.best_of_n_sweep, "prm_step_scores", fail)
    r = run_main("best-of-n", tmp_path / "rollouts.jsonl", "--prm", folder, "--agg", "mean", "--agg", "prod", "--out", out, "--json")
    assert r.code == 0, r.err
    assert set(json.loads(r.out)["curves"]) == {"oracle", "prm-mean", "prm-prod"}


def test_a_prm_is_refused_as_an_orm(prm_run, toy_dir, tmp_path, run_main):
    folder, _, root = prm_run
    prefs = tmp_path / "prefs.jsonl"
    write_jsonl(prefs, [{"prompt": "Compute 2+3.\n", "chosen": "Answer: 5", "rejected": "Answer: 6"}])
    r = run_main("eval", "--rm", folder, "--data", prefs, "--out", tmp_path / "eval.json")
    assert r.code == 2 and re.fullmatch(re.escape(f"error: {folder}: holds a PRM model, but --rm needs an ORM"), r.err.strip()), r.err
    write_jsonl(tmp_path / "rollouts.jsonl", _rollouts(toy_dir))
    r = run_main("best-of-n", tmp_path / "rollouts.jsonl", "--rm", folder, "--out", tmp_path / "bon.json")
    assert r.code == 2 and re.fullmatch(re.escape(f"error: {folder}: holds a PRM model, but --rm needs an ORM"), r.err.strip()), r.err
    assert not any((tmp_path / n).exists() for n in ("eval.json", "bon.json", "bon.json.scores.json"))
