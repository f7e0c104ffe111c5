"""Scoring the responses of rollouts: reward model, policy log-probability.

Every scorer maps rollouts to one float per response (higher is better);
best-of-n keeps the scores in a side file so re-plotting never re-scores.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from rlhfctl.console import log
from rlhfctl.data import encode_conversations, encode_examples
from rlhfctl.logprobs import final_hidden, token_logprobs
from rlhfctl.models import ModelSource, as_source, inference_device, load_causal_lm, load_tokenizer
from rlhfctl.records import Record
from rlhfctl.rm.data import encode_steps
from rlhfctl.rm.model import (
    ORM, PRM, TokenValues, by_length, load_reward_model, score_sequences, step_scores, trained_max_length,
)
from rlhfctl.rm.prm_label import split_steps

OVERLONG = "responses longer than the reward model's max length"  # the key of every summary's count


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


def report_overlong(count: int, total: int, max_length: int, folder: str, counts: Counter | None) -> None:
    """Say (one line) how many sequences were cut to the reward model's max length, and count them."""
    if counts is not None:
        counts[OVERLONG] += count
    if count:
        log(f"{count} of {total} responses are longer than {folder}'s max length ({max_length} tokens): "
            "scored on their first tokens only (raise --rm-max-length)")


def score_rollouts(rollouts: list[Record], rm: ModelSource | str, batch_size: int = 64, max_length: int | None = None,
                   counts: Counter | None = None) -> list[list[float]]:
    """ORM score of every response (raw; standardising does not change a ranking).

    ``max_length`` defaults to the length the RM was trained with; longer
    sequences are reported and counted in ``counts`` (`OVERLONG`).
    """
    model, tokenizer, manifest = load_reward_model(rm, ORM, device=inference_device())
    limit = max_length or trained_max_length(manifest)
    pairs = [(r["prompt"], response) for r in rollouts for response in r["responses"]]
    encoded = encode_conversations(tokenizer, pairs, limit, model.config.pad_token_id)
    report_overlong(encoded.overlong, len(pairs), limit, as_source(rm).spec, counts)
    return _regroup(score_sequences(TokenValues(model), encoded.seqs, tokenizer.pad_token_id, batch_size), rollouts)


def logprob_rollouts(rollouts: list[Record], policy: ModelSource | str, batch_size: int = 64,
                     max_length: int = 512) -> list[list[float]]:
    """Mean token log-probability of each response (with its eos) under a policy."""
    import torch

    tokenizer = load_tokenizer(policy)
    device = inference_device()
    model = load_causal_lm(policy).eval().to(device)
    seqs, prompt_lens = _sequences(rollouts, tokenizer, max_length)

    def mean_logprobs(ids, mask, chunk):
        spans = [(prompt_lens[i] - 1, len(seqs[i]) - 1) for i in chunk]  # response tokens, shifted by one
        columns = torch.arange(ids.shape[1] - 1, device=ids.device)
        wanted = torch.stack([(columns >= lo) & (columns < hi) for lo, hi in spans])  # (B, T-1)
        with final_hidden(model) as found:
            states = found.states(model(input_ids=ids, attention_mask=mask))[:, :-1]
        token_logp, _ = token_logprobs(states[wanted], ids[:, 1:][wanted], found.head, compute_dtype=found.compute_dtype)
        counts = wanted.sum(1).tolist()  # log p(x_t | x_<t) of each response's tokens, row after row
        return [float(part.mean()) if len(part) else float("-inf") for part in token_logp.split(counts)]

    with torch.inference_mode():
        flat = by_length(seqs, tokenizer.pad_token_id, batch_size, device, mean_logprobs)
    return _regroup(flat, rollouts)


def prm_step_scores(rollouts: list[Record], prm: ModelSource | str, batch_size: int = 64, max_length: int | None = None,
                    counts: Counter | None = None) -> list[list[list[float]]]:
    """PRM step logits of every response, per prompt: ``[prompt][response][step]``.

    Responses are split into steps with the separator the PRM was trained
    with (from its manifest). `rlhfctl.rm.metrics.aggregate_steps` turns a
    response's step logits into one score (min, last, prod or mean of σ).
    Steps past ``max_length`` (default: the PRM's trained length) are not
    scored; such responses are reported and counted.
    """
    model, tokenizer, manifest = load_reward_model(prm, PRM, device=inference_device())
    sep = manifest.get("results", {}).get("step_sep", "\n")
    limit = max_length or trained_max_length(manifest)
    seqs, positions, cut = [], [], 0
    for r in rollouts:
        for response in r["responses"]:
            steps = split_steps(response, sep)
            ids, pos = encode_steps(tokenizer, r["prompt"], steps, limit, sep)
            cut += len(pos) < len(steps)
            seqs.append(ids)
            positions.append(pos)
    report_overlong(cut, len(seqs), limit, as_source(prm).spec, counts)
    raw = step_scores(TokenValues(model), seqs, positions, tokenizer.pad_token_id, batch_size)
    return _regroup([list(map(float, s)) for s in raw], rollouts)
