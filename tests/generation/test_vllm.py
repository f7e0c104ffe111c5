"""The vLLM backend, on the CPU against a fake `vllm` (tests/fake_vllm.py), and for real where vLLM and a GPU are.

The fake runs the saved Hugging Face model behind vLLM's API shapes, so these
tests check what rlhfctl sends to vLLM (engine and sampling arguments, token
prompts, seeds, the eos as a stop token), what it makes of the answers (the
same samples and records as the HF backend), and the engine's life in
train-policy (sleep, wake-up, weight updates under a timeout). Tests marked
`vllm` need the real package and a CUDA GPU.
"""

from __future__ import annotations

import json
import time

import pytest

import fake_vllm
from conftest import read_jsonl
from rlhfctl.errors import ConfigError, EngineError
from rlhfctl.generation.backends import make_generator, resolve_backend
from rlhfctl.generation.base import EngineOptions, SamplingParams, derive_seed

torch = pytest.importorskip("torch")

PROMPTS = ["Compute 1+2.\n", "Compute 31+5+30-49+38.\n", "Compute 12-3+4.\n", "C", "Compute 99-17.\n", "xyz 12"]


@pytest.fixture
def vllm(monkeypatch):
    """A fake vllm in sys.modules (removed after the test); the HF backend on the CPU, where the fake computes."""
    monkeypatch.setenv("RLHFCTL_DEVICE", "cpu")
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    monkeypatch.delenv("VLLM_LOGGING_STREAM", raising=False)
    return fake_vllm.install(monkeypatch)


@pytest.fixture
def no_vllm(monkeypatch):
    """`import vllm` fails as it does where vllm is not installed."""
    monkeypatch.setitem(__import__("sys").modules, "vllm", None)


class EosAs:
    """A tokenizer whose eos is another token: makes an untrained model stop mid-batch, at different steps."""

    def __init__(self, tokenizer, eos_token_id: int):
        self._tokenizer, self.eos_token_id = tokenizer, eos_token_id

    def __call__(self, *args, **kwargs):
        return self._tokenizer(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


def _engine_init(engine) -> dict:
    return engine.calls[0][1]


# --- engine and sampling arguments -----------------------------------------------------------------

def test_engine_gets_tp_memory_seed_and_a_saved_toy_folder(vllm):
    gen = make_generator("vllm", "toy:tiny", seed=3, engine=EngineOptions(tp=2, gpu_memory_utilization=0.5))
    init = _engine_init(gen.llm)
    assert init["tensor_parallel_size"] == 2 and init["gpu_memory_utilization"] == 0.5 and init["seed"] == 3
    assert init["skip_tokenizer_init"] is True and init["dtype"] == "float32"  # the precision it was saved in
    assert "enable_sleep_mode" not in init  # only train-policy's engine sleeps
    from pathlib import Path

    assert (Path(init["model"]) / "config.json").is_file() and (Path(init["model"]) / "tokenizer.json").is_file()
    hf = make_generator("hf", "toy:tiny", seed=3)
    for name, tensor in hf.model.state_dict().items():  # the toy model vLLM loads is the one the HF backend builds
        assert torch.equal(gen.llm.model.hf.state_dict()[name], tensor), name
    assert gen.name == "vllm" and hf.name == "hf"
    folder = init["model"]
    del gen
    import gc

    gc.collect()
    assert not Path(folder).exists()  # the temporary toy folder lives as long as the engine


def test_sampling_arguments_per_prompt(vllm):
    gen = make_generator("vllm", "toy:tiny", seed=0)
    params = SamplingParams(n=3, temperature=0.7, top_p=0.9, max_new_tokens=5, seed=11)
    out = gen.generate(PROMPTS[:2], params, keys=["a", "b"])
    _, prompts, sent = gen.llm.calls[-1]
    assert prompts == [{"prompt_token_ids": gen.tokenizer(p, add_special_tokens=True)["input_ids"]} for p in PROMPTS[:2]]
    for key, sp in zip("ab", sent):
        assert sp.given == dict(n=3, temperature=0.7, top_p=0.9, max_tokens=5, seed=derive_seed(11, key) % 2**31,
                                stop_token_ids=[gen.tokenizer.eos_token_id], detokenize=False, logprobs=None)
    assert [len(g) for g in out] == [3, 3] and all(1 <= s.num_tokens <= 5 for g in out for s in g)
    assert all(s.logprobs is None for g in out for s in g)


def test_greedy_asks_for_one_sample_and_repeats_it(vllm):
    gen = make_generator("vllm", "toy:tiny", seed=0)
    out = gen.generate(PROMPTS[:2], SamplingParams(n=4, temperature=0, top_p=0.5, max_new_tokens=6))
    sent = gen.llm.calls[-1][2]
    assert all(sp.n == 1 and sp.top_p == 1.0 and sp.temperature == 0 for sp in sent)  # vLLM refuses greedy n > 1
    for group in out:
        assert len(group) == 4 and len({(s.text, tuple(s.token_ids)) for s in group}) == 1
        assert len({id(s) for s in group}) == 4


def test_same_seed_same_samples_whatever_the_batch(vllm):
    gen = make_generator("vllm", "toy:tiny", seed=0)
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=8, seed=5)
    together = gen.generate(PROMPTS[:3], params, keys=["a", "b", "c"])
    alone = gen.generate(PROMPTS[1:2], params, keys=["b"])
    assert [s.token_ids for s in together[1]] == [s.token_ids for s in alone[0]]  # a resumed run samples the same
    other = gen.generate(PROMPTS[1:2], SamplingParams(n=2, temperature=1.0, max_new_tokens=8, seed=6), keys=["b"])
    assert [s.token_ids for s in other[0]] != [s.token_ids for s in alone[0]]
    assert gen.generate([], params) == []


def test_greedy_samples_equal_the_hf_backend_with_eos_kept_in_the_tokens(vllm):
    hf = make_generator("hf", "toy:tiny", seed=0)
    gen = make_generator("vllm", "toy:tiny", seed=0)
    params = SamplingParams(n=1, temperature=0, max_new_tokens=12, batch_size=64)
    free = hf.generate(PROMPTS, params)
    # an "eos" that the model emits in some rows, at different steps, and never in others
    def stops(token):
        return [g[0].token_ids.index(token) if token in g[0].token_ids else None for g in free]

    eos = max({t for g in free for t in g[0].token_ids}, key=lambda t: (None in stops(t), len(set(stops(t)))))
    assert None in stops(eos) and len({s for s in stops(eos) if s is not None}) >= 2
    hf.tokenizer = gen.tokenizer = EosAs(gen.tokenizer, eos)
    hf.eos_ids = gen.eos_ids = frozenset({eos})
    want, got = hf.generate(PROMPTS, params), gen.generate(PROMPTS, params)
    assert {s[0].finish_reason for s in got} == {"stop", "length"}
    for a, b in zip(want, got):
        assert (a[0].text, a[0].token_ids, a[0].finish_reason) == (b[0].text, b[0].token_ids, b[0].finish_reason)
        if b[0].finish_reason == "stop":
            assert b[0].token_ids[-1] == eos and b[0].text == gen.tokenizer.decode(b[0].token_ids[:-1], skip_special_tokens=True)


def test_logprobs_of_the_sampled_tokens_when_asked(vllm):
    gen = make_generator("vllm", "toy:tiny", seed=0)
    gen.with_logprobs = True
    (group,) = gen.generate(PROMPTS[:1], SamplingParams(n=2, temperature=1.0, max_new_tokens=6, seed=1))
    assert gen.llm.calls[-1][2][0].logprobs == 0
    for s in group:
        assert len(s.logprobs) == s.num_tokens and all(lp <= 0 for lp in s.logprobs)


# --- choosing the backend ----------------------------------------------------------------------------

@pytest.mark.parametrize("cuda, installed, want", [(False, True, "hf"), (True, False, "hf"), (True, True, "vllm"), (False, False, "hf")])
def test_auto_picks_vllm_only_with_vllm_and_a_cuda_gpu(cuda, installed, want, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    if installed:
        fake_vllm.install(monkeypatch)
    else:
        monkeypatch.setitem(__import__("sys").modules, "vllm", None)
    assert resolve_backend("auto") == want
    assert resolve_backend("hf") == "hf" and resolve_backend("vllm") == "vllm"


def test_importing_vllm_sends_its_logs_to_stderr(vllm, monkeypatch):
    from rlhfctl.generation.vllm import import_vllm

    assert import_vllm() is vllm
    import os

    assert os.environ["VLLM_LOGGING_STREAM"] == "ext://sys.stderr"  # stdout carries records and JSON


def test_tp_needs_vllm_and_options_are_checked(no_vllm):
    with pytest.raises(ConfigError, match=r"--tp 2 needs --backend vllm"):
        resolve_backend("hf", EngineOptions(tp=2))
    with pytest.raises(ConfigError, match=r"auto chose hf"):
        resolve_backend("auto", EngineOptions(tp=2))
    with pytest.raises(ConfigError, match=r"--tp must be at least 1, got 0"):
        EngineOptions(tp=0)
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ConfigError, match=r"--gpu-memory-utilization must be in \(0, 1\]"):
            EngineOptions(gpu_memory_utilization=bad)
    assert resolve_backend("hf", EngineOptions(gpu_memory_utilization=0.3)) == "hf"  # a cap the hf backend has no use for


@pytest.mark.parametrize("args, pattern", [
    (["--backend", "vllm"], r"^error: --backend vllm needs vLLM, which is not installed: pip install 'rlhfctl\[vllm\]'$"),
    (["--tp", "0"], r"^error: --tp must be at least 1, got 0$"),
    (["--gpu-memory-utilization", "1.5"], r"^error: --gpu-memory-utilization must be in \(0, 1\], got 1.5$"),
    (["--backend", "hf", "--tp", "2"], r"^error: --tp 2 needs --backend vllm; the hf backend runs on one device$"),
], ids=["missing-vllm", "tp0", "memory", "tp-with-hf"])
def test_cli_errors_are_one_line_and_exit_2(args, pattern, run_main, toy_dir, tmp_path, no_vllm):
    import re

    for command in (["rollout", toy_dir / "test.jsonl", "--model", "toy:tiny", "--out", tmp_path / "r.jsonl"],
                    ["eval", "--model", "toy:tiny", "--data", toy_dir / "test.jsonl"]):
        r = run_main(*command, *args)
        assert r.code == 2 and re.match(pattern, r.err.strip()) and len(r.err.strip().splitlines()) == 1, r.err
    assert not (tmp_path / "r.jsonl").exists() or (tmp_path / "r.jsonl").read_text() == ""


# --- the commands on the vLLM backend --------------------------------------------------------------

def test_rollout_records_equal_the_hf_backend(vllm, run_main, toy_dir, tmp_path):
    common = ["--model", "toy:tiny", "--n", "2", "--temperature", "0", "--max-new-tokens", "10", "--seed", "4"]
    a = run_main("rollout", toy_dir / "test.jsonl", "--out", tmp_path / "hf.jsonl", "--backend", "hf", *common)
    b = run_main("rollout", toy_dir / "test.jsonl", "--out", tmp_path / "vllm.jsonl", "--backend", "vllm", "--tp", "1",
                 "--gpu-memory-utilization", "0.6", *common)
    assert a.code == b.code == 0, a.err + b.err
    hf, vl = read_jsonl(tmp_path / "hf.jsonl"), read_jsonl(tmp_path / "vllm.jsonl")
    assert len(hf) == len(vl) == 8
    for x, y in zip(hf, vl):
        assert (x["generator"]["backend"], y["generator"]["backend"]) == ("hf", "vllm")
        x["generator"].pop("backend"), y["generator"].pop("backend")
        assert x == y
    assert _engine_init(vllm.ENGINES[-1])["gpu_memory_utilization"] == 0.6


def test_eval_label_prm_and_best_of_n_pass_the_engine_options(vllm, run_main, toy_dir, tmp_path):
    engine = ["--backend", "vllm", "--tp", "2", "--gpu-memory-utilization", "0.4"]
    r = run_main("eval", "--model", "toy:tiny", "--data", toy_dir / "test.jsonl", "--max-new-tokens", "6", "--json", *engine)
    assert r.code == 0, r.err
    assert json.loads(r.out)["num_prompts"] == 8
    r = run_main("best-of-n", toy_dir / "test.jsonl", "--policy", "toy:tiny", "--n", "2", "--max-new-tokens", "6",
                 "--out", tmp_path / "bon.json", "--json", *engine)
    assert r.code == 0, r.err
    rollouts = read_jsonl(tmp_path / "bon.rollouts.jsonl")
    assert rollouts[0]["generator"]["backend"] == "vllm"
    r = run_main("label-prm", tmp_path / "bon.rollouts.jsonl", "--completer", "toy:tiny", "--n-completions", "2",
                 "--max-new-tokens", "6", "--max-solutions-per-prompt", "1", "--out", tmp_path / "steps.jsonl", "--json", *engine)
    assert r.code == 0, r.err
    inits = [_engine_init(e) for e in vllm.ENGINES]
    assert len(inits) == 3 and all(i["tensor_parallel_size"] == 2 and i["gpu_memory_utilization"] == 0.4 for i in inits)


# --- train-policy's hooks: sleep, wake-up, weight updates --------------------------------------------

def _policy_engine(vllm, seed=0, timeout=30.0):
    from rlhfctl.generation.vllm import build_policy_engine
    from rlhfctl.models import load_causal_lm, load_tokenizer

    policy = load_causal_lm("toy:tiny", seed=seed)
    return build_policy_engine("toy:tiny", policy, load_tokenizer("toy:tiny"), seed, 0.3, timeout), policy


def test_policy_engine_is_in_process_sleeps_and_reports_processed_logprobs(vllm):
    import os

    gen, _ = _policy_engine(vllm)
    init = _engine_init(gen.llm)
    assert init["enable_sleep_mode"] is True and init["logprobs_mode"] == "processed_logprobs"
    assert init["gpu_memory_utilization"] == 0.3 and init["tensor_parallel_size"] == 1
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"  # weights pass by reference, not pickled
    assert gen.with_logprobs and gen.can_sleep


def test_a_vllm_without_sleep_mode_or_logprobs_mode_still_works(monkeypatch):
    vllm = fake_vllm.install(monkeypatch, sleep_mode=False, logprobs_mode=False)
    gen, policy = _policy_engine(vllm)
    init = _engine_init(gen.llm)
    assert "enable_sleep_mode" not in init and "logprobs_mode" not in init and not gen.can_sleep
    gen.sleep()
    gen.update_weights(policy)
    assert [c[0] for c in gen.llm.calls[1:]] == ["apply_model", "reset_prefix_cache"]


def test_sleep_then_update_wakes_the_weights_first_and_the_kv_cache_after_the_load(vllm):
    gen, policy = _policy_engine(vllm)
    gen.sleep()
    gen.sleep()  # once asleep, asleep
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.01)
    gen.update_weights(policy)
    assert gen.llm.calls[1:] == [("sleep", 1), ("wake_up", ["weights"]), ("apply_model",), ("wake_up", ["kv_cache"]),
                                 ("reset_prefix_cache",)]
    for name, tensor in policy.state_dict().items():
        assert torch.equal(gen.llm.model.hf.state_dict()[name], tensor), name
    gen.sleep()
    gen.generate(PROMPTS[:1], SamplingParams(n=1, temperature=0, max_new_tokens=3))  # generating wakes it
    assert gen.llm.calls[-2] == ("wake_up", ["weights", "kv_cache"]) and gen.llm.calls[-1][0] == "generate"
    gen.wake_up()  # awake: nothing to do
    assert gen.llm.calls[-1][0] == "generate"


def test_a_stuck_weight_update_is_an_error_not_a_hang(vllm):
    gen, policy = _policy_engine(vllm, timeout=0.3)
    gen.llm.hang_on_apply = 1
    tic = time.perf_counter()
    try:
        with pytest.raises(EngineError, match=r"^vLLM weight update did not finish in 0.3 s: the engine looks stuck"):
            gen.update_weights(policy)
    finally:
        vllm.RELEASE.set()
    assert time.perf_counter() - tic < 5
    assert EngineError.exit_code == 1


def test_an_error_inside_the_update_reaches_the_caller(vllm):
    gen, _ = _policy_engine(vllm)

    class Stranger(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

    with pytest.raises(KeyError, match="unexpected weight w"):
        gen.update_weights(Stranger())


def test_lora_policies_are_refused(vllm):
    from rlhfctl.generation.vllm import build_policy_engine
    from rlhfctl.models import load_causal_lm, load_tokenizer

    policy = load_causal_lm("toy:tiny")
    policy.peft_config = {"default": object()}
    with pytest.raises(ConfigError, match="not LoRA adapters"):
        build_policy_engine("toy:tiny", policy, load_tokenizer("toy:tiny"), 0, 0.3, 30.0)


# --- the real vLLM (needs vllm and a CUDA GPU) -----------------------------------------------------

def _real_vllm():
    pytest.importorskip("vllm")
    if not torch.cuda.is_available():
        pytest.skip("vLLM needs a CUDA GPU")


@pytest.mark.vllm
def test_real_vllm_greedy_rollout_equals_hf(sft_run, toy_dir, tmp_path, cli):
    _real_vllm()
    common = ["--model", sft_run.path, "--n", "1", "--temperature", "0", "--max-new-tokens", "48", "--json"]
    for backend in ("hf", "vllm"):
        proc = cli("rollout", toy_dir / "test.jsonl", "--out", tmp_path / f"{backend}.jsonl", "--backend", backend,
                   "--gpu-memory-utilization", "0.3", *common, timeout=900)
        assert proc.returncode == 0, proc.stderr
        json.loads(proc.stdout)  # vLLM's logs went to stderr
    hf, vl = read_jsonl(tmp_path / "hf.jsonl"), read_jsonl(tmp_path / "vllm.jsonl")
    assert [r["responses"] for r in hf] == [r["responses"] for r in vl]
    assert [r["finish_reasons"] for r in hf] == [r["finish_reasons"] for r in vl]
    assert [r["num_tokens"] for r in hf] == [r["num_tokens"] for r in vl]


@pytest.mark.vllm
def test_real_vllm_sampling_is_seeded(sft_run, toy_dir, tmp_path, cli):
    _real_vllm()
    args = ["--model", sft_run.path, "--n", "4", "--temperature", "1", "--max-new-tokens", "32", "--backend", "vllm",
            "--gpu-memory-utilization", "0.3"]
    for name in ("a", "b"):
        proc = cli("rollout", toy_dir / "test.jsonl", "--out", tmp_path / f"{name}.jsonl", *args, timeout=900)
        assert proc.returncode == 0, proc.stderr
    assert read_jsonl(tmp_path / "a.jsonl") == read_jsonl(tmp_path / "b.jsonl")


@pytest.mark.vllm
def test_real_vllm_in_train_policy_samples_from_the_policy(sft_run, toy_dir, tmp_path, cli):
    _real_vllm()
    out = tmp_path / "grpo"
    proc = cli("train-policy", toy_dir / "train.jsonl", "--model", sft_run.path, "--out", out, "--verifier", "math",
               "--n", "4", "--prompts-per-step", "4", "--max-steps", "3", "--max-new-tokens", "32", "--lr", "1e-3",
               "--backend", "vllm", "--gpu-memory-utilization", "0.2", "--vllm-sync-timeout", "120", "--json", timeout=1200)
    assert proc.returncode == 0, proc.stderr
    assert "generation: vllm" in proc.stderr
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(r["vllm_logprob_abs_diff"] < 1e-3 for r in rows), [r["vllm_logprob_abs_diff"] for r in rows]
