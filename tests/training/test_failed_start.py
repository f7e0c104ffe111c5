"""A start that fails leaves --out as it was, so the corrected command runs without --resume.

Each command is started wrong in a way that is only found after the run
folder was checked (a model folder that does not load, prompts that its
tokenizer cannot render), into a new folder or an existing empty one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import read_jsonl, stderr_lines


def _fails(run_main, *args) -> None:
    try:
        r = run_main(*args)
    except Exception:  # not a user error yet (transformers' own): a traceback, but still a failed start
        return
    assert r.code != 0, r.err


def _state(folder: Path):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else None


@pytest.fixture
def bad_model(tmp_path) -> Path:
    """A folder that passes the early spec check (it has config.json) but is no model."""
    folder = tmp_path / "bad-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    return folder


def test_train_sft_that_fails_to_start_leaves_no_folder(toy_dir, bad_model, tmp_path, run_main):
    out = tmp_path / "runs" / "sft"  # neither it nor its parent exists
    args = ["train-sft", toy_dir / "sft.jsonl", "--out", out, "--max-steps", "2", "--batch-size", "8"]
    _fails(run_main, *args, "--model", bad_model)
    assert not (tmp_path / "runs").exists()
    r = run_main(*args, "--model", "toy:tiny")
    assert r.code == 0, r.err
    assert (out / "rlhfctl.json").is_file()


def test_train_rm_that_fails_to_start_leaves_the_empty_folder_empty(toy_dir, bad_model, tmp_path, run_main):
    prefs = tmp_path / "prefs.jsonl"
    rows = read_jsonl(toy_dir / "sft.jsonl")[:8]
    prefs.write_text("".join(json.dumps({"prompt": r["prompt"], "chosen": r["completion"], "rejected": "Answer: 0"}) + "\n"
                             for r in rows))
    out = tmp_path / "rm"
    out.mkdir()
    args = ["train-rm", prefs, "--out", out, "--max-steps", "2", "--batch-size", "4", "--eval-fraction", "0"]
    _fails(run_main, *args, "--model", bad_model)
    assert _state(out) == []
    r = run_main(*args, "--model", "toy:tiny")
    assert r.code == 0, r.err


def test_train_policy_that_fails_in_its_first_step_leaves_the_folder_as_it_was(sft_run, toy_dir, tmp_path, run_main):
    """Chat prompts and a model without a chat template: found when step 1 renders them, after the models loaded."""
    model = tmp_path / "no-template"
    shutil.copytree(sft_run.path, model, ignore=shutil.ignore_patterns("checkpoints", "metrics.jsonl", "run.json"))
    (model / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    prompts = tmp_path / "chat.jsonl"
    prompts.write_text("".join(json.dumps({**r, "prompt": [{"role": "user", "content": r["prompt"]}]}) + "\n"
                               for r in read_jsonl(toy_dir / "train.jsonl")))
    out = tmp_path / "policy"
    out.mkdir()
    args = ["--model", model, "--out", out, "--verifier", "math", "--n", "2", "--prompts-per-step", "2",
            "--max-new-tokens", "4", "--max-steps", "1"]
    _fails(run_main, "train-policy", prompts, *args)
    assert _state(out) == []
    r = run_main("train-policy", toy_dir / "train.jsonl", *args)
    assert r.code == 0, r.err
    assert (out / "rlhfctl.json").is_file()


def test_a_second_run_on_a_folder_being_trained_is_refused(toy_dir, tmp_path, run_main):
    """The run folder is locked while it trains: another run on it (here, this process holding the lock)
    is refused with one line naming the holder, and the folder is left as it was."""
    import os

    from rlhfctl.locks import locked

    out = tmp_path / "run"
    with locked(out, folder=True):
        result = run_main("train-sft", toy_dir / "sft.jsonl", "--model", "toy:tiny", "--out", out, "--max-steps", "1")
        assert result.code == 2, result.err
        assert len(stderr_lines(result.err)) == 1 and f"pid {os.getpid()}" in result.err
        assert sorted(p.name for p in out.iterdir()) == [".lock"]
    assert not out.exists()
    again = run_main("train-sft", toy_dir / "sft.jsonl", "--model", "toy:tiny", "--out", out, "--max-steps", "1")
    assert again.code == 0, again.err
    assert not (out / ".lock").exists()
