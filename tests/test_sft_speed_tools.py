"""The accounting in benchmarks/sft_speed.py: token columns a step, and how a ratio splits into them."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import sft_speed  # noqa: E402  (stdlib and _lockstep at import time: no TRL needed)


class FakeGate:
    def __init__(self):
        self.units = 0

    def unit_done(self):
        self.units += 1


def test_token_columns_count_training_forwards_of_each_step():
    import torch
    from transformers import LlamaModel

    from rlhfctl.models import load_causal_lm

    tiny_model = load_causal_lm("toy:tiny", seed=0)
    gate, forward = FakeGate(), LlamaModel.forward
    with sft_speed.count_token_columns(gate) as columns:
        tiny_model(input_ids=torch.ones(1, 9, dtype=torch.long))  # a shared start, then the rest
        tiny_model(input_ids=torch.ones(4, 6, dtype=torch.long))
        gate.unit_done()
        tiny_model(input_ids=torch.ones(3, 5, dtype=torch.long))
        with torch.no_grad():
            tiny_model(input_ids=torch.ones(8, 8, dtype=torch.long))  # evaluation: not training work
        gate.unit_done()
    assert columns.counts == [9 + 24, 15]
    assert gate.units == 2  # the gate still reports every unit
    assert columns.per_step(warmup=1) == 15
    assert LlamaModel.forward is forward and "unit_done" not in vars(gate)  # both put back


def test_a_ratio_is_columns_times_time_per_column(capsys):
    ours = [{"samples_per_s": 300.0, "step_seconds": [0.2, 0.2]}, {"samples_per_s": 330.0, "step_seconds": [0.2, 0.1]}]
    theirs = [{"samples_per_s": 200.0, "step_seconds": [0.3, 0.4]}, {"samples_per_s": 200.0, "step_seconds": [0.3, 0.3]}]
    summary = {"rlhfctl": {"token_columns_per_step": 3000.0, "peak_rss_mb": 600.0},
               "trl": {"token_columns_per_step": 4200.0, "peak_rss_mb": 1000.0}}
    result = sft_speed.compare(ours, theirs, summary, "trl")
    assert result["peak_rss_ratio"] == pytest.approx(0.6)
    assert result["round_ratios"] == [1.5, 1.65]
    assert result["ratio"] == pytest.approx(1.575)  # median of the rounds
    assert result["step_ratio_median"] == pytest.approx(1.75)  # median of 1.5, 2.0, 1.5, 3.0
    assert result["column_ratio"] == pytest.approx(1.4)
    assert result["column_ratio"] * result["time_per_column_ratio"] == pytest.approx(result["ratio"])
    assert "target >= 1.5x: met" in capsys.readouterr().out
