"""The conformance matrix: every command on real-shaped model folders, and the interop contract.

The folders (tests/model_folders.py) mimic Qwen2.5 Instruct (tied, ChatML, bf16,
pad distinct from eos), Llama 3 Instruct (no pad, three eos ids, untied), GPT-2
(no chat template, no pad, Conv1D) and a BERT encoder as a reward-model base.
For each, the pipeline runs from the CLI, and what it writes is read back in
plain transformers the way docs/models.md documents.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import model_folders
from conftest import read_jsonl, write_prompts

CHAT = {"qwen2": True, "llama3": True, "gpt2": False}  # gpt2 has no chat template: string records


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {family: model_folders.build(family, root / family) for family in (*model_folders.FAMILIES, "bert")}


def _chat(text: str) -> list[dict]:
    return [{"role": "user", "content": text.strip()}]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """SFT records, prompts and preference pairs, in string and chat form."""
    root = tmp_path_factory.mktemp("data")
    prompts = write_prompts(root / "prompts.jsonl", 6)
    sft, pairs = [], []
    for p in prompts:
        a, rest = p["prompt"].removeprefix("Compute ").split(".", 1)[0], None
        sft.append({"prompt": p["prompt"], "completion": f"{a}={p['answer']}\nAnswer: {p['answer']}"})
        pairs.append({"prompt": p["prompt"], "chosen": f"Answer: {p['answer']}", "rejected": f"Answer: {int(p['answer']) + 3}"})
    out = {}
    for form in ("str", "chat"):
        conv = (lambda r: r) if form == "str" else (lambda r: {**r, "prompt": _chat(r["prompt"])})
        for name, records in (("sft", sft), ("pairs", pairs), ("prompts", prompts)):
            path = root / f"{name}-{form}.jsonl"
            rows = [conv(r) for r in records]
            if name == "sft" and form == "chat":
                rows = [{**r, "completion": [{"role": "assistant", "content": r["completion"]}]} for r in rows]
            if name == "prompts" and form == "chat":
                rows = [{k: v for k, v in r.items() if k != "id"} for r in rows]
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
            out[f"{name}-{form}"] = path
    return out


def _form(family: str) -> str:
    return "chat" if CHAT[family] else "str"


@pytest.fixture(scope="module")
def chain(folders, data, tmp_path_factory):
    """``chain(family)``: train-sft, rollout and train-rm (ORM and PRM) on one family, run once per module."""
    from typer.testing import CliRunner

    from rlhfctl.cli import app

    done: dict[str, dict[str, Path]] = {}

    def run(family: str) -> dict[str, Path]:
        if family in done:
            return done[family]
        root, form, runner = tmp_path_factory.mktemp(family), _form(family), CliRunner()

        def cli(*args):
            result = runner.invoke(app, [str(a) for a in args])
            assert result.exit_code == 0, (args, result.output[-3000:], result.exception)
            assert "Writing model shards" not in result.output and "Loading weights" not in result.output
            return result

        cli("train-sft", data[f"sft-{form}"], "--model", folders[family], "--out", root / "sft", "--max-steps", "3",
            "--save-every", "2", "--batch-size", "4", "--lr", "3e-3")
        cli("rollout", data[f"prompts-{form}"], "--model", root / "sft", "--out", root / "roll.jsonl", "--n", "2",
            "--max-new-tokens", "12", "--temperature", "1", "--backend", "hf")
        cli("train-rm", data[f"pairs-{form}"], "--model", root / "sft", "--out", root / "rm", "--max-steps", "3",
            "--batch-size", "4", "--eval-fraction", "0.34", "--lr", "1e-2")
        steps = root / "steps.jsonl"
        steps.write_text("".join(json.dumps({"prompt": r["prompt"], "completions": ["step one", "step two"], "labels": [True, False]}) + "\n"
                                 for r in read_jsonl(data[f"prompts-{form}"])))
        cli("train-rm", "--prm", steps, "--model", root / "sft", "--out", root / "prm", "--max-steps", "2", "--batch-size", "4")
        done[family] = {"root": root, "sft": root / "sft", "rollouts": root / "roll.jsonl", "rm": root / "rm", "prm": root / "prm"}
        return done[family]

    return run


FAMILIES = pytest.mark.parametrize("family", model_folders.FAMILIES)


@FAMILIES
def test_policy_folder_loads_in_plain_transformers_tied_and_in_the_input_dtype(family, folders, chain):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = chain(family)["sft"]
    source = AutoModelForCausalLM.from_pretrained(folders[family])
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.dtype == source.dtype  # bf16 in, bf16 out (qwen2); fp32 stays fp32
    assert json.loads((out / "config.json").read_text())["dtype"] == str(source.dtype).removeprefix("torch.")
    tied = model.config.tie_word_embeddings
    assert tied == (family != "llama3")
    assert (model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()) == tied
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert bool(tokenizer.chat_template) == CHAT[family]
    assert (out / "generation_config.json").is_file()
    # every checkpoint of the run is readable too (tied tensors are written once and re-tied on load)
    from rlhfctl.artifacts import list_checkpoints, load_checkpoint

    (_, ckpt), = list_checkpoints(out)[-1:]
    weights, _ = load_checkpoint(ckpt)
    assert set(weights) >= {k for k in source.state_dict() if "rotary" not in k}


@FAMILIES
def test_greedy_rollout_equals_plain_generate_on_the_chat_template(family, chain, tmp_path, run_main):
    """`rollout --temperature 0` gives, token for token, what `generate(do_sample=False)` gives on the documented input."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sft = chain(family)["sft"]
    prompts = read_jsonl(chain(family)["rollouts"])[:3]
    src = tmp_path / "p.jsonl"
    src.write_text("".join(json.dumps({"prompt": r["prompt"]}) + "\n" for r in prompts))
    result = run_main("rollout", src, "--model", sft, "--out", tmp_path / "g.jsonl", "--temperature", "0",
                      "--max-new-tokens", "10", "--backend", "hf")
    assert result.code == 0, result.err
    ours = read_jsonl(tmp_path / "g.jsonl")
    tokenizer = AutoTokenizer.from_pretrained(sft)
    model = AutoModelForCausalLM.from_pretrained(sft, dtype=torch.float32)
    for r in ours:
        if isinstance(r["prompt"], list):
            ids = tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
        else:
            ids = tokenizer(r["prompt"], return_tensors="pt").input_ids
        # rlhfctl samples with its own flags, not generation_config's defaults (qwen2 sets repetition_penalty 1.05)
        plain = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=10,
                               repetition_penalty=1.0, pad_token_id=tokenizer.pad_token_id)[0, ids.shape[1]:]
        text = tokenizer.decode(plain, skip_special_tokens=True)
        assert r["responses"][0] == text
        assert r["finish_reasons"][0] == ("stop" if set(plain.tolist()) & _eos(model) else "length")


def _eos(model) -> set[int]:
    eos = model.generation_config.eos_token_id
    return set(eos if isinstance(eos, list) else [eos])


def _documented_text(tokenizer, prompt, response) -> str:
    """docs/models.md's rule: chat records through the chat template, strings as prompt + response + eos."""
    if isinstance(prompt, list):
        return tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": response}], tokenize=False)
    return prompt + response + tokenizer.eos_token


@FAMILIES
def test_orm_scores_the_same_in_plain_transformers_batch_of_one_and_right_padded(family, chain):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlhfctl.rm.scorers import score_rollouts

    paths = chain(family)
    rollouts = read_jsonl(paths["rollouts"])
    ours = [s for per_prompt in score_rollouts(rollouts, str(paths["rm"])) for s in per_prompt]
    assert len(set(round(s, 6) for s in ours)) > 1  # the head was trained: scores differ
    tokenizer = AutoTokenizer.from_pretrained(paths["rm"])
    model = AutoModelForSequenceClassification.from_pretrained(paths["rm"], dtype=torch.float32).eval()
    texts = [_documented_text(tokenizer, r["prompt"], t) for r in rollouts for t in r["responses"]]
    template = isinstance(rollouts[0]["prompt"], list)
    with torch.no_grad():
        one = [model(**tokenizer(t, return_tensors="pt", add_special_tokens=not template)).logits[0, 0].item() for t in texts]
        tokenizer.padding_side = "right"
        batch = model(**tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not template)).logits[:, 0].tolist()
    assert one == pytest.approx(ours, abs=1e-4)
    assert batch == pytest.approx(ours, abs=1e-4)


@FAMILIES
def test_prm_step_scores_are_token_classifier_logits_at_each_separator(family, chain):
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from rlhfctl.rm.scorers import prm_step_scores

    paths = chain(family)
    rollouts = [{"prompt": r["prompt"], "responses": ["first step\nsecond step"]} for r in read_jsonl(paths["rollouts"])[:2]]
    ours = prm_step_scores(rollouts, str(paths["prm"]))
    tokenizer = AutoTokenizer.from_pretrained(paths["prm"])
    model = AutoModelForTokenClassification.from_pretrained(paths["prm"], dtype=torch.float32).eval()
    for r, (scores,) in zip(rollouts, ours):
        prompt = r["prompt"]
        if isinstance(prompt, list):
            ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        else:
            ids = tokenizer(prompt)["input_ids"]
        positions = []
        for step in ("first step", "second step"):  # the documented layout: prompt, then each step and the separator
            ids = ids + tokenizer(step + "\n", add_special_tokens=False)["input_ids"]
            positions.append(len(ids) - 1)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, :, 0]
        assert scores == pytest.approx(logits[positions].tolist(), abs=1e-4)


@FAMILIES
def test_policy_training_runs_and_writes_a_loadable_folder(family, chain, data, run_main):
    """GRPO with the math verifier, and PPO with the ORM and its critic, on each family."""
    from transformers import AutoModelForCausalLM

    paths, form = chain(family), _form(family)
    common = ["--model", paths["sft"], "--max-steps", "2", "--n", "2", "--prompts-per-step", "2", "--max-new-tokens", "8",
              "--save-every", "1", "--backend", "hf"]
    grpo = run_main("train-policy", data[f"prompts-{form}"], "--out", paths["root"] / "grpo", "--verifier", "math", *common)
    assert grpo.code == 0, grpo.err
    ppo = run_main("train-policy", data[f"prompts-{form}"], "--out", paths["root"] / "ppo", "--algo", "ppo", "--rm", paths["rm"],
                   *common)
    assert ppo.code == 0, ppo.err
    metrics = read_jsonl(paths["root"] / "ppo" / "metrics.jsonl")
    assert all(m["rm_overlong"] == 0 for m in metrics if "rm_overlong" in m)
    for run in ("grpo", "ppo"):
        model = AutoModelForCausalLM.from_pretrained(paths["root"] / run)
        assert model.config.tie_word_embeddings == (family != "llama3")
    # the critic's input embedding is untied in every family, the policy's only in Llama 3's: those keep AdamW state by row
    from rlhfctl.artifacts import list_checkpoints, load_checkpoint

    (_, ckpt), = list_checkpoints(paths["root"] / "ppo")[-1:]
    _, state = load_checkpoint(ckpt)
    by_row = {name: any("rows" in s for s in state[name]["state"].values()) for name in ("optimizer", "critic_optimizer")}
    assert by_row == {"optimizer": family == "llama3", "critic_optimizer": True}


@FAMILIES
def test_lora_and_resume_on_each_family(family, chain, data, run_main, tmp_path):
    """LoRA (GPT-2's Conv1D layers included) merges into a plain folder; a resumed run finishes."""
    from transformers import AutoModelForCausalLM

    from rlhfctl.models import load_causal_lm

    form = _form(family)
    out = tmp_path / "lora"
    args = ["train-sft", data[f"sft-{form}"], "--model", chain(family)["sft"], "--out", out, "--batch-size", "4",
            "--lora-r", "4", "--lr", "5e-2", "--save-every", "1"]
    first = run_main(*args, "--max-steps", "1")
    assert first.code == 0, first.err
    resumed = run_main(*args, "--max-steps", "2", "--resume")
    assert resumed.code == 0, resumed.err
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    base = load_causal_lm(str(chain(family)["sft"]))
    changed = [k for k, v in merged.state_dict().items() if not torch.equal(v, base.state_dict()[k])]
    assert changed and not any("lora" in k for k in merged.state_dict())


def test_eos_ids_of_the_generation_config_all_stop_a_response(folders):
    """Llama 3 lists three eos ids; a row stops at whichever it samples."""
    from rlhfctl.generation.base import SamplingParams
    from rlhfctl.generation.hf import HFGenerator
    from rlhfctl.models import eos_token_ids, load_causal_lm, load_tokenizer

    spec = str(folders["llama3"])
    tokenizer = load_tokenizer(spec)
    ids = eos_token_ids(tokenizer, spec)
    assert ids == {tokenizer.convert_tokens_to_ids(t) for t in ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")}
    model = load_causal_lm(spec)
    params = SamplingParams(n=1, temperature=0, max_new_tokens=6)
    (free,), = HFGenerator(model, tokenizer, frozenset({-1})).generate(["Compute 1+2."], params)
    assert free.finish_reason == "length"
    with torch.no_grad():  # make <|eom_id|> (not the tokenizer's eos) the greedy choice
        model.lm_head.weight[tokenizer.convert_tokens_to_ids("<|eom_id|>")] = model.lm_head.weight.sum(0) * 0 + 5
        model.model.norm.weight.fill_(1.0)
    (stopped,), = HFGenerator(model, tokenizer, ids).generate(["Compute 1+2."], params)
    (run_on,), = HFGenerator(model, tokenizer, frozenset({tokenizer.eos_token_id})).generate(["Compute 1+2."], params)
    assert stopped.finish_reason == "stop" and stopped.token_ids[-1] in ids and len(stopped.token_ids) < 6
    assert run_on.finish_reason == "length"


def test_an_encoder_trains_as_a_reward_model_and_scores_the_same_in_plain_transformers(folders, data, run_main, tmp_path):
    """BERT's head is `classifier` on the pooled [CLS]; any AutoModelForSequenceClassification works."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlhfctl.rm.scorers import score_rollouts

    out = tmp_path / "rm"
    result = run_main("train-rm", data["pairs-str"], "--model", folders["bert"], "--out", out, "--max-steps", "4",
                      "--batch-size", "4", "--lr", "1e-2", "--eval-fraction", "0.34")
    assert result.code == 0, result.err
    evaluated = run_main("eval", "--rm", out, "--data", data["pairs-str"], "--json")
    assert evaluated.code == 0, evaluated.err
    assert 0.0 <= json.loads(evaluated.out)["pair_accuracy"] <= 1.0
    pairs = read_jsonl(data["pairs-str"])
    rollouts = [{"prompt": p["prompt"], "responses": [p["chosen"], p["rejected"]]} for p in pairs]
    ours = [s for per in score_rollouts(rollouts, str(out)) for s in per]
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForSequenceClassification.from_pretrained(out, dtype=torch.float32).eval()
    texts = [p["prompt"] + t for p in pairs for t in (p["chosen"], p["rejected"])]
    with torch.no_grad():
        tokenizer.padding_side = "right"
        plain = model(**tokenizer(texts, return_tensors="pt", padding=True)).logits[:, 0].tolist()
    assert plain == pytest.approx(ours, abs=1e-4)
    assert len(set(round(s, 5) for s in ours)) > 1


def test_save_dtype_overrides_the_input_dtype(folders, data, run_main, tmp_path):
    from safetensors import safe_open

    out = tmp_path / "sft"
    result = run_main("train-sft", data["sft-chat"], "--model", folders["qwen2"], "--out", out, "--max-steps", "1",
                      "--batch-size", "4", "--save-dtype", "float32")
    assert result.code == 0, result.err
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F32"}
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"
    bad = run_main("train-sft", data["sft-chat"], "--model", folders["qwen2"], "--out", tmp_path / "x", "--save-dtype", "fp8")
    assert bad.code == 2 and "--save-dtype" in bad.err


def test_reward_scoring_reads_the_trained_length_and_counts_what_does_not_fit(chain, data, run_main, tmp_path):
    """No silent cut at 512: the RM's own --max-length by default; --rm-max-length overrides, and the cut is counted."""
    paths = chain("qwen2")
    manifest = json.loads((paths["rm"] / "rlhfctl.json").read_text())
    assert manifest["options"]["max_length"] == 512
    fits = run_main("eval", "--rm", paths["rm"], "--data", data["pairs-chat"], "--json")
    assert fits.code == 0 and json.loads(fits.out)["overlong"] == 0
    cut = run_main("eval", "--rm", paths["rm"], "--data", data["pairs-chat"], "--json", "--rm-max-length", "8")
    assert cut.code == 0, cut.err
    summary = json.loads(cut.out)
    assert summary["overlong"] == 2 * len(read_jsonl(data["pairs-chat"])) and summary["max_length"] == 8
    assert "longer than" in cut.err
    bon = run_main("best-of-n", paths["rollouts"], "--rm", paths["rm"], "--out", tmp_path / "bon.json", "--rm-max-length", "8",
                   "--json")
    assert bon.code == 0, bon.err
    assert json.loads((tmp_path / "bon.json").read_text())["overlong"]


def test_chat_records_with_a_template_less_model_are_one_line(folders, data, run_main, tmp_path):
    result = run_main("train-sft", data["sft-chat"], "--model", folders["gpt2"], "--out", tmp_path / "x", "--max-steps", "1")
    assert result.code == 2
    assert "has no chat template" in result.err and len(result.err.strip().splitlines()) == 1


def _hub_cache(home: Path, repo: str, folder: Path, commit: str, refs: tuple[str, ...] = ("main",)) -> None:
    """A Hugging Face cache as huggingface_hub lays it out: refs name a commit, snapshots hold its files."""
    import shutil

    root = home / "hub" / f"models--{repo.replace('/', '--')}"
    shutil.copytree(folder, root / "snapshots" / commit)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    for ref in refs:
        (root / "refs" / ref).write_text(commit)


def test_hub_ids_resolve_from_the_cache_offline_and_uncached_is_one_line(folders, data, cli, cli_env, tmp_path):
    """`--model org/name[@revision]` as every Hugging Face tool takes it; HF_HUB_OFFLINE=1 reads the cache."""
    home, commit = tmp_path / "hf", "0123456789abcdef0123456789abcdef01234567"
    _hub_cache(home, "acme/tiny-qwen", folders["qwen2"], commit, refs=("main", "v1"))
    env = dict(cli_env, HF_HOME=str(home), HF_HUB_OFFLINE="1")
    for spec in ("acme/tiny-qwen", "acme/tiny-qwen@v1", f"acme/tiny-qwen@{commit}"):
        out = tmp_path / f"{spec.replace('/', '_')}.jsonl"
        proc = cli("rollout", data["prompts-chat"], "--model", spec, "--out", out, "--max-new-tokens", "4", "--backend", "hf", env=env)
        assert proc.returncode == 0, proc.stderr
        assert len(read_jsonl(out)) == len(read_jsonl(data["prompts-chat"]))
    sft = cli("train-sft", data["sft-chat"], "--model", "acme/tiny-qwen", "--out", tmp_path / "sft", "--max-steps", "1",
              "--batch-size", "4", env=env)
    assert sft.returncode == 0, sft.stderr
    assert json.loads((tmp_path / "sft" / "config.json").read_text())["dtype"] == "bfloat16"
    for spec in ("acme/not-cached", "acme/tiny-qwen@v2"):
        proc = cli("rollout", data["prompts-chat"], "--model", spec, "--out", tmp_path / "x.jsonl", env=env)
        assert proc.returncode == 2
        assert proc.stderr.strip().splitlines() == [f"error: {spec}: no such model folder, and not in the Hugging Face cache "
                                                    "as a Hub id (downloads are off: HF_HUB_OFFLINE=1 or no network)"]
        assert not (tmp_path / "x.jsonl").exists()


@pytest.mark.parametrize("family", ["qwen2", pytest.param("llama3", marks=pytest.mark.slow),
                                    pytest.param("gpt2", marks=pytest.mark.slow)])
def test_two_cpu_ranks_train_sft_and_rm_on_real_shaped_folders(family, folders, data, cli_env, tmp_path):
    """DDP on two gloo ranks: the tied, bf16 folder trains, and what rank 0 publishes loads tied and in bf16."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from conftest import launch_two_cpu_ranks

    form = _form(family)
    sft = launch_two_cpu_ranks(cli_env, "train-sft", data[f"sft-{form}"], "--model", folders[family], "--out", tmp_path / "sft",
                               "--max-steps", "2", "--batch-size", "4", "--save-every", "1")
    assert sft.returncode == 0, sft.stderr[-3000:]
    rm = launch_two_cpu_ranks(cli_env, "train-rm", data[f"pairs-{form}"], "--model", tmp_path / "sft", "--out", tmp_path / "rm",
                              "--max-steps", "2", "--batch-size", "4")
    assert rm.returncode == 0, rm.stderr[-3000:]
    policy = AutoModelForCausalLM.from_pretrained(tmp_path / "sft")
    source = AutoModelForCausalLM.from_pretrained(folders[family])
    assert policy.dtype == source.dtype and policy.config.tie_word_embeddings == source.config.tie_word_embeddings
    AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm")


@FAMILIES
def test_labelling_and_selection_commands_on_each_family(family, chain, run_main):
    """label-prm completes step prefixes with the family's model; build-prefs (verified and by RM rank) and
    best-of-n (ORM, PRM, votes) read its rollouts."""
    paths = chain(family)
    root = paths["root"]
    labelled = run_main("label-prm", paths["rollouts"], "--completer", paths["sft"], "--out", root / "steps.l.jsonl",
                        "--n-completions", "2", "--max-new-tokens", "6", "--backend", "hf")
    assert labelled.code == 0, labelled.err
    mixed = root / "roll.mixed.jsonl"  # untrained models are always wrong: give each prompt one right answer
    mixed.write_text("".join(json.dumps({**r, "responses": [f"Answer: {r['answer']}", *r["responses"][1:]],
                                         "correct": [True, *r["correct"][1:]]}) + "\n" for r in read_jsonl(paths["rollouts"])))
    verified = run_main("build-prefs", mixed, "--out", root / "prefs.v.jsonl")
    assert verified.code == 0, verified.err
    ranked = run_main("build-prefs", paths["rollouts"], "--mode", "rm", "--rm", paths["rm"], "--out", root / "prefs.r.jsonl")
    assert ranked.code == 0, ranked.err
    assert read_jsonl(root / "prefs.r.jsonl")
    bon = run_main("best-of-n", paths["rollouts"], "--rm", paths["rm"], "--prm", paths["prm"], "--vote", "majority",
                   "--out", root / "bon.json")
    assert bon.code == 0, bon.err
    curves = json.loads((root / "bon.json").read_text())["curves"]
    assert {"oracle", "rm", "prm-min", "majority"} <= set(curves)


def test_ppo_critic_from_a_tied_bf16_reward_model(chain, data, run_main):
    """--critic-init rm: the critic is the RM's backbone and head, read at every token."""
    paths = chain("qwen2")
    result = run_main("train-policy", data["prompts-chat"], "--model", paths["sft"], "--out", paths["root"] / "ppo-rm-critic",
                      "--algo", "ppo", "--rm", paths["rm"], "--critic-init", "rm", "--max-steps", "1", "--n", "2",
                      "--prompts-per-step", "2", "--max-new-tokens", "6", "--backend", "hf")
    assert result.code == 0, result.err


def test_the_readme_snippet_scores_as_rlhfctl_does(chain):
    """The README's interop snippet, run on the Qwen2-shaped chain: its response is what `rollout --temperature 0`
    writes, its score what rlhfctl's ORM scorer gives, its step scores the PRM scorer's."""
    import re

    from rlhfctl.generation.backends import make_generator
    from rlhfctl.generation.base import SamplingParams
    from rlhfctl.rm.scorers import prm_step_scores, score_rollouts

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    code = re.search(r"<!-- interop-snippet -->\n```python\n(.*?)```", readme, re.S).group(1)
    paths = chain("qwen2")
    line = 'policy, rm, prm = "runs/sft", "runs/rm", "runs/prm"'
    assert line in code
    code = code.replace(line, f"policy, rm, prm = {str(paths['sft'])!r}, {str(paths['rm'])!r}, {str(paths['prm'])!r}")
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    prompt = [{"role": "user", "content": "Compute 3+4."}]
    from rlhfctl.data import render_prompt

    generator = make_generator("hf", str(paths["sft"]))
    (sample,), = generator.generate([render_prompt(prompt, generator.tokenizer)], SamplingParams(temperature=0, max_new_tokens=32))
    assert scope["response"] == sample.text
    rollouts = [{"prompt": prompt, "responses": [sample.text]}]
    assert scope["score"] == pytest.approx(score_rollouts(rollouts, str(paths["rm"]))[0][0], abs=1e-4)
    assert scope["step_scores"] == pytest.approx(prm_step_scores(rollouts, str(paths["prm"]))[0][0], abs=1e-4)


@pytest.mark.parametrize("command", ["train-rm", "train-sft"])
def test_a_row_sparse_embedding_trains_the_same_weights_as_a_dense_one(command, folders, data, run_main, tmp_path):
    """Llama 3's input embedding is untied: by default it gets row-sparse gradients and AdamW state;
    --dense-embedding keeps them whole. The trained weights agree, the embedding's optimiser state does not."""
    from safetensors.torch import load_file

    from rlhfctl.artifacts import list_checkpoints, load_checkpoint

    kind = "pairs" if command == "train-rm" else "sft"
    runs = {}
    for name, extra in (("sparse", ()), ("dense", ("--dense-embedding",))):
        out = tmp_path / name
        result = run_main(command, data[f"{kind}-chat"], "--model", folders["llama3"], "--out", out, "--max-steps", "4",
                          "--batch-size", "3", "--lr", "3e-2", "--weight-decay", "0.1", "--save-dtype", "float32", *extra)
        assert result.code == 0, result.err
        runs[name] = out
    sparse, dense = (load_file(runs[n] / "model.safetensors") for n in ("sparse", "dense"))
    assert sparse.keys() == dense.keys()
    embedding = next(k for k in sparse if "embed_tokens" in k)
    start = load_file(folders["llama3"] / "model.safetensors")["model.embed_tokens.weight"].float()
    assert not torch.allclose(sparse[embedding], start)  # the embedding trained
    for key in sparse:
        torch.testing.assert_close(sparse[key], dense[key], rtol=1e-4, atol=1e-5, msg=key)
    rows = {}
    for name, out in runs.items():
        (_, ckpt), = list_checkpoints(out)[-1:]
        _, state = load_checkpoint(ckpt)
        rows[name] = [s["rows"] for s in state["optimizer"]["state"].values() if "rows" in s]
    vocab = sparse[embedding].shape[0]
    assert len(rows["sparse"]) == 1 and 0 < len(rows["sparse"][0]) < vocab  # moments for the rows the data used
    assert rows["dense"] == []


def test_a_run_written_by_row_resumes_with_a_dense_embedding(folders, data, run_main, tmp_path):
    out = tmp_path / "rm"
    common = ["train-rm", data["pairs-chat"], "--model", folders["llama3"], "--out", out, "--batch-size", "3", "--save-every", "1"]
    first = run_main(*common, "--max-steps", "2")
    assert first.code == 0, first.err
    resumed = run_main(*common, "--max-steps", "4", "--resume", "--dense-embedding")
    assert resumed.code == 0, resumed.err
    assert [m["step"] for m in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3, 4]
