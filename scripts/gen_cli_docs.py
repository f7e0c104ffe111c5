"""Write docs/cli.md, the command reference, from the live CLI's --help.

    python scripts/gen_cli_docs.py           # rewrite docs/cli.md
    python scripts/gen_cli_docs.py --check   # exit 1 if docs/cli.md is out of date

The help is rendered as plain text at a fixed width (no colour, no boxes), so
the file is the same whatever terminal runs the script.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "cli.md"
WIDTH = 100

HEADER = """\
# Command reference

Every command's `--help`, as the terminal prints it. This file is generated:
do not edit it; after changing a command, run `python scripts/gen_cli_docs.py`
(a test fails while it is out of date).
"""


def _plain(command) -> None:
    """Turn typer's rich help off for this command object (the app itself is untouched)."""
    if hasattr(command, "rich_markup_mode"):
        command.rich_markup_mode = None


def _help(command, name: str, parent=None) -> str:
    _plain(command)
    text = command.get_help(_context(command, name, parent)).rstrip() + "\n"
    return text.replace("\\[", "[")  # a rich markup escape, which the terminal's help shows as a plain bracket


def _context(command, name: str, parent=None):
    settings = {**command.context_settings, "terminal_width": WIDTH, "max_content_width": WIDTH}
    return command.context_class(command, info_name=name, parent=parent, **settings)


def render() -> str:
    """docs/cli.md's text: `rlhfctl --help`, then one section per command in the order they are registered."""
    import typer

    from rlhfctl.cli import app

    root = typer.main.get_command(app)
    _plain(root)
    root_ctx = _context(root, "rlhfctl")
    parts = [HEADER, "## rlhfctl\n", "```text\n" + _help(root, "rlhfctl") + "```\n"]
    for name, command in root.commands.items():
        parts += [f"## rlhfctl {name}\n", "```text\n" + _help(command, name, root_ctx) + "```\n"]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/cli.md differs from what would be written")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUT.is_file() or OUT.read_text() != text:
            print(f"{OUT.relative_to(ROOT)} is out of date: run python scripts/gen_cli_docs.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
