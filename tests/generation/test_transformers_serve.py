"""`rollout --backend openai` end to end against a real `transformers serve` on loopback.

The server serves a small Qwen2-shaped folder (tests/model_folders.py, with a
chat template) on a free port; the test needs what `transformers serve`
needs (fastapi, uvicorn, openai: the `dev` extra) and skips without them.
"""

import importlib.util
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import free_port, read_jsonl
from tests.model_folders import build_qwen2

MISSING = [m for m in ("fastapi", "uvicorn", "openai") if importlib.util.find_spec(m) is None]
STARTUP_S = 180  # loading torch and the model on a busy CPU
PROMPTS = [
    {"id": "s1", "prompt": "1+1=", "answer": "2"},
    {"id": "c1", "prompt": [{"role": "user", "content": "What is 2+2?"}], "answer": "4"},
    {"id": "s2", "prompt": "3+4=", "answer": "7"},
    {"id": "c2", "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "5+1?"}], "answer": "6"},
]

pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"transformers serve needs {', '.join(MISSING)} (pip install -e '.[dev]')")


def _transformers_script() -> str | None:
    beside = Path(sys.executable).with_name("transformers")
    return str(beside) if beside.exists() else shutil.which("transformers")


@pytest.fixture(scope="module")
def served(tmp_path_factory, cli_env):
    """(base_url, served model name) of a `transformers serve` started for this module, stopped after it."""
    script = _transformers_script()
    if script is None:
        pytest.skip("no `transformers` command beside this Python or on PATH")
    folder = build_qwen2(tmp_path_factory.mktemp("served") / "qwen2")
    port = free_port()
    log = folder.parent / "serve.log"
    with log.open("w") as sink:
        proc = subprocess.Popen([script, "serve", str(folder), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
                                env=cli_env, stdout=sink, stderr=subprocess.STDOUT, cwd=folder.parent)
    try:
        _wait_ready(f"http://127.0.0.1:{port}/health", proc, log)
        yield f"http://127.0.0.1:{port}/v1", str(folder)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


def _wait_ready(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"transformers serve exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"transformers serve did not answer {url} within {STARTUP_S} s:\n{log.read_text()[-2000:]}")


def test_rollout_through_transformers_serve_and_resume(served, tmp_path, run_main):
    base_url, name = served
    half, full, out = tmp_path / "half.jsonl", tmp_path / "prompts.jsonl", tmp_path / "rollouts.jsonl"
    half.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS[:2]))
    full.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    args = ["--out", out, "--n", "2", "--max-new-tokens", "8", "--backend", "openai", "--base-url", base_url,
            "--served-model", name, "--concurrency", "4", "--json"]

    first = run_main("rollout", half, *args)
    assert first.code == 0, first.err
    assert json.loads(first.out)["generated"] == 2
    written = out.read_text()

    second = run_main("rollout", full, *args)
    assert second.code == 0, second.err
    summary = json.loads(second.out)
    assert summary["already_done"] == 2 and summary["generated"] == 2
    assert out.read_text().startswith(written)  # the records already there are kept as they were
    records = read_jsonl(out)
    assert [r["id"] for r in records] == [p["id"] for p in PROMPTS]
    for p, r in zip(PROMPTS, records):
        assert r["prompt"] == p["prompt"] and len(r["responses"]) == 2
        assert all(isinstance(t, str) for t in r["responses"])
        assert all(isinstance(k, int) and 1 <= k <= 8 for k in r["num_tokens"])
        assert set(r["finish_reasons"]) <= {"stop", "length"} and len(r["correct"]) == 2
        assert r["generator"]["backend"] == "openai" and r["generator"]["served_model"] == name
        assert r["generator"]["base_url"] == base_url and r["generator"]["model"] is None
    assert summary["new_tokens"] == sum(sum(r["num_tokens"]) for r in records[2:])
