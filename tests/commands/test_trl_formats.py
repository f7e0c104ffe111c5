"""TRL's dataset formats, read as they are: train-sft's text and messages, train-rm's implicit prompts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhfctl.errors import DataError
from rlhfctl.records import SFT, read_records
from rlhfctl.rm.data import read_preferences

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3+3?"}, {"role": "assistant", "content": "6"}]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_sft_reads_text_and_messages_as_prompt_completion(tmp_path):
    rows = read_records(_jsonl(tmp_path / "d.jsonl", [{"text": "Compute 1+1. Answer: 2"}, {"messages": CHAT},
                                                      {"prompt": "p", "completion": "c"}]), SFT)
    assert (rows[0]["prompt"], rows[0]["completion"]) == ("", "Compute 1+1. Answer: 2")
    assert rows[1]["prompt"] == CHAT[:4] and rows[1]["completion"] == CHAT[4:]
    assert (rows[2]["prompt"], rows[2]["completion"]) == ("p", "c")


@pytest.mark.parametrize("row, problem", [
    ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant message"),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, "no message before the assistant's"),
    ({"messages": "hi"}, "expected a list of chat messages"),
    ({"text": 3}, "expected a string"),
])
def test_sft_refuses_unusable_trl_rows(tmp_path, row, problem):
    with pytest.raises(DataError, match=problem):
        read_records(_jsonl(tmp_path / "d.jsonl", [row]), SFT)


def test_text_records_train_on_every_token(toy_dir, tmp_path, run_main):
    from rlhfctl.data import encode_examples
    from rlhfctl.models import load_tokenizer

    texts = [json.loads(line)["prompt"] + json.loads(line)["completion"] for line in (toy_dir / "sft.jsonl").read_text().splitlines()[:16]]
    [example] = encode_examples(load_tokenizer("toy:tiny"), [("", texts[0])], 512)
    assert example.prompt_len <= 1 and len(example.input_ids) > 10  # at most a bos carries no loss
    data = _jsonl(tmp_path / "lm.jsonl", [{"text": t} for t in texts])
    r = run_main("train-sft", data, "--model", "toy:tiny", "--out", tmp_path / "lm", "--max-steps", "1", "--batch-size", "4", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["steps"] == 1


def test_rm_reads_implicit_prompt_pairs(tmp_path):
    rows = [{"chosen": "Compute 2+2. Answer: 4", "rejected": "Compute 2+2. Answer: 5"},
            {"chosen": CHAT[1:3], "rejected": [CHAT[1], {"role": "assistant", "content": "5"}]},
            {"prompt": "1+1", "completion": "2", "label": True}]
    data = read_preferences([str(_jsonl(tmp_path / "p.jsonl", rows))])
    first, second = data.pairs
    assert (first["prompt"], first["chosen"], first["rejected"]) == ("Compute 2+2. Answer:", " 4", " 5")
    assert second["prompt"] == [CHAT[1]] and second["chosen"] == [CHAT[2]]
    assert data.binary == [{"prompt": "1+1", "completion": "2", "label": True, "id": data.binary[0]["id"]}]


def test_rm_refuses_implicit_pairs_that_share_nothing(tmp_path):
    with pytest.raises(DataError, match="share no prompt text"):
        read_preferences([str(_jsonl(tmp_path / "p.jsonl", [{"chosen": "yes", "rejected": "no"}]))])


def test_train_rm_on_trl_implicit_pairs_unpaired_and_stepwise(tmp_path, run_main):
    pairs = [{"chosen": f"Compute {i}+1. Answer: {i + 1}", "rejected": f"Compute {i}+1. Answer: {i + 2}"} for i in range(8)]
    unpaired = [{"prompt": f"Compute {i}+2.", "completion": f" Answer: {i + 2}", "label": i % 2 == 0} for i in range(8)]
    orm = run_main("train-rm", _jsonl(tmp_path / "prefs.jsonl", pairs + unpaired), "--model", "toy:tiny", "--out", tmp_path / "rm",
                   "--max-steps", "1", "--batch-size", "8", "--eval-fraction", "0.25", "--json")
    assert orm.code == 0, orm.err
    results = json.loads(orm.out)
    assert results["num_pairs"] > 0 and results["num_binary"] > 0
    steps = [{"prompt": f"Compute {i}+3.", "completions": [" x=1", f" Answer: {i + 3}"], "labels": [True, i % 2 == 0]}
             for i in range(8)]
    prm = run_main("train-rm", "--prm", _jsonl(tmp_path / "steps.jsonl", steps), "--model", "toy:tiny", "--out", tmp_path / "prm",
                   "--max-steps", "1", "--batch-size", "4", "--eval-fraction", "0.25", "--json")
    assert prm.code == 0, prm.err
    assert "step_accuracy" in json.loads(prm.out)
