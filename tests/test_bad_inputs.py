"""Bad inputs end in one line on stderr and exit status 2, and leave --out as it was.

Each case here once ended in a traceback: a damaged model folder, an --out of
the wrong kind, records and caches that do not parse, flags out of range.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import stderr_lines


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Toy data: sft.jsonl, train.jsonl, test.jsonl (prompts) and prefs_style.jsonl (pairs)."""
    from rlhfctl.toy.data import ToyDataConfig, run
    from rlhfctl.toy.task import ToyTaskConfig

    out = tmp_path_factory.mktemp("data")
    run(ToyDataConfig(out_dir=str(out), task=ToyTaskConfig(), n_sft=8, n_train=4, n_test=4, n_style=8))
    return out


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    """A toy:tiny model saved as a Hugging Face folder."""
    from rlhfctl.models import load_causal_lm, load_tokenizer, save_model

    folder = tmp_path_factory.mktemp("model") / "good"
    save_model(load_causal_lm("toy:tiny"), load_tokenizer("toy:tiny"), folder)
    return folder


def assert_one_line(result, *names: object) -> str:
    """Exit status 2 and exactly one stderr line, naming each of ``names``."""
    lines = stderr_lines(result.err)
    assert result.code == 2, result.err
    assert len(lines) == 1 and lines[0].startswith("error: "), result.err
    for name in names:
        assert str(name) in lines[0], lines[0]
    return lines[0]


def _truncate_weights(folder: Path) -> None:
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _break_config(folder: Path) -> None:
    (folder / "config.json").write_text('{"model_type": ')


# command -> its arguments, given the data folder, the model folder and --out
MODEL_COMMANDS = {
    "train-sft": lambda d, m, o: ["train-sft", d / "sft.jsonl", "--model", m, "--out", o, "--max-steps", "1"],
    "rollout": lambda d, m, o: ["rollout", d / "test.jsonl", "--model", m, "--out", o, "--max-new-tokens", "4"],
    "train-rm": lambda d, m, o: ["train-rm", d / "prefs_style.jsonl", "--model", m, "--out", o, "--max-steps", "1"],
    "eval": lambda d, m, o: ["eval", "--data", d / "test.jsonl", "--model", m, "--out", o, "--max-new-tokens", "4"],
}


@pytest.mark.parametrize("damage", [_truncate_weights, _break_config], ids=["truncated-weights", "broken-config"])
@pytest.mark.parametrize("command", list(MODEL_COMMANDS))
def test_damaged_model_folder(run_main, data, model_folder, tmp_path, command, damage):
    folder = tmp_path / "damaged"
    shutil.copytree(model_folder, folder)
    damage(folder)
    out = tmp_path / "out"
    assert_one_line(run_main(*MODEL_COMMANDS[command](data, folder, out)), folder)
    assert not out.exists()


TRAIN_COMMANDS = {
    "train-sft": lambda d, o: ["train-sft", d / "sft.jsonl", "--model", "toy:tiny", "--out", o],
    "train-rm": lambda d, o: ["train-rm", d / "prefs_style.jsonl", "--model", "toy:tiny", "--out", o],
    "train-policy": lambda d, o: ["train-policy", d / "train.jsonl", "--model", "toy:tiny", "--verifier", "math", "--out", o],
}
SHARED_FLAGS = [("--lr", "nan"), ("--lr", "-1"), ("--lr", "inf")]
POLICY_FLAGS = [("--kl-coef", "-1"), ("--kl-coef", "nan"), ("--clip-eps", "nan"), ("--critic-lr", "-1"),
                ("--gamma", "nan"), ("--top-p", "2")]
FLAG_CASES = ([(c, f, v) for c in TRAIN_COMMANDS for f, v in SHARED_FLAGS]
              + [(c, "--weight-decay", "nan") for c in ("train-sft", "train-rm")]
              + [("train-policy", f, v) for f, v in POLICY_FLAGS])


@pytest.mark.parametrize("command, flag, value", FLAG_CASES)
def test_float_flag_out_of_range(run_main, data, tmp_path, command, flag, value):
    out = tmp_path / "out"
    assert_one_line(run_main(*TRAIN_COMMANDS[command](data, out), flag, value), flag)
    assert not out.exists()


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("command", ["rollout", "eval"])
def test_non_json_number_in_prompts(run_main, tmp_path, command, token):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "1+1", "answer": "2"}\n{"prompt": "2+2", "answer": %s}\n' % token)
    out = tmp_path / "out.json"
    args = {"rollout": ["rollout", prompts], "eval": ["eval", "--data", prompts]}[command]
    line = assert_one_line(run_main(*args, "--model", "toy:tiny", "--out", out, "--max-new-tokens", "2"), f"{prompts}:2")
    assert token.lstrip("-") in line
    assert not out.exists()


def test_records_are_written_without_nan():
    from rlhfctl.records import dumps

    with pytest.raises(ValueError):
        dumps({"id": "a", "score": float("nan")})


def _rollouts(path: Path, second_correct: str = "[true, false]") -> Path:
    path.write_text(
        '{"id": "a", "prompt": "1+1", "answer": "2", "responses": ["Answer: 2", "Answer: 3"], "correct": [true, false]}\n'
        '{"id": "b", "prompt": "2+2", "answer": "4", "responses": ["Answer: 4", "Answer: 5"], "correct": %s}\n'
        % second_correct)
    return path


def test_best_of_n_fewer_grades_than_responses(run_main, tmp_path):
    rollouts = _rollouts(tmp_path / "rollouts.jsonl", "[true]")
    out = tmp_path / "bon.json"
    line = assert_one_line(run_main("best-of-n", rollouts, "--out", out), f"{rollouts}:2")
    assert "field 'correct'" in line
    assert not out.exists()


@pytest.mark.parametrize("cache", ['{"responses": ', "[1, 2]", "\xff\xfe"], ids=["invalid-json", "not-a-cache", "not-utf8"])
def test_best_of_n_damaged_score_cache(run_main, tmp_path, cache):
    rollouts = _rollouts(tmp_path / "rollouts.jsonl")
    out = tmp_path / "bon.json"
    scores = tmp_path / "bon.json.scores.json"
    scores.write_bytes(cache.encode("latin-1"))
    line = assert_one_line(run_main("best-of-n", rollouts, "--out", out, "--vote", "majority"), scores)
    assert "delete it" in line
    assert not out.exists() and scores.read_bytes() == cache.encode("latin-1")


@pytest.mark.parametrize("command, yaml, flag", [
    ("train-sft", "max-steps: abc\n", "--max-steps"),
    ("train-sft", "lr: [1, 2]\n", "--lr"),
    ("rollout", "n: many\n", "--n"),
])
def test_config_value_of_the_wrong_type(run_main, data, tmp_path, command, yaml, flag):
    config = tmp_path / "run.yaml"
    config.write_text(yaml)
    out = tmp_path / "out"
    inputs = {"train-sft": data / "sft.jsonl", "rollout": data / "test.jsonl"}[command]
    assert_one_line(run_main(command, inputs, "--model", "toy:tiny", "--out", out, "--config", config), config, flag)
    assert not out.exists()


# command -> its arguments, given the data folder, a rollouts file and --out (a file)
FILE_OUT_COMMANDS = {
    "rollout": lambda d, r, o: ["rollout", d / "test.jsonl", "--model", "toy:tiny", "--out", o, "--max-new-tokens", "2"],
    "best-of-n": lambda d, r, o: ["best-of-n", r, "--out", o],
    "build-prefs": lambda d, r, o: ["build-prefs", r, "--out", o],
    "eval": lambda d, r, o: ["eval", "--data", d / "test.jsonl", "--model", "toy:tiny", "--out", o, "--max-new-tokens", "2"],
}
RUN_OUT_COMMANDS = TRAIN_COMMANDS


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"" for p in folder.rglob("*")}


@pytest.mark.parametrize("command", list(FILE_OUT_COMMANDS))
def test_out_file_is_a_folder(run_main, data, tmp_path, command):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert_one_line(run_main(*FILE_OUT_COMMANDS[command](data, _rollouts(tmp_path / "r.jsonl"), out)), out)
    assert _tree(out) == {"keep.txt": b"mine"}


@pytest.mark.parametrize("command", list(RUN_OUT_COMMANDS))
def test_out_folder_is_a_file(run_main, data, tmp_path, command):
    out = tmp_path / "out"
    out.write_text("mine")
    assert_one_line(run_main(*RUN_OUT_COMMANDS[command](data, out)), out)
    assert out.read_text() == "mine"


@pytest.mark.parametrize("command", list(FILE_OUT_COMMANDS) + list(RUN_OUT_COMMANDS))
def test_out_under_a_read_only_folder(run_main, data, tmp_path, monkeypatch, command):
    import os

    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    # root ignores permission bits, so a read-only folder is what os.access says of it
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: Path(p) != locked and real_access(p, mode, **kw))
    out = locked / "out"
    args = (FILE_OUT_COMMANDS[command](data, _rollouts(tmp_path / "r.jsonl"), out) if command in FILE_OUT_COMMANDS
            else RUN_OUT_COMMANDS[command](data, out))
    line = assert_one_line(run_main(*args), out)
    assert "writ" in line
    assert list(locked.iterdir()) == []


def _pairs(path: Path, identical: int, distinct: int) -> Path:
    lines = [{"prompt": f"q{i}", "chosen": "same", "rejected": "same"} for i in range(identical)]
    lines += [{"prompt": f"p{i}", "chosen": f"Answer: {i}", "rejected": f"Answer: {i + 7}"} for i in range(distinct)]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


def test_train_rm_on_identical_pairs_only(run_main, tmp_path):
    pairs = _pairs(tmp_path / "pairs.jsonl", identical=4, distinct=0)
    out = tmp_path / "rm"
    line = assert_one_line(run_main("train-rm", pairs, "--model", "toy:tiny", "--out", out, "--max-steps", "1"), pairs)
    assert "chosen equal to rejected" in line
    assert not out.exists()


def test_eval_rm_drops_identical_pairs(run_main, tmp_path):
    rm = tmp_path / "rm"
    train = _pairs(tmp_path / "train.jsonl", identical=0, distinct=8)
    trained = run_main("train-rm", train, "--model", "toy:tiny", "--out", rm, "--max-steps", "1", "--batch-size", "4",
                       "--eval-fraction", "0")
    assert trained.code == 0, trained.err
    mixed = _pairs(tmp_path / "mixed.jsonl", identical=2, distinct=3)
    result = run_main("eval", "--rm", rm, "--data", mixed, "--json")
    assert result.code == 0, result.err
    summary = json.loads(result.out)
    assert summary["dropped"] == {"chosen equals rejected": 2}
    assert summary["num_pairs"] == 3
    same = _pairs(tmp_path / "same.jsonl", identical=3, distinct=0)
    out = tmp_path / "eval.json"
    assert_one_line(run_main("eval", "--rm", rm, "--data", same, "--out", out), same)
    assert not out.exists()
