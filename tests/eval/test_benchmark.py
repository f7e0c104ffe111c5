"""`eval --model` end to end on the toy task (pass@k itself is tested in test_passk.py)."""

import json

from rlhfctl.records import read_records


def test_eval_writes_pass_and_maj_keys(toy_dir, tmp_path, run_main):
    out = tmp_path / "eval.json"
    r = run_main("eval", "--model", "toy:tiny", "--data", toy_dir / "test.jsonl", "--n", "4", "--max-new-tokens", "8",
                 "--out", out, "--json")
    assert r.code == 0, r.err
    summary = json.loads(r.out)
    for key in ("pass@1", "pass@2", "pass@4", "maj@2", "maj@4"):
        assert 0.0 <= summary[key] <= 1.0, key
    assert summary["pass@1"] <= summary["pass@2"] <= summary["pass@4"]
    assert summary["n"] == 4 and summary["num_prompts"] == len(read_records(toy_dir / "test.jsonl", "prompts"))
    assert summary["temperature"] == 1.0 and 1 <= summary["mean_tokens"] <= 8  # n > 1 samples at temperature 1
    written = json.loads(out.read_text())
    assert {k: v for k, v in written.items() if k != "options"} == summary
    assert written["options"]["n"] == 4 and written["options"]["max_new_tokens"] == 8


def test_eval_greedy_by_default_for_one_sample(toy_dir, run_main):
    r = run_main("eval", "--model", "toy:tiny", "--data", toy_dir / "test.jsonl", "--max-new-tokens", "4", "--json")
    assert r.code == 0, r.err
    summary = json.loads(r.out)
    assert summary["temperature"] == 0.0 and summary["n"] == 1 and "pass@1" in summary
