"""The Hugging Face backend: batched sampling with a KV cache, left padding.

A hand-written decode loop rather than `model.generate`: it skips the
logits-processor machinery and drops finished rows from the KV cache, which
is where a small model on a CPU spends its time (benchmarks/rollout_speed.py
measures it against a plain `generate` loop).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from rlhfctl.data import Text, render_prompt
from rlhfctl.generation.base import Sample, SamplingParams, decoded_sample, derive_seed


class HFGenerator:
    name = "hf"

    def __init__(self, model: Any, tokenizer: Any, eos_ids: frozenset[int] | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        # a row stops at any of these (`models.eos_token_ids`: the tokenizer's and generation_config's)
        self.eos_ids = eos_ids or frozenset({tokenizer.eos_token_id})

    def render(self, prompt: Text) -> str:
        """A record's prompt as the text `generate` takes (`data.render_prompt`)."""
        return render_prompt(prompt, self.tokenizer)

    def generate(self, prompts: list[str], params: SamplingParams, keys: list[str] | None = None) -> list[list[Sample]]:
        keys = keys if keys is not None else [str(i) for i in range(len(prompts))]
        self.model.eval()  # in train-policy the module is the policy, which the update left in train mode
        ids = [self.tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts]
        seeds = row_seeds(params.seed, keys, params.n)
        per_batch = max(1, params.batch_size // params.n)
        out: list[list[Sample]] = []
        for start in range(0, len(prompts), per_batch):
            chunk = range(start, min(start + per_batch, len(prompts)))
            rows = [ids[i] for i in chunk for _ in range(params.n)]  # (P, n) -> P*n rows
            samples = self.generate_ids(rows, params, seeds[start * params.n:chunk.stop * params.n])
            out.extend(samples[j * params.n:(j + 1) * params.n] for j in range(len(chunk)))
        return out

    def generate_ids(self, rows: list[list[int]], params: SamplingParams, seeds: list[int]) -> list[Sample]:
        """One batch: sample a continuation for each row of prompt ids, row i from its own ``seeds[i]``."""
        generator = RowStreams(seeds, params.max_new_tokens, self.device)
        tokens = _decode_loop(self.model, rows, params, self.tokenizer.pad_token_id, self.eos_ids, generator, self.device)
        return [decoded_sample(self.tokenizer, t, reason) for t, reason in tokens]

    # train-policy's hooks (`base.PolicyEngine`): the generator *is* the policy module, so
    # its weights are always current and there is no separate memory to release.
    def update_weights(self, model: Any) -> None:
        pass

    def sleep(self) -> None:
        pass

    def wake_up(self) -> None:
        pass


def _decode_loop(model, rows, params: SamplingParams, pad_id: int, eos_ids: frozenset[int], generator, device) -> list[tuple[list[int], str]]:
    import torch

    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):  # left padding
        input_ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    alive = torch.arange(len(rows), device=device)  # original row index of each cache row
    generated: list[list[int]] = [[] for _ in rows]
    finished = [False] * len(rows)
    cache, cache_kwarg = None, cache_keyword(model)
    with torch.inference_mode():
        for _ in range(params.max_new_tokens):
            out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True, **{cache_kwarg: cache})
            cache = getattr(out, cache_kwarg)
            next_tok = sample_next(out.logits[:, -1, :].float(), params.temperature, params.top_p, generator, alive)
            done_now = []
            for j, tok in enumerate(next_tok.tolist()):
                row = int(alive[j])
                generated[row].append(tok)
                if tok in eos_ids:
                    finished[row] = True
                    done_now.append(j)
            if len(done_now) == len(alive):
                break
            keep = _rows_to_keep(len(alive), done_now, device)
            if keep is not None:  # drop finished rows from the cache
                cache.batch_select_indices(keep)
                alive, next_tok, mask, positions = alive[keep], next_tok[keep], mask[keep], positions[keep]
            input_ids = next_tok[:, None]
            mask = torch.cat([mask, mask.new_ones((len(alive), 1))], dim=1)
            positions = positions[:, -1:] + 1
    return [(g, "stop" if f else "length") for g, f in zip(generated, finished)]


def cache_keyword(model) -> str:
    """The forward keyword (and output field) of the KV cache: ``past_key_values`` in earlier
    transformers 5 releases (5.17 among them), ``cache`` after the rename (5.24). A wrong
    name is swallowed by ``**kwargs`` and every step then sees one token without its past,
    so look it up."""
    import dataclasses
    import inspect

    from transformers.modeling_outputs import CausalLMOutputWithPast

    for module in (model, getattr(model, "module", None), getattr(model, "base_model", None)):
        if module is None:
            continue
        names = inspect.signature(module.forward).parameters
        for name in ("cache", "past_key_values"):
            if name in names:
                return name
    fields = {f.name for f in dataclasses.fields(CausalLMOutputWithPast)}
    return "cache" if "cache" in fields else "past_key_values"


def _rows_to_keep(n_alive: int, done_now: list[int], device):
    import torch

    if not done_now:
        return None
    done = set(done_now)
    return torch.tensor([j for j in range(n_alive) if j not in done], dtype=torch.long, device=device)


def sample_next(logits, temperature: float, top_p: float, generator, rows=None):
    """Next token ids (B,) from last-position logits (B, V).

    Greedy at temperature 0; otherwise softmax(logits / T) restricted to the
    smallest set of tokens whose probability reaches ``top_p`` (nucleus
    sampling, Holtzman et al. 2019). ``generator`` is one torch.Generator for
    the whole batch, or `RowStreams` with ``rows`` (B,) the row each logit
    row belongs to.
    """
    import torch

    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        outside = sorted_p.cumsum(-1) - sorted_p >= top_p  # mass before this token already reaches top_p
        sorted_p = sorted_p.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    if isinstance(generator, RowStreams):
        return generator.draw(probs, rows)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def row_seeds(seed: int, keys: list[str], n: int) -> list[int]:
    """One seed per sample, prompt-major ((P, n) -> P*n): from ``seed``, the prompt's key and the sample's index.

    Nothing else goes in, so a prompt samples the same responses whatever
    batch it lands in: a resumed rollout equals an unbroken one. A key given
    twice samples afresh the second time.
    """
    seen: Counter[str] = Counter()
    out = []
    for key in keys:
        parts = (key,) if not seen[key] else (key, seen[key])
        seen[key] += 1
        out.extend(derive_seed(seed, *parts, j) for j in range(n))
    return out


class RowStreams:
    """A random stream per row of a batch: row i draws its t-th token from its own t-th uniform.

    One torch.Generator would hand out numbers in batch order, so a row's
    samples would depend on which rows share its batch. The uniforms are drawn
    up front on the CPU (the same on every device) and turned into tokens by
    inverting the cumulative distribution.
    """

    def __init__(self, seeds: list[int], max_new_tokens: int, device):
        import torch

        self.uniforms = torch.stack([torch.rand(max_new_tokens, generator=torch.Generator().manual_seed(s))
                                     for s in seeds]).to(device)  # (rows, max_new_tokens)
        self.drawn = torch.zeros(len(seeds), dtype=torch.long, device=device)  # uniforms each row has used

    def draw(self, probs, rows):
        """One token per row from probs (B, V) (not necessarily normalised); ``rows`` (B,) are row indices."""
        import torch

        u = self.uniforms[rows, self.drawn[rows]]
        self.drawn[rows] += 1
        cdf = probs.cumsum(-1)
        tokens = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).squeeze(-1)
        # u * total can round up to the total itself: fall back to the last token with any mass
        last = probs.shape[-1] - 1 - (probs > 0).flip(-1).int().argmax(-1)
        return torch.minimum(tokens, last)
