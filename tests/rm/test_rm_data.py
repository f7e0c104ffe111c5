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
def test_positions_are_the_last_token_of_each_step(tok, sep):
    ids, positions = encode_steps(tok, PROMPT, STEPS, 512, sep)
    assert tok.decode(ids) == "<bos>" + PROMPT + sep.join(STEPS)
    assert len(positions) == len(STEPS)
    for pos, step in zip(positions, STEPS):
        assert tok.decode([ids[pos]]) == step[-1]
    # exactly: the text up to and including each position is the prompt and the steps so far
    for i, pos in enumerate(positions):
        assert tok.decode(ids[: pos + 1]) == "<bos>" + PROMPT + sep.join(STEPS[: i + 1])
    # what follows a position is the separator (or the end)
    for pos in positions[:-1]:
        assert tok.decode(ids[pos + 1: pos + 1 + len(sep)]) == sep
    assert positions[-1] == len(ids) - 1


def test_steps_that_do_not_fit_are_dropped(tok):
    prompt_len = len(tok(PROMPT)["input_ids"])  # with bos
    # room for the first step, its separator and the second step but not the third
    limit = prompt_len + len(STEPS[0]) + 1 + len(STEPS[1])
    ids, positions = encode_steps(tok, PROMPT, STEPS, limit)
    assert len(positions) == 2
    assert len(ids) == limit and positions[-1] == len(ids) - 1  # never past max_length, no dangling separator
    assert tok.decode([ids[positions[1]]]) == STEPS[1][-1]
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
    short = encode_step_items(records[:1], tok, prompt_len + len(STEPS[0]))
    assert short[0].labels == [1.0] and len(short[0].positions) == 1
    assert encode_step_items(records[:1], tok, prompt_len + 1) == []  # not even one step fits: no item


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
    data = PrefData(pairs=[{"prompt": "Compute 2+3.\n", "chosen": "Answer: 5", "rejected": "Answer: 6", "margin": 0.5}],
                    binary=[{"prompt": "Compute 2+3.\n", "completion": "Answer: 7", "label": False}])
    items = encode_items(data, tok, 512)
    assert [it.kind for it in items] == [PAIR, BINARY_ITEM]
    assert [tok.decode(s) for s in items[0].seqs] == ["<bos>Compute 2+3.\nAnswer: 5<eos>", "<bos>Compute 2+3.\nAnswer: 6<eos>"]
    assert items[0].margin == 0.5 and items[1].label is False
    assert tok.decode(items[1].seqs[0]) == "<bos>Compute 2+3.\nAnswer: 7<eos>"
