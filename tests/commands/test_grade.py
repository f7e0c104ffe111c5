"""`grade`, `eval --responses`, and rollout's --field / --system / --prompt-template / --extract, from the CLI."""

import json

import pyarrow as pa
import pyarrow.parquet as pq

from tests.conftest import read_jsonl

GSM = {"question": ["What is 2+3?", "What is 10-4?"], "answer": ["2+3=5\n#### 5", "10-4=6\n#### 6"]}


def test_grade_three_row_shapes_and_resume(tmp_path, run_main):
    rows = [
        {"prompt": "What is 2+3?", "answer": "5", "responses": ["The answer is 5.", "so 4", "\\boxed{5}"]},
        {"prompt": "What is 10-4?", "answer": "6", "response": "6-0 = 6\n#### 6"},
        {"prompt": [{"role": "user", "content": "What is 1+1?"}], "answer": "2",
         "completion": [{"role": "assistant", "content": "Answer: 3"}]},
        {"prompt": "What is 10-4?", "answer": "6", "response": "I am not sure."},  # the prompt again
    ]
    src = tmp_path / "samples.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "graded.jsonl"
    r = run_main("grade", src, "--out", out, "--json")
    assert r.code == 0, r.err
    graded = read_jsonl(out)
    assert [g["correct"] for g in graded] == [[True, False, True], [True], [False], [False]]
    assert [g["extract_rule"] for g in graded] == [["answer_is", None, "boxed"], ["gsm8k"], ["answer_line"], [None]]
    assert graded[0]["extracted"] == ["5", None, "5"] and graded[2]["responses"] == ["Answer: 3"]
    assert graded[3]["id"] == graded[1]["id"] + ":2"  # a repeated prompt keeps a distinct, stable id
    summary = json.loads(r.out)
    assert summary["responses"] == 6 and summary["no_answer"] == 2 and summary["accuracy"] == 3 / 6
    assert summary["rules"] == {"answer_is": 1, "answer_line": 1, "boxed": 1, "gsm8k": 1}
    # a rerun grades nothing again; flexible extraction on a new file finds the last number
    r = run_main("grade", src, "--out", out, "--json")
    assert json.loads(r.out)["already_done"] == 4 and len(read_jsonl(out)) == 4
    r = run_main("grade", src, "--out", tmp_path / "flex.jsonl", "--extract", "flexible", "--json")
    assert read_jsonl(tmp_path / "flex.jsonl")[0]["extract_rule"][1] == "last_number"


def test_grade_refuses_rows_without_responses_or_gold(tmp_path, run_main):
    src = tmp_path / "bad.jsonl"
    src.write_text(json.dumps({"prompt": "Q", "answer": "1", "responses": ["1"]}) + "\n" + json.dumps({"prompt": "P", "answer": "1"}) + "\n")
    r = run_main("grade", src, "--out", tmp_path / "g.jsonl")
    assert r.code == 2 and f"{src}:2: field 'responses': missing" in r.err and not (tmp_path / "g.jsonl").exists()
    src.write_text(json.dumps({"prompt": "Q", "response": "1"}) + "\n")
    r = run_main("grade", src, "--out", tmp_path / "g.jsonl")
    assert r.code == 2 and f"{src}:1: field 'answer': missing: grade needs a gold answer" in r.err


def test_eval_responses_pools_rows_by_prompt(tmp_path, run_main):
    rows = [{"prompt": "A?", "answer": "1", "response": t} for t in ("Answer: 1", "Answer: 2")]
    rows += [{"prompt": "B?", "answer": "2", "response": t} for t in ("Answer: 2", "Answer: 2")]
    src = tmp_path / "samples.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = run_main("eval", "--responses", src, "--json")
    assert r.code == 0, r.err
    summary = json.loads(r.out)
    assert summary["n"] == 2 and summary["num_prompts"] == 2
    assert summary["pass@1"] == (0.5 + 1.0) / 2 and summary["pass@2"] == 1.0 and summary["no_answer"] == 0
    # responses from `grade` read the same way
    run_main("grade", src, "--out", tmp_path / "graded.jsonl")
    assert json.loads(run_main("eval", "--responses", tmp_path / "graded.jsonl", "--json").out)["pass@1"] == 0.75
    src.write_text("".join(json.dumps(r) + "\n" for r in rows[:3]))
    r = run_main("eval", "--responses", src)
    assert r.code == 2 and f"{src}:3: field 'responses': every prompt needs the same number of responses" in r.err
    r = run_main("eval", "--responses", src, "--model", "toy:tiny")
    assert r.code == 2 and "exactly one of --model" in r.err


def test_gsm8k_walkthrough_parquet_template_grade_eval(tmp_path, run_main):
    """Parquet with question/answer columns -> rollout with a template -> grade -> eval, as the README shows."""
    pq.write_table(pa.table(GSM), tmp_path / "gsm8k.parquet")
    out = tmp_path / "rollouts.jsonl"
    template = "Question: {prompt}\nPut the final answer after ####."
    r = run_main("rollout", tmp_path / "gsm8k.parquet", "--field", "prompt=question", "--model", "toy:tiny",
                 "--out", out, "--n", "2", "--max-new-tokens", "8", "--prompt-template", template, "--extract", "flexible")
    assert r.code == 0, r.err
    records = read_jsonl(out)
    assert records[0]["prompt"] == "Question: What is 2+3?\nPut the final answer after ####."
    assert records[0]["generator"]["prompt_template"] == template and records[0]["generator"]["extract"] == "flexible"
    assert len(records[0]["extracted"]) == len(records[0]["extract_rule"]) == 2
    # the same file with another template is refused, not mixed
    r = run_main("rollout", tmp_path / "gsm8k.parquet", "--field", "prompt=question", "--model", "toy:tiny",
                 "--out", out, "--n", "2", "--max-new-tokens", "8", "--prompt-template", "{prompt}", "--extract", "flexible")
    assert r.code == 2 and "--prompt-template" in r.err
    r = run_main("grade", out, "--out", tmp_path / "graded.jsonl", "--json")
    assert r.code == 0, r.err
    r = run_main("eval", "--responses", tmp_path / "graded.jsonl", "--json", "--extract", "flexible")
    assert r.code == 0, r.err
    assert json.loads(r.out)["n"] == 2 and json.loads(r.out)["num_prompts"] == 2


def test_prompt_format_is_applied_once(tmp_path, run_main):
    from rlhfctl.data import PromptFormat

    fmt = PromptFormat(system="Be brief.", template="{prompt} Think.")
    once = fmt.apply([{"prompt": "Hi?"}], "p.jsonl")
    assert once == [{"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi? Think."}]}]
    chat = fmt.apply([{"prompt": [{"role": "system", "content": "Mine."}, {"role": "user", "content": "Q"}]}], "p")
    assert chat[0]["prompt"] == [{"role": "system", "content": "Mine."}, {"role": "user", "content": "Q Think."}]
    written = {"prompt": "Hi? Think.", "generator": {"system": "Be brief.", "prompt_template": "{prompt} Think."}}
    assert fmt.apply([written], "r.jsonl") == [written]  # already formatted: left as it is
    import pytest

    from rlhfctl.errors import ConfigError

    with pytest.raises(ConfigError, match=r"r\.jsonl:1: the prompt was already formatted"):
        PromptFormat(template="{prompt}!").apply([written], "r.jsonl")
    with pytest.raises(ConfigError, match="must contain {prompt}"):
        PromptFormat(template="no slot")
    (tmp_path / "t.txt").write_text("From a file: {prompt}")
    r = run_main("rollout", tmp_path / "none.jsonl", "--model", "toy:tiny", "--out", tmp_path / "o.jsonl",
                 "--prompt-template", f"@{tmp_path / 'missing.txt'}")
    assert r.code == 2 and "--prompt-template @" in r.err and "cannot read" in r.err


def test_outside_generations_feed_best_of_n_and_build_prefs(tmp_path, run_main):
    rows = [{"prompt": f"Q{i}?", "answer": "1", "responses": ["Answer: 1", "Answer: 2", "no idea", "\\boxed{1}"]} for i in range(3)]
    src = tmp_path / "api-samples.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert run_main("grade", src, "--out", tmp_path / "graded.jsonl").code == 0
    r = run_main("best-of-n", tmp_path / "graded.jsonl", "--vote", "majority", "--out", tmp_path / "bon.json", "--json")
    assert r.code == 0, r.err
    curves = json.loads(r.out)["curves"]
    assert curves["oracle"][0] == 0.5 and curves["oracle"][-1] == 1.0
    r = run_main("build-prefs", tmp_path / "graded.jsonl", "--out", tmp_path / "prefs.jsonl", "--pairs-per-prompt", "2")
    assert r.code == 0, r.err
    pairs = read_jsonl(tmp_path / "prefs.jsonl")
    assert len(pairs) == 6 and all(p["chosen"] in ("Answer: 1", "\\boxed{1}") for p in pairs)
