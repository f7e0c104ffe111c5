"""--bf16, --gradient-checkpointing and LoRA (--lora-*) on train-sft and train-rm; the accelerate configs.

Each flag runs through the real CLI on toy:tiny and is checked against the
plain tiny SFT run shared by the whole test run (`sft_run`) or against an independent computation:
peft's own merge for the published LoRA weights, a fresh model for the
weights LoRA must leave alone. train-policy with LoRA is in test_policy_lora.py.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import SFT_ARGS, read_jsonl, stderr_lines
from rlhfctl.records import write_jsonl

LORA = ["--lora-r", "4"]
ALPHA = 8.0  # the default, 2 × r
RM_ARGS = ["--model", "toy:tiny", "--max-steps", "4", "--save-every", "2", "--batch-size", "8", "--lr", "5e-3", "--seed", "0"]
FP32_ON_CPU = SimpleNamespace(device=torch.device("cpu"), mixed_precision="no", is_main_process=True)  # what prepare_model reads
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "accelerate"


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def _one_line_error(result, pattern):
    assert result.code == 2, result.err
    lines = stderr_lines(result.err)
    assert len(lines) == 1 and re.search(pattern, lines[0]), result.err


def _drop_last_checkpoint_and_model(run: Path, last: int) -> None:
    """What a run killed after its second-last checkpoint leaves: no last checkpoint, no published model."""
    shutil.rmtree(run / "checkpoints" / f"step-{last}")
    for f in run.iterdir():
        if f.is_file() and f.name not in ("run.json", "metrics.jsonl"):
            f.unlink()


# --- bf16 and gradient checkpointing ----------------------------------------------------------------------

def test_bf16_sft_logs_finite_losses_close_to_fp32(sft_run, toy_dir, tmp_path, run_main):
    """CPU autocast in bf16 (accelerate): finite losses within bf16 rounding of the fp32 run, fp32 weights saved."""
    out = tmp_path / "bf16"
    r = run_main("train-sft", toy_dir / "sft.jsonl", "--out", out, *SFT_ARGS, "--bf16", "--json")
    assert r.code == 0, r.err
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6]
    for got, want in zip(metrics, sft_run.metrics):
        assert math.isfinite(got["loss"]) and got["loss"] == pytest.approx(want["loss"], rel=1e-2)
    assert all(w.dtype == torch.float32 for w in _weights(out / "model.safetensors").values())
    manifest = json.loads((out / "rlhfctl.json").read_text())
    assert manifest["options"]["bf16"] is True
    assert manifest["results"]["attention"] == "eager" and "eager attention" in r.err  # CPU SDPA is slow in bf16
    assert "attn_implementation" not in (out / "config.json").read_text()  # the folder loads with the default kernel


@pytest.mark.parametrize("device, precision, before, switched", [
    ("cpu", "bf16", "sdpa", True),
    ("cpu", "no", "sdpa", False),  # fp32: SDPA is the faster kernel
    ("cuda", "bf16", "sdpa", False),  # GPUs keep SDPA
    ("cpu", "bf16", "eager", False),  # already eager: nothing to say
])
def test_bf16_on_a_cpu_switches_sdpa_to_eager_attention(device, precision, before, switched):
    from rlhfctl.models import load_causal_lm
    from rlhfctl.packing import attention_implementation
    from rlhfctl.training.scale import ScaleOptions, prepare_model

    model = load_causal_lm("toy:tiny", seed=0)
    model.set_attn_implementation(before)
    accelerator = SimpleNamespace(device=torch.device(device), mixed_precision=precision, is_main_process=True)
    recorded = prepare_model(accelerator, model, ScaleOptions())
    assert attention_implementation(model) == ("eager" if switched else before)
    assert recorded == ({"attention": "eager"} if switched else {})


def test_bf16_rm_packs_pairs_under_eager_attention_close_to_fp32(toy_dir, tmp_path, run_main):
    """train-rm's packed pairs take an eager-attention mask under --bf16 on a CPU: losses within bf16 rounding."""
    records = [{"prompt": r["prompt"], "chosen": r["meta"]["clean"], "rejected": "Answer: -1"}
               for r in read_jsonl(toy_dir / "train.jsonl")[:48]]
    write_jsonl(tmp_path / "prefs.jsonl", records)
    runs = {}
    for name, flags in (("fp32", []), ("bf16", ["--bf16"])):
        r = run_main("train-rm", tmp_path / "prefs.jsonl", "--out", tmp_path / name, *RM_ARGS, *flags, "--json")
        assert r.code == 0, r.err
        runs[name] = read_jsonl(tmp_path / name / "metrics.jsonl"), r.err
    (fp32, _), (bf16, err) = runs["fp32"], runs["bf16"]
    assert "eager attention" in err and len(bf16) == len(fp32) == 4
    for got, want in zip(bf16, fp32):
        assert got["loss"] == pytest.approx(want["loss"], rel=2e-2)


def test_gradient_checkpointing_gives_the_same_losses_and_gradients(sft_run, toy_dir, tmp_path, run_main):
    out = tmp_path / "ckpt"
    r = run_main("train-sft", toy_dir / "sft.jsonl", "--out", out, *SFT_ARGS, "--gradient-checkpointing")
    assert r.code == 0, r.err
    for got, want in zip(read_jsonl(out / "metrics.jsonl"), sft_run.metrics):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
        assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-5)
    assert json.loads((out / "rlhfctl.json").read_text())["options"]["gradient_checkpointing"] is True


def test_gradient_checkpointing_on_a_value_head_model_gives_the_same_gradients():
    """The RM / PPO critic (`TokenValues`): recomputed activations, the same values and parameter gradients."""
    from rlhfctl.rm.model import PRM, TokenValues, build_reward_model
    from rlhfctl.training.scale import ScaleOptions, prepare_model

    ids = torch.randint(3, 40, (3, 11), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    grads = []
    for checkpointing in (False, True):
        model = build_reward_model("toy:tiny", PRM, seed=0)
        torch.nn.init.normal_(model.score.weight, generator=torch.Generator().manual_seed(1))  # a non-zero head
        prepare_model(FP32_ON_CPU, model, ScaleOptions(gradient_checkpointing=checkpointing))
        values = TokenValues(model).train()
        assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules()) == checkpointing
        out = values(ids, mask)
        (out * mask).pow(2).sum().backward()
        grads.append((out.detach(), {n: p.grad.clone() for n, p in values.named_parameters()}))
    (plain, plain_grads), (ckpt, ckpt_grads) = grads
    torch.testing.assert_close(ckpt, plain)
    assert plain_grads.keys() == ckpt_grads.keys()
    for name, g in plain_grads.items():
        torch.testing.assert_close(ckpt_grads[name], g, rtol=1e-5, atol=1e-7, msg=name)


# --- LoRA: train-sft --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lora_sft(cli, toy_dir, tmp_path_factory):
    pytest.importorskip("peft")
    out = tmp_path_factory.mktemp("lora-sft") / "run"
    proc = cli("train-sft", toy_dir / "sft.jsonl", "--out", out, *SFT_ARGS, *LORA, "--lr", "3e-2", "--json")
    assert proc.returncode == 0, proc.stderr
    return out


def _fresh_policy():
    from rlhfctl.models import load_causal_lm

    return load_causal_lm("toy:tiny", seed=0).eval()


def test_lora_sft_changes_only_the_adapters(lora_sft):
    """The published weights are the seed's initial weights plus (α/r)·B·A on the adapted layers, nothing else."""
    adapters = _weights(lora_sft / "checkpoints" / "step-6" / "model.safetensors")
    assert adapters and all(".lora_A." in k or ".lora_B." in k for k in adapters)  # the checkpoint keeps what trains
    assert any(float(v.abs().max()) > 0 for k, v in adapters.items() if ".lora_B." in k)  # B starts at zero: it trained
    final, fresh = _weights(lora_sft / "model.safetensors"), _fresh_policy().state_dict()
    assert final.keys() == fresh.keys()
    adapted = {k.split(".lora_A.")[0] for k in adapters if ".lora_A." in k}
    for key, w0 in fresh.items():
        layer = key.rsplit(".", 1)[0]
        if layer in adapted and key.endswith(".weight"):
            b, a = adapters[f"{layer}.lora_B.default.weight"], adapters[f"{layer}.lora_A.default.weight"]
            torch.testing.assert_close(final[key], w0 + ALPHA / 4 * b @ a, msg=key)
        else:
            assert torch.equal(final[key], w0), key  # embeddings, norms, lm_head: frozen
    assert len(adapted) == 2 * 7  # q, k, v, o, gate, up, down in each of the two layers


def test_lora_folder_loads_without_peft_and_matches_peft_merge(lora_sft, monkeypatch):
    """Plain transformers with peft unimportable loads the folder; its logits are those of the adapted model and
    of peft's own merge_and_unload of the checkpointed adapters."""
    from peft import LoraConfig, get_peft_model

    adapters = _weights(lora_sft / "checkpoints" / "step-6" / "model.safetensors")
    manifest = json.loads((lora_sft / "rlhfctl.json").read_text())
    peft_model = get_peft_model(_fresh_policy(), LoraConfig(r=4, lora_alpha=ALPHA, target_modules=manifest["results"]["lora"]["target_modules"]))
    missing, unexpected = peft_model.load_state_dict({f"base_model.model.{k}": v for k, v in adapters.items()}, strict=False)
    assert not unexpected and all(".lora_" not in k for k in missing)
    ids = torch.tensor([[1, 20, 21, 22, 30, 5], [1, 7, 8, 9, 10, 11]])
    with torch.no_grad():
        adapted = peft_model(input_ids=ids).logits
        merged = peft_model.merge_and_unload()(input_ids=ids).logits

    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` fails: transformers must not need it
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(lora_sft).eval()
    assert not any("lora" in k or "base_layer" in k for k in plain.state_dict())
    assert not (lora_sft / "adapter_config.json").exists()
    with torch.no_grad():
        logits = plain(input_ids=ids).logits
    torch.testing.assert_close(logits, merged, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits, adapted, rtol=1e-5, atol=1e-5)


def test_lora_manifest_records_the_settings(lora_sft):
    manifest = json.loads((lora_sft / "rlhfctl.json").read_text())
    opts = manifest["options"]
    assert (opts["lora_r"], opts["lora_alpha"], opts["lora_dropout"], opts["lora_target_modules"]) == (4, ALPHA, 0.0, "all-linear")
    lora = manifest["results"]["lora"]
    assert lora["target_modules"] == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    assert lora["trainable_parameters"] == sum(v.numel() for v in _weights(lora_sft / "checkpoints" / "step-6" / "model.safetensors").values())
    assert manifest["results"]["parameters"] == 113_600  # the published model's, adapters merged


def test_lora_resume_gives_the_same_metrics_and_weights(lora_sft, toy_dir, tmp_path, run_main):
    b = tmp_path / "b"
    shutil.copytree(lora_sft, b)
    _drop_last_checkpoint_and_model(b, 6)
    r = run_main("train-sft", toy_dir / "sft.jsonl", "--out", b, *SFT_ARGS, *LORA, "--lr", "3e-2", "--resume")
    assert r.code == 0, r.err
    assert "resuming from step 4" in r.err
    want, got = read_jsonl(lora_sft / "metrics.jsonl"), read_jsonl(b / "metrics.jsonl")
    assert [m["step"] for m in got] == [1, 2, 3, 4, 5, 6]
    for g, w in zip(got, want):
        assert g["loss"] == pytest.approx(w["loss"], abs=1e-6) and g["grad_norm"] == pytest.approx(w["grad_norm"], abs=1e-6)
    wa, wb = _weights(lora_sft / "model.safetensors"), _weights(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_lora_run_cannot_be_resumed_with_another_rank(lora_sft, toy_dir, tmp_path, run_main):
    b = tmp_path / "b"
    shutil.copytree(lora_sft, b)
    r = run_main("train-sft", toy_dir / "sft.jsonl", "--out", b, *SFT_ARGS, "--lora-r", "8", "--resume")
    _one_line_error(r, re.escape(f"error: {b} was started with --lora-r 4, cannot resume it with 8"))


def test_unknown_lora_target_is_one_line_error(toy_dir, tmp_path, run_main):
    pytest.importorskip("peft")
    r = run_main("train-sft", toy_dir / "sft.jsonl", "--out", tmp_path / "x", *SFT_ARGS, *LORA, "--lora-target-modules", "q_proj,nope")
    _one_line_error(r, r"^error: --lora-target-modules: LlamaForCausalLM has no module named 'nope' \(its linear layers: down_proj, ")


@pytest.mark.parametrize("command", ["train-sft", "train-rm", "train-policy"])
def test_lora_without_peft_is_one_line_error(command, toy_dir, tmp_path, run_main, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)
    data = toy_dir / ("train.jsonl" if command == "train-policy" else "sft.jsonl")
    extra = ["--verifier", "math"] if command == "train-policy" else []
    r = run_main(command, data, "--out", tmp_path / "x", "--model", "toy:tiny", *extra, *LORA)
    _one_line_error(r, re.escape("error: --lora-r needs peft, which is not installed: pip install 'rlhfctl[lora]'"))
    assert not (tmp_path / "x").exists()


# --- LoRA: train-rm ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lora_rm(cli, toy_dir, tmp_path_factory):
    """An ORM on pairs and binary items from the toy train prompts, LoRA r=4 and gradient checkpointing."""
    pytest.importorskip("peft")
    root = tmp_path_factory.mktemp("lora-rm")
    records = []
    for r in read_jsonl(toy_dir / "train.jsonl"):
        records.append({"prompt": r["prompt"], "chosen": r["meta"]["clean"], "rejected": "Answer: -1"})
        records.append({"prompt": r["prompt"], "completion": "Answer: -1", "label": False})
    write_jsonl(root / "prefs.jsonl", records)
    out = root / "rm"
    proc = cli("train-rm", root / "prefs.jsonl", "--out", out, "--eval-fraction", "0.25", *RM_ARGS, *LORA,
               "--gradient-checkpointing", "--json")
    assert proc.returncode == 0, proc.stderr
    return out, root / "prefs.jsonl"


def test_lora_rm_trains_adapters_and_the_score_head(lora_rm):
    from rlhfctl.rm.model import ORM, build_reward_model

    out, _ = lora_rm
    trained = _weights(out / "checkpoints" / "step-4" / "model.safetensors")
    heads = {k for k in trained if ".lora_" not in k}
    assert heads == {"model.score.weight"} and float(trained["model.score.weight"].abs().max()) > 0  # zero-initialised
    final, fresh = _weights(out / "model.safetensors"), build_reward_model("toy:tiny", ORM, seed=0).state_dict()
    assert final.keys() == fresh.keys()
    torch.testing.assert_close(final["score.weight"], trained["model.score.weight"])
    for key in ("model.embed_tokens.weight", "model.norm.weight", "model.layers.0.input_layernorm.weight"):
        assert torch.equal(final[key], fresh[key]), key
    assert not torch.equal(final["model.layers.0.self_attn.q_proj.weight"], fresh["model.layers.0.self_attn.q_proj.weight"])


def test_lora_rm_folder_scores_like_the_adapted_model(lora_rm, toy_dir, monkeypatch):
    """The merged folder, loaded with plain transformers, scores as the adapted model rebuilt from the checkpoint."""
    from rlhfctl.models import load_tokenizer
    from rlhfctl.rm.model import ORM, TokenValues, build_reward_model, score_sequences
    from rlhfctl.training.scale import ScaleOptions, load_weights, prepare_model

    out, _ = lora_rm
    adapted = build_reward_model("toy:tiny", ORM, seed=0)
    prepare_model(FP32_ON_CPU, adapted, ScaleOptions(lora_r=4), heads=("score",))
    values = TokenValues(adapted).eval()
    load_weights(values, _weights(out / "checkpoints" / "step-4" / "model.safetensors"), "step-4")
    tok = load_tokenizer("toy:tiny")
    seqs = [tok(r["prompt"] + text)["input_ids"] for r in read_jsonl(toy_dir / "test.jsonl") for text in (r["meta"]["clean"], "Answer: -1")]
    want = score_sequences(values, seqs, tok.pad_token_id)

    monkeypatch.setitem(sys.modules, "peft", None)
    from transformers import AutoModelForSequenceClassification

    plain = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert max(want) - min(want) > 1e-3
    assert score_sequences(TokenValues(plain), seqs, tok.pad_token_id) == pytest.approx(want, abs=1e-5)


def test_lora_rm_resume_gives_the_same_metrics(lora_rm, tmp_path, run_main):
    out, prefs = lora_rm
    b = tmp_path / "b"
    shutil.copytree(out, b)
    _drop_last_checkpoint_and_model(b, 4)
    r = run_main("train-rm", prefs, "--out", b, "--eval-fraction", "0.25", *RM_ARGS, *LORA, "--gradient-checkpointing", "--resume", "--json")
    assert r.code == 0, r.err
    assert "resuming from step 2" in r.err
    for g, w in zip(read_jsonl(b / "metrics.jsonl"), read_jsonl(out / "metrics.jsonl")):
        assert g["step"] == w["step"] and g["loss"] == pytest.approx(w["loss"], abs=1e-6)
    results = json.loads((out / "rlhfctl.json").read_text())["results"]
    assert json.loads(r.out)["reward_mean"] == pytest.approx(results["reward_mean"], abs=1e-6)


# --- LoRA: the reference of a LoRA policy -----------------------------------------------------------------

def test_the_reference_of_a_lora_policy_is_its_base_model():
    from rlhfctl.training.lora import BaseModelReference
    from rlhfctl.training.scale import ScaleOptions, prepare_model

    pytest.importorskip("peft")
    policy = _fresh_policy()
    prepare_model(FP32_ON_CPU, policy, ScaleOptions(lora_r=4))
    g = torch.Generator().manual_seed(0)
    for name, p in policy.named_parameters():
        if ".lora_B." in name:
            p.data.normal_(generator=g)  # as if trained: the adapters now change the output
    ids = torch.tensor([[1, 20, 21, 22, 30]])
    with torch.no_grad():
        base, adapted = _fresh_policy()(input_ids=ids).logits, policy(input_ids=ids).logits
        ref = BaseModelReference(policy)(input_ids=ids).logits
        after = policy(input_ids=ids).logits
    assert not torch.allclose(adapted, base, atol=1e-3)
    torch.testing.assert_close(ref, base)
    torch.testing.assert_close(after, adapted)  # the adapters are back on
    assert all(p.requires_grad == (".lora_" in n) for n, p in policy.named_parameters())


# --- refusals under sharding ------------------------------------------------------------------------------

def _accelerator(kind, zero_stage=3, fsdp2=False):
    from accelerate.utils import DistributedType

    return SimpleNamespace(distributed_type=DistributedType[kind], is_fsdp2=fsdp2,
                           state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=zero_stage)))


def test_sharded_setups_that_are_refused():
    from rlhfctl.errors import ConfigError
    from rlhfctl.training.policy.config import PolicyConfig, check_parallelism
    from rlhfctl.training.scale import ScaleOptions, check_frozen_outer_weights, check_resumable, is_sharded

    grpo, ppo = PolicyConfig("p", "m", "o", algo="grpo"), PolicyConfig("p", "m", "o", algo="ppo")
    for algo in (grpo, ppo):
        with pytest.raises(ConfigError, match="does not run under FSDP version 1.*fsdp_version: 2"):
            check_parallelism(_accelerator("FSDP"), algo)
        check_parallelism(_accelerator("FSDP", fsdp2=True), algo)  # tests/training/test_fsdp.py runs both
    with pytest.raises(ConfigError, match="--algo ppo does not run under DeepSpeed"):
        check_parallelism(_accelerator("DEEPSPEED"), ppo)
    check_parallelism(_accelerator("DEEPSPEED"), grpo)
    check_parallelism(_accelerator("MULTI_GPU"), ppo)
    for kind in ("FSDP", "DEEPSPEED"):
        with pytest.raises(ConfigError, match="--resume is not supported under"):
            check_resumable(_accelerator(kind), resume=True)
    check_resumable(_accelerator("FSDP", fsdp2=True), resume=True)  # the optimizer state is gathered whole
    check_resumable(_accelerator("MULTI_GPU"), resume=True)
    with pytest.raises(ConfigError, match="train-sft --lora-r does not run under FSDP version 1"):
        check_frozen_outer_weights(_accelerator("FSDP"), ScaleOptions(lora_r=4), "train-sft")
    check_frozen_outer_weights(_accelerator("FSDP"), ScaleOptions(), "train-sft")
    check_frozen_outer_weights(_accelerator("MULTI_GPU"), ScaleOptions(lora_r=4), "train-sft")
    assert [is_sharded(_accelerator(k, s)) for k, s in (("FSDP", 3), ("DEEPSPEED", 3), ("DEEPSPEED", 2), ("MULTI_GPU", 3))] == [
        True, True, False, False]


def test_a_checkpoint_resumes_under_the_launcher_that_wrote_it():
    """FSDP version 2 checkpoints keep the optimizer state by parameter name, the others the optimizer's own dict."""
    import torch

    from rlhfctl.errors import ModelError
    from rlhfctl.training.scale import restore_optimizer

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    with pytest.raises(ModelError, match="ck: this checkpoint was written under FSDP version 2"):
        restore_optimizer(_accelerator("MULTI_GPU"), model, optimizer, {"by_name": {}}, "ck")
    with pytest.raises(ModelError, match="ck: this checkpoint was written without FSDP"):
        restore_optimizer(_accelerator("FSDP", fsdp2=True), model, optimizer, optimizer.state_dict(), "ck")
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    saved = optimizer.state_dict()
    fresh = torch.optim.AdamW(model.parameters())
    restore_optimizer(_accelerator("MULTI_GPU"), model, fresh, saved, "ck")
    assert torch.equal(fresh.state_dict()["state"][0]["exp_avg"], saved["state"][0]["exp_avg"])


# --- examples/accelerate ----------------------------------------------------------------------------------

def _cluster_config(name):
    from accelerate.commands.config.config_args import load_config_from_file

    return load_config_from_file(str(EXAMPLES / name))


def test_accelerate_configs_load_with_the_settings_rlhfctl_needs():
    from accelerate.utils import DistributedType

    ddp = _cluster_config("ddp.yaml")
    assert ddp.distributed_type == DistributedType.MULTI_GPU and ddp.num_processes > 1
    fsdp = _cluster_config("fsdp.yaml")
    assert fsdp.distributed_type == DistributedType.FSDP
    f = fsdp.fsdp_config
    assert (f["fsdp_version"], f["fsdp_reshard_after_forward"], f["fsdp_auto_wrap_policy"], f["fsdp_transformer_layer_cls_to_wrap"]) == (
        2, True, "TRANSFORMER_BASED_WRAP", "LlamaDecoderLayer")  # version 2: train-policy needs it (test_fsdp.py runs the file)
    assert f["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    assert f["fsdp_activation_checkpointing"] is False  # rlhfctl's --gradient-checkpointing instead
    zero3 = _cluster_config("zero3.yaml")
    assert zero3.distributed_type == DistributedType.DEEPSPEED and zero3.mixed_precision == "bf16"
    d = zero3.deepspeed_config
    assert d["zero_stage"] == 3 and d["zero3_save_16bit_model"] is True and d["gradient_accumulation_steps"] == 1
    readme = (EXAMPLES / "README.md").read_text()
    for name in ("ddp.yaml", "fsdp.yaml", "zero3.yaml"):
        assert f"--config_file examples/accelerate/{name} -m rlhfctl" in readme, name
