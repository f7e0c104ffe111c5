"""From records to token ids: chat templates, prompt/completion tokenisation.

A ``prompt`` (and ``completion``, ``chosen``, ``rejected``) is a string or a
list of chat messages. Chat lists go through the tokenizer's chat template;
a chat completion is rendered as the continuation of its prompt's
conversation, as TRL does for conversational prompt-completion data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Text = str | list[dict[str, str]]


def render_prompt(prompt: Text, tokenizer: Any) -> str:
    """The prompt as text, ending where the model's answer begins."""
    if isinstance(prompt, str):
        return prompt
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)


def render_completion(prompt: Text, completion: Text, tokenizer: Any) -> str:
    """The completion as text that follows `render_prompt(prompt)`."""
    if isinstance(completion, str):
        return completion
    messages = (prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]) + completion
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    head = render_prompt(prompt if isinstance(prompt, list) else messages[:1], tokenizer)
    return full[len(head):] if full.startswith(head) else full


def encode_prompt(tokenizer: Any, text: str) -> list[int]:
    """Prompt ids with the tokenizer's own special tokens (a bos, usually)."""
    return tokenizer(text, add_special_tokens=True)["input_ids"]


@dataclass(frozen=True)
class Example:
    """One tokenised prompt + completion."""

    input_ids: list[int]
    prompt_len: int  # the loss covers input_ids[prompt_len:]


def encode_example(tokenizer: Any, prompt: Text, completion: Text, max_length: int) -> Example:
    """Prompt and completion tokenised apart, then joined, with eos at the end.

    Tokenising apart keeps the prompt/completion boundary exact (a merge
    across it would blur which tokens the loss covers). Sequences longer than
    ``max_length`` are cut from the end of the completion.
    """
    return encode_examples(tokenizer, [(prompt, completion)], max_length)[0]


def encode_examples(tokenizer: Any, pairs: list[tuple[Text, Text]], max_length: int) -> list[Example]:
    """`encode_example` for many (prompt, completion) pairs: one batched tokenizer call per side."""
    if not pairs:
        return []
    prompts = [render_prompt(p, tokenizer) for p, _ in pairs]
    completions = [render_completion(p, c, tokenizer) for p, c in pairs]
    prompt_ids = tokenizer(prompts, add_special_tokens=True)["input_ids"]
    completion_ids = tokenizer(completions, add_special_tokens=False)["input_ids"]
    return [_join(tokenizer, p, c, max_length) for p, c in zip(prompt_ids, completion_ids)]


def _join(tokenizer: Any, prompt_ids: list[int], completion_ids: list[int], max_length: int) -> Example:
    if tokenizer.eos_token_id is not None and (not completion_ids or completion_ids[-1] != tokenizer.eos_token_id):
        completion_ids = completion_ids + [tokenizer.eos_token_id]
    ids = (prompt_ids + completion_ids)[:max_length]
    return Example(ids, min(len(prompt_ids), len(ids)))
