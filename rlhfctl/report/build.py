"""`report`: figures and a Markdown summary from run folders and result files.

Order matters for the no-half-written-output rule: every input is read and
checked first; only then is the report drawn, into a temporary folder beside
``--out`` that is renamed into place when complete. An ``--out`` that holds
an earlier report is replaced; any other non-empty folder is refused, so a
mistyped ``--out runs/grpo`` cannot delete a run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhfctl.artifacts import publish_folder
from rlhfctl.errors import ConfigError
from rlhfctl.report import figures, markdown
from rlhfctl.report.numbers import key_numbers
from rlhfctl.report.runs import BestOfNResult, ReportInput, TrainingRun, load_inputs

REPORT = "report.md"


@dataclass(frozen=True)
class ReportConfig:
    inputs: tuple[str, ...]  # run folders and result JSON files, any mix
    out: str  # the report folder
    smooth: int = 10  # moving-average window for per-step curves; 1 = raw

    def check(self) -> None:
        if self.smooth < 1:
            raise ConfigError(f"--smooth must be at least 1, got {self.smooth}")
        check_out_folder(Path(self.out))


def run(config: ReportConfig) -> dict[str, Any]:
    """Write ``report.md`` and the PNG figures into ``config.out``; return the summary."""
    config.check()
    inputs = load_inputs(list(config.inputs))
    numbers = {item.name: key_numbers(item) for item in inputs}
    out = Path(config.out)
    drawn = publish_folder(out, lambda folder: _write_report(folder, inputs, numbers, config.smooth))
    return {"out": str(out), "report": str(out / REPORT), "figures": [str(out / f) for fs in drawn.values() for f in fs],
            "runs": list(numbers.values())}


def _write_report(folder: Path, inputs: list[ReportInput], numbers: dict[str, dict[str, Any]], smooth: int) -> dict[str, list[str]]:
    drawn = draw_figures(folder, inputs, smooth)
    (folder / REPORT).write_text(markdown.render(inputs, numbers, drawn), encoding="utf-8")
    return drawn


def draw_figures(folder: Path, inputs: list[ReportInput], smooth: int) -> dict[str, list[str]]:
    """``{kind: [figure file names]}``; each run keeps one colour in every figure."""
    colours = {item.name: f"C{i % 10}" for i, item in enumerate(i for i in inputs if isinstance(i, TrainingRun))}
    drawn: dict[str, list[str]] = {}
    for command in figures.PREFIXES:
        runs = [item for item in inputs if isinstance(item, TrainingRun) and item.command == command]
        if runs and command == "train-policy":
            drawn[command] = figures.policy_figures(runs, colours, folder, smooth)
        elif runs:
            drawn[command] = figures.training_figures(runs, command, colours, folder, smooth)
    best_of_n = [item for item in inputs if isinstance(item, BestOfNResult)]
    if best_of_n:
        drawn["best-of-n"] = [figures.best_of_n_figure(best_of_n, folder / "best-of-n.png")]
    return drawn


# --- the output folder -------------------------------------------------------------

def check_out_folder(out: Path) -> None:
    """``out`` may be new, an empty folder, or an earlier report (to be replaced)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ConfigError(f"--out {out}: is a file, expected a folder for the report")
    if any(out.iterdir()) and not (out / REPORT).is_file():
        raise ConfigError(f"--out {out}: a folder that holds no earlier report ({REPORT}); choose a new or empty folder")
