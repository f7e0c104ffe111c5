"""The user docs: the generated command reference is current, links resolve, the README stays short."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, ROOT / "CHANGELOG.md", ROOT / "benchmarks" / "README.md", ROOT / "examples" / "README.md",
         *sorted((ROOT / "docs").rglob("*.md"))]


def _gen_cli_docs():
    spec = importlib.util.spec_from_file_location("gen_cli_docs", ROOT / "scripts" / "gen_cli_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_is_current():
    assert (ROOT / "docs" / "cli.md").read_text() == _gen_cli_docs().render(), \
        "docs/cli.md is out of date: run python scripts/gen_cli_docs.py"


def test_cli_reference_does_not_depend_on_the_terminal(monkeypatch):
    gen = _gen_cli_docs()
    wide = gen.render()
    monkeypatch.setenv("COLUMNS", "40")
    monkeypatch.setenv("FORCE_COLOR", "1")
    narrow = gen.render()
    assert narrow == wide
    assert "\x1b[" not in wide and "╭" not in wide  # no colour codes, no rich boxes
    assert "## rlhfctl train-policy\n" in wide and "Usage: rlhfctl train-policy [OPTIONS]" in wide


def test_cli_reference_check_mode(tmp_path, monkeypatch, capsys):
    gen = _gen_cli_docs()
    monkeypatch.setattr(gen, "ROOT", tmp_path)
    monkeypatch.setattr(gen, "OUT", tmp_path / "cli.md")
    assert gen.main(["--check"]) == 1  # missing
    assert "out of date" in capsys.readouterr().err
    assert gen.main([]) == 0
    assert gen.main(["--check"]) == 0
    (tmp_path / "cli.md").write_text(gen.render().replace("--max-steps", "--max-stepz", 1))
    assert gen.main(["--check"]) == 1


def test_readme_is_short():
    assert len(README.read_text().splitlines()) <= 250


def _without_code(text: str) -> str:
    """Markdown with its fenced code blocks and inline code removed (links there are examples, not links)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for heading in re.findall(r"^#{1,6} (.+)$", re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", "")).replace(" ", "-")
        out.add(slug)
    return out


def _links(page: Path) -> list[str]:
    return re.findall(r"\]\(([^)\s]+)\)", _without_code(page.read_text()))


def _broken_links(page: Path) -> list[str]:
    broken = []
    for link in _links(page):
        if re.match(r"[a-z]+:", link):
            continue  # http(s), mailto: not checked offline
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(f"{link}: no such file")
        elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
            broken.append(f"{link}: no such heading")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    assert not _broken_links(page), f"{page.relative_to(ROOT)}: {_broken_links(page)}"


def test_link_check_catches_a_broken_link(tmp_path):
    (tmp_path / "a.md").write_text("# Top\n\nSee [b](b.md#usage), [b](b.md#nope), [c](c.md), [top](#top), `[x](no.md)`.\n"
                                   "```\n[y](no.md)\n```\n")
    (tmp_path / "b.md").write_text("## Usage\n")
    assert _broken_links(tmp_path / "a.md") == ["b.md#nope: no such heading", "c.md: no such file"]
    assert _anchors(ROOT / "docs" / "cli.md") >= {"rlhfctl-train-sft", "rlhfctl-best-of-n"}


def test_readme_links_every_command_to_its_reference():
    import typer

    from rlhfctl.cli import app

    readme = README.read_text()
    for name in typer.main.get_command(app).commands:
        assert f"(docs/cli.md#rlhfctl-{name})" in readme, name


def test_demo_time_is_the_same_in_readme_and_help():
    import typer

    from rlhfctl.cli import app

    command = typer.main.get_command(app).commands["demo"]
    full_help = next(p.help for p in command.params if p.name == "full")
    minutes = re.search(r"about (\d+) minutes on a 2-core CPU; the default pass over every stage takes about (\d+)\)", full_help)
    assert minutes, full_help
    full, default = minutes.groups()
    readme = " ".join(README.read_text().split())
    assert f"about {default} minutes" in readme and f"about {full} minutes" in readme


def test_the_data_walkthrough_runs_as_written(tmp_path):
    """The README's bring-your-own-data block, on a Parquet file made here and a Qwen2-shaped fixture model."""
    import os
    import re
    import subprocess
    import sys

    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests import model_folders

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    script = re.search(r"<!-- data-walkthrough -->\n```bash\n(.*?)```", readme, re.S).group(1)
    pq.write_table(pa.table({"question": ["What is 2+3?", "What is 10-4?", "What is 3*3?"],
                             "answer": ["2+3=5\n#### 5", "10-4=6\n#### 6", "3*3=9\n#### 9"]}), tmp_path / "gsm8k.parquet")
    model = model_folders.build("qwen2", tmp_path / "qwen2")
    env = {**os.environ, "MODEL": str(model), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout[[m.start() for m in re.finditer(r"^\{$", done.stdout, re.M)][-1]:])  # eval's --json
    assert summary["n"] == 4 and summary["num_prompts"] == 3 and "pass@4" in summary and "no_answer" in summary
    graded = [json.loads(line) for line in (tmp_path / "gsm8k-graded.jsonl").read_text().splitlines()]
    assert graded[0]["prompt"].endswith("put your final answer within \\boxed{}.")
    assert len(graded[0]["extract_rule"]) == 4


def test_the_quickstart_commands_parse():
    """Every command of the README's quickstart names real flags and gives the required ones (parsed, not run)."""
    import shlex

    import typer

    from rlhfctl.cli import app

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = re.search(r"## Quickstart\n.*?```bash\n(.*?)```", readme, re.S).group(1).replace("\\\n", " ")
    group = typer.main.get_command(app)
    commands = [shlex.split(line) for line in block.splitlines() if line.strip().startswith("rlhfctl ")]
    assert len(commands) >= 8
    for words in commands:
        command = group.get_command(None, words[1])
        assert command is not None, words
        command.make_context(words[1], words[2:])  # a usage error (unknown flag, missing --model) raises
