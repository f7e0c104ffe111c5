"""One rollout batch of policy training: sample, score, shape, and advantages.

Everything here runs once per rollout batch and without gradients: the
old policy's and the reference's log-probs, the critic's values, the rewards
and the advantages. The PPO epochs then reuse the batch (`training/policy/update.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import torch

from rlhfctl.console import log
from rlhfctl.data import encode_conversations, render_prompt
from rlhfctl.generation.base import SamplingParams
from rlhfctl.grading import grade
from rlhfctl.logprobs import final_hidden, token_logprobs
from rlhfctl.models import ModelSource, as_source
from rlhfctl.packing import Packed, attention_implementation, pack
from rlhfctl.rl.advantages import gae, whiten
from rlhfctl.rl.kl import KL_ESTIMATORS
from rlhfctl.rl.shaping import Shaping, place_on_eos, shape_rewards, standardize
from rlhfctl.rm.model import ORM, TokenValues, load_reward_model, score_sequences, trained_max_length


@dataclass
class Experience:
    """P prompts × n responses = B rows on this rank; T = the longest response."""

    input_ids: torch.Tensor  # (B, L) prompt (left-padded, width L-T) + response (right-padded, width T)
    attention_mask: torch.Tensor  # (B, L)
    response_mask: torch.Tensor  # (B, T) 1 on response tokens (eos included)
    old_logp: torch.Tensor | None  # (B, T) log π_old(a_t|s_t); None: the update's own forward gives it (`reuses_update_forward`)
    ref_logp: torch.Tensor  # (B, T) log π_ref(a_t|s_t)
    advantages: torch.Tensor  # (B, T)
    values: torch.Tensor | None = None  # (B, T) V(s_t), PPO only
    returns: torch.Tensor | None = None  # (B, T) GAE returns, PPO only
    scores: torch.Tensor | None = None  # (B,) shaped scores, kept when the update computes the advantages itself
    groups: torch.Tensor | None = None  # (B,) the prompt of each row; set, the forwards pack each prompt's rows
    _layout: "ResponseLayout | None" = field(default=None, init=False, repr=False, compare=False)

    @property
    def position_ids(self) -> torch.Tensor:
        return (self.attention_mask.cumsum(-1) - 1).clamp(min=0)

    def layout(self) -> "ResponseLayout | None":
        """The packed layout of these rows (made once), or None for padded forwards."""
        if self.groups is not None and self._layout is None:
            self._layout = pack_responses(self.input_ids, self.attention_mask, self.response_mask.shape[1], self.groups)
        return self._layout

    def rows(self, index: torch.Tensor) -> "Experience":
        """The sub-batch of the given rows (a mini-batch)."""
        pick = lambda t: None if t is None else t[index]  # noqa: E731
        return Experience(*(pick(getattr(self, f.name)) for f in fields(self) if f.init))


@dataclass
class ResponseLayout:
    """Rows packed by prompt (`rlhfctl.packing`): each prompt once, then its responses, each seeing the prompt
    and itself. ``before`` (B, T) is, for each response token, the position of the token before it."""

    packed: Packed
    before: torch.Tensor

    def forward(self, model):
        """``model``'s output on the packed rows (a causal LM's ``ModelOutput``, or a critic's (R, W) values)."""
        p = self.packed
        return model(input_ids=p.input_ids, attention_mask=p.attention_mask(attention_implementation(model)),
                     position_ids=p.position_ids)


def pack_responses(input_ids, attention_mask, response_width: int, groups) -> ResponseLayout:
    """Pack (left-padded prompt + right-padded response) rows so that the rows of a prompt share it."""
    real = attention_mask.bool()
    seqs = [row[keep].tolist() for row, keep in zip(input_ids, real)]
    prompt_lengths = real[:, :input_ids.shape[1] - response_width].sum(1)
    packed = pack(seqs, groups.tolist(), pad_id=0).to(input_ids.device)
    before = prompt_lengths[:, None] - 1 + torch.arange(response_width, device=input_ids.device)
    return ResponseLayout(packed, before)


def assemble(prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int):
    """(input_ids, attention_mask, response_mask): left-padded prompts + right-padded responses."""
    width_p = max(len(p) for p in prompt_ids)
    width_r = max(max(len(r) for r in response_ids), 1)
    ids = torch.full((len(prompt_ids), width_p + width_r), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        ids[i, width_p - len(p):width_p] = torch.tensor(p)
        ids[i, width_p:width_p + len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, width_p - len(p):width_p + len(r)] = 1
    return ids, mask, mask[:, width_p:].clone()


def response_logprobs(model, input_ids, attention_mask, response_width: int, with_entropy: bool = False,
                      temperature: float = 1.0, layout: ResponseLayout | None = None):
    """log π(a_t|s_t) of the response tokens, (B, T); and their entropy (B, T) if asked.

    π is the sampling distribution softmax(logits / temperature), so the PPO
    ratio compares the policy that sampled with the one being trained (as TRL
    does); a temperature of 0 (greedy sampling) is read as 1. With a
    ``layout``, the forward runs on the packed rows and the same (B, T)
    values are read off them (padding positions hold other finite values).
    Logits are made for the response positions only, a chunk of rows at a
    time (`rlhfctl.logprobs`).
    """
    with final_hidden(model) as found:
        if layout is None:
            position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
            output = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
            states = found.states(output)[:, -response_width - 1:-1]  # position t predicts token t+1
        else:
            states = layout.packed.at(found.states(layout.forward(model)), layout.before)
    return token_logprobs(states, input_ids[:, -response_width:], found.head, temperature=temperature,
                          with_entropy=with_entropy, compute_dtype=found.compute_dtype)


def response_values(critic, input_ids, attention_mask, response_width: int, layout: ResponseLayout | None = None):
    """V(s_t) for each response token: the critic's value at the position before it, (B, T)."""
    if layout is not None:
        return layout.packed.at(layout.forward(critic), layout.before).float()
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    values = critic(input_ids, attention_mask, position_ids).float()  # (B, L)
    return values[:, -response_width - 1:-1]


@dataclass(frozen=True)
class AdvantageSettings:
    algo: str  # ppo | grpo
    n: int
    shaping: Shaping
    kl_coef: float
    kl_estimator: str
    kl_in: str  # reward | loss
    kl_clip: float = 10.0
    gamma: float = 1.0
    lam: float = 0.95
    whiten_advantages: bool = True


@dataclass(frozen=True)
class CollectSettings:
    """What sampling and scoring a rollout batch read of the run's settings (`of` takes them from a `PolicyConfig`)."""

    n: int
    temperature: float
    top_p: float
    max_new_tokens: int
    packing: bool
    ppo_epochs: int  # with the two below: whether the update's forward gives π_old (`reuses_update_forward`)
    mini_batch_size: int | None
    critic_warmup_steps: int
    verifier: str | None
    verifier_weight: float
    rm_weight: float

    @classmethod
    def of(cls, config: Any) -> "CollectSettings":
        return cls(**{f.name: getattr(config, f.name) for f in fields(cls)})


def shape_scores(raw, settings: AdvantageSettings, accelerator) -> torch.Tensor:
    """Steps 2-4 of shaping over the *global* batch (groups stay whole per rank)."""
    all_scores = accelerator.gather(raw)  # (world*B,): rank 0's rows, then rank 1's
    shaped = shape_rewards(all_scores, settings.n, settings.shaping)
    start = accelerator.process_index * raw.shape[0]
    return shaped[start:start + raw.shape[0]]


def advantages_for(shaped, exp: Experience, settings: AdvantageSettings, accelerator) -> tuple[torch.Tensor, Any]:
    """GRPO: the shaped score on every response token. PPO: GAE over token rewards
    (-β·KL per token when the KL is in the reward, the score at eos), whitened."""
    mask = exp.response_mask.float()
    if settings.algo == "grpo":
        token_rewards = None
        advantages = shaped[:, None] * mask
        if settings.kl_in == "reward":  # KL as a per-token penalty on the advantage
            kl = KL_ESTIMATORS[settings.kl_estimator](exp.old_logp, exp.ref_logp).clamp(-settings.kl_clip, settings.kl_clip)
            advantages = advantages - settings.kl_coef * kl * mask
        return advantages, None
    token_rewards = place_on_eos(shaped, mask)
    if settings.kl_in == "reward":
        kl = KL_ESTIMATORS[settings.kl_estimator](exp.old_logp, exp.ref_logp).clamp(-settings.kl_clip, settings.kl_clip)
        token_rewards = token_rewards - settings.kl_coef * kl * mask
    advantages, returns = gae(token_rewards, exp.values, mask, settings.gamma, settings.lam)
    if settings.whiten_advantages:
        advantages = _global_whiten(advantages, mask, accelerator)
    return advantages, returns


def _global_whiten(values, mask, accelerator):
    """`rl.advantages.whiten` with the mean and variance over all ranks' tokens."""
    sums = torch.stack([(values * mask).sum(), mask.sum()])
    total, count = accelerator.reduce(sums, reduction="sum").tolist()
    mean = total / max(count, 1.0)
    var = float(accelerator.reduce(((values - mean) ** 2 * mask).sum(), reduction="sum")) / max(count, 1.0)
    return whiten(values, mask, mean=mean, var=var)


def standardized_rm_scores(texts: list[tuple[Any, str]], rm: "RewardModelHandle") -> tuple[torch.Tensor, int]:
    """(scores, overlong): ORM scores of (prompt, response) pairs standardised with the RM's μ/σ,
    and how many were longer than the RM's max length (scored on their first tokens)."""
    encoded = encode_conversations(rm.tokenizer, texts, rm.max_length, rm.pad_id)
    raw = torch.tensor(score_sequences(rm.values, encoded.seqs, rm.tokenizer.pad_token_id))
    return standardize(raw, rm.mean, rm.std), encoded.overlong


@dataclass
class RewardModelHandle:
    """An ORM ready to score: values, tokenizer, its saved μ/σ and the length it was trained with."""

    values: Any
    tokenizer: Any
    mean: float
    std: float
    max_length: int
    pad_id: int | None  # the config's pad id: the score is read at the last token that is not it


def load_rm_handle(rm: ModelSource | str, device: Any = "cpu", max_length: int | None = None,
                   main: bool = True) -> RewardModelHandle:
    model, tokenizer, manifest = load_reward_model(rm, ORM, device=device)
    mean, std = rm_statistics(as_source(rm).spec, manifest.get("results", {}), main)
    return RewardModelHandle(TokenValues(model).eval(), tokenizer, mean, std, max_length or trained_max_length(manifest),
                             model.config.pad_token_id)


def rm_statistics(folder: str, results: dict[str, Any], main: bool = True) -> tuple[float, float]:
    """The μ/σ of an ORM's held-out scores, from its manifest's results, to standardise with.

    An RM trained with no held-out data (--eval-fraction 0, no --eval-data) has
    none: μ/σ are (0, 1) and standardising leaves the raw scores, so it says so
    on stderr rather than let them pass for standardised ones.
    """
    if 2 * results.get("num_pairs", 0) + results.get("num_binary", 0) < 2:
        log(f"warning: {folder}: RM scores are not standardised: the reward model has no held-out statistics "
            "(train-rm with --eval-data, or --eval-fraction above 0)", main)
    return float(results.get("reward_mean", 0.0)), float(results.get("reward_std", 1.0))


def collect(policy, ref, critic, generator, prompts: list[dict[str, Any]], config: CollectSettings, settings: AdvantageSettings,
            rm: RewardModelHandle | None, accelerator, seed: int) -> tuple[Experience, dict[str, float]]:
    """Sample, score and compute advantages for this rank's prompts."""
    tokenizer = generator.tokenizer
    params = SamplingParams(n=config.n, temperature=config.temperature, top_p=config.top_p,
                            max_new_tokens=config.max_new_tokens, batch_size=len(prompts) * config.n, seed=seed)
    policy.eval()
    texts = [render_prompt(r["prompt"], tokenizer) for r in prompts]
    samples = generator.generate(texts, params, keys=[r["id"] for r in prompts])
    prompt_ids = [tokenizer(t, add_special_tokens=True)["input_ids"] for t in texts for _ in range(config.n)]
    response_ids = [s.token_ids for group in samples for s in group]  # (P, n) -> P*n rows
    ids, mask, resp_mask = assemble(prompt_ids, response_ids, tokenizer.pad_token_id)
    ids, mask, resp_mask = ids.to(accelerator.device), mask.to(accelerator.device), resp_mask.to(accelerator.device)
    width = resp_mask.shape[1]
    engine_logprobs = any(s.logprobs is not None for g in samples for s in g)
    deferred = not engine_logprobs and reuses_update_forward(config, len(response_ids), accelerator.num_processes)
    groups = torch.arange(len(prompts), device=ids.device).repeat_interleave(config.n) if config.packing else None
    exp = Experience(ids, mask, resp_mask, None, None, None, groups=groups)
    with torch.no_grad():
        if not deferred:
            exp.old_logp, _ = response_logprobs(policy, ids, mask, width, temperature=config.temperature, layout=exp.layout())
        exp.ref_logp, _ = response_logprobs(ref, ids, mask, width, temperature=config.temperature, layout=exp.layout())
        if critic is not None:
            exp.values = response_values(critic, ids, mask, width, layout=exp.layout())
    old_logp = exp.old_logp
    raw, stats = rewards_for(prompts, samples, config, rm)
    if old_logp is not None:
        stats.update(engine_logprob_gap(samples, old_logp, resp_mask))
    raw = raw.to(accelerator.device)
    shaped = exp.scores = shape_scores(raw, settings, accelerator)
    if not deferred:  # otherwise the update computes them from its own forward passes
        exp.advantages, exp.returns = advantages_for(shaped, exp, settings, accelerator)
    fmask = resp_mask.float()
    stats.update({"reward_raw_mean": float(raw.mean()), "reward_raw_std": float(raw.std()) if raw.numel() > 1 else 0.0,
                  "reward_shaped_mean": float(shaped.mean()), "reward_shaped_std": float(shaped.std()) if shaped.numel() > 1 else 0.0})
    if old_logp is not None:  # otherwise the update reports it from its own forward pass
        stats["kl"] = rollout_kl(old_logp, exp.ref_logp, resp_mask)
    stats.update({"response_length": float(fmask.sum(-1).mean()),
                  "truncated_fraction": sum(s.finish_reason == "length" for g in samples for s in g) / len(response_ids)})
    return exp, stats


def rollout_kl(old_logp: torch.Tensor, ref_logp: torch.Tensor, response_mask: torch.Tensor) -> float:
    """The logged ``kl``: mean of log π_old - log π_ref over the response tokens (the k1 estimate)."""
    fmask = response_mask.float()
    return float(((old_logp - ref_logp) * fmask).sum() / fmask.sum())


def reuses_update_forward(config: CollectSettings, rows: int, world: int) -> bool:
    """Whether π_old can be read off the update's own forward pass of the policy.

    With one epoch and one mini-batch, the policy is updated once, on the
    batch just sampled, with the weights that sampled it: π_old is the
    training forward's log-probs, detached (the ratio is exactly 1 and the
    gradient is that of the separate-pass computation). The update then
    computes the KL penalty and the advantages itself. This saves a policy
    forward per step, as TRL does with one iteration. (PPO's critic keeps its
    separate no-grad pass for V_old: reusing its training forward too would
    hold the policy's and the critic's graphs in memory at once.) Not with
    `--critic-warmup-steps`, whose steps train the critic alone.
    """
    single_batch = config.mini_batch_size is None or config.mini_batch_size // world >= rows
    return config.ppo_epochs == 1 and single_batch and config.critic_warmup_steps == 0


def engine_logprob_gap(samples, old_logp: torch.Tensor, response_mask: torch.Tensor) -> dict[str, float]:
    """How far the sampling engine's log-probs are from the policy's, when the engine reports them.

    A vLLM engine samples from its own copy of the weights with its own
    kernels, yet PPO's ratio treats the samples as drawn from π_old (B, T).
    The mean |log π_engine - log π_old| over response tokens stays near
    rounding noise while the weight updates work; a large gap means the
    engine samples from another distribution (stale weights, another
    temperature, or top-p < 1, which the policy's log-probs leave out).
    """
    flat = [s for group in samples for s in group]  # (P, n) -> P*n rows, the order of old_logp
    if not flat or any(s.logprobs is None for s in flat):
        return {}
    engine = torch.zeros_like(old_logp)
    for row, s in enumerate(flat):
        engine[row, :len(s.logprobs)] = torch.tensor(s.logprobs, dtype=engine.dtype)
    gap = (engine - old_logp).abs()[response_mask.bool()]
    return {"vllm_logprob_abs_diff": float(gap.mean()), "vllm_logprob_max_abs_diff": float(gap.max())}


def rewards_for(prompts, samples, config: CollectSettings, rm: RewardModelHandle | None) -> tuple[torch.Tensor, dict[str, float]]:
    """Raw scores (P*n,): weighted sum of the verifier (1 right / 0 wrong) and the standardised ORM."""
    total = torch.zeros(sum(len(g) for g in samples))
    stats: dict[str, float] = {}
    if config.verifier is not None:
        verdicts = []
        for r, group in zip(prompts, samples):
            record = r if config.verifier == "auto" else {**r, "task": config.verifier}
            verdicts.extend(grade(record, [s.text for s in group]) or [False] * len(group))
        correct = torch.tensor(verdicts, dtype=torch.float)
        total += config.verifier_weight * correct
        stats["accuracy"] = float(correct.mean())
    if rm is not None:
        pairs = [(r["prompt"], s.text) for r, group in zip(prompts, samples) for s in group]
        scores, overlong = standardized_rm_scores(pairs, rm)
        total += config.rm_weight * scores
        stats["rm_score_mean"] = float(scores.mean())
        stats["rm_overlong"] = float(overlong)
    return total, stats
