"""Reward models as per-token scalar functions, and scoring with them.

An ORM folder is an `AutoModelForSequenceClassification` (``num_labels=1``),
a PRM folder an `AutoModelForTokenClassification` (``num_labels=1``), on any
backbone transformers has them for. `TokenValues` gives a value at every
token, so one reader serves both: an ORM's score is the value at the last
token of `data.encode_conversations`' ids (where transformers' sequence
classifiers read it), a PRM's at the separator after each step
(`rm.data.encode_steps`). docs/design.md §7 says which
text and token, so a folder scores the same in plain transformers.
"""

from __future__ import annotations

from typing import Any

import torch

from rlhfctl.artifacts import read_manifest
from rlhfctl.errors import ModelError
from rlhfctl.models import (
    TOY_PREFIX, ModelSource, announce_model, as_source, check_model_spec, is_toy_spec, load_tokenizer, loading, quiet_transformers,
)
from rlhfctl.toy.sizes import toy_config

ORM, PRM = "orm", "prm"
HEAD_NAMES = ("score", "classifier")  # decoders' classification heads are `score`; encoders' (and GPT-2's token one) `classifier`


def head_names(model: Any) -> tuple[str, ...]:
    """The classification head modules of ``model``, which train in full next to LoRA adapters."""
    found = tuple(name for name in HEAD_NAMES if hasattr(model, name))
    if not found:
        raise ModelError(f"{type(model).__name__} has no classification head (none of {', '.join(HEAD_NAMES)}): "
                         "not supported as a reward model")
    return found


class TokenValues(torch.nn.Module):
    """(B, T) ids -> (B, T) scalar values.

    Three shapes of model, one output: a decoder's classifier runs its
    ``score`` head on every position (so packed rows and any read position
    work); another token classifier returns its per-token logits; any other sequence
    classifier (an encoder's pooled ``classifier``) has one score per row,
    repeated over the row's positions so that readers need not know. A pooled
    model cannot read packed rows, and needs the attention mask.
    """

    def __init__(self, model: Any):
        super().__init__()
        self.model = model
        name = type(model).__name__
        head_names(model)
        # decoders' heads: `score` on every position (their token classifiers' dropout is skipped, so a
        # critic's values are deterministic in training)
        self.per_token_head = hasattr(model, "score") and name.endswith(("ForSequenceClassification", "ForTokenClassification"))
        self.pooled = not self.per_token_head and not name.endswith("ForTokenClassification")

    @property
    def _no_split_modules(self):
        """The decoder-layer classes, for FSDP's transformer auto-wrap (accelerate reads this)."""
        return getattr(self.model, "_no_split_modules", None)

    def forward(self, input_ids, attention_mask, position_ids=None):
        if self.per_token_head:
            hidden = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).last_hidden_state  # (B, T, H)
            return self.model.score(hidden).squeeze(-1)  # (B, T, 1) -> (B, T)
        extra = {} if position_ids is None else {"position_ids": position_ids}
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits
        if self.pooled:
            return logits[:, :1].expand(input_ids.shape)  # (B, 1) -> (B, T)
        return logits.squeeze(-1)  # (B, T, 1) -> (B, T)


def build_reward_model(model: ModelSource | str, kind: str, seed: int = 0):
    """A fresh reward model on the backbone of ``model`` (a policy folder or toy:SIZE).

    The language-model head is dropped and a zero-initialised score head is
    added, so every response starts at reward 0. The config's pad id is set
    to the tokenizer's: transformers reads an ORM's score at the last token
    that is not the config's pad id.
    """
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    source = as_source(model)
    spec = source.spec
    check_model_spec(spec)
    quiet_transformers()
    auto = AutoModelForSequenceClassification if kind == ORM else AutoModelForTokenClassification
    fork = torch.random.fork_rng(devices=[])
    with fork:
        torch.manual_seed(seed)
        if is_toy_spec(spec):
            config = toy_config(spec[len(TOY_PREFIX):])
            config.num_labels = 1  # from_config takes no config overrides as keyword arguments
            model = auto.from_config(config)
        else:
            tokenizer = load_tokenizer(source)
            with loading(spec, "as a reward model backbone"):
                model = auto.from_pretrained(check_model_spec(spec), num_labels=1, dtype=torch.float32,
                                             trust_remote_code=source.trust_remote_code)
            model.config.pad_token_id = tokenizer.pad_token_id
    _zero_last_linear(getattr(model, head_names(model)[0]))
    return announce_model(spec, model)


def _zero_last_linear(head: torch.nn.Module) -> None:
    """Zero the output layer of a head (a Linear, or a head whose last Linear gives the score)."""
    linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        raise ModelError(f"reward head {type(head).__name__} has no linear layer")
    torch.nn.init.zeros_(linears[-1].weight)
    if linears[-1].bias is not None:
        torch.nn.init.zeros_(linears[-1].bias)


def check_reward_folder(folder: str, kind: str) -> dict[str, Any]:
    """The manifest of a reward model folder of the given kind, or a one-line error (no weights loaded)."""
    check_model_spec(folder)
    manifest = read_manifest(folder)
    flag = "--rm" if kind == ORM else "--prm"
    if manifest is None:
        raise ModelError(f"{folder}: no rlhfctl.json, so not a reward model trained by rlhfctl train-rm ({flag} needs one)")
    found = manifest.get("results", {}).get("kind")
    if manifest.get("command") != "train-rm" or found is None:
        raise ModelError(f"{folder}: made by '{manifest.get('command')}', not train-rm: not a reward model ({flag})")
    if found != kind:
        article = {ORM: "an", PRM: "a"}
        raise ModelError(f"{folder}: holds {article[found]} {found.upper()} model, but {flag} needs {article[kind]} {kind.upper()}")
    return manifest


def load_reward_model(model: ModelSource | str, kind: str, device: str = "cpu"):
    """(model, tokenizer, manifest) of a trained rlhfctl reward model folder, on ``device``.

    Refuses a folder without an rlhfctl manifest (its μ/σ are unknown) and a
    folder of the wrong kind (a policy or a PRM given as an ORM).
    """
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    source = as_source(model)
    folder = source.spec
    manifest = check_reward_folder(folder, kind)
    quiet_transformers()
    auto = AutoModelForSequenceClassification if kind == ORM else AutoModelForTokenClassification
    with loading(folder, "as a reward model"):
        loaded = auto.from_pretrained(check_model_spec(folder), dtype=torch.float32, trust_remote_code=source.trust_remote_code)
    return announce_model(folder, loaded).eval().to(device), load_tokenizer(source), manifest


def trained_max_length(manifest: dict[str, Any], default: int = 512) -> int:
    """The ``--max-length`` a reward model was trained with, from its manifest."""
    return int(manifest.get("options", {}).get("max_length") or default)


def right_pad(seqs: list[list[int]], pad_id: int):
    """(B, T) ids and attention mask, right-padded (positions start at 0 in every row)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def last_real_index(attention_mask):
    """(B,) index of the last position whose mask is 1; ``attention_mask`` (B, T).

    A score is read at the last real token, never a pad. Pads are found by
    the attention mask, not by the pad id, because many tokenizers use eos as
    pad and the eos of the response is real. Works with left or right padding.
    """
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.long() * (positions + 1)).argmax(dim=1)


def gather_last(values, attention_mask):
    """``values`` (B, T) read at the last real token of each row -> (B,)."""
    idx = last_real_index(attention_mask)
    return values.gather(1, idx[:, None]).squeeze(1)


SCORE_TOKENS = 8192  # most padded tokens in one scoring forward: the activations of a long batch stay bounded


def by_length(seqs: list[list[int]], pad_id: int, batch_size: int, device, score, max_tokens: int = SCORE_TOKENS) -> list[Any]:
    """``score(ids, mask, indices)`` on right-padded batches of ``seqs`` taken in order of length
    (little padding); its per-row results, back in the order of ``seqs``. A batch holds at most
    ``batch_size`` sequences and, past its first, at most ``max_tokens`` padded tokens."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out: list[Any] = [None] * len(seqs)
    start = 0
    while start < len(order):
        end = start + 1
        while end < len(order) and end - start < batch_size and (end - start + 1) * len(seqs[order[end]]) <= max_tokens:
            end += 1
        chunk = order[start:end]
        ids, mask = right_pad([seqs[i] for i in chunk], pad_id)
        for i, result in zip(chunk, score(ids.to(device), mask.to(device), chunk)):
            out[i] = result
        start = end
    return out


@torch.inference_mode()
def score_sequences(values: TokenValues, seqs: list[list[int]], pad_id: int, batch_size: int = 64) -> list[float]:
    """Last-real-token score of each sequence, batched by length (little padding)."""
    device = next(values.parameters()).device
    return by_length(seqs, pad_id, batch_size, device, lambda ids, mask, _: gather_last(values(ids, mask), mask).float().tolist())


@torch.inference_mode()
def step_scores(values: TokenValues, seqs: list[list[int]], positions: list[list[int]], pad_id: int,
                batch_size: int = 64) -> list[list[float]]:
    """Raw step scores (logits) of each sequence at its step positions (`rm.data.encode_steps`)."""
    def read(ids, mask, chunk):
        v = values(ids, mask).float()
        return [v[row, positions[i]].tolist() for row, i in enumerate(chunk)]

    return by_length(seqs, pad_id, batch_size, next(values.parameters()).device, read)
