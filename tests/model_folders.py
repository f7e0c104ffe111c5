"""Real-shaped model folders, built from configs with tokenizers trained here (nothing downloaded).

Each mimics a family users bring, down to the details that break toolkits:

- ``qwen2``: Qwen2 architecture, byte-level BPE, ChatML template, eos ``<|im_end|>``
  and pad ``<|endoftext|>`` (distinct), tied embeddings, bfloat16 weights and
  config, sampling defaults and two eos ids in ``generation_config.json``.
- ``llama3``: Llama architecture, byte-level BPE with a bos post-processor, the
  Llama 3 chat template, no pad token, untied, eos ``<|eot_id|>`` and three eos
  ids in ``generation_config.json``.
- ``gpt2``: GPT-2 (Conv1D layers, learned positions, tied), no chat template, no pad.
- ``bert``: a BERT encoder with a sequence-classification head named ``classifier``
  (WordPiece, ``[CLS]``/``[SEP]``), the usual cheap reward-model base.
"""

from __future__ import annotations

import random
from pathlib import Path

QWEN_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

LLAMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

FAMILIES = ("qwen2", "llama3", "gpt2")


def _corpus(n: int = 400) -> list[str]:
    """English-ish text with the toy task's shapes (digits, operators, 'Answer:')."""
    rng = random.Random(0)
    words = "the a model answer question step compute sum so is of and then we add subtract result final".split()
    lines = []
    for _ in range(n):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        lines.append(f"Compute {a}+{b}. {' '.join(rng.choices(words, k=6))}. {a}+{b}={a + b}. Answer: {a + b}")
    return lines


def _byte_bpe(specials: list[str], vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(_corpus(), trainer=trainer)
    return core


def _save_lm(model, tokenizer, folder: Path, generation: dict, dtype=None) -> Path:
    import torch
    from transformers import GenerationConfig

    if dtype is not None:
        model = model.to(dtype)
    model.generation_config = GenerationConfig(**generation)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del torch
    return folder


def build_qwen2(folder: Path) -> Path:
    import torch
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    core = _byte_bpe(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        chat_template=QWEN_TEMPLATE, model_max_length=512)
    ids = tokenizer.convert_tokens_to_ids
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>"),
                         pad_token_id=None)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    generation = dict(bos_token_id=ids("<|endoftext|>"), eos_token_id=[ids("<|im_end|>"), ids("<|endoftext|>")],
                      pad_token_id=ids("<|endoftext|>"), do_sample=True, temperature=0.7, top_p=0.8, top_k=20,
                      repetition_penalty=1.05)
    return _save_lm(model, tokenizer, folder, generation, dtype=torch.bfloat16)


def build_llama3(folder: Path) -> Path:
    import torch
    from tokenizers import processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>"]
    core = _byte_bpe(specials)
    bos = core.token_to_id("<|begin_of_text|>")
    core.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B",
                                                        special_tokens=[("<|begin_of_text|>", bos)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                        chat_template=LLAMA3_TEMPLATE, model_max_length=512)
    ids = tokenizer.convert_tokens_to_ids
    eos = [ids("<|end_of_text|>"), ids("<|eom_id|>"), ids("<|eot_id|>")]
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=False, bos_token_id=bos, eos_token_id=eos)
    torch.manual_seed(1)
    model = LlamaForCausalLM(config)
    generation = dict(bos_token_id=bos, eos_token_id=eos, do_sample=True, temperature=0.6, top_p=0.9)
    return _save_lm(model, tokenizer, folder, generation)


def build_gpt2(folder: Path) -> Path:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    core = _byte_bpe(["<|endoftext|>"])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                        unk_token="<|endoftext|>", model_max_length=256)
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4, n_positions=256,
                        bos_token_id=eos, eos_token_id=eos, tie_word_embeddings=True)
    torch.manual_seed(2)
    model = GPT2LMHeadModel(config)
    return _save_lm(model, tokenizer, folder, dict(bos_token_id=eos, eos_token_id=eos))


def build_bert(folder: Path) -> Path:
    """A BERT sequence classifier (one label) with a WordPiece tokenizer."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    core = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    core.normalizer = normalizers.BertNormalizer(lowercase=True)
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    core.decoder = decoders.WordPiece()
    core.train_from_iterator(_corpus(), trainer=trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials,
                                                                          show_progress=False))
    cls, sep = core.token_to_id("[CLS]"), core.token_to_id("[SEP]")
    core.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]",
                                        unk_token="[UNK]", mask_token="[MASK]", model_max_length=512)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, max_position_embeddings=512, num_labels=1,
                        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(3)
    model = BertForSequenceClassification(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


BUILDERS = {"qwen2": build_qwen2, "llama3": build_llama3, "gpt2": build_gpt2, "bert": build_bert}


def build(family: str, folder: Path) -> Path:
    from transformers.utils import logging

    logging.disable_progress_bar()
    folder.mkdir(parents=True, exist_ok=True)
    return BUILDERS[family](folder)
