"""The `rlhfctl` command: registers the subcommands and formats user errors.

Nothing heavy is imported here: each command imports torch and friends inside
its body, so `rlhfctl --help` answers at once.
"""

from __future__ import annotations

import io
import os
import re
import sys

import typer

from rlhfctl import __version__
from rlhfctl.commands.best_of_n import best_of_n
from rlhfctl.commands.build_prefs import build_prefs
from rlhfctl.commands.demo import demo
from rlhfctl.commands.evaluate import evaluate
from rlhfctl.commands.grade import grade
from rlhfctl.commands.label_prm import label_prm
from rlhfctl.commands.report import report
from rlhfctl.commands.rollout import rollout
from rlhfctl.commands.toy_data import toy_data
from rlhfctl.commands.train_policy import train_policy
from rlhfctl.commands.train_rm import train_rm
from rlhfctl.commands.train_sft import train_sft
from rlhfctl.console import forget_logged
from rlhfctl.errors import RlhfctlError


class _FlagsWithoutPlaceholder:
    """--help shows flags as flags: typer would print a ``<bool>`` placeholder after each, as if it took a value."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
        return params


class Command(_FlagsWithoutPlaceholder, typer.core.TyperCommand):
    pass


class Group(_FlagsWithoutPlaceholder, typer.core.TyperGroup):
    pass


app = typer.Typer(
    cls=Group,
    name="rlhfctl",
    help="The RLHF pipeline of 'Does RLHF Scale?' (Hou et al., 2024) as composable commands "
    "that exchange JSONL and Hugging Face model folders.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

COMMANDS = {"toy-data": toy_data, "train-sft": train_sft, "rollout": rollout, "build-prefs": build_prefs,
            "label-prm": label_prm, "train-rm": train_rm, "best-of-n": best_of_n, "train-policy": train_policy,
            "grade": grade, "eval": evaluate, "demo": demo, "report": report}  # in the order --help lists them
for _name, _function in COMMANDS.items():
    app.command(_name, cls=Command)(_function)


def _version(value: bool) -> None:
    if value:
        print(f"rlhfctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version.")) -> None:
    pass


def main() -> None:
    """Entry point: user errors become one line on stderr and exit status 2."""
    forget_logged()
    try:
        code = app(standalone_mode=False)
    except RlhfctlError as e:
        if os.environ.get("RLHFCTL_DEBUG") == "1":
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except _click_errors() as e:
        _show_click_error(e)
        sys.exit(2)
    except _click_abort():
        sys.exit(1)
    code = code if isinstance(code, int) else 0
    if _distributed():
        _exit_distributed(code)
    sys.exit(code)


def _show_click_error(e) -> None:
    """click's own report of a usage error, its last line starting ``error:`` as every rlhfctl error does."""
    buffer = io.StringIO()
    e.show(file=buffer)
    sys.stderr.write(re.sub(r"^Error: ", "error: ", buffer.getvalue(), flags=re.M))


def _distributed() -> bool:
    """Whether this process is a rank of a process group (torch is only looked at if a command imported it)."""
    torch = sys.modules.get("torch")
    return torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized()


def _exit_distributed(code: int) -> None:
    """Under `accelerate launch`: wait for every rank, take the process group down, and leave at once.

    A rank that exits while gloo's threads still run in another can abort
    that one, and the interpreter's own teardown can abort a rank whose
    threads are still joinable ("terminate called without an active
    exception"), failing a run that finished. Everything is written and
    flushed by now, so the process ends without that teardown.
    """
    import torch

    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _click_errors():
    import click

    try:  # typer >= 0.2x ships its own copy of click, whose usage errors do not derive from click's
        from typer._click.exceptions import ClickException as TyperClickException
    except ImportError:
        return click.ClickException
    return (click.ClickException, TyperClickException)


def _click_abort():
    import click
    import typer

    return (click.exceptions.Abort, typer.Abort)
