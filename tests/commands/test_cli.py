import json
import shlex
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from conftest import read_jsonl
from rlhfctl import __version__
from rlhfctl.cli import app

COMMANDS = [c.name for c in app.registered_commands]
CLICK = typer.main.get_command(app)


def _examples(name: str) -> list[str]:
    doc = next(c for c in app.registered_commands if c.name == name).callback.__doc__
    assert "Examples:" in doc
    block = doc.split("Examples:", 1)[1]
    return [line.strip() for line in block.splitlines() if line.strip()]


def test_every_command_is_registered():
    assert set(COMMANDS) >= {"toy-data", "train-sft", "rollout", "eval"}
    assert set(CLICK.commands) == set(COMMANDS)


@pytest.mark.parametrize("name", COMMANDS)
def test_command_has_help_with_examples(name):
    result = CliRunner().invoke(app, [name, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "Examples:" in result.output
    first_line = next(c for c in app.registered_commands if c.name == name).callback.__doc__.strip().splitlines()[0]
    assert first_line.endswith(".") and len(first_line) < 100
    assert result.output.count(f"rlhfctl {name} ") >= 1


@pytest.mark.parametrize("name", COMMANDS)
def test_examples_parse_as_written(name):
    """Every example line is a valid invocation of its command (flags exist, values convert)."""
    examples = _examples(name)
    assert examples
    for line in examples:
        argv = shlex.split(line)
        assert argv[:2] == ["rlhfctl", name], line
        ctx = CLICK.commands[name].make_context(name, argv[2:])  # raises on an unknown flag or a bad value
        assert ctx.params


def test_top_level_help_and_version():
    runner = CliRunner()
    result = runner.invoke(app, ["--help"], terminal_width=200)
    assert result.exit_code == 0
    for name in COMMANDS:
        assert name in result.output
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"rlhfctl {__version__}"


def test_help_does_not_import_torch(cli_env):
    code = (
        "import sys\n"
        "import rlhfctl.cli\n"
        "assert 'torch' not in sys.modules, 'import rlhfctl.cli imported torch'\n"
        f"for args in [['--help'], *[[name, '--help'] for name in {COMMANDS!r}]]:\n"
        "    sys.argv = ['rlhfctl', *args]\n"
        "    try:\n"
        "        rlhfctl.cli.main()\n"
        "    except SystemExit as e:\n"
        "        assert e.code in (0, None), (args, e.code)\n"
        "    heavy = sorted(m for m in ('torch', 'transformers', 'accelerate') if m in sys.modules)\n"
        "    assert not heavy, (args, heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=cli_env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


# --- bad input through the real CLI -------------------------------------------------------------------------

BAD_PROMPTS = {
    "malformed-json": ('{"prompt": "a", "answer": "1"}\n{"prompt": "b", "answer": "2"\n', r":2: invalid JSON"),
    "no-prompt": ('{"prompt": "a", "answer": "1"}\n{"answer": "2"}\n', r":2: field 'prompt': missing"),
    "wrong-type": ('{"prompt": "a", "answer": "1"}\n{"prompt": ["x"], "answer": "2"}\n', r":2: field 'prompt': "),
    "wrong-type-answer": ('{"prompt": "a", "answer": "1"}\n\n{"prompt": "b", "answer": {"x": 1}}\n', r":3: field 'answer': "),
    "duplicate-id": ('{"id": "q", "prompt": "a", "answer": "1"}\n{"id": "q", "prompt": "b", "answer": "1"}\n', r":2: field 'id': "),
    "empty": ("", r": no records"),
    "missing-path": (None, r": no such file"),
}

BAD_SFT = {
    "malformed-json": ('{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": }\n', r":2: invalid JSON"),
    "no-completion": ('{"prompt": "a", "completion": "b"}\n{"prompt": "a"}\n', r":2: field 'completion': missing"),
    "wrong-type": ('{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": 7}\n', r":2: field 'completion': "),
    "empty": ("\n", r": no records"),
    "missing-path": (None, r": no such file"),
}


def _data_file(tmp_path, text):
    path = tmp_path / "data.jsonl"
    if text is not None:
        path.write_text(text)
    return path


def _assert_one_line_error(code, err, pattern):
    import re

    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and re.search(pattern, lines[0]), lines[0]
    assert "Traceback" not in err


def _outputs_left(tmp_path, data):
    return sorted(p.name for p in tmp_path.iterdir() if p != data)


@pytest.mark.parametrize("case", sorted(BAD_PROMPTS))
@pytest.mark.parametrize("command", ["rollout", "eval"])
def test_bad_prompts_file(command, case, run_main, tmp_path):
    text, pattern = BAD_PROMPTS[case]
    data = _data_file(tmp_path, text)
    if command == "rollout":
        r = run_main("rollout", data, "--model", "toy:tiny", "--out", tmp_path / "out.jsonl", "--n", "1", "--max-new-tokens", "8")
    else:
        r = run_main("eval", "--model", "toy:tiny", "--data", data, "--out", tmp_path / "eval.json", "--max-new-tokens", "8")
    _assert_one_line_error(r.code, r.err, re_path(data) + pattern)
    assert r.out == ""
    assert _outputs_left(tmp_path, data) == []


def re_path(path) -> str:
    import re

    return re.escape(str(path))


@pytest.mark.parametrize("case", sorted(BAD_SFT))
def test_bad_sft_file(case, run_main, tmp_path):
    text, pattern = BAD_SFT[case]
    data = _data_file(tmp_path, text)
    r = run_main("train-sft", data, "--model", "toy:tiny", "--out", tmp_path / "run", "--max-steps", "2")
    _assert_one_line_error(r.code, r.err, re_path(data) + pattern)
    assert _outputs_left(tmp_path, data) == []


def test_bad_sft_file_in_a_real_process(cli, tmp_path):
    data = _data_file(tmp_path, BAD_SFT["no-completion"][0])
    proc = cli("train-sft", data, "--model", "toy:tiny", "--out", tmp_path / "run", "--max-steps", "2")
    _assert_one_line_error(proc.returncode, proc.stderr, re_path(data) + r":2: field 'completion': missing")
    assert _outputs_left(tmp_path, data) == []


def test_eval_needs_an_answer(run_main, tmp_path):
    data = _data_file(tmp_path, '{"prompt": "a", "answer": "1"}\n{"prompt": "b"}\n')
    r = run_main("eval", "--model", "toy:tiny", "--data", data, "--out", tmp_path / "eval.json")
    _assert_one_line_error(r.code, r.err, re_path(data) + r":2: field 'answer': ")
    assert _outputs_left(tmp_path, data) == []


@pytest.mark.parametrize(
    "args,pattern",
    [
        (["rollout", "{test}", "--model", "toy:huge", "--out", "{tmp}/out.jsonl"], r"unknown toy size 'huge'.*toy:tiny"),
        (["rollout", "{test}", "--model", "{tmp}/no-model", "--out", "{tmp}/out.jsonl"], r"no-model: no such model folder"),
        (["rollout", "{test}", "--model", "{tmp}", "--out", "{tmp}/out.jsonl"], r"not a model folder \(no config.json\)"),
        (["rollout", "{test}", "--model", "toy:tiny", "--out", "{tmp}/out.jsonl", "--n", "0"], r"--n must be at least 1, got 0"),
        (["rollout", "{test}", "--model", "toy:tiny", "--out", "{tmp}/out.jsonl", "--top-p", "0"], r"--top-p"),
        (["rollout", "{test}", "--model", "toy:tiny", "--out", "{tmp}/out.jsonl", "--backend", "vllm2"], r"unknown --backend 'vllm2'"),
        (["eval", "--model", "toy:huge", "--data", "{test}", "--out", "{tmp}/eval.json"], r"unknown toy size 'huge'"),
        (["eval", "--model", "toy:tiny", "--data", "{test}", "--out", "{tmp}/eval.json", "--n", "0"], r"--n must be at least 1"),
        (["toy-data", "{tmp}/toy", "--slip-rate", "2"], r"--slip-rate must be in \[0, 1\]"),
    ],
    ids=["toy-size", "missing-model", "not-a-model", "n0", "top-p", "backend", "eval-toy-size", "eval-n0", "toy-data-flag"],
)
def test_bad_flags(args, pattern, run_main, toy_dir, tmp_path):
    r = run_main(*(a.format(test=toy_dir / "test.jsonl", tmp=tmp_path) for a in args))
    _assert_one_line_error(r.code, r.err, pattern)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args,pattern",
    [
        (["rollout", "{test}", "--model", "toy:tiny", "--out", "{tmp}/out.jsonl", "--n", "two"], r"Invalid value for '--n'"),
        (["rollout", "{test}", "--model", "toy:tiny"], r"Missing option '--out'"),
        (["rollout", "{test}", "--model", "toy:tiny", "--out", "{tmp}/out.jsonl", "--bogus"], r"No such option: --bogus"),
        (["sft"], r"No such command 'sft'"),
    ],
    ids=["not-an-int", "missing-option", "unknown-option", "unknown-command"],
)
def test_usage_errors(args, pattern, run_main, toy_dir, tmp_path):
    """Click's usage errors: its usual three lines (usage, hint, error), exit status 2, no traceback."""
    import re

    r = run_main(*(a.format(test=toy_dir / "test.jsonl", tmp=tmp_path) for a in args))
    assert r.code == 2 and "Traceback" not in r.err, r.err
    assert re.search(r"^error: " + pattern, r.err, re.M), r.err
    assert r.err.startswith("Usage: ")
    assert list(tmp_path.iterdir()) == []


def test_bad_model_for_train_sft(run_main, toy_dir, tmp_path):
    r = run_main("train-sft", toy_dir / "sft.jsonl", "--model", "toy:huge", "--out", tmp_path / "run")
    _assert_one_line_error(r.code, r.err, r"unknown toy size 'huge'")
    r = run_main("train-sft", toy_dir / "sft.jsonl", "--model", "toy:tiny", "--out", tmp_path / "run", "--max-steps", "0")
    _assert_one_line_error(r.code, r.err, r"--max-steps must be at least 1")
    assert list(tmp_path.iterdir()) == []


# --- --config FILE.yaml ---------------------------------------------------------------------------------

def _rollout_max_tokens(path):
    records = read_jsonl(path)
    assert len(records) == 8
    return {r["generator"]["max_new_tokens"] for r in records}, max(t for r in records for t in r["num_tokens"])


def test_config_file_sets_defaults_and_flags_win(run_main, toy_dir, tmp_path):
    config = tmp_path / "rollout.yaml"
    config.write_text("max-new-tokens: 4\nn: 2\ntemperature: 0.7\n")
    r = run_main("rollout", toy_dir / "test.jsonl", "--model", "toy:tiny", "--out", tmp_path / "a.jsonl", "--config", config)
    assert r.code == 0, r.err
    assert _rollout_max_tokens(tmp_path / "a.jsonl") == ({4}, 4)
    assert {len(x["responses"]) for x in read_jsonl(tmp_path / "a.jsonl")} == {2}
    assert {x["generator"]["temperature"] for x in read_jsonl(tmp_path / "a.jsonl")} == {0.7}
    # a flag on the command line beats the file, wherever it stands
    r = run_main("rollout", toy_dir / "test.jsonl", "--max-new-tokens", "3", "--model", "toy:tiny",
                 "--out", tmp_path / "b.jsonl", "--config", config)
    assert r.code == 0, r.err
    assert _rollout_max_tokens(tmp_path / "b.jsonl") == ({3}, 3)
    # underscores work too
    config.write_text("max_new_tokens: 2\n")
    r = run_main("rollout", toy_dir / "test.jsonl", "--model", "toy:tiny", "--out", tmp_path / "c.jsonl", "--config", config)
    assert r.code == 0, r.err
    assert _rollout_max_tokens(tmp_path / "c.jsonl") == ({2}, 2)


def test_config_keys_are_flag_names(run_main, tmp_path):
    """`--sft` is the flag of parameter n_sft, and `--json` of as_json: the file uses the flag names."""
    config = tmp_path / "toy.yaml"
    config.write_text("sft: 5\ntrain: 3\ntest: 2\njson: true\n")
    r = run_main("toy-data", tmp_path / "toy", "--config", config)
    assert r.code == 0, r.err
    assert json.loads(r.out)["sft"] == 5
    assert [len(read_jsonl(tmp_path / "toy" / f)) for f in ("sft.jsonl", "train.jsonl", "test.jsonl")] == [5, 3, 2]


@pytest.mark.parametrize("text,pattern", [
    ("max-new-tokens: 4\nmax-new-tokenz: 5\n", r"unknown key 'max-new-tokenz' \(not a flag of 'rollout'\)"),
    ("- 1\n- 2\n", r"expected a mapping"),
    ("max-new-tokens: [4\n", r"invalid YAML"),
    ("max-new-tokens: four\n", r"(?i)invalid value|four"),
])
def test_bad_config_file(text, pattern, run_main, toy_dir, tmp_path):
    import re

    config = tmp_path / "c.yaml"
    config.write_text(text)
    r = run_main("rollout", toy_dir / "test.jsonl", "--model", "toy:tiny", "--out", tmp_path / "out.jsonl", "--config", config)
    assert r.code == 2 and "Traceback" not in r.err, r.err
    assert re.search(pattern, r.err), r.err
    assert not (tmp_path / "out.jsonl").exists()


def test_missing_config_file(run_main, toy_dir, tmp_path):
    r = run_main("rollout", toy_dir / "test.jsonl", "--model", "toy:tiny", "--out", tmp_path / "o.jsonl", "--config", tmp_path / "nope.yaml")
    _assert_one_line_error(r.code, r.err, r"nope.yaml: no such config file")
