import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import SFT_ARGS, read_jsonl
from rlhfctl import __version__
from rlhfctl.data import encode_example

MODEL_FILES = ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "chat_template.jinja", "rlhfctl.json")


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "model.safetensors"))


def _assert_same_weights(a, b, atol=0.0):
    import torch

    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=atol, rtol=0), k


def _assert_close_on_average(a, b, mean_atol):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert float((wa[k] - wb[k]).abs().mean()) < mean_atol, k


# --- the test run's shared SFT run: artifacts ---------------------------------------------------

def test_metrics_one_line_per_step(sft_run):
    m = sft_run.metrics
    assert [x["step"] for x in m] == [1, 2, 3, 4, 5, 6]
    assert all({"step", "loss", "lr", "tokens", "epoch"} <= x.keys() for x in m)
    assert all(math.isfinite(x["loss"]) and x["loss"] > 0 for x in m)
    assert m[-1]["loss"] < m[0]["loss"]  # it learns something in six steps
    assert m[-1]["lr"] == pytest.approx(0.0)  # cosine decays to zero at the last step
    assert sft_run.summary["final_loss"] == m[-1]["loss"] and sft_run.summary["steps"] == 6


def test_peak_memory_is_in_every_metrics_row_and_the_summary(sft_run):
    rows = [x["peak_rss_mb"] for x in sft_run.metrics]
    assert all(r > 0 for r in rows) and rows == sorted(rows)  # a running peak never falls
    assert sft_run.summary["peak_rss_mb"] >= rows[-1]
    assert "peak_rss_mb" not in json.loads((sft_run.path / "rlhfctl.json").read_text())["results"]


def test_model_folder_loads_with_plain_transformers(sft_run, toy_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhfctl.toy.tokenizer import build_toy_tokenizer

    model = AutoModelForCausalLM.from_pretrained(sft_run.path)
    tok = AutoTokenizer.from_pretrained(sft_run.path)
    assert model.config.model_type == "llama"
    text = "Compute 23+58-17.\n23+58=81"
    assert tok(text)["input_ids"] == build_toy_tokenizer()(text)["input_ids"]
    assert (tok.eos_token, tok.pad_token, tok.bos_token) == ("<eos>", "<pad>", "<bos>")
    assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text
    # the published weights are the last step's
    final = dict(model.state_dict())
    ckpt = _weights(sft_run.path / "checkpoints" / "step-6")
    for k, v in ckpt.items():
        assert torch.equal(final[k], v), k
    # and they are trained: they differ from a fresh toy:tiny with the same seed
    from rlhfctl.models import load_causal_lm

    fresh = load_causal_lm("toy:tiny", seed=0).state_dict()
    assert not torch.equal(fresh["model.embed_tokens.weight"], final["model.embed_tokens.weight"])


def test_manifest(sft_run, toy_dir):
    manifest = json.loads((sft_run.path / "rlhfctl.json").read_text())
    assert manifest["command"] == "train-sft" and manifest["version"] == __version__
    opts = manifest["options"]
    assert (opts["max_steps"], opts["batch_size"], opts["save_every"], opts["seed"], opts["model"]) == (6, 8, 2, 0, "toy:tiny")
    data = toy_dir / "sft.jsonl"
    assert manifest["inputs"]["data"] == {"path": str(data), "sha256": hashlib.sha256(data.read_bytes()).hexdigest()}
    assert manifest["inputs"]["model"] == {"path": "toy:tiny"}
    assert manifest["results"]["final_loss"] == sft_run.metrics[-1]["loss"]
    assert manifest["results"]["steps"] == 6 and manifest["results"]["parameters"] > 0
    assert manifest["created"]
    # checkpoints: every --save-every steps, the newest two kept, complete
    assert sorted(p.name for p in (sft_run.path / "checkpoints").iterdir()) == ["step-4", "step-6"]
    assert {p.name for p in (sft_run.path / "checkpoints" / "step-4").iterdir()} == {"model.safetensors", "state.pt", "checksums.json"}


# --- tokenisation and the loss ---------------------------------------------------------------

@pytest.fixture(scope="module")
def tok():
    from rlhfctl.models import load_tokenizer

    return load_tokenizer("toy:tiny")


def test_collate_masks_prompt_and_padding(tok):
    from rlhfctl.training.sft import collate

    examples = [encode_example(tok, "Compute 2+3.\n", "2+3=5\nAnswer: 5", 512),
                encode_example(tok, "Compute 12+30-4.\n", "12+30=42\n42-4=38\nAnswer: 38", 512)]
    ids, mask, labels = collate(examples, tok.pad_token_id)
    assert ids.shape == labels.shape == mask.shape == (2, max(len(e.input_ids) for e in examples))
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        assert ids[i, :n].tolist() == e.input_ids and mask[i].tolist() == [1] * n + [0] * (ids.shape[1] - n)
        assert (labels[i, :e.prompt_len] == -100).all() and (labels[i, n:] == -100).all()  # prompt and padding: no loss
        assert labels[i, e.prompt_len:n].tolist() == e.input_ids[e.prompt_len:]
        assert ids[i, n:].eq(tok.pad_token_id).all()
    # the supervised tokens are exactly the completion and its eos
    on_loss = labels[0][labels[0] != -100].tolist()
    assert tok.decode(on_loss) == "2+3=5\nAnswer: 5<eos>"
    assert tok.decode(examples[0].input_ids[:examples[0].prompt_len]) == "<bos>Compute 2+3.\n"


def test_encode_example_chat_and_truncation(tok):
    """A chat completion ends as the template ends the assistant's turn (here with eos), with no eos of rlhfctl's own;
    the ids are exactly apply_chat_template's (one bos)."""
    messages = [{"role": "user", "content": "Compute 2+3."}, {"role": "assistant", "content": "Answer: 5"}]
    chat = encode_example(tok, messages[:1], messages[1:], 512)
    assert tok.decode(chat.input_ids) == "<bos>Compute 2+3.\nAnswer: 5<eos>"
    assert tok.decode(chat.input_ids[chat.prompt_len:]) == "Answer: 5<eos>"
    assert chat.input_ids == tok.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    cut = encode_example(tok, "Compute 2+3.\n", "2+3=5\nAnswer: 5", 16)
    assert len(cut.input_ids) == 16 and cut.prompt_len == 14
    tiny = encode_example(tok, "Compute 2+3.\n", "2+3=5", 5)
    assert tiny.prompt_len == len(tiny.input_ids) == 5  # all prompt: nothing to learn, nothing out of range


# --- shared prefix ---------------------------------------------------------------------------------

def test_shared_prefix_stops_before_the_shortest_prompts_last_token(tok):
    from rlhfctl.training.sft import shared_prefix_length

    a = encode_example(tok, "Compute 2+3.\n", "2+3=5\nAnswer: 5", 512)
    b = encode_example(tok, "Compute 21+3.\n", "21+3=24\nAnswer: 24", 512)
    same_prompt = encode_example(tok, "Compute 2+3.\n", "2+3=6\nAnswer: 6", 512)
    other = encode_example(tok, "Add 2 and 3.\n", "Answer: 5", 512)
    assert tok.decode(a.input_ids[:shared_prefix_length([a, b])]) == "<bos>Compute 2"
    # the records agree well into the completion, but the token after the prefix carries a loss
    # only past the prompt: the prefix ends one token short of the prompt's end
    assert tok.decode(a.input_ids[:shared_prefix_length([a, same_prompt])]) == "<bos>Compute 2+3."
    assert shared_prefix_length([a, b, other]) == 1  # <bos>
    assert shared_prefix_length([a]) == 0  # nothing to share


@pytest.mark.parametrize("attention", ["sdpa", "eager"])  # eager: what --bf16 runs on a CPU
def test_forward_after_prefix_gives_the_full_forwards_logits_and_gradients(tok, attention):
    """Against the plain forward of the whole right-padded batch: every real position's logits, and the loss's gradients."""
    import torch

    from rlhfctl.models import load_causal_lm
    from rlhfctl.training.sft import collate, forward_after_prefix, shared_prefix_length

    examples = [encode_example(tok, p, c, 512) for p, c in [
        ("Compute 2+3.\n", "2+3=5\nAnswer: 5"), ("Compute 21+3-4.\n", "21+3=24\n24-4=20\nAnswer: 20"),
        ("Compute 2+30.\n", "2+30=32\nAnswer: 32")]]
    ids, _, labels = collate(examples, tok.pad_token_id)
    n = shared_prefix_length(examples)
    assert n == len(tok("Compute 2", add_special_tokens=False).input_ids) + 1
    model = load_causal_lm("toy:tiny", seed=0)
    model.set_attn_implementation(attention)
    ce = torch.nn.functional.cross_entropy

    full = model(input_ids=ids).logits
    full_loss = ce(full[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100, reduction="sum")
    want = torch.autograd.grad(full_loss, list(model.parameters()))
    part = forward_after_prefix(model, model, ids, n)
    assert part.shape[:2] == (3, ids.shape[1] - n)
    for i, e in enumerate(examples):
        length = len(e.input_ids)
        torch.testing.assert_close(part[i, :length - n], full[i, n:length], rtol=1e-4, atol=1e-5)
    part_loss = ce(part[:, :-1].flatten(0, 1), labels[:, n + 1:].flatten(), ignore_index=-100, reduction="sum")
    torch.testing.assert_close(part_loss, full_loss, rtol=1e-5, atol=1e-4)
    for g, w in zip(torch.autograd.grad(part_loss, list(model.parameters())), want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


def test_forward_after_prefix_runs_a_model_without_a_cache_whole(tok):
    """A model whose output carries no key/value cache gets the whole rows, and the logits past the prefix."""
    import types

    import torch

    from rlhfctl.models import load_causal_lm
    from rlhfctl.training.sft import forward_after_prefix

    inner = load_causal_lm("toy:tiny", seed=0)
    calls = []

    class NoCache(torch.nn.Module):
        def forward(self, input_ids, **kwargs):
            calls.append(tuple(input_ids.shape))
            return types.SimpleNamespace(logits=inner(input_ids=input_ids).logits)

    no_cache = NoCache()
    ids = torch.tensor([[1, 5, 6, 7, 8], [1, 5, 6, 9, 10]])
    got = forward_after_prefix(no_cache, no_cache, ids, 3)
    torch.testing.assert_close(got, inner(input_ids=ids).logits[:, 3:])
    assert calls == [(1, 3), (2, 5)]  # the prefix's try, then the whole rows


def _spy_on_shared_prefixes(monkeypatch) -> list[int]:
    from rlhfctl.training import sft

    seen: list[int] = []
    forward = sft.forward_after_prefix

    def spy(model, module, input_ids, shared, *read):
        seen.append(shared)
        return forward(model, module, input_ids, shared, *read)

    monkeypatch.setattr(sft, "forward_after_prefix", spy)
    return seen


def test_no_packing_runs_records_whole_with_the_same_losses(sft_run, toy_dir, tmp_path, run_main, monkeypatch, tok):
    seen = _spy_on_shared_prefixes(monkeypatch)
    shared = run_main("train-sft", toy_dir / "sft.jsonl", "--out", tmp_path / "shared", *SFT_ARGS, "--json")
    assert shared.code == 0, shared.err
    common_start = 1 + len(tok("Compute ", add_special_tokens=False).input_ids)  # <bos>Compute: every toy prompt's start
    assert seen == [common_start] * 6
    seen.clear()
    whole = run_main("train-sft", toy_dir / "sft.jsonl", "--out", tmp_path / "whole", *SFT_ARGS, "--no-packing", "--json")
    assert whole.code == 0, whole.err
    assert seen == [0] * 6
    for a, b, want in zip(read_jsonl(tmp_path / "shared" / "metrics.jsonl"), read_jsonl(tmp_path / "whole" / "metrics.jsonl"),
                          sft_run.metrics):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["loss"] == pytest.approx(want["loss"], rel=1e-5)
        assert a["tokens"] == b["tokens"]
    _assert_close_on_average(tmp_path / "shared", tmp_path / "whole", mean_atol=1e-5)
    options = json.loads((tmp_path / "whole" / "rlhfctl.json").read_text())["options"]
    assert options["packing"] is False


def test_gradient_checkpointing_runs_records_whole_and_says_so(toy_dir, tmp_path, run_main, monkeypatch):
    seen = _spy_on_shared_prefixes(monkeypatch)
    r = run_main("train-sft", toy_dir / "sft.jsonl", "--out", tmp_path / "gc", *SFT_ARGS, "--max-steps", "2",
                 "--gradient-checkpointing", "--json")
    assert r.code == 0, r.err
    assert seen == [0, 0]
    assert "train-sft: every record runs whole, no shared prefix (--gradient-checkpointing keeps no key/value cache)" in r.err


def test_logged_loss_is_the_token_mean_over_completion_tokens(sft_run, toy_dir, tok):
    """Step 1's loss is -(1/T) Σ log π(y_t | ...) over the T completion tokens (with eos) of the first batch,
    computed here one example at a time, unpadded, with the seed's initial weights."""
    import torch

    from rlhfctl.models import load_causal_lm
    from rlhfctl.records import read_records
    from rlhfctl.training.loop import batch_stream

    records = read_records(toy_dir / "sft.jsonl", "sft")
    examples = [encode_example(tok, r["prompt"], r["completion"], 512) for r in records]
    _, first = next(batch_stream([len(e.input_ids) for e in examples], 8, 0, 0))
    assert len({len(examples[i].input_ids) for i in first}) > 1  # padded: pads must change no real token's loss
    model = load_causal_lm("toy:tiny", seed=0)
    with torch.no_grad():
        losses = []
        for e in (examples[i] for i in first):
            logits = model(input_ids=torch.tensor([e.input_ids])).logits[0]
            target = torch.tensor(e.input_ids[e.prompt_len:])
            losses.append(torch.nn.functional.cross_entropy(logits[e.prompt_len - 1:-1], target, reduction="none"))
        expected = torch.cat(losses)
    step1 = sft_run.metrics[0]
    assert step1["tokens"] == len(expected) == sum(len(examples[i].input_ids) - examples[i].prompt_len for i in first)
    assert step1["loss"] == pytest.approx(expected.mean().item(), rel=1e-5)


# --- resume --------------------------------------------------------------------------------------

def _copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_resume_gives_the_same_metrics_and_weights(sft_run, toy_dir, tmp_path, run_main):
    """A run that lost its last checkpoint and its model resumes from step-4 and logs steps 5-6 as an unbroken run did."""
    b = _copy_run(sft_run.path, tmp_path / "b")
    shutil.rmtree(b / "checkpoints" / "step-6")
    for name in MODEL_FILES:
        (b / name).unlink()
    # mark the lines the resumed run must keep (steps 1-4) so that retraining from scratch would show
    kept = [dict(m, kept=True) if m["step"] <= 4 else m for m in sft_run.metrics]
    (b / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in kept))

    r = run_main("train-sft", toy_dir / "sft.jsonl", "--out", b, *SFT_ARGS, "--resume", "--json")
    assert r.code == 0, r.err
    assert "resuming from step 4" in r.err
    metrics = read_jsonl(b / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6]
    assert [m.get("kept", False) for m in metrics] == [True] * 4 + [False] * 2
    for got, want in zip(metrics, sft_run.metrics):
        assert got["loss"] == pytest.approx(want["loss"], abs=1e-6) and got["lr"] == pytest.approx(want["lr"])
    assert json.loads(r.out)["final_loss"] == pytest.approx(sft_run.metrics[-1]["loss"], abs=1e-6)
    _assert_same_weights(b, sft_run.path, atol=1e-6)
    assert json.loads((b / "rlhfctl.json").read_text())["options"]["resume"] is True


def test_resume_after_the_last_checkpoint_only_publishes(sft_run, toy_dir, tmp_path, run_main):
    """Killed after checkpoint step-6 but before the model was published: --resume publishes it."""
    c = _copy_run(sft_run.path, tmp_path / "c")
    for name in MODEL_FILES:
        (c / name).unlink()
    r = run_main("train-sft", toy_dir / "sft.jsonl", "--out", c, *SFT_ARGS, "--resume", "--json")
    assert r.code == 0, r.err
    assert read_jsonl(c / "metrics.jsonl") == sft_run.metrics
    manifest = json.loads((c / "rlhfctl.json").read_text())
    assert manifest["results"]["final_loss"] == sft_run.metrics[-1]["loss"]
    _assert_same_weights(c, sft_run.path)


def test_existing_run_folder_without_resume_is_an_error(sft_run, toy_dir, tmp_path, run_main):
    d = _copy_run(sft_run.path, tmp_path / "d")
    before = {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()}
    r = run_main("train-sft", toy_dir / "sft.jsonl", "--out", d, *SFT_ARGS)
    assert r.code == 2
    assert r.err.strip().splitlines() == [f"error: {d} already holds a run: pass --resume to continue it, or choose another --out"]
    assert {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()} == before


def _wait_for_checkpoint(proc, run_dir: Path, timeout: float = 240.0) -> int:
    deadline = time.monotonic() + timeout
    ckpts = run_dir / "checkpoints"
    while time.monotonic() < deadline:
        found = [int(p.name[5:]) for p in ckpts.glob("step-*")] if ckpts.is_dir() else []
        if found:
            return max(found)
        assert proc.poll() is None, "the run ended before its first checkpoint"
        time.sleep(0.005)
    raise AssertionError("no checkpoint appeared")


@pytest.mark.slow
def test_resume_after_sigkill_matches_an_unbroken_run(toy_dir, tmp_path, cli, cli_env):
    """Kill train-sft (SIGKILL) once a checkpoint exists, rerun with --resume: the same 40 losses as an unbroken run."""
    args = ["--model", "toy:tiny", "--max-steps", "40", "--save-every", "2", "--batch-size", "8", "--seed", "0"]
    unbroken = cli("train-sft", toy_dir / "sft.jsonl", "--out", tmp_path / "a", *args)
    assert unbroken.returncode == 0, unbroken.stderr
    b = tmp_path / "b"
    with open(tmp_path / "b.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "rlhfctl", "train-sft", str(toy_dir / "sft.jsonl"), "--out", str(b), *args],
                                env=cli_env, stdout=log, stderr=subprocess.STDOUT)
        try:
            step = _wait_for_checkpoint(proc, b)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert step < 40 and not (b / "rlhfctl.json").exists()
    killed_at = len(read_jsonl(b / "metrics.jsonl")) if (b / "metrics.jsonl").exists() else 0
    assert killed_at < 40
    resumed = cli("train-sft", toy_dir / "sft.jsonl", "--out", b, *args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from step" in resumed.stderr
    want = read_jsonl(tmp_path / "a" / "metrics.jsonl")
    got = read_jsonl(b / "metrics.jsonl")
    assert [m["step"] for m in got] == list(range(1, 41))
    for g, w in zip(got, want):
        assert g["loss"] == pytest.approx(w["loss"], abs=1e-6), g["step"]
    _assert_same_weights(b, tmp_path / "a", atol=1e-6)


def test_two_cpu_ranks_match_one(sft_run, toy_dir, tmp_path, cli_env):
    """`accelerate launch` with two CPU processes: the same per-step losses as one process (global token mean)."""
    from conftest import launch_two_cpu_ranks

    out = tmp_path / "ddp"
    proc = launch_two_cpu_ranks(cli_env, "train-sft", toy_dir / "sft.jsonl", "--out", out, *SFT_ARGS, "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)  # one summary: only rank 0 prints
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6]  # one line per step, not one per rank
    for two, one in zip(metrics, sft_run.metrics):
        assert two["loss"] == pytest.approx(one["loss"], abs=1e-4), two["step"]
        assert two["tokens"] == one["tokens"]  # the global batch, not a rank's half
    assert summary["final_loss"] == pytest.approx(sft_run.summary["final_loss"], abs=1e-4)
    assert (out / "rlhfctl.json").is_file() and sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-4", "step-6"]
    # Adam turns float-rounding noise in near-zero gradients (the gloo all-reduce sums
    # in another order) into ±lr steps, so single weights may differ: compare on average.
    _assert_close_on_average(out, sft_run.path, mean_atol=1e-4)


# --- speed options --------------------------------------------------------------------------------

def test_training_uses_fused_adamw_with_the_plain_update_rule():
    """`loop.adamw` picks torch's fused kernel on a CPU, and its update equals the plain loop's."""
    import torch

    from rlhfctl.training.loop import adamw

    torch.manual_seed(0)
    a = torch.nn.Linear(4, 3)
    b = torch.nn.Linear(4, 3)
    b.load_state_dict(a.state_dict())
    fused, plain = adamw(a.parameters(), lr=1e-2, weight_decay=0.1), torch.optim.AdamW(b.parameters(), lr=1e-2, weight_decay=0.1)
    assert fused.defaults["fused"] is True
    x = torch.randn(5, 4)
    for _ in range(3):
        for model, opt in ((a, fused), (b, plain)):
            opt.zero_grad()
            model(x).pow(2).sum().backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q)


@pytest.mark.slow
def test_compile_trains_the_same_model(sft_run, toy_dir, tmp_path, run_main):
    """`--compile` (TorchInductor) logs the losses of the uncompiled run and saves the same state dict keys."""
    out = tmp_path / "compiled"
    r = run_main("train-sft", toy_dir / "sft.jsonl", "--out", out, *SFT_ARGS, "--compile", "--json")
    assert r.code == 0, r.err
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [m["step"] for m in sft_run.metrics]
    for got, want in zip(metrics, sft_run.metrics):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-4)
    assert set(_weights(out)) == set(_weights(sft_run.path))
    _assert_close_on_average(out, sft_run.path, mean_atol=1e-4)
    assert json.loads((out / "rlhfctl.json").read_text())["options"]["compile"] is True
