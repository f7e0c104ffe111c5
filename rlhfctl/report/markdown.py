"""``report.md``: one section per kind of input, with its figures, a table of
key numbers, and the settings that differ between runs of the same command.

Settings equal across runs are left out: a comparison of PPO and GRPO should
show ``algo`` and ``kl_coef``, not the forty options they share.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any, Callable

from rlhfctl import __version__
from rlhfctl.report.numbers import BON_NS
from rlhfctl.report.runs import ReportInput

SECTIONS = {
    "train-policy": "Policy runs (train-policy)",
    "train-sft": "SFT runs (train-sft)",
    "train-rm": "Reward-model runs (train-rm)",
    "best-of-n": "Best-of-N",
    "eval": "Evaluations (eval)",
}
FIGURE_CAPTIONS = {
    "policy.png": "reward, KL, response length and eval pass@1 against step",
    "policy-reward.png": "reward", "policy-kl.png": "KL", "policy-response-length.png": "response length",
    "policy-eval-pass1.png": "eval pass@1",
    "sft-loss.png": "SFT loss", "sft-accuracy.png": "SFT accuracy",
    "rm-loss.png": "reward-model loss", "rm-accuracy.png": "reward-model batch accuracy",
    "best-of-n.png": "accuracy against N",
}
_ABSENT = object()
Column = tuple[str, Callable[[dict[str, Any]], Any]]  # header, value of a row (None: no value)


def render(inputs: list[ReportInput], numbers: dict[str, dict[str, Any]], figures: dict[str, list[str]]) -> str:
    """The whole report as Markdown; figure links are relative to the report's folder."""
    lines = ["# rlhfctl report", "",
             f"{len(inputs)} inputs, made by rlhfctl {__version__} on "
             f"{_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M')} UTC.", ""]
    for kind, title in SECTIONS.items():
        members = [item for item in inputs if item.kind == kind]
        if members:
            lines += _section(kind, title, members, numbers, figures.get(kind, []))
    lines += ["## Inputs", "", *_table(["run", "kind", "path"], [[i.name, i.kind, str(i.path)] for i in inputs]), ""]
    return "\n".join(lines)


def _section(kind: str, title: str, members: list[ReportInput], numbers: dict[str, dict[str, Any]], figures: list[str]) -> list[str]:
    lines = [f"## {title}", ""]
    lines += _figure_lines(figures)
    rows = [numbers[item.name] for item in members]
    lines += _best_of_n_table(rows) if kind == "best-of-n" else _numbers_table(_COLUMNS[kind](rows), rows)
    lines.append("")
    if len(members) > 1:
        lines += ["### Settings that differ", "", *_settings_table(members), ""]
    return lines


def _figure_lines(figures: list[str]) -> list[str]:
    """Figures embedded; the policy grid's one-file-per-quantity copies only linked."""
    embedded = [name for name in figures if not name.startswith("policy-")]
    linked = [name for name in figures if name.startswith("policy-")]
    lines = [line for name in embedded for line in (f"![{FIGURE_CAPTIONS.get(name, name)}]({name})", "")]
    if linked:
        links = " · ".join(f"[{FIGURE_CAPTIONS.get(name, name)}]({name})" for name in linked)
        lines += [f"One figure per quantity: {links}", ""]
    return lines


# --- tables of numbers -------------------------------------------------------------

def _policy_columns(rows: list[dict[str, Any]]) -> list[Column]:
    return [
        ("run", lambda r: r["name"]),
        ("algo", lambda r: r["algo"]),
        ("steps", lambda r: r["steps"]),
        ("eval pass@1 first", lambda r: r["eval_pass@1_first"]),
        ("eval pass@1 last", lambda r: r["eval_pass@1_last"]),
        ("best eval pass@1 (step)", _best_eval),
        ("final reward (raw mean)", lambda r: r["final_reward_raw_mean"]),
        ("final KL", lambda r: r["final_kl"]),
        ("mean response length", lambda r: r["mean_response_length"]),
        ("wall time (Σ step seconds)", lambda r: duration(r["wall_seconds"]) if r["wall_seconds"] is not None else None),
    ]


def _best_eval(row: dict[str, Any]) -> str | None:
    if row["eval_pass@1_best"] is None:
        return None
    return f"{fmt(row['eval_pass@1_best'])} ({row['eval_pass@1_best_step']})"


def _sft_columns(rows: list[dict[str, Any]]) -> list[Column]:
    evals = sorted({k for r in rows for k in r if k.startswith("eval_")})
    return [("run", lambda r: r["name"]), ("steps", lambda r: r["steps"]), ("final loss", lambda r: r["final_loss"]),
            *[(key, lambda r, key=key: r.get(key)) for key in evals]]


def _rm_columns(rows: list[dict[str, Any]]) -> list[Column]:
    held_out = [("held-out pair accuracy", "pair_accuracy"), ("held-out binary accuracy", "binary_accuracy"),
                ("held-out AUC", "auc"), ("held-out step accuracy", "step_accuracy"),
                ("held-out first-error accuracy", "first_error_accuracy")]
    return [("run", lambda r: r["name"]), ("kind", lambda r: r["rm_kind"]), ("steps", lambda r: r["steps"]),
            ("final loss", lambda r: r["final_loss"]), *[(header, lambda r, k=key: r.get(k)) for header, key in held_out]]


def _eval_columns(rows: list[dict[str, Any]]) -> list[Column]:
    fixed = {"name", "kind", "path", "n", "num_prompts"}
    keys = list(dict.fromkeys(k for r in rows for k in r if k not in fixed))
    keys.sort(key=lambda k: (not k.startswith("pass@"), not k.startswith("maj@"), _k_of(k)))
    return [("run", lambda r: r["name"]), ("n", lambda r: r["n"]), ("prompts", lambda r: r["num_prompts"]),
            *[(key, lambda r, key=key: r.get(key)) for key in keys]]


def _k_of(key: str) -> int:
    tail = key.rpartition("@")[2]
    return int(tail) if tail.isdigit() else 0


_COLUMNS = {"train-policy": _policy_columns, "train-sft": _sft_columns, "train-rm": _rm_columns, "eval": _eval_columns}


def _numbers_table(columns: list[Column], rows: list[dict[str, Any]]) -> list[str]:
    """The table, without the columns no row has a value for."""
    cells = [[column(row) for _, column in columns] for row in rows]
    keep = [j for j in range(len(columns)) if j == 0 or any(c[j] is not None for c in cells)]
    return _table([columns[j][0] for j in keep], [[fmt(c[j]) for j in keep] for c in cells])


def _best_of_n_table(rows: list[dict[str, Any]]) -> list[str]:
    """One row per file and selector: accuracy at N = 1, 4, 16 and at N_max."""
    header = ["run", "selector", "prompts", *[f"N={n}" for n in BON_NS], "N_max", "at N_max"]
    body = []
    for row in rows:
        for selector, at in row["selectors"].items():
            body.append([fmt(row["name"]), selector, fmt(row["num_prompts"]), *[fmt(at[str(n)]) for n in BON_NS],
                         fmt(row["n_max"]), fmt(at["max"])])
    return _table(header, body)


# --- settings that differ ----------------------------------------------------------

def _settings_table(members: list[ReportInput]) -> list[str]:
    settings = [item.settings for item in members]
    keys = list(dict.fromkeys(k for s in settings for k in s))
    differing = [k for k in keys if len({_setting(s.get(k, _ABSENT)) for s in settings}) > 1]
    if not differing:
        return [f"The {len(members)} {'runs' if members[0].kind.startswith('train') else 'files'} share every setting."]
    rows = [[f"`{k}`", *[_setting(s.get(k, _ABSENT)) for s in settings]] for k in differing]
    return _table(["setting", *[item.name for item in members]], rows)


def _setting(value: Any) -> str:
    if value is _ABSENT:
        return "—"
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        return ", ".join(_setting(v) for v in value) or "[]"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


# --- formatting --------------------------------------------------------------------

def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"

    return [line(header), line(["---"] * len(header)), *[line(row) for row in rows]]


def fmt(value: Any) -> str:
    """A table cell: four significant digits for floats, a dash for no value."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def duration(seconds: float) -> str:
    """``42 s``, ``11 min 24 s``, ``1 h 02 min``."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
