"""From records to token ids: chat templates, prompt/completion tokenisation.

A ``prompt`` (and ``completion``, ``chosen``, ``rejected``) is a string or a
list of chat messages. Chat lists go through the tokenizer's chat template;
a chat completion is rendered as the continuation of its prompt's
conversation, as TRL does for conversational prompt-completion data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rlhfctl.errors import ConfigError, ModelError

Text = str | list[dict[str, str]]


def _messages(text: Text, role: str) -> list[dict[str, str]]:
    return text if isinstance(text, list) else [{"role": role, "content": text}]


def _chat(messages: list[dict[str, str]], tokenizer: Any, generation_prompt: bool) -> str:
    """The chat template's text, exactly as ``apply_chat_template(..., tokenize=False)`` renders it."""
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or "the model"
        raise ModelError(f"{name}: its tokenizer has no chat template, so it cannot read chat-format records "
                         "(message lists): give prompts and completions as strings")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def _without_template_bos(text: str, tokenizer: Any) -> str:
    """``text`` for ``tokenizer(text, add_special_tokens=True)``: a template's bos dropped when the tokenizer adds its own.

    `apply_chat_template` tokenizes its text without special tokens; every
    rlhfctl reader tokenizes rendered prompts with them (a string prompt needs
    the tokenizer's bos). Dropping the template's bos where the tokenizer adds
    one makes the two give the same ids, so there is never a double bos.
    """
    bos = getattr(tokenizer, "bos_token", None)
    if bos and text.startswith(bos) and tokenizer("", add_special_tokens=True)["input_ids"][:1] == [tokenizer.bos_token_id]:
        return text[len(bos):]
    return text


def render_prompt(prompt: Text, tokenizer: Any) -> str:
    """The prompt as text, ending where the model's answer begins (tokenize it with special tokens)."""
    if isinstance(prompt, str):
        return prompt
    return _without_template_bos(_chat(prompt, tokenizer, True), tokenizer)


def render_completion(prompt: Text, completion: Text, tokenizer: Any) -> str:
    """The completion as text that follows `render_prompt(prompt)`.

    A chat completion ends as the template ends an assistant turn (its end
    token included), so train-sft adds no eos of its own to it.
    """
    if isinstance(completion, str):
        return completion
    messages = _messages(prompt, "user")
    full = _chat(messages + completion, tokenizer, False)
    head = _chat(messages, tokenizer, True)
    return full[len(head):] if full.startswith(head) else full


def render_conversation(prompt: Text, response: Text, tokenizer: Any) -> str:
    """The text a reward model scores (docs/design.md §7).

    Chat records (either side a message list): the chat template over the
    prompt's messages and the response as the assistant's turn, as
    ``apply_chat_template(conversation, tokenize=False)``. String records:
    ``prompt + response + eos_token``, as TRL's RewardTrainer builds them.
    Tokenize the text with special tokens (`encode_conversations`).
    """
    if isinstance(prompt, list) or isinstance(response, list):
        text = _chat(_messages(prompt, "user") + _messages(response, "assistant"), tokenizer, False)
        return _without_template_bos(text, tokenizer)
    eos = getattr(tokenizer, "eos_token", None) or ""
    return prompt + response + (eos if not response.endswith(eos) else "")


@dataclass(frozen=True)
class Scored:
    """Reward-model inputs: ids ending at the token whose value is the score."""

    seqs: list[list[int]]
    overlong: int  # sequences longer than max_length, cut to it (and so scored mid-text)


def encode_conversations(tokenizer: Any, pairs: list[tuple[Text, Text]], max_length: int, pad_id: int | None) -> Scored:
    """Token ids of `render_conversation` for each (prompt, response), as a reward model reads them.

    Trailing ``pad_id`` tokens are dropped: transformers' sequence classifiers
    read the score at the last token that is not the pad id (with pad == eos,
    the token before a final eos), and a causal model's value there does not
    depend on what follows, so the last kept id is where the score is read.
    Sequences longer than ``max_length`` are cut to it and counted.
    """
    if not pairs:
        return Scored([], 0)
    texts = [render_conversation(p, r, tokenizer) for p, r in pairs]
    seqs, overlong = [], 0
    for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]:
        end = len(ids)
        while end > 1 and ids[end - 1] == pad_id:
            end -= 1
        overlong += end > max_length
        seqs.append(ids[:min(end, max_length)])
    return Scored(seqs, overlong)


def encode_prompt(tokenizer: Any, text: str) -> list[int]:
    """Prompt ids with the tokenizer's own special tokens (a bos, usually)."""
    return tokenizer(text, add_special_tokens=True)["input_ids"]


@dataclass(frozen=True)
class Example:
    """One tokenised prompt + completion."""

    input_ids: list[int]
    prompt_len: int  # the loss covers input_ids[prompt_len:]


def encode_example(tokenizer: Any, prompt: Text, completion: Text, max_length: int) -> Example:
    """Prompt and completion tokenised apart, then joined; a string completion gets an eos.

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
    return [_join(tokenizer, p, c, max_length, isinstance(completion, str))
            for p, c, (_, completion) in zip(prompt_ids, completion_ids, pairs)]


def _join(tokenizer: Any, prompt_ids: list[int], completion_ids: list[int], max_length: int, eos: bool) -> Example:
    if eos and tokenizer.eos_token_id is not None and (not completion_ids or completion_ids[-1] != tokenizer.eos_token_id):
        completion_ids = completion_ids + [tokenizer.eos_token_id]
    ids = (prompt_ids + completion_ids)[:max_length]
    return Example(ids, min(len(prompt_ids), len(ids)))


@dataclass(frozen=True)
class PromptFormat:
    """``--system`` and ``--prompt-template``: how each record's prompt is worded before a model reads it.

    The template's ``{prompt}`` is replaced by a string prompt, or by the
    content of a chat prompt's last user message. The system message goes
    first in the conversation unless the record has one of its own; a string
    prompt given a system message becomes a conversation (system, user), so
    the model needs a chat template. Commands apply the format when they read
    records (`apply`) and write it in each output record's ``generator``
    block, so records that already carry it are not formatted twice
    (docs/design.md §7).
    """

    system: str | None = None
    template: str | None = None

    def __post_init__(self) -> None:
        if self.template is not None and "{prompt}" not in self.template:
            raise ConfigError("--prompt-template must contain {prompt}, where each record's prompt goes")

    def __bool__(self) -> bool:
        return bool(self.system or self.template)

    def as_options(self) -> dict[str, str | None]:
        """The format as a manifest's options: one key per flag."""
        return {"system": self.system, "prompt_template": self.template}

    def public(self) -> dict[str, str]:
        """The format as a record's generator block and a manifest record it (set parts only)."""
        return {k: v for k, v in (("system", self.system), ("prompt_template", self.template)) if v}

    def apply(self, records: list[dict[str, Any]], path: str) -> list[dict[str, Any]]:
        """`records` with their prompts formatted; ConfigError for a record formatted differently before."""
        if not self:
            return records
        out = []
        for line, record in enumerate(records, start=1):
            earlier = _earlier_format(record)
            if earlier == self.public():
                out.append(record)
                continue
            if earlier:
                raise ConfigError(f"{path}:{line}: the prompt was already formatted with {earlier}; "
                                  "give the same --system/--prompt-template, or none")
            out.append({**record, "prompt": self.format(record["prompt"])})
        return out

    def format(self, prompt: Text) -> Text:
        """One prompt, formatted."""
        if self.template:
            if isinstance(prompt, str):
                prompt = self.template.replace("{prompt}", prompt)
            else:
                prompt = _with_last_user(prompt, self.template)
        if self.system:
            messages = _messages(prompt, "user")
            if not any(m.get("role") == "system" for m in messages):
                prompt = [{"role": "system", "content": self.system}, *messages]
        return prompt


def _with_last_user(messages: list[dict[str, str]], template: str) -> list[dict[str, str]]:
    users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
    if not users:
        return messages
    last = users[-1]
    return [*messages[:last], {**messages[last], "content": template.replace("{prompt}", messages[last]["content"])},
            *messages[last + 1:]]


def _earlier_format(record: dict[str, Any]) -> dict[str, str]:
    generator = record.get("generator")
    if not isinstance(generator, dict):
        return {}
    return {k: generator[k] for k in ("system", "prompt_template") if generator.get(k)}


def read_text_option(value: str | None, flag: str) -> str | None:
    """An option's text, or the contents of the file it names as ``@path``."""
    if value is None or not value.startswith("@"):
        return value
    try:
        with open(value[1:], encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(f"{flag} {value}: cannot read {value[1:]}: {e.strerror}") from None
