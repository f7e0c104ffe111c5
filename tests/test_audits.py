"""Audits of the loading rules in docs/design.md §3: nothing untrusted is unpickled, no folder's code runs unless asked.

Two halves each: a scan of rlhfctl's source, so a new call site that breaks
a rule fails here (with the file and line), and a behaviour check on a model
folder that ships its own Python code.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import rlhfctl

PACKAGE = Path(rlhfctl.__file__).parent
SOURCES = sorted(PACKAGE.rglob("*.py"))
UNPICKLERS = {"pickle", "cPickle", "dill", "joblib", "shelve", "marshal"}


def _trees():
    for path in SOURCES:
        yield path.relative_to(PACKAGE.parent), ast.parse(path.read_text(), str(path))


def _is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _keyword(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


# --- nothing is unpickled ------------------------------------------------------------------------

def unsafe_loads(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, what) for each ``torch.load`` without ``weights_only=True``, a torch ``load`` imported bare,
    an unpickling module imported, or a numpy load that allows pickles."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = ast.unparse(node.func.value)
            if node.func.attr == "load" and owner in ("torch", "torch.serialization") and not _is_true(_keyword(node, "weights_only")):
                found.append((node.lineno, f"{owner}.load without weights_only=True"))
            if _is_true(_keyword(node, "allow_pickle")):
                found.append((node.lineno, "allow_pickle=True"))
        elif isinstance(node, ast.ImportFrom) and node.module in ("torch", "torch.serialization"):
            found += [(node.lineno, f"from {node.module} import load") for a in node.names if a.name == "load"]
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [(node.lineno, f"imports {m}") for m in modules if m.split(".")[0] in UNPICKLERS]
    return found


def test_nothing_in_rlhfctl_unpickles():
    problems = [f"{path}:{line}: {what}" for path, tree in _trees() for line, what in unsafe_loads(tree)]
    assert not problems, "\n".join(problems)


def test_the_scan_sees_torch_load():
    """The scan is not vacuous: it finds the checkpoint reader's call, and flags the unsafe forms."""
    calls = [n for _, tree in _trees() for n in ast.walk(tree)
             if isinstance(n, ast.Call) and ast.unparse(n.func) == "torch.load"]
    assert calls, "no torch.load found: has the checkpoint reader moved to another API?"
    unsafe = textwrap.dedent("""\
        import torch, pickle
        from torch import load
        torch.load(p)
        torch.load(p, weights_only=False)
        torch.serialization.load(p, map_location="cpu")
        numpy.load(p, allow_pickle=True)
        torch.load(p, weights_only=True)
    """)
    assert [line for line, _ in unsafe_loads(ast.parse(unsafe))] == [1, 2, 3, 4, 5, 6]


# --- trust_remote_code is off unless asked -------------------------------------------------------

def remote_code_defaults(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, what) for each place that could turn remote code on by default: a parameter or field named
    ``trust_remote_code`` defaulting to anything but False, or a call or dict passing a literal True."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            args = node.args
            positional = args.posonlyargs + args.args
            pairs = list(zip(positional[len(positional) - len(args.defaults):], args.defaults))
            pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None]
            found += [(d.lineno, f"parameter {a.arg} defaults to {ast.unparse(d)}") for a, d in pairs
                      if a.arg == "trust_remote_code" and not _is_false(d)]
        elif isinstance(node, ast.AnnAssign) and ast.unparse(node.target) == "trust_remote_code":
            if node.value is not None and not _is_false(node.value):
                found.append((node.lineno, f"field trust_remote_code defaults to {ast.unparse(node.value)}"))
        elif isinstance(node, ast.Call) and _is_true(_keyword(node, "trust_remote_code")):
            found.append((node.lineno, "passes trust_remote_code=True"))
        elif isinstance(node, ast.Dict):
            found += [(node.lineno, "a dict with trust_remote_code: True") for k, v in zip(node.keys, node.values)
                      if isinstance(k, ast.Constant) and k.value == "trust_remote_code" and _is_true(v)]
    return found


def _is_false(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value is False


def test_no_loader_or_config_turns_remote_code_on_by_default():
    problems = [f"{path}:{line}: {what}" for path, tree in _trees() for line, what in remote_code_defaults(tree)]
    assert not problems, "\n".join(problems)
    checked = [1 for _, tree in _trees() for n in ast.walk(tree) if isinstance(n, ast.arg) and n.arg == "trust_remote_code"]
    assert len(checked) >= 5  # load_tokenizer, load_causal_lm, the RM loaders, the commands: the scan saw them


def test_the_remote_code_scan_flags_the_unsafe_forms():
    unsafe = textwrap.dedent("""\
        def load(spec, trust_remote_code=True): ...
        def load(spec, *, trust_remote_code: bool = None): ...
        class Config:
            trust_remote_code: bool = True
        AutoModel.from_pretrained(spec, trust_remote_code=True)
        kwargs = {"trust_remote_code": True}
        def fine(spec, trust_remote_code=False, other=True): ...
    """)
    assert [line for line, _ in remote_code_defaults(ast.parse(unsafe))] == [1, 2, 4, 5, 6]


def _commands():
    import typer.main

    from rlhfctl.cli import app

    return typer.main.get_command(app).commands


@pytest.mark.parametrize("name", sorted(_commands()))
def test_every_command_keeps_remote_code_off_unless_the_flag_is_given(name, run_main):
    """A command that loads model folders has --trust-remote-code, off by default; no option defaults it on."""
    command = _commands()[name]
    for param in command.params:
        if "trust" in param.name or "remote" in param.name:
            assert param.name == "trust_remote_code" and param.opts == ["--trust-remote-code"], param.opts
            assert param.is_flag and param.default is False and not param.secondary_opts, name
    help_ = run_main(name, "--help")
    assert help_.code == 0
    flagged = any(p.name == "trust_remote_code" for p in command.params)
    assert ("--trust-remote-code" in help_.out) == flagged


EVIL_MODULE = """\
import os
from pathlib import Path

from transformers import LlamaForCausalLM

Path(os.environ["RLHFCTL_TEST_MARKER"]).write_text("the folder's code ran")


class EvilForCausalLM(LlamaForCausalLM):
    pass
"""


@pytest.fixture(scope="module")
def folder_with_code(tmp_path_factory) -> Path:
    """A toy:tiny policy folder whose config.json points AutoModelForCausalLM at its own evil.py."""
    from rlhfctl.models import load_causal_lm, load_tokenizer, save_model

    folder = tmp_path_factory.mktemp("remote-code") / "model"
    save_model(load_causal_lm("toy:tiny"), load_tokenizer("toy:tiny"), folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "evil.EvilForCausalLM"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "evil.py").write_text(EVIL_MODULE)
    return folder


def _rollout(folder: Path, tmp_path: Path, env: dict, *extra: str) -> bool:
    """Run rollout on the folder in a fresh process (its own module cache); whether the folder's code ran."""
    marker = tmp_path / f"ran{len(extra)}"
    (tmp_path / "p.jsonl").write_text('{"prompt": "Compute 1+2.\\n"}\n')
    proc = subprocess.run([sys.executable, "-m", "rlhfctl", "rollout", str(tmp_path / "p.jsonl"), "--model", str(folder),
                           "--out", str(tmp_path / f"r{len(extra)}.jsonl"), "--n", "1", "--max-new-tokens", "2", "--backend", "hf",
                           *extra], env=dict(env, RLHFCTL_TEST_MARKER=str(marker)), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return marker.exists()


def test_a_folders_code_runs_only_with_the_flag(folder_with_code, tmp_path, cli_env):
    """Without --trust-remote-code transformers' own Llama class loads the folder; with it, the folder's evil.py runs."""
    assert not _rollout(folder_with_code, tmp_path, cli_env)
    assert _rollout(folder_with_code, tmp_path, cli_env, "--trust-remote-code")  # the check can tell the difference
