"""What a new user meets first: --model named, --out - on every command, best-of-n's defaults, plain progress."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from rlhfctl import console

ROLLOUTS = [
    {"id": "a", "prompt": "1+1", "answer": "2", "responses": ["Answer: 2", "Answer: 3", "Answer: 2"], "correct": [True, False, True]},
    {"id": "b", "prompt": "2+2", "answer": "4", "responses": ["Answer: 5", "Answer: 4", "Answer: 4"], "correct": [False, True, True]},
]


def _rollouts(tmp_path: Path) -> Path:
    path = tmp_path / "rollouts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROLLOUTS))
    return path


@pytest.mark.parametrize("command, data", [("train-sft", "sft.jsonl"), ("train-rm", "prefs_style.jsonl"), ("train-policy", "train.jsonl")])
def test_training_commands_need_a_model(run_main, toy_dir, tmp_path, command, data):
    r = run_main(command, toy_dir / data, "--out", tmp_path / "run")
    assert r.code == 2
    assert "--model" in r.err and "Missing option" in r.err
    assert not (tmp_path / "run").exists()


def test_loaded_model_is_the_first_stderr_line_once(run_main, toy_dir, tmp_path):
    r = run_main("train-sft", toy_dir / "sft.jsonl", "--model", "toy:tiny", "--out", tmp_path / "sft", "--max-steps", "1",
                 "--batch-size", "4")
    assert r.code == 0, r.err
    lines = r.err.splitlines()
    assert lines[0].startswith("model: toy:tiny (LlamaForCausalLM, ") and lines[0].endswith(" parameters)")
    assert sum(line.startswith("model: ") for line in lines) == 1
    again = run_main("rollout", toy_dir / "test.jsonl", "--model", tmp_path / "sft", "--out", tmp_path / "r.jsonl", "--n", "1",
                     "--max-new-tokens", "2", "--backend", "hf")
    assert again.code == 0, again.err
    assert again.err.splitlines()[0].startswith(f"model: {tmp_path / 'sft'} (LlamaForCausalLM, ")


def test_human_count():
    from rlhfctl.models import human_count

    assert [human_count(n) for n in (950, 12_300, 912_000, 124_000_000, 1_540_000_000)] == ["950", "12.3K", "0.9M", "124M", "1.5B"]


def _stdout_commands(tmp_path: Path, toy_dir: Path) -> dict[str, list]:
    rollouts = _rollouts(tmp_path)
    return {
        "rollout": ["rollout", toy_dir / "test.jsonl", "--model", "toy:tiny", "--n", "1", "--max-new-tokens", "2", "--backend", "hf"],
        "grade": ["grade", rollouts],
        "build-prefs": ["build-prefs", rollouts],
        "best-of-n": ["best-of-n", rollouts, "--vote", "majority"],
        "eval": ["eval", "--responses", rollouts],
        "label-prm": ["label-prm", rollouts, "--model", "toy:tiny", "--n-completions", "1", "--max-new-tokens", "2",
                      "--backend", "hf"],
    }


@pytest.mark.parametrize("command", ["rollout", "grade", "build-prefs", "best-of-n", "eval", "label-prm"])
def test_out_dash_writes_stdout_and_no_file(run_main, toy_dir, tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    r = run_main(*_stdout_commands(tmp_path, toy_dir)[command], "--out", "-")
    assert r.code == 0, r.err
    assert r.out.strip()
    if command in ("best-of-n", "eval"):
        json.loads(r.out)  # one JSON document
    else:
        assert all(isinstance(json.loads(line), dict) for line in r.out.splitlines())
    assert not any(p.name.startswith("-") for p in tmp_path.iterdir())


def test_best_of_n_out_defaults_beside_its_input_and_says_where_the_curve_stops(run_main, tmp_path):
    rollouts = _rollouts(tmp_path)
    r = run_main("best-of-n", rollouts, "--vote", "majority", "--n", "64")
    assert r.code == 0, r.err
    result = json.loads((tmp_path / "rollouts.bon.json").read_text())
    assert result["n"][-1] == 3
    assert "--n 64, but the prompts have 3 samples each" in r.err and "stops at N = 3" in r.err
    quiet = run_main("best-of-n", rollouts, "--vote", "majority", "--n", "2", "--out", tmp_path / "two.json")
    assert quiet.code == 0 and "stops at" not in quiet.err


class _Pipe(io.StringIO):
    def isatty(self) -> bool:
        return False


def test_progress_prints_plain_lines_when_stderr_is_not_a_terminal(monkeypatch):
    fake = _Pipe()
    monkeypatch.setattr("sys.stderr", fake)
    monkeypatch.setenv(console.INTERVAL_ENV, "0")
    with console.Progress("train-sft", 3, 0, True) as progress:
        for step in range(3):
            progress.advance(f"loss {1.0 / (step + 1):.4f}")
    lines = fake.getvalue().splitlines()
    assert lines[0].startswith("train-sft 1/3") and "eta" in lines[0] and lines[0].endswith("loss 1.0000")
    assert lines[2].startswith("train-sft 3/3") and lines[2].endswith("loss 0.3333")
    assert lines[-1].startswith("train-sft 3/3")  # and one at the end
    assert "\x1b" not in fake.getvalue()


def test_progress_waits_for_its_interval(monkeypatch):
    fake = _Pipe()
    monkeypatch.setattr("sys.stderr", fake)
    monkeypatch.setenv(console.INTERVAL_ENV, "3600")
    with console.Progress("rollout", 5, 0, True) as progress:
        for _ in range(5):
            progress.advance()
    assert fake.getvalue().splitlines() == [fake.getvalue().splitlines()[0]]
    assert fake.getvalue().startswith("rollout 5/5")


def test_training_progress_shows_loss_and_accuracy():
    from rlhfctl.training.loop import progress_info

    assert progress_info({"loss": 0.5, "pair_acc": 0.75, "tokens": 3}) == "loss 0.5000  pair_acc 0.750"


def test_best_of_n_figure_is_titled_by_what_it_measured(run_main, tmp_path, monkeypatch):
    import matplotlib.axes

    titles: list[str] = []
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title", lambda self, text, *a, **k: titles.append(text))
    r = run_main("best-of-n", _rollouts(tmp_path), "--vote", "majority", "--out", tmp_path / "bon.json", "--plot", tmp_path / "bon.png")
    assert r.code == 0, r.err
    assert titles == ["Best-of-N accuracy on 2 prompts of rollouts.jsonl"]


def test_summary_tables_show_nested_values_readably(capsys):
    from rlhfctl.commands._options import print_summary

    print_summary({"train": {"pairs": 3, "dropped": {}}, "rules": ["box", "answer"], "loss": 0.5}, False, "t")
    out = capsys.readouterr().out
    assert "pairs: 3" in out and "dropped: -" in out and "box, answer" in out and "0.5000" in out
    assert "{" not in out


def test_counts_agree_with_their_nouns():
    assert [console.plural(n, "step") for n in (0, 1, 2, 1500)] == ["0 steps", "1 step", "2 steps", "1,500 steps"]


def test_label_prm_openrlhf_side_file_needs_a_file_out(run_main, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = run_main("label-prm", _rollouts(tmp_path), "--model", "toy:tiny", "--format", "openrlhf", "--out", "-")
    assert r.code == 2 and r.err.strip() == "error: --format openrlhf writes OUT.openrlhf.jsonl beside OUT: give --out a file, not -"
    assert r.out == "" and not any(p.name.startswith("-") for p in tmp_path.iterdir())


def test_model_line_is_said_once_and_by_the_main_process_only(capsys, monkeypatch):
    console.forget_logged()
    console.log_once("model: a (X, 1.0M parameters)")
    console.log_once("model: a (X, 1.0M parameters)")
    monkeypatch.setenv("RANK", "1")
    console.log_once("model: b (X, 1.0M parameters)")
    assert capsys.readouterr().err == "model: a (X, 1.0M parameters)\n"
    console.forget_logged()
