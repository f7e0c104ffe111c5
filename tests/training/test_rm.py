"""train-rm (the unified ORM): loss, end-to-end run, the folder as plain transformers sees it, resume, refusals."""

import json
import math
import re
import shutil
import statistics

import pytest

from conftest import read_jsonl
from rlhfctl.records import write_jsonl

RM_ARGS = ["--model", "toy:tiny", "--max-steps", "4", "--save-every", "2", "--batch-size", "8", "--lr", "5e-3", "--seed", "0"]
MODEL_FILES = ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "rlhfctl.json")


def _nll_sigmoid(x: float) -> float:
    """-log σ(x), computed stably."""
    return math.log1p(math.exp(-x)) if x >= 0 else -x + math.log1p(math.exp(x))


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _assert_one_line_error(result, pattern):
    code, err = (result.code, result.err) if hasattr(result, "code") else (result.returncode, result.stderr)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert re.search(pattern, lines[0]), lines[0]


# --- the loss of a mixed batch, with a lookup-table "model" ----------------------------------------------

def _table_model(values):
    """A stand-in for TokenValues: the value at each position is a learnable number per token id."""
    import torch

    class Table(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.table = torch.nn.Parameter(torch.tensor(values, dtype=torch.float32))

        def forward(self, ids, mask, position_ids=None):  # (B, T) -> (B, T)
            return self.table[ids]

    return Table()


def _fake_run(model, tmp_path):
    import torch
    from accelerate import Accelerator

    from rlhfctl.training.loop import Training

    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return Training(tmp_path, Accelerator(cpu=True), model, optimizer, scheduler, total=1, start=0)


PAD = 0
# token values: pads score 100, so reading a pad would show at once
VALUES = [100.0, 0.3, -0.2, 1.1, -0.7, 0.05, 2.0, -1.5, 0.4, 0.9, -0.1, 0.6]


def _items():
    from rlhfctl.rm.data import BINARY_ITEM, PAIR, Item

    # the score of a sequence is the value of its last token: the sequences end in distinct tokens
    pairs = [Item(PAIR, ([5, 1, 3], [5, 4]), 0.0), Item(PAIR, ([1, 6], [5, 5, 2, 7]), 0.5), Item(PAIR, ([9, 8], [9, 9, 9, 10]), 0.0)]
    binary = [Item(BINARY_ITEM, ([2, 2, 2, 2, 11],), label=True)]
    return pairs, binary


def _expected(pairs, binary):
    last = lambda seq: VALUES[seq[-1]]  # noqa: E731
    bt = [_nll_sigmoid(last(p.seqs[0]) - last(p.seqs[1]) - p.margin) for p in pairs]
    cls = [_nll_sigmoid((1 if b.label else -1) * last(b.seqs[0])) for b in binary]
    parts = ([sum(bt) / len(bt)] if bt else []) + ([sum(cls) / len(cls)] if cls else [])
    return sum(parts) / len(parts)


@pytest.mark.parametrize("packing", [False, True])
@pytest.mark.parametrize("which", ["mixed", "pairs", "binary"])
def test_train_step_loss_is_half_bt_plus_cls(tmp_path, which, packing):
    """3 pairs + 1 binary item: ½(mean BT + mean cls), not the mean over the 4 records; and the step follows its gradient."""
    import torch

    from rlhfctl.training.rm import _train_step

    pairs, binary = _items()
    pairs, binary = {"mixed": (pairs, binary), "pairs": (pairs, []), "binary": ([], binary)}[which]
    model = _table_model(VALUES)
    run = _fake_run(model, tmp_path)
    before = model.table.detach().clone()
    out = _train_step(run, pairs[:2] + binary + pairs[2:], PAD, max_grad_norm=0.0, packing=packing)  # kinds interleaved
    assert out["loss"] == pytest.approx(_expected(pairs, binary), rel=1e-6)
    if which == "mixed":
        per_record = (sum(_nll_sigmoid(VALUES[p.seqs[0][-1]] - VALUES[p.seqs[1][-1]] - p.margin) for p in pairs)
                      + _nll_sigmoid(VALUES[11])) / 4
        assert abs(out["loss"] - per_record) > 1e-3  # the test tells the two apart
    assert (out["pairs"], out["binary"]) == (len(pairs), len(binary))
    if pairs:
        wins = sum(VALUES[p.seqs[0][-1]] > VALUES[p.seqs[1][-1]] for p in pairs)
        assert out["pair_acc"] == pytest.approx(wins / len(pairs))
    if binary:
        assert out["binary_acc"] == 1.0  # 0.6 > 0 and labelled right
    # SGD with lr 1: the update is minus the gradient of ½(BT + cls) with respect to each last-token value
    w_bt, w_cls = (0.5, 0.5) if pairs and binary else (1.0, 1.0)
    grad = torch.zeros(len(VALUES))
    for p in pairs:
        c, r = p.seqs[0][-1], p.seqs[1][-1]
        g = (1 - _sigmoid(VALUES[c] - VALUES[r] - p.margin)) / len(pairs) * w_bt
        grad[c] -= g
        grad[r] += g
    for b in binary:
        y = 1 if b.label else -1
        grad[b.seqs[0][-1]] -= y * (1 - _sigmoid(y * VALUES[b.seqs[0][-1]])) / len(binary) * w_cls
    assert torch.allclose(before - model.table.detach(), grad, atol=1e-6)
    assert model.table[PAD].item() == 100.0  # no gradient ever reached a pad


def test_train_steps_unmasked_right_padded_forward_reads_each_sequences_own_score():
    """_train_step runs the backbone without an attention mask on right-padded rows: the last real
    token's value must equal the value of that sequence scored alone, unpadded."""
    import torch

    from rlhfctl.rm.model import TokenValues, build_reward_model, gather_last, right_pad

    values = TokenValues(build_reward_model("toy:tiny", "orm", seed=0)).eval()
    seqs = [[1, 20, 21, 22, 23, 24, 25], [1, 30, 31], [1, 40, 41, 42, 43]]
    ids, mask = right_pad(seqs, PAD)
    with torch.no_grad():
        batched = gather_last(values(ids, None), mask)
        alone = torch.stack([values(torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long))[0, -1] for s in seqs])
    assert torch.allclose(batched, alone, atol=1e-5)


def test_a_packed_step_equals_a_padded_step_on_a_real_model(tmp_path):
    """Packing (each pair's shared prompt once) changes the layout, not the loss or the gradient."""
    import torch

    from rlhfctl.rm.data import BINARY_ITEM, PAIR, Item
    from rlhfctl.rm.model import TokenValues, build_reward_model
    from rlhfctl.training.rm import _train_step

    batch = [Item(PAIR, ([1, 20, 21, 22, 23, 24], [1, 20, 21, 30]), 0.0), Item(PAIR, ([1, 40, 41], [1, 40, 42, 43, 44, 45, 46]), 0.5),
             Item(BINARY_ITEM, ([1, 50, 51, 52],), label=False), Item(PAIR, ([1, 60], [1, 61, 62]), 0.0)]
    updates, losses = [], []
    for packing in (False, True):
        values = TokenValues(build_reward_model("toy:tiny", "orm", seed=0))
        torch.nn.init.normal_(values.model.score.weight, std=0.5, generator=torch.Generator().manual_seed(1))
        before = [p.detach().clone() for p in values.parameters()]
        out = _train_step(_fake_run(values, tmp_path), batch, PAD, max_grad_norm=0.0, packing=packing)
        losses.append(out["loss"])
        updates.append(torch.cat([(b - p.detach()).flatten() for b, p in zip(before, values.parameters())]))
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    assert updates[0].abs().max() > 1e-3  # the step moved the weights
    torch.testing.assert_close(updates[1], updates[0], atol=1e-6, rtol=1e-4)


# --- end to end -----------------------------------------------------------------------------------------

WRONG = "Answer: -1"  # toy answers are never negative


def _toy_records(toy_dir, name):
    return read_jsonl(toy_dir / name)


@pytest.fixture(scope="module")
def rm_data(toy_dir, tmp_path_factory):
    """Train: pairs, binary items and 6 toy style pairs (+ one chosen == rejected pair); held out: test prompts."""
    root = tmp_path_factory.mktemp("rm-data")
    train = []
    for r in _toy_records(toy_dir, "train.jsonl"):
        clean = r["meta"]["clean"]
        train.append({"prompt": r["prompt"], "chosen": clean, "rejected": WRONG})
        train.append({"prompt": r["prompt"], "completion": clean, "label": True})
        train.append({"prompt": r["prompt"], "completion": WRONG, "label": False})
    train += _toy_records(toy_dir, "prefs_style.jsonl")[:6]
    train.append({"prompt": "Compute 1+1.\n", "chosen": "Answer: 2", "rejected": "Answer: 2"})
    held = []
    for i, r in enumerate(_toy_records(toy_dir, "test.jsonl")):
        clean = r["meta"]["clean"]
        if i % 2:
            held.append({"prompt": r["prompt"], "chosen": clean, "rejected": f"Answer: {int(r['answer']) + 1}"})
        else:
            held.append({"prompt": r["prompt"], "completion": clean if i % 4 else WRONG, "label": bool(i % 4)})
    write_jsonl(root / "prefs.jsonl", train)
    write_jsonl(root / "held.jsonl", held)
    return root


@pytest.fixture(scope="module")
def orm_run(rm_data, cli):
    out = rm_data / "rm"
    proc = cli("train-rm", rm_data / "prefs.jsonl", "--eval-data", rm_data / "held.jsonl", "--out", out, *RM_ARGS, "--json")
    assert proc.returncode == 0, proc.stderr
    return out, json.loads(proc.stdout)


def test_two_cpu_ranks_match_one(orm_run, rm_data, tmp_path, cli_env):
    """`accelerate launch` with two CPU processes, packed pairs on each rank: the one-process run's per-step losses."""
    from conftest import launch_two_cpu_ranks

    out = tmp_path / "ddp"
    proc = launch_two_cpu_ranks(cli_env, "train-rm", rm_data / "prefs.jsonl", "--eval-data", rm_data / "held.jsonl",
                                "--out", out, *RM_ARGS, "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    two, one = read_jsonl(out / "metrics.jsonl"), read_jsonl(orm_run[0] / "metrics.jsonl")
    assert [m["step"] for m in two] == [m["step"] for m in one] == [1, 2, 3, 4]
    for a, b in zip(two, one):
        assert (a["pairs"], a["binary"]) == (b["pairs"], b["binary"])  # the global batch, not a rank's half
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-4), a["step"]
    assert json.loads(proc.stdout)["pair_accuracy"] == pytest.approx(orm_run[1]["pair_accuracy"])


def test_a_model_whose_attention_takes_no_mask_trains_on_padded_batches(orm_run, rm_data, tmp_path, run_main, monkeypatch):
    """A flash-attention model cannot run packed rows: train-rm says so and trains padded, with the same losses."""
    import rlhfctl.packing as packing

    monkeypatch.setattr(packing, "attention_implementation", lambda model: "flash_attention_2")
    r = run_main("train-rm", rm_data / "prefs.jsonl", "--eval-data", rm_data / "held.jsonl", "--out", tmp_path / "padded", *RM_ARGS)
    assert r.code == 0, r.err
    assert "padded batches (the flash_attention_2 attention kernel takes no packing mask)" in r.err
    padded, packed = read_jsonl(tmp_path / "padded" / "metrics.jsonl"), read_jsonl(orm_run[0] / "metrics.jsonl")
    assert [m["loss"] for m in padded] == pytest.approx([m["loss"] for m in packed], abs=1e-5)


def _rollouts(toy_dir):
    out = []
    for r in _toy_records(toy_dir, "test.jsonl")[:4]:
        responses = [r["meta"]["clean"], f"Answer: {int(r['answer']) + 1}", f"Answer: {r['answer']}", "x"]
        out.append({"id": r["id"], "prompt": r["prompt"], "answer": r["answer"], "task": "math", "responses": responses,
                    "correct": [True, False, True, False]})
    return out


def _hf_scores(folder, pairs):
    """Plain transformers: right-padded batch, the model's own last-non-pad pooling. ``pairs``: (prompt, response)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlhfctl.data import encode_example

    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    assert model.config.num_labels == 1 and model.config.pad_token_id == tok.pad_token_id
    seqs = [encode_example(tok, p, c, 512).input_ids for p, c in pairs]
    width = max(map(len, seqs))
    ids = torch.tensor([s + [tok.pad_token_id] * (width - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    assert logits.shape == (len(seqs), 1)
    return logits[:, 0].tolist(), seqs, model, tok


def test_folder_loads_with_plain_transformers_and_scores_agree(orm_run, toy_dir):
    from rlhfctl.rm.model import TokenValues, score_sequences
    from rlhfctl.rm.scorers import score_rollouts

    folder, _ = orm_run
    rollouts = _rollouts(toy_dir)
    flat = [(r["prompt"], t) for r in rollouts for t in r["responses"]]
    hf, seqs, model, tok = _hf_scores(folder, flat)
    assert max(hf) - min(hf) > 1e-3  # trained: responses get different rewards
    ours = [s for group in score_rollouts(rollouts, str(folder)) for s in group]
    assert ours == pytest.approx(hf, abs=1e-5)
    assert score_sequences(TokenValues(model), seqs, tok.pad_token_id, batch_size=3) == pytest.approx(hf, abs=1e-5)
    # one at a time, unpadded: the same
    alone = [_hf_scores(folder, [x])[0][0] for x in flat[:3]]
    assert alone == pytest.approx(hf[:3], abs=1e-5)


def test_manifest_and_metrics(orm_run, rm_data):
    folder, summary = orm_run
    manifest = json.loads((folder / "rlhfctl.json").read_text())
    results = manifest["results"]
    assert manifest["command"] == "train-rm" and results["kind"] == "orm"
    assert {"reward_mean", "reward_std", "pair_accuracy", "binary_accuracy", "auc"} <= results.keys()
    assert results["train"] == {"pairs": 8 + 6, "binary": 16, "dropped": {"chosen equals rejected": 1}, "overlong": 0}
    assert summary["final_loss"] == results["final_loss"]
    assert summary["peak_rss_mb"] > 0 and "peak_rss_mb" not in results
    # held-out numbers, recomputed with plain transformers
    held = read_jsonl(rm_data / "held.jsonl")
    pairs = [h for h in held if "chosen" in h]
    binary = [h for h in held if "completion" in h]
    texts = [(h["prompt"], h["chosen"]) for h in pairs] + [(h["prompt"], h["rejected"]) for h in pairs]
    texts += [(h["prompt"], h["completion"]) for h in binary]
    scores, *_ = _hf_scores(folder, texts)
    n = len(pairs)
    chosen, rejected, bin_scores = scores[:n], scores[n:2 * n], scores[2 * n:]
    mu, sigma = statistics.mean(scores), statistics.stdev(scores)
    assert results["reward_mean"] == pytest.approx(mu, abs=1e-5)
    assert results["reward_std"] == pytest.approx(sigma, abs=1e-5)
    assert results["pair_accuracy"] == pytest.approx(sum(c > r for c, r in zip(chosen, rejected)) / n)
    assert results["binary_accuracy"] == pytest.approx(sum((s > 0) == h["label"] for s, h in zip(bin_scores, binary)) / len(binary))
    assert (results["num_pairs"], results["num_binary"]) == (n, len(binary))
    metrics = read_jsonl(folder / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert all(math.isfinite(m["loss"]) and m["pairs"] + m["binary"] <= 8 for m in metrics)
    assert all(m["peak_rss_mb"] > 0 for m in metrics)
    # 30 records in batches of 8: the four steps are one epoch, every record once
    assert (sum(m["pairs"] for m in metrics), sum(m["binary"] for m in metrics)) == (14, 16)
    assert metrics[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # a zero score head: every reward starts at 0
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["step-2", "step-4"]


def test_eval_rm_reports_the_same_numbers(orm_run, rm_data, run_main):
    folder, _ = orm_run
    r = run_main("eval", "--rm", folder, "--data", rm_data / "held.jsonl", "--json")
    assert r.code == 0, r.err
    got = json.loads(r.out)
    results = json.loads((folder / "rlhfctl.json").read_text())["results"]
    for key in ("pair_accuracy", "binary_accuracy", "auc", "reward_mean", "reward_std", "num_pairs", "num_binary"):
        assert got[key] == pytest.approx(results[key], abs=1e-6), key


def test_resume_gives_the_same_metrics(orm_run, rm_data, tmp_path, run_main):
    """Lose the last checkpoint and the published model, --resume: steps 3-4 are logged as the unbroken run did."""
    folder, summary = orm_run
    b = tmp_path / "b"
    shutil.copytree(folder, b)
    shutil.rmtree(b / "checkpoints" / "step-4")
    for name in MODEL_FILES:
        (b / name).unlink()
    want = read_jsonl(folder / "metrics.jsonl")
    (b / "metrics.jsonl").write_text("".join(json.dumps(dict(m, kept=True) if m["step"] <= 2 else m) + "\n" for m in want))
    r = run_main("train-rm", rm_data / "prefs.jsonl", "--eval-data", rm_data / "held.jsonl", "--out", b, *RM_ARGS,
                 "--resume", "--json")
    assert r.code == 0, r.err
    assert "resuming from step 2" in r.err
    got = read_jsonl(b / "metrics.jsonl")
    assert [m["step"] for m in got] == [1, 2, 3, 4]
    assert [m.get("kept", False) for m in got] == [True, True, False, False]
    for g, w in zip(got, want):
        assert g["loss"] == pytest.approx(w["loss"], abs=1e-6) and g["lr"] == pytest.approx(w["lr"])
        assert (g["pairs"], g["binary"]) == (w["pairs"], w["binary"])
    assert json.loads(r.out)["reward_mean"] == pytest.approx(summary["reward_mean"], abs=1e-5)


def test_unknown_record_kind_names_the_line(tmp_path, run_main):
    data = tmp_path / "prefs.jsonl"
    write_jsonl(data, [{"prompt": "a", "chosen": "x", "rejected": "y"}, {"prompt": "a", "answer": "x"}])
    r = run_main("train-rm", data, "--out", tmp_path / "rm", *RM_ARGS)
    _assert_one_line_error(r, "^error: " + re.escape(f"{data}:2: unknown record kind"))
    assert not (tmp_path / "rm").exists()


# --- folders that are not an ORM -------------------------------------------------------------------------

def _graded_rollouts(path, toy_dir):
    write_jsonl(path, _rollouts(toy_dir))
    return path


def _no_outputs(tmp_path, *names):
    return not any((tmp_path / n).exists() for n in names)


def test_a_folder_without_manifest_is_refused(orm_run, rm_data, toy_dir, tmp_path, run_main):
    bare = tmp_path / "bare"
    shutil.copytree(orm_run[0], bare, ignore=shutil.ignore_patterns("rlhfctl.json", "checkpoints"))
    r = run_main("eval", "--rm", bare, "--data", rm_data / "held.jsonl", "--out", tmp_path / "eval.json")
    _assert_one_line_error(r, re.escape(f"{bare}: no rlhfctl.json"))
    rollouts = _graded_rollouts(tmp_path / "rollouts.jsonl", toy_dir)
    r = run_main("best-of-n", rollouts, "--rm", bare, "--out", tmp_path / "bon.json")
    _assert_one_line_error(r, re.escape(f"{bare}: no rlhfctl.json") + r".*--rm")
    assert _no_outputs(tmp_path, "eval.json", "bon.json", "bon.json.scores.json")


def test_a_policy_folder_is_refused(sft_run, rm_data, toy_dir, tmp_path, run_main):
    r = run_main("eval", "--rm", sft_run.path, "--data", rm_data / "held.jsonl", "--out", tmp_path / "eval.json")
    _assert_one_line_error(r, re.escape(f"{sft_run.path}: made by 'train-sft', not train-rm"))
    rollouts = _graded_rollouts(tmp_path / "rollouts.jsonl", toy_dir)
    r = run_main("best-of-n", rollouts, "--rm", sft_run.path, "--out", tmp_path / "bon.json")
    _assert_one_line_error(r, re.escape(f"{sft_run.path}: made by 'train-sft', not train-rm"))
    assert _no_outputs(tmp_path, "eval.json", "bon.json", "bon.json.scores.json")


def test_an_orm_is_refused_as_a_prm(orm_run, toy_dir, tmp_path, run_main):
    folder, _ = orm_run
    steps = tmp_path / "steps.jsonl"
    write_jsonl(steps, [{"prompt": "Compute 2+3.\n", "completions": ["2+3=5", "Answer: 5"], "labels": [True, True]}])
    r = run_main("eval", "--rm", folder, "--prm", "--data", steps, "--out", tmp_path / "eval.json")
    _assert_one_line_error(r, re.escape(f"{folder}: holds an ORM model, but --prm needs a PRM"))
    rollouts = _graded_rollouts(tmp_path / "rollouts.jsonl", toy_dir)
    r = run_main("best-of-n", rollouts, "--prm", folder, "--out", tmp_path / "bon.json")
    _assert_one_line_error(r, re.escape(f"{folder}: holds an ORM model, but --prm needs a PRM"))
    assert _no_outputs(tmp_path, "eval.json", "bon.json", "bon.json.scores.json")


def test_build_prefs_ranked_by_the_rm(orm_run, toy_dir, tmp_path, run_main):
    """--mode rm: the k-th best response (by the model's score) against the k-th worst."""
    folder, _ = orm_run
    rollouts = _rollouts(toy_dir)
    write_jsonl(tmp_path / "rollouts.jsonl", rollouts)
    out = tmp_path / "prefs.jsonl"
    r = run_main("build-prefs", tmp_path / "rollouts.jsonl", "--mode", "rm", "--rm", folder, "--pairs-per-prompt", "5",
                 "--out", out, "--json")
    assert r.code == 0, r.err
    records = read_jsonl(out)
    assert json.loads(r.out)["pairs"] == len(records) == 2 * len(rollouts)  # 4 distinct responses: 2 pairs each
    for x in rollouts:
        scores, *_ = _hf_scores(folder, [(x["prompt"], t) for t in x["responses"]])
        ranked = [t for _, t in sorted(zip(scores, x["responses"]), key=lambda p: -p[0])]
        mine = [(p["chosen"], p["rejected"]) for p in records if p["prompt"] == x["prompt"]]
        assert mine == [(ranked[0], ranked[3]), (ranked[1], ranked[2])]
    assert {p["source"] for p in records} == {"rm"}
