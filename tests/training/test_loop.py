import itertools
import json
import math

import pytest

from rlhfctl.errors import ConfigError
from rlhfctl.records import METRICS, read_metrics
from rlhfctl.training.loop import (
    RUN_FILE, MetricsLog, Schedule, batch_stream, bucketed_batches, check_run_dir, claim_run_dir, manifest_options, shard,
    warmup_cosine,
)


def test_total_steps_and_checks():
    assert Schedule(epochs=1, batch_size=8).total_steps(64) == 8
    assert Schedule(epochs=1, batch_size=8).total_steps(65) == 9
    assert Schedule(epochs=2.5, batch_size=8).total_steps(64) == 20
    assert Schedule(epochs=0.01, batch_size=8).total_steps(64) == 1
    assert Schedule(epochs=3, max_steps=5).total_steps(10_000) == 5
    for bad, flag in [(dict(batch_size=0), "--batch-size"), (dict(max_steps=0), "--max-steps"), (dict(epochs=0), "--epochs"),
                      (dict(lr=0), "--lr"), (dict(save_every=0), "--save-every")]:
        with pytest.raises(ConfigError, match=flag):
            Schedule(**bad).check()


def test_manifest_options_flatten_nested_configs_after_the_other_fields():
    from rlhfctl.rl.shaping import Shaping
    from rlhfctl.training.policy.config import PolicyConfig
    from rlhfctl.training.rm import RMConfig
    from rlhfctl.training.scale import ScaleOptions

    schedule = Schedule(max_steps=3, lr=0.5)
    options = manifest_options(RMConfig(data=("d.jsonl",), model="toy:tiny", out="o", schedule=schedule, max_length=64))
    keys = list(options)
    assert keys[:4] == ["data", "model", "out", "eval_data"] and "schedule" not in keys and "scale" not in keys
    assert keys.index("packing") < keys.index("epochs") < keys.index("bf16")  # the RM's own, the schedule's, the scale's
    assert options["max_steps"] == 3 and options["lr"] == 0.5 and options["max_length"] == 64 and options["lora_r"] == 0
    policy = PolicyConfig(prompts="p", model="m", out="o", shaping=Shaping(norm="batch", clip_range=(-1.0, 2.0)),
                          scale=ScaleOptions(lora_r=4))
    options = manifest_options(policy)
    assert options["reward_norm"] == "batch" and options["reward_clip_range"] == (-1.0, 2.0) and options["neg_reward_scale"] == 1.0
    assert options["lora_r"] == 4 and options["lora_alpha"] == ScaleOptions(lora_r=4).alpha and options["keep_checkpoints"] == 2
    assert list(options)[-len(ScaleOptions(lora_r=4).as_options()):] == list(ScaleOptions(lora_r=4).as_options())


def test_warmup_cosine():
    f = warmup_cosine(total_steps=10, warmup_steps=2)
    assert [f(0), f(1)] == [0.5, 1.0]
    assert f(2) == pytest.approx(1.0) and f(6) == pytest.approx(0.5) and f(10) == pytest.approx(0.0)
    assert all(f(s) >= f(s + 1) for s in range(1, 12))
    g = warmup_cosine(total_steps=4, warmup_steps=0)  # no warmup: starts at the peak
    assert g(0) == 1.0 and g(4) == pytest.approx(0.0)


def test_bucketed_batches_partition_and_determinism():
    lengths = [((i * 37) % 101) + 1 for i in range(203)]
    batches = bucketed_batches(lengths, 8, seed=1, epoch=0, pool=4)
    flat = sorted(itertools.chain.from_iterable(batches))
    assert flat == list(range(203))  # every record exactly once per epoch
    assert sum(len(b) < 8 for b in batches) <= math.ceil(203 / (8 * 4))  # short batches only at pool ends
    assert batches == bucketed_batches(lengths, 8, seed=1, epoch=0, pool=4)
    assert batches != bucketed_batches(lengths, 8, seed=1, epoch=1, pool=4)
    assert batches != bucketed_batches(lengths, 8, seed=2, epoch=0, pool=4)
    # grouped by length: padding inside a batch is far below that of a random batch
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 30


def test_batch_stream_resumes_at_any_step():
    lengths = list(range(1, 21))  # 3 batches of 8 per epoch
    full = [b for _, b in itertools.islice(batch_stream(lengths, 8, seed=0, start_step=0), 10)]
    epochs = [e for e, _ in itertools.islice(batch_stream(lengths, 8, seed=0, start_step=0), 10)]
    assert epochs == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]
    for start in range(10):
        tail = [b for _, b in itertools.islice(batch_stream(lengths, 8, seed=0, start_step=start), 10 - start)]
        assert tail == full[start:]


def test_shard_covers_the_batch_once():
    batch = list(range(7))
    parts = [shard(batch, r, 3) for r in range(3)]
    assert sorted(itertools.chain.from_iterable(p for p, _ in parts)) == batch
    assert all(w == 1.0 for _, w in parts)
    assert shard(batch, 0, 1) == (batch, 1.0)


def test_shard_of_a_batch_smaller_than_the_world_borrows_with_weight_zero():
    # rank 1 of 2 gets nothing from a one-record batch: it still needs a forward pass
    assert shard([5], 0, 2) == ([5], 1.0)
    assert shard([5], 1, 2) == ([5], 0.0)


def test_check_and_claim_run_dir(tmp_path):
    out = tmp_path / "run"
    check_run_dir(out, "train-sft", {"lr": 1, "algo": "grpo"}, resume=False)
    assert not out.exists()  # checking writes nothing
    with claim_run_dir(out, "train-sft", {"lr": 1, "algo": "grpo"}):
        pass
    assert json.loads((out / RUN_FILE).read_text()) == {"command": "train-sft", "options": {"lr": 1, "algo": "grpo"}}
    with pytest.raises(ConfigError, match="already holds a run: pass --resume"):
        check_run_dir(out, "train-sft", {"lr": 1}, resume=False)
    check_run_dir(out, "train-sft", {"lr": 2, "algo": "grpo"}, resume=True, identity=("algo",))
    with pytest.raises(ConfigError, match="holds a train-sft run, not train-rm"):
        check_run_dir(out, "train-rm", {}, resume=True)
    with pytest.raises(ConfigError, match="--algo grpo, cannot resume it with ppo"):
        check_run_dir(out, "train-sft", {"algo": "ppo"}, resume=True, identity=("algo",))
    check_run_dir(tmp_path / "fresh", "train-sft", {}, resume=True)  # --resume on a new folder starts fresh
    with claim_run_dir(tmp_path / "fresh", "train-sft", {}):
        pass
    assert (tmp_path / "fresh" / RUN_FILE).is_file()


def _fail_in_claim(out, log_steps: int = 0):
    with pytest.raises(RuntimeError, match="model did not load"):
        with claim_run_dir(out, "train-sft", {}):
            (out / "checkpoints" / ".step-2.tmp").mkdir(parents=True)
            for step in range(log_steps + 1):  # a step-0 line (train-policy's first eval) is not a training step
                with open(out / METRICS, "a") as f:
                    f.write(json.dumps({"step": step}) + "\n")
            raise RuntimeError("model did not load")


def test_a_start_that_fails_before_its_first_step_leaves_out_as_it_was(tmp_path):
    _fail_in_claim(tmp_path / "new" / "run")
    assert not (tmp_path / "new").exists()  # --out and the parent made for it
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")
    _fail_in_claim(existing)
    assert [p.name for p in existing.iterdir()] == ["notes.txt"]
    check_run_dir(existing, "train-sft", {}, resume=False)  # the corrected command needs no --resume


def test_a_run_that_logged_a_step_or_was_resumed_keeps_its_folder(tmp_path):
    out = tmp_path / "run"
    _fail_in_claim(out, log_steps=1)
    assert (out / RUN_FILE).is_file() and (out / METRICS).is_file()
    with pytest.raises(RuntimeError):  # a resumed run: run.json was there, nothing is taken back
        with claim_run_dir(out, "train-sft", {}):
            (out / METRICS).unlink()
            raise RuntimeError
    assert (out / RUN_FILE).is_file() and (out / "checkpoints").is_dir()


def test_metrics_log_cuts_steps_after_the_checkpoint(tmp_path):
    path = tmp_path / METRICS
    log = MetricsLog(path, resume_step=0)
    for step in range(1, 6):
        log.write({"step": step, "loss": 1.0 / step})
    with open(path, "a") as f:
        f.write('{"step": 6, "lo')  # torn by a kill
    MetricsLog(path, resume_step=4).write({"step": 5, "loss": -1.0})
    assert [(m["step"], m["loss"]) for m in read_metrics(tmp_path)] == [(s, 1.0 / s) for s in range(1, 5)] + [(5, -1.0)]
    MetricsLog(path, resume_step=0)
    assert read_metrics(tmp_path) == []


def test_metrics_log_disabled_off_the_main_rank(tmp_path):
    (tmp_path / METRICS).write_text('{"step": 9}\n')
    log = MetricsLog(tmp_path / METRICS, resume_step=0, enabled=False)
    log.write({"step": 1})
    assert read_metrics(tmp_path) == [{"step": 9}]


def test_training_state_round_trip_keeps_the_newest_checkpoints_and_a_model_beside(tmp_path):
    """Weights, optimizer and scheduler state of a model and of one trained beside it (PPO's critic), and the RNG."""
    import random

    import torch
    from accelerate import Accelerator

    from rlhfctl.artifacts import list_checkpoints
    from rlhfctl.training.loop import restore_training_state, save_training_state

    accelerator = Accelerator(cpu=True)

    def build(seed):
        torch.manual_seed(seed)
        policy, critic = torch.nn.Linear(3, 2), torch.nn.Linear(3, 1)
        policy_opt, critic_opt = torch.optim.AdamW(policy.parameters(), lr=0.1), torch.optim.AdamW(critic.parameters(), lr=0.1)
        return policy, policy_opt, torch.optim.lr_scheduler.LambdaLR(policy_opt, lambda s: 1.0 / (s + 1)), critic, critic_opt

    policy, policy_opt, scheduler, critic, critic_opt = build(0)
    for step in range(1, 4):
        (policy(torch.ones(1, 3)).sum() + critic(torch.ones(1, 3)).sum()).backward()
        policy_opt.step(), critic_opt.step(), scheduler.step()
        save_training_state(tmp_path, step, accelerator, policy, policy_opt, 2, scheduler, others=(("critic", critic, critic_opt),))
    assert [step for step, _ in list_checkpoints(tmp_path)] == [2, 3]
    expected_draw = (torch.rand(1).item(), random.random())

    fresh = build(1)
    assert restore_training_state(tmp_path, accelerator, *fresh[:3], others=(("critic", *fresh[3:]),)) == 3
    assert (torch.rand(1).item(), random.random()) == expected_draw
    for before, after in zip((policy, critic), (fresh[0], fresh[3])):
        for name, value in before.state_dict().items():
            assert torch.equal(after.state_dict()[name], value), name
    for before, after in zip((policy_opt, critic_opt), (fresh[1], fresh[4])):
        assert [torch.equal(a["exp_avg"], b["exp_avg"]) for a, b in zip(before.state.values(), after.state.values())] == [True, True]
    assert fresh[2].state_dict()["last_epoch"] == 3 and fresh[2].get_last_lr() == scheduler.get_last_lr()
    assert restore_training_state(tmp_path / "none", accelerator, *fresh[:2]) == 0
