"""Tokenising reward-model data: step positions of a PRM, stepwise files, pairs and binary items."""

import pytest

from rlhfctl.errors import DataError
from rlhfctl.records import write_jsonl
from rlhfctl.rm.data import PAIR, BINARY_ITEM, PrefData, encode_items, encode_step_items, encode_steps, read_steps
from rlhfctl.toy.tokenizer import build_toy_tokenizer

PROMPT = "Compute 20+5-3.\n"
STEPS = ["20+5=25", "25-3=22", "Answer: 22"]


@pytest.fixture(scope="module")
def tok():
    return build_toy_tokenizer()


@pytest.mark.parametrize("sep", ["\n", "\n\n"])
def test_positions_are_the_last_separator_token_after_each_step(tok, sep):
    """TRL's PRMTrainer layout: prompt, then each step followed by the separator; a step's score is read there."""
    ids, positions = encode_steps(tok, PROMPT, STEPS, 512, sep)
    assert tok.decode(ids) == "<bos>" + PROMPT + "".join(step + sep for step in STEPS)
    assert len(positions) == len(STEPS)
    # exactly: the text up to and including each position is the prompt and the steps so far, each with its separator
    for i, pos in enumerate(positions):
        assert tok.decode(ids[: pos + 1]) == "<bos>" + PROMPT + "".join(step + sep for step in STEPS[: i + 1])
        assert tok.decode([ids[pos]]) == sep[-1]
    assert positions[-1] == len(ids) - 1


def test_steps_that_do_not_fit_are_dropped(tok):
    prompt_len = len(tok(PROMPT)["input_ids"])  # with bos
    # room for the first two steps with their separators but not the third
    limit = prompt_len + len(STEPS[0]) + 1 + len(STEPS[1]) + 1
    ids, positions = encode_steps(tok, PROMPT, STEPS, limit)
    assert len(positions) == 2
    assert len(ids) == limit and positions[-1] == len(ids) - 1  # never past max_length
    ids, positions = encode_steps(tok, PROMPT, STEPS, limit - 1)
    assert len(positions) == 1 and len(ids) == limit - 1 - len(STEPS[1])
    ids, positions = encode_steps(tok, PROMPT, STEPS, prompt_len + 2)
    assert positions == []


def test_encode_step_items_cuts_labels_with_the_steps(tok):
    prompt_len = len(tok(PROMPT)["input_ids"])
    records = [{"prompt": PROMPT, "completions": STEPS, "labels": [True, 0.25, False]},
               {"prompt": PROMPT, "completions": STEPS, "labels": [1, 0, 0]}]
    items = encode_step_items(records, tok, 512)
    assert [it.labels for it in items] == [[1.0, 0.25, 0.0], [1.0, 0.0, 0.0]]
    short = encode_step_items(records[:1], tok, prompt_len + len(STEPS[0]) + 1)
    assert short[0].labels == [1.0] and len(short[0].positions) == 1
    assert encode_step_items(records[:1], tok, prompt_len + len(STEPS[0])) == []  # not even one step fits: no item


def test_read_steps_label_count_mismatch_names_line_and_field(tmp_path):
    path = tmp_path / "steps.jsonl"
    write_jsonl(path, [{"prompt": PROMPT, "completions": STEPS, "labels": [True, True, True]},
                       {"prompt": PROMPT, "completions": STEPS, "labels": [True, False]}])
    with pytest.raises(DataError) as e:
        read_steps([str(path)])
    assert (e.value.line, e.value.field) == (2, "labels")
    assert str(e.value).startswith(f"{path}:2: field 'labels': has 2 labels for 3 completions")


@pytest.mark.parametrize("record,field", [
    ({"prompt": PROMPT, "completions": STEPS, "labels": [True, 1.5, False]}, "labels"),
    ({"prompt": PROMPT, "completions": [], "labels": []}, "completions"),
    ({"prompt": PROMPT, "labels": [True]}, "completions"),
])
def test_read_steps_bad_fields(tmp_path, record, field):
    path = tmp_path / "steps.jsonl"
    write_jsonl(path, [record])
    with pytest.raises(DataError) as e:
        read_steps([str(path)])
    assert (e.value.line, e.value.field) == (1, field)


def test_encode_items_pairs_then_binary_each_ending_in_eos(tok):
    """String records: prompt + response + eos, as TRL's RewardTrainer builds them (the toy pad is not eos)."""
    data = PrefData(pairs=[{"prompt": "Compute 2+3.\n", "chosen": "Answer: 5", "rejected": "Answer: 6", "margin": 0.5}],
                    binary=[{"prompt": "Compute 2+3.\n", "completion": "Answer: 7", "label": False}])
    items, overlong = encode_items(data, tok, 512)
    assert [it.kind for it in items] == [PAIR, BINARY_ITEM] and overlong == 0
    assert [tok.decode(s) for s in items[0].seqs] == ["<bos>Compute 2+3.\nAnswer: 5<eos>", "<bos>Compute 2+3.\nAnswer: 6<eos>"]
    assert items[0].margin == 0.5 and items[1].label is False
    assert tok.decode(items[1].seqs[0]) == "<bos>Compute 2+3.\nAnswer: 7<eos>"
    cut, overlong = encode_items(data, tok, 10)
    assert overlong == 3 and all(len(s) == 10 for it in cut for s in it.seqs)


def test_chat_records_are_scored_on_the_chat_template_with_no_eos_added(tok):
    """Chat records: exactly apply_chat_template(prompt + response), one bos, no eos after the template's end."""
    prompt = [{"role": "user", "content": "Compute 2+3."}]
    data = PrefData(pairs=[{"prompt": prompt, "chosen": "Answer: 5", "rejected": [{"role": "assistant", "content": "Answer: 6"}]}])
    (item,), _ = encode_items(data, tok, 512)
    for seq, answer in zip(item.seqs, ("Answer: 5", "Answer: 6")):
        conversation = prompt + [{"role": "assistant", "content": answer}]
        assert seq == tok.apply_chat_template(conversation, tokenize=True, return_dict=True)["input_ids"]
        assert tok.decode(seq) == f"<bos>Compute 2+3.\n{answer}<eos>"


def test_trailing_pad_ids_are_dropped_as_transformers_reads_the_score():
    """With pad == eos (a pad-less tokenizer), transformers reads the score before a final eos; so does rlhfctl."""
    from rlhfctl.data import encode_conversations

    tok = build_toy_tokenizer()
    eos = tok.eos_token_id
    seqs = encode_conversations(tok, [("Compute 2+3.\n", "Answer: 5")], 512, pad_id=eos).seqs
    assert tok.decode(seqs[0]) == "<bos>Compute 2+3.\nAnswer: 5"
    assert encode_conversations(tok, [("Compute 2+3.\n", "Answer: 5")], 512, pad_id=tok.pad_token_id).seqs[0][-1] == eos
