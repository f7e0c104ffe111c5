"""Every command's --help reads cleanly: no value placeholder on flags, no broken default, no swallowed text."""

from __future__ import annotations

import re

import pytest
import typer
from typer.testing import CliRunner

from rlhfctl.cli import app

COMMANDS = [c.name for c in app.registered_commands]
CLICK = typer.main.get_command(app)


def _help(name: str) -> str:
    result = CliRunner().invoke(app, [name, "--help"], env={"COLUMNS": "1000"})
    assert result.exit_code == 0, result.output
    return result.output


def _words(text: str) -> str:
    return " ".join(text.replace("\\[", "[").split())


@pytest.mark.parametrize("name", COMMANDS)
def test_help_shows_no_bool_placeholder_and_no_broken_default(name):
    text = _help(name)
    assert "<bool>" not in text
    assert not re.search(r"\[default:\s*(│\s*)?$", text, re.M), text
    for param in CLICK.commands[name].params:
        if getattr(param, "is_flag", False):
            row = next(line for line in text.splitlines() if re.search(rf"{re.escape(param.opts[0])}\b", line))
            assert "<" not in row.split(param.opts[0], 1)[1].split(param.help.split()[0], 1)[0], row


@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_help_is_shown_whole(name):
    """Rich markup in a help text ([...] read as a style) would drop words from the rendered help."""
    shown = _words(re.sub(r"[│╭╮╰╯─]", " ", _help(name)))
    for param in CLICK.commands[name].params:
        if param.help:
            assert _words(param.help) in shown, param.help


@pytest.mark.parametrize("name", COMMANDS)
def test_argument_placeholders_are_upper_case(name):
    usage = CLICK.commands[name].get_usage(CLICK.make_context("rlhfctl", [name, "--help"], resilient_parsing=True))
    names = re.findall(r"[{\[]([^\]}]+)[}\]]", usage.split("[OPTIONS]", 1)[1])
    assert all(n == n.upper() for n in names), usage
