"""The report's figures (matplotlib, Agg canvas, no pyplot state).

Policy runs get the four curves the paper compares PPO and GRPO by (its
Figures 4-5): raw reward, KL to the reference, response length and eval
pass@1 against step, every run overlaid, as one 2x2 grid and as one file per
quantity. SFT and reward-model runs get loss (and logged accuracy) curves;
best-of-n files their accuracy-vs-N curves on a log2 axis. Each run keeps
its colour in every figure (``C0``, ``C1``, … in input order).

Per-step training numbers are noisy, so they are drawn faint with a
trailing moving average on top; eval points are drawn as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rlhfctl.console import plural
from rlhfctl.report.numbers import eval_curve
from rlhfctl.report.runs import BestOfNResult, TrainingRun


@dataclass(frozen=True)
class Quantity:
    key: str  # the metrics.jsonl key
    label: str  # y axis
    title: str
    slug: str  # file name part
    smoothed: bool = True


POLICY_QUANTITIES = (
    Quantity("reward_raw_mean", "reward (raw, mean over responses)", "Reward", "reward"),
    Quantity("kl", "KL to the reference", "KL divergence", "kl"),
    Quantity("response_length", "response length (tokens)", "Response length", "response-length"),
    Quantity("eval_pass@1", "eval pass@1", "Eval pass@1", "eval-pass1", smoothed=False),
)
LOSS = Quantity("loss", "training loss", "Loss", "loss")
ACCURACY_KEYS = ("accuracy", "pair_acc", "binary_acc", "step_acc")  # per-batch accuracies train-sft/rm log
PREFIXES = {"train-policy": "policy", "train-sft": "sft", "train-rm": "rm"}


def policy_figures(runs: list[TrainingRun], colours: dict[str, str], out: Path, smooth: int) -> list[str]:
    """``policy.png`` (the 2x2 grid) and ``policy-<quantity>.png`` for each quantity logged."""
    written = []
    fig, axes = _figure(2, 2, (11, 7.5))
    for ax, quantity in zip(axes.flat, POLICY_QUANTITIES):
        _draw_quantity(ax, runs, quantity, colours, smooth)
    fig.suptitle("Policy training: " + ", ".join(run.name for run in runs))
    written.append(_save(fig, out / "policy.png"))
    for quantity in POLICY_QUANTITIES:
        if any(_points(run, quantity)[0] for run in runs):
            fig, ax = _figure(1, 1, (6.4, 4.2))
            _draw_quantity(ax, runs, quantity, colours, smooth)
            written.append(_save(fig, out / f"policy-{quantity.slug}.png"))
    return written


def training_figures(runs: list[TrainingRun], command: str, colours: dict[str, str], out: Path, smooth: int) -> list[str]:
    """``<sft|rm>-loss.png``, and ``<sft|rm>-accuracy.png`` where batch or eval accuracy was logged."""
    prefix = PREFIXES[command]
    written = []
    if any(run.series("loss")[0] for run in runs):
        fig, ax = _figure(1, 1, (6.4, 4.2))
        _draw_quantity(ax, runs, LOSS, colours, smooth)
        ax.set_title(f"{command}: loss")
        written.append(_save(fig, out / f"{prefix}-loss.png"))
    accuracy = [(run, key) for run in runs for key in _accuracy_keys(run)]
    if accuracy:
        fig, ax = _figure(1, 1, (6.4, 4.2))
        _draw_accuracies(ax, accuracy, colours, smooth)
        ax.set_title(f"{command}: accuracy")
        written.append(_save(fig, out / f"{prefix}-accuracy.png"))
    return written


def best_of_n_figure(results: list[BestOfNResult], path: Path) -> str:
    """Every selector of every file against N (log2 axis), saved as ``path`` (a PNG); its file name."""
    fig, ax = _figure(1, 1, (7, 4.6))
    styles = ("-", "--", ":", "-.")
    many = len(results) > 1
    for i, result in enumerate(results):
        for j, (selector, ys) in enumerate(result.curves.items()):
            label = f"{result.name}: {selector}" if many else selector
            ax.plot(result.n, ys, marker="o", markersize=3, color=f"C{j % 10}", linestyle=styles[i % len(styles)], label=label)
    ticks = sorted({n for result in results for n in result.n})
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, [str(n) for n in ticks])
    ax.set_xlabel("N (samples per prompt)")
    ax.set_ylabel("accuracy")
    ax.set_title("Best-of-N accuracy" if many else f"Best-of-N accuracy{_of_prompts(results[0])}")
    ax.legend(fontsize="small", ncol=2 if len(ax.lines) > 8 else 1)
    return _save(fig, path)


def _of_prompts(result: BestOfNResult) -> str:
    """`` on 200 prompts of test.jsonl``: what a single Best-of-N figure measured."""
    count = f" on {plural(result.num_prompts, 'prompt')}" if result.num_prompts is not None else ""
    source = f" of {Path(result.source).name}" if result.source else ""
    return count + source


# --- drawing ---------------------------------------------------------------------

def _draw_quantity(ax, runs: list[TrainingRun], quantity: Quantity, colours: dict[str, str], smooth: int) -> None:
    for run in runs:
        steps, values = _points(run, quantity)
        if not steps:
            continue
        if quantity.smoothed:
            _draw_smoothed(ax, steps, values, colours[run.name], run.name, smooth)
        else:
            ax.plot(steps, values, marker="o", markersize=3, color=colours[run.name], label=run.name)
    ax.set_xlabel("step")
    ax.set_ylabel(quantity.label)
    ax.set_title(quantity.title)
    if ax.lines:
        ax.legend(fontsize="small")
    else:
        ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="grey")


def _draw_accuracies(ax, pairs: list[tuple[TrainingRun, str]], colours: dict[str, str], smooth: int) -> None:
    styles = ("-", "--", ":", "-.")
    keys = sorted({key for _, key in pairs})
    for run, key in pairs:
        steps, values = run.series(key)
        style = styles[keys.index(key) % len(styles)]
        _draw_smoothed(ax, steps, values, colours[run.name], f"{run.name}: {key}", smooth, style)
    ax.set_xlabel("step")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize="small")


def _draw_smoothed(ax, steps: list[int], values: list[float], colour: str, label: str, smooth: int, style: str = "-") -> None:
    """The raw values faint, their trailing moving average on top (raw alone when ``smooth`` is 1)."""
    if smooth > 1 and len(values) > 1:
        ax.plot(steps, values, color=colour, alpha=0.25, linewidth=0.8, linestyle=style)
        values = moving_average(values, smooth)
    ax.plot(steps, values, color=colour, linewidth=1.6, linestyle=style, label=label)


def moving_average(values: list[float], window: int) -> list[float]:
    """Mean of each value and the ``window - 1`` before it (fewer at the start)."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _points(run: TrainingRun, quantity: Quantity) -> tuple[list[int], list[float]]:
    return eval_curve(run) if quantity.key == "eval_pass@1" else run.series(quantity.key)


def _accuracy_keys(run: TrainingRun) -> list[str]:
    logged = {key for row in run.metrics for key in row}
    keys = [key for key in ACCURACY_KEYS if key in logged]
    keys += sorted(key for key in logged if key.startswith("eval_") and ("acc" in key or "pass@" in key))
    return [key for key in keys if run.series(key)[0]]


def _figure(rows: int, cols: int, size: tuple[float, float]):
    """A figure on an Agg canvas: no pyplot, no display, no global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    return fig, (axes if rows * cols > 1 else axes[0, 0])


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path.name
