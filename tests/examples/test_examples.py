"""The example scripts: shell syntax, and the scaling-study write-up on synthetic run folders."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize("script", sorted(p.name for p in EXAMPLES.glob("*.sh")))
def test_shell_examples_parse(script):
    proc = subprocess.run(["bash", "-n", str(EXAMPLES / script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def _policy_run(folder: Path, algo: str, evals: list[float], kl: float = 0.01) -> None:
    folder.mkdir(parents=True)
    rows = [{"step": 0, "eval_pass@1": evals[0]}]
    for step, value in enumerate(evals[1:], 1):
        rows.append({"step": step, "kl": kl, "response_length": 30.0, "seconds": 2.0, "reward_raw_mean": 0.5, "eval_pass@1": value})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "rlhfctl.json").write_text(json.dumps({"command": "train-policy", "version": "0", "options": {"algo": algo}, "results": {}}))


def test_scaling_study_write_up_states_each_finding_with_its_numbers(tmp_path):
    w = tmp_path / "study"
    for n, end in ((1, 0.52), (2, 0.60), (4, 0.66), (8, 0.67), (16, 0.68)):
        _policy_run(w / "A" / f"ppo-n{n}", "ppo", [0.5, end])
    _policy_run(w / "D" / "grpo-n8", "grpo", [0.5, 0.7], kl=0.02)
    _policy_run(w / "E" / "grpo-tiny", "grpo", [0.2, 0.5])
    _policy_run(w / "E" / "grpo-small", "grpo", [0.5, 0.6])
    (w / "C").mkdir()
    (w / "C" / "eval-rm-wide.json").write_text(json.dumps({"pair_accuracy": 0.7}))
    (w / "C" / "eval-rm-deep.json").write_text(json.dumps({"pair_accuracy": 0.65}))
    proc = subprocess.run([sys.executable, str(EXAMPLES / "scaling_study.py"), str(w), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    doc = (tmp_path / "out" / "scaling_study.md").read_text()
    section = {h.split(".")[0]: h for h in doc.split("## ")[1:]}
    assert "**holds**" in section["A"] and "| 16 | 0.500 | 0.680 | +0.180 |" in section["A"]
    assert "**unresolved at this budget**" in section["C"] and "0.650" in section["C"]  # 0.05 apart on ~200 pairs is noise
    assert "**holds**" in section["E1"] and "+0.300" in section["E1"]
    assert "**not run**" in section["B"] and "**not run**" in section["E2"]
    assert "| GRPO | 0.500 | 0.700 | 0.020 |" in section["D"]
    assert (tmp_path / "out" / "report-A" / "report.md").is_file()
