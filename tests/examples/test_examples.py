"""The example scripts: shell syntax, and the scaling-study write-up (intervals over seeds, verdicts) on synthetic run folders."""

from __future__ import annotations

import importlib.util
import json
import math
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


def _load_study():
    spec = importlib.util.spec_from_file_location("scaling_study", EXAMPLES / "scaling_study.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


study = _load_study()


def _sections(doc: str) -> dict[str, str]:
    return {h.split(".")[0]: h for h in doc.split("## ")[1:]}


def _write_rm_eval(path: Path, accuracy: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pair_accuracy": accuracy}))


def test_t_quantiles_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in range(1, 31):
        assert study.t95(df) == pytest.approx(stats.t.ppf(0.975, df), abs=1e-3)
    assert study.t95(31) == 1.96 and study.t95(1000) == 1.96
    with pytest.raises(ValueError):
        study.t95(0)


def test_interval_is_mean_plus_minus_t_s_over_root_k():
    values = [0.10, 0.25, 0.40, 0.05]
    mean = (0.10 + 0.25 + 0.40 + 0.05) / 4
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / 3)
    iv = study.interval(values)
    assert iv.k == 4 and iv.mean == pytest.approx(0.2)
    assert iv.half == pytest.approx(3.182 * sd / 2)
    assert study.show(iv, signed=True) == f"+0.200 ± {3.182 * sd / 2:.3f}"
    assert study.interval([0.3]).half is None and study.interval([]) is None


def test_scaling_study_write_up_states_each_finding_with_its_numbers(tmp_path):
    w = tmp_path / "study"
    ends = {1: (0.52, 0.53, 0.51), 2: (0.60, 0.61, 0.59), 4: (0.66, 0.67, 0.65), 8: (0.67, 0.68, 0.66), 16: (0.68, 0.68, 0.67)}
    for s in range(3):
        seed = w / f"seed-{s}"
        for n, end in ends.items():
            _policy_run(seed / "A" / f"ppo-n{n}", "ppo", [0.5, end[s]])
        _policy_run(seed / "D" / "grpo-n8", "grpo", [0.5, 0.7], kl=0.02)
        _policy_run(seed / "E" / "grpo-tiny", "grpo", [0.2, 0.5 + 0.01 * s])
        _policy_run(seed / "E" / "grpo-small", "grpo", [0.5, 0.6])
        _write_rm_eval(seed / "C" / "eval-rm-wide.json", (0.70, 0.60, 0.66)[s])  # wide − deep: +0.05, −0.05, +0.01
        _write_rm_eval(seed / "C" / "eval-rm-deep.json", 0.65)
    proc = subprocess.run([sys.executable, str(EXAMPLES / "scaling_study.py"), str(w), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    doc = (tmp_path / "out" / "scaling_study.md").read_text()
    section = _sections(doc)
    assert "3 seeds: seed-0, seed-1, seed-2" in doc
    # A: boost +0.14 in every seed, diminishing returns +0.12 / +0.13 / +0.12
    assert "Verdict: **holds**" in section["A"] and "| 16 | 3 | 0.500 ± 0.000 | 0.677 ± 0.014 | +0.177 ± 0.014 |" in section["A"]
    assert "Boost, gain(n = 4) − gain(n = 1): +0.140 ± 0.000 (3 seeds)" in section["A"]
    assert "**unresolved** (a deciding difference's 95% interval includes zero)" in section["C"]
    assert "Wide minus deep pair accuracy: +0.003 ±" in section["C"]
    assert "**holds**" in section["E1"] and "| toy:tiny | 3 | 0.200 ± 0.000 | 0.510 ± 0.025 | +0.310 ± 0.025 |" in section["E1"]
    assert "**not run**" in section["B"] and "**not run**" in section["E2"]
    assert "| GRPO | 3 | 0.500 ± 0.000 | 0.700 ± 0.000 | 0.020 ± 0.000 |" in section["D"] and "Verdict: **comparison**" in section["D"]
    assert (tmp_path / "out" / "report-A" / "report.md").is_file()
    assert "Figures and run table (seed-0's runs)" in section["A"]


def test_reversed_claim_does_not_hold_and_a_missing_point_is_averaged_over_the_seeds_that_have_it(tmp_path):
    w = tmp_path / "study"
    for s in range(3):
        seed = w / f"seed-{s}"
        for n, end in ((1, 0.55), (4, 0.70), (16, 0.72)):
            if not (n == 16 and s == 2):  # n = 16 missing in seed-2
                _policy_run(seed / "A" / f"ppo-n{n}", "ppo", [0.5, end + 0.01 * s])
        _policy_run(seed / "E" / "grpo-tiny", "grpo", [0.2, 0.25 + 0.01 * s])  # the smaller policy gains far less
        _policy_run(seed / "E" / "grpo-small", "grpo", [0.5, 0.8 - 0.01 * s])
    section = _sections(study.study_doc(study.seed_dirs(w), ["tiny", "small"]))
    assert "| 16 | 2 | 0.500 ± 0.000 | 0.725 ± 0.064 | +0.225 ± 0.064 |" in section["A"]
    assert "diminishing returns, [gain(4) − gain(1)] − [gain(16) − gain(4)]: +0.130 ± 0.000 (2 seeds)" in section["A"]
    assert "Boost, gain(n = 4) − gain(n = 1): +0.150 ± 0.000 (3 seeds)" in section["A"]
    assert "Verdict: **holds**" in section["A"]
    assert "Verdict: **does not hold**" in section["E1"] and "gain(toy:tiny) − gain(toy:small): -0.230 ± 0.050 (3 seeds)" in section["E1"]


def test_one_seed_gives_no_interval_and_best_of_n_is_read_at_a_fixed_n(tmp_path):
    w = tmp_path / "study"
    bon = {"n": [1, 2, 4, 8], "num_prompts": 200,
           "curves": {"oracle": [0.5, 0.7, 0.8, 0.9], "rm": [0.5, 0.6, 0.62, 0.7], "prm-min": [0.5, 0.55, 0.56, 0.58]}}
    (w / "seed-0" / "B").mkdir(parents=True)
    (w / "seed-0" / "B" / "bon.json").write_text(json.dumps(bon))
    _write_rm_eval(w / "seed-0" / "C" / "eval-rm-wide.json", 0.7)
    _write_rm_eval(w / "seed-0" / "C" / "eval-rm-deep.json", 0.5)
    section = _sections(study.study_doc(study.seed_dirs(w), ["tiny", "small"]))
    assert "**unresolved** (one seed: no interval)" in section["C"] and "| 1 | 0.700 |" in section["C"]
    assert "**unresolved** (one seed: no interval)" in section["B"]
    assert "the reward model's pick minus a random sample +0.120 (1 seed)" in section["B"]
    assert "PRM (prm-min) minus ORM at N = 4: -0.060 (1 seed)" in section["B"]
    assert "| 4 | 1 | 0.800 | 0.620 | 0.560 |" in section["B"]
