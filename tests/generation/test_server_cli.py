"""`--backend openai` through the CLI, against the loopback stand-in server (tests/openai_stub.py)."""

import json
import threading
import time

import pytest

from rlhfctl.grading import grade
from conftest import read_jsonl
from rlhfctl.records import ROLLOUTS, read_records
from tests.openai_stub import StubServer, default_text

KEY = "sk-test-0123456789-do-not-write"


def _server_args(server, *extra):
    return ["--backend", "openai", "--base-url", server.base_url, "--served-model", "stub-model", *extra]


def _error_lines(err):
    """stderr less the progress bar's line."""
    return [line for line in err.splitlines() if not line.startswith("rollout ")]


def _rollout(run_main, prompts, out, server, *extra):
    return run_main("rollout", prompts, "--out", out, "--n", "2", "--max-new-tokens", "16", "--seed", "3",
                    *_server_args(server, *extra))


def test_openai_records_have_the_shape_of_hf_ones(toy_dir, tmp_path, run_main):
    prompts = toy_dir / "test.jsonl"
    hf = run_main("rollout", prompts, "--model", "toy:tiny", "--out", tmp_path / "hf.jsonl", "--n", "2",
                  "--max-new-tokens", "16", "--seed", "3", "--backend", "hf")
    assert hf.code == 0, hf.err
    with StubServer() as server:
        r = _rollout(run_main, prompts, tmp_path / "openai.jsonl", server, "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["generated"] == 8
    expected, got = read_records(tmp_path / "hf.jsonl", ROLLOUTS), read_records(tmp_path / "openai.jsonl", ROLLOUTS)
    assert [x["id"] for x in got] == [x["id"] for x in expected]
    for h, o in zip(expected, got):
        assert set(o) == set(h)
        assert {k: type(v) for k, v in o.items()} == {k: type(v) for k, v in h.items()}
        assert len(o["responses"]) == len(o["num_tokens"]) == len(o["finish_reasons"]) == len(o["correct"]) == 2
        assert o["num_tokens"] == [len(t.split()) for t in o["responses"]]  # the server's usage count
        assert o["correct"] == grade(o, o["responses"])
        generator = o["generator"]
        assert set(generator) == set(h["generator"]) | {"base_url", "served_model"}
        assert generator["backend"] == "openai" and generator["model"] is None
        assert generator["base_url"] == server.base_url and generator["served_model"] == "stub-model"
        assert {k: generator[k] for k in ("n", "temperature", "top_p", "max_new_tokens", "seed")} == \
            {k: h["generator"][k] for k in ("n", "temperature", "top_p", "max_new_tokens", "seed")}
    bodies = [q["body"] for q in server.requests]
    assert len(bodies) == 16 and {b["model"] for b in bodies} == {"stub-model"} and all("n" not in b for b in bodies)


def test_chat_prompts_reach_the_server_as_messages(tmp_path, run_main):
    prompts = tmp_path / "prompts.jsonl"
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}]
    prompts.write_text(json.dumps({"id": "c", "prompt": chat}) + "\n" + json.dumps({"id": "s", "prompt": "1+1="}) + "\n")
    with StubServer() as server:
        r = _rollout(run_main, prompts, tmp_path / "out.jsonl", server, "--stop", "\n\n", "--stop", "END")
    assert r.code == 0, r.err
    by_path = {q["path"]: q["body"] for q in server.requests}
    assert by_path["/v1/chat/completions"]["messages"] == chat
    assert by_path["/v1/completions"]["prompt"] == "1+1="
    assert all(q["body"]["stop"] == ["\n\n", "END"] for q in server.requests)
    assert [x["generator"]["stop"] for x in read_jsonl(tmp_path / "out.jsonl")] == [["\n\n", "END"]] * 2


def test_a_failing_server_ends_with_one_line_and_the_rerun_resumes(toy_dir, tmp_path, run_main):
    """Two prompts are written, the third prompt's request is refused (HTTP 400): exit 2, one line naming the
    URL, only whole records on disk; the rerun asks only for the missing prompts and writes none twice."""
    out = tmp_path / "rollouts.jsonl"
    with StubServer(["ok"] * 4 + ["400"]) as server:
        r = _rollout(run_main, toy_dir / "test.jsonl", out, server, "--batch-size", "2", "--concurrency", "1")
    assert r.code == 2
    assert _error_lines(r.err) == [f"error: {server.base_url}/completions: HTTP 400 (scripted 400)"], r.err
    lines = out.read_text().splitlines()
    assert len(lines) == 2 and all(len(json.loads(line)["responses"]) == 2 for line in lines)
    with StubServer() as server:
        r = _rollout(run_main, toy_dir / "test.jsonl", out, server, "--batch-size", "2", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["already_done"] == 2 and json.loads(r.out)["generated"] == 6
    assert len(server.requests) == 6 * 2  # only the missing prompts are asked for
    ids = [x["id"] for x in read_jsonl(out)]
    assert sorted(ids) == sorted(x["id"] for x in read_jsonl(toy_dir / "test.jsonl")) and len(set(ids)) == len(ids)


def test_resume_refuses_another_served_model(toy_dir, tmp_path, run_main):
    out = tmp_path / "rollouts.jsonl"
    with StubServer() as server:
        assert _rollout(run_main, toy_dir / "test.jsonl", out, server).code == 0
        r = run_main("rollout", toy_dir / "test.jsonl", "--out", out, "--n", "2", "--max-new-tokens", "16", "--seed", "3",
                     "--backend", "openai", "--base-url", server.base_url, "--served-model", "other-model")
    assert r.code == 2 and "--served-model stub-model, this run has --served-model other-model" in r.err


@pytest.mark.parametrize("concurrency", [1, 4])
def test_concurrency_bounds_the_requests_in_flight(toy_dir, tmp_path, run_main, concurrency):
    lock, state = threading.Lock(), {"now": 0, "most": 0}

    def slow_text(body):
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        time.sleep(0.05)
        with lock:
            state["now"] -= 1
        return default_text(body)

    with StubServer(text=slow_text) as server:
        r = _rollout(run_main, toy_dir / "test.jsonl", tmp_path / "out.jsonl", server, "--concurrency", str(concurrency))
    assert r.code == 0, r.err
    assert len(server.requests) == 16 and state["most"] == concurrency


def test_the_api_key_is_sent_and_never_written(toy_dir, tmp_path, run_main, monkeypatch):
    monkeypatch.setenv("RLHFCTL_TEST_KEY", KEY)
    out = tmp_path / "rollouts.jsonl"
    with StubServer() as server:
        r = _rollout(run_main, toy_dir / "test.jsonl", out, server, "--api-key-env", "RLHFCTL_TEST_KEY", "--json")
    with StubServer(["400"]) as refusing:
        failed = _rollout(run_main, toy_dir / "test.jsonl", tmp_path / "failed.jsonl", refusing, "--api-key-env", "RLHFCTL_TEST_KEY")
    assert r.code == 0 and failed.code == 2 and refusing.requests
    assert {q["headers"]["Authorization"] for q in server.requests} == {f"Bearer {KEY}"}
    assert all(KEY not in json.dumps(q["body"]) for q in server.requests)
    written = "".join(p.read_text() for p in tmp_path.iterdir() if p.is_file())
    assert out.exists() and KEY not in written and KEY not in r.out + r.err + failed.out + failed.err


def test_server_flags_need_the_openai_backend_and_a_url(toy_dir, tmp_path, run_main):
    r = run_main("rollout", toy_dir / "test.jsonl", "--out", tmp_path / "o.jsonl", "--model", "toy:tiny",
                 "--backend", "hf", "--base-url", "http://127.0.0.1:9/v1")
    assert r.code == 2 and "--base-url needs --backend openai" in r.err
    r = run_main("rollout", toy_dir / "test.jsonl", "--out", tmp_path / "o.jsonl", "--backend", "openai", "--served-model", "m")
    assert r.code == 2 and "--backend openai needs --base-url" in r.err
    r = run_main("rollout", toy_dir / "test.jsonl", "--out", tmp_path / "o.jsonl", "--backend", "hf")
    assert r.code == 2 and "--model is required" in r.err
    assert not (tmp_path / "o.jsonl").exists()


def test_eval_and_best_of_n_sample_through_the_server(toy_dir, tmp_path, run_main, monkeypatch):
    monkeypatch.setenv("RLHFCTL_TEST_KEY", KEY)
    with StubServer() as server:
        e = run_main("eval", "--data", toy_dir / "test.jsonl", "--n", "2", "--out", tmp_path / "eval.json", "--json",
                     *_server_args(server, "--api-key-env", "RLHFCTL_TEST_KEY"))
        b = run_main("best-of-n", toy_dir / "test.jsonl", "--n", "2", "--out", tmp_path / "bon.json", "--json",
                     *_server_args(server))
    assert e.code == 0, e.err
    assert b.code == 0, b.err
    assert KEY not in (tmp_path / "eval.json").read_text() + e.out + e.err
    written = json.loads((tmp_path / "eval.json").read_text())
    assert written["num_prompts"] == 8 and written["generator"]["backend"] == "openai"
    assert written["generator"]["served_model"] == "stub-model"
    sampled = read_jsonl(tmp_path / "bon.rollouts.jsonl")
    assert len(sampled) == 8 and all(x["generator"]["backend"] == "openai" for x in sampled)
    assert len(server.requests) == 8 * 2 + 8 * 2


def test_label_prm_sends_step_prefixes_as_text_and_needs_a_tokenizer_for_chats(tmp_path, run_main):
    rollouts = tmp_path / "rollouts.jsonl"
    record = {"id": "a", "prompt": "Q: 2+3?\n", "answer": "5", "responses": ["2+3=5\nAnswer: 5"], "correct": [True]}
    rollouts.write_text(json.dumps(record) + "\n")
    with StubServer() as server:
        r = run_main("label-prm", rollouts, "--out", tmp_path / "steps.jsonl", "--n-completions", "2", *_server_args(server))
    assert r.code == 0, r.err
    assert {q["path"] for q in server.requests} == {"/v1/completions"}
    assert {q["body"]["prompt"] for q in server.requests} == {"Q: 2+3?\n2+3=5\n"}
    chat = {**record, "prompt": [{"role": "user", "content": "2+3?"}]}
    rollouts.write_text(json.dumps(chat) + "\n")
    r = run_main("label-prm", rollouts, "--out", tmp_path / "chat.jsonl", "--backend", "openai",
                 "--base-url", "http://127.0.0.1:9/v1", "--served-model", "m")
    assert r.code == 2 and len(_error_lines(r.err)) == 1 and "give --model" in r.err


def test_label_prm_renders_chat_prefixes_with_the_completers_tokenizer(tmp_path, run_main):
    from rlhfctl.data import render_prompt
    from rlhfctl.models import load_tokenizer
    from tests.model_folders import build_qwen2

    folder = build_qwen2(tmp_path / "qwen2")
    chat = [{"role": "user", "content": "2+3?"}]
    rollouts = tmp_path / "rollouts.jsonl"
    rollouts.write_text(json.dumps({"id": "a", "prompt": chat, "answer": "5", "responses": ["2+3=5\nAnswer: 5"]}) + "\n")
    with StubServer() as server:
        r = run_main("label-prm", rollouts, "--out", tmp_path / "steps.jsonl", "--n-completions", "2", "--model", folder,
                     *_server_args(server))
    assert r.code == 0, r.err
    head = render_prompt(chat, load_tokenizer(str(folder)))
    assert "<|im_start|>user" in head
    assert {q["path"] for q in server.requests} == {"/v1/completions"}
    assert {q["body"]["prompt"] for q in server.requests} == {head + "2+3=5\n"}


def test_train_policy_refuses_the_server_backend(toy_dir, tmp_path, run_main):
    r = run_main("train-policy", toy_dir / "train.jsonl", "--model", "toy:tiny", "--out", tmp_path / "policy", "--verifier", "math",
                 "--backend", "openai")
    assert r.code == 2 and "train-policy samples from the policy it trains" in r.err, r.err
