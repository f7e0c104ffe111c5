"""A damaged newest checkpoint: --resume continues from the newest intact one, or stops with one line.

What a power cut leaves (a truncated file, an empty ``step-N``, a flipped
byte) is built by hand on a copy of the test run's tiny SFT run, whose
``step-4`` and ``step-6`` checkpoints are kept. Resumed from ``step-4``, the
run must log steps 5-6 and end with the unbroken run's weights.
"""

from __future__ import annotations

import re
import shutil

import pytest

from conftest import CHECKPOINT_DAMAGE, SFT_ARGS, read_jsonl, stderr_lines
from rlhfctl.artifacts import MANIFEST, checkpoint_damage, checkpoint_dir


def _killed_copy(sft_run, dst):
    """The SFT run as a kill after its last checkpoint leaves it: no published model."""
    shutil.copytree(sft_run.path, dst)
    (dst / MANIFEST).unlink()
    (dst / "model.safetensors").unlink()
    return dst


@pytest.mark.parametrize("damage", CHECKPOINT_DAMAGE)
def test_resume_falls_back_to_the_newest_intact_checkpoint(damage, sft_run, toy_dir, tmp_path, run_main):
    import torch
    from safetensors.torch import load_file

    run = _killed_copy(sft_run, tmp_path / "run")
    spoil, reason = CHECKPOINT_DAMAGE[damage]
    spoil(checkpoint_dir(run, 6))
    r = run_main("train-sft", toy_dir / "sft.jsonl", "--out", run, *SFT_ARGS, "--resume")
    assert r.code == 0, r.err
    skipped = [line for line in r.err.splitlines() if line.endswith(": skipped")]
    assert len(skipped) == 1 and re.fullmatch(rf"{re.escape(str(checkpoint_dir(run, 6)))}: {reason}: skipped", skipped[0])
    assert "resuming from step 4" in r.err
    metrics, want = read_jsonl(run / "metrics.jsonl"), sft_run.metrics
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6]
    for got, expected in zip(metrics, want):
        assert got["loss"] == pytest.approx(expected["loss"], abs=1e-6) and got["lr"] == pytest.approx(expected["lr"])
    a, b = load_file(str(run / "model.safetensors")), load_file(str(sft_run.path / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6, rtol=0) for k in a)
    assert checkpoint_damage(checkpoint_dir(run, 6)) is None  # rewritten whole by the resumed run


@pytest.mark.parametrize("damage", CHECKPOINT_DAMAGE)
def test_resume_with_no_intact_checkpoint_is_one_line_and_exit_2(damage, sft_run, toy_dir, tmp_path, run_main):
    run = _killed_copy(sft_run, tmp_path / "run")
    spoil, reason = CHECKPOINT_DAMAGE[damage]
    for step in (4, 6):
        spoil(checkpoint_dir(run, step))
    metrics_before = (run / "metrics.jsonl").read_bytes()
    r = run_main("train-sft", toy_dir / "sft.jsonl", "--out", run, *SFT_ARGS, "--resume")
    assert r.code == 2
    lines = stderr_lines(r.err)
    assert len(lines) == 1 and re.fullmatch(
        rf"error: {re.escape(str(run / 'checkpoints'))}: no intact checkpoint to resume from "
        rf"\(step-6: {reason}; step-4: {reason}\); start again in a new --out", lines[0])
    assert (run / "metrics.jsonl").read_bytes() == metrics_before  # nothing was cut or rewritten
