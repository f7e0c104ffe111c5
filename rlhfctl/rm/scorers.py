"""Scoring the responses of rollouts: reward model, policy log-probability.

Every scorer maps rollouts to one float per response (higher is better);
best-of-n keeps the scores in a side file so re-plotting never re-scores.
"""

from __future__ import annotations

from typing import Any

from rlhfctl.data import encode_examples
from rlhfctl.records import Record


def _sequences(rollouts: list[Record], tokenizer: Any, max_length: int) -> tuple[list[list[int]], list[int]]:
    """Flattened prompt+response(+eos) ids, and each sequence's prompt length."""
    examples = encode_examples(tokenizer, [(r["prompt"], response) for r in rollouts for response in r["responses"]], max_length)
    return [e.input_ids for e in examples], [e.prompt_len for e in examples]


def _regroup(flat: list[float], rollouts: list[Record]) -> list[list[float]]:
    out, i = [], 0
    for r in rollouts:
        out.append(flat[i:i + len(r["responses"])])
        i += len(r["responses"])
    return out


def score_rollouts(rollouts: list[Record], rm_dir: str, batch_size: int = 64, max_length: int = 512) -> list[list[float]]:
    """ORM score of every response (raw; standardising does not change a ranking)."""
    from rlhfctl.rm.model import ORM, TokenValues, load_reward_model, score_sequences

    from rlhfctl.models import inference_device

    model, tokenizer, _ = load_reward_model(rm_dir, ORM, device=inference_device())
    seqs, _ = _sequences(rollouts, tokenizer, max_length)
    return _regroup(score_sequences(TokenValues(model), seqs, tokenizer.pad_token_id, batch_size), rollouts)


def logprob_rollouts(rollouts: list[Record], model_spec: str, batch_size: int = 64, max_length: int = 512) -> list[list[float]]:
    """Mean token log-probability of each response (with its eos) under a policy."""
    import torch

    from rlhfctl.models import inference_device, load_causal_lm, load_tokenizer
    from rlhfctl.rm.model import right_pad

    tokenizer = load_tokenizer(model_spec)
    device = inference_device()
    model = load_causal_lm(model_spec).eval().to(device)
    seqs, prompt_lens = _sequences(rollouts, tokenizer, max_length)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    flat = [0.0] * len(seqs)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            ids, mask = right_pad([seqs[i] for i in chunk], tokenizer.pad_token_id)
            ids, mask = ids.to(device), mask.to(device)
            logps = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits[:, :-1].float(), -1)
            token_logp = logps.gather(-1, ids[:, 1:, None]).squeeze(-1)  # (B, T-1): log p(x_t | x_<t)
            for row, i in enumerate(chunk):
                lo, hi = prompt_lens[i] - 1, len(seqs[i]) - 1  # response tokens, shifted by one
                flat[i] = float(token_logp[row, lo:hi].mean()) if hi > lo else float("-inf")
    return _regroup(flat, rollouts)


def prm_step_scores(rollouts: list[Record], prm_dir: str, batch_size: int = 64, max_length: int = 512) -> list[list[list[float]]]:
    """PRM step logits of every response, per prompt: ``[prompt][response][step]``.

    Responses are split into steps with the separator the PRM was trained
    with (from its manifest). `rlhfctl.rm.metrics.aggregate_steps` turns a
    response's step logits into one score (min, last, prod or mean of σ).
    """
    from rlhfctl.rm.data import encode_steps
    from rlhfctl.rm.model import PRM, TokenValues, load_reward_model
    from rlhfctl.rm.prm_label import split_steps
    from rlhfctl.training.prm import step_scores

    from rlhfctl.models import inference_device

    model, tokenizer, manifest = load_reward_model(prm_dir, PRM, device=inference_device())
    sep = manifest.get("results", {}).get("step_sep", "\n")
    seqs, positions = [], []
    for r in rollouts:
        for response in r["responses"]:
            ids, pos = encode_steps(tokenizer, r["prompt"], split_steps(response, sep), max_length, sep)
            seqs.append(ids)
            positions.append(pos)
    raw = step_scores(TokenValues(model), seqs, positions, tokenizer.pad_token_id, batch_size)
    return _regroup([list(map(float, s)) for s in raw], rollouts)
