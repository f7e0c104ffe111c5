"""The OpenAI-compatible server backend against a loopback stand-in server with scripted faults."""

import time

import pytest

from rlhfctl.errors import ConfigError
from rlhfctl.generation.base import SamplingParams
from rlhfctl.generation.server import OpenAIGenerator, ServerError, ServerOptions
from tests.openai_stub import StubServer

PARAMS = SamplingParams(n=3, temperature=0.7, top_p=0.9, max_new_tokens=50, seed=5)


def _generator(server, **kwargs):
    options = {"base_url": server.base_url, "served_model": "toy", "backoff_s": 0.01, "concurrency": 4, **kwargs}
    return OpenAIGenerator(ServerOptions(**options))


def test_string_prompts_go_to_completions_and_chats_to_chat_completions():
    with StubServer() as server:
        out = _generator(server).generate(["What is 1+1?", [{"role": "user", "content": "Hi?"}]], PARAMS, ["a", "b"])
    assert [len(group) for group in out] == [3, 3]
    paths = sorted({r["path"] for r in server.requests})
    assert paths == ["/v1/chat/completions", "/v1/completions"]
    first = next(r["body"] for r in server.requests if r["path"] == "/v1/completions")
    assert first["prompt"] == "What is 1+1?" and "n" not in first and first["max_tokens"] == 50  # one sample a request
    assert first["temperature"] == 0.7 and first["top_p"] == 0.9 and first["model"] == "toy"
    chat = next(r["body"] for r in server.requests if r["path"] == "/v1/chat/completions")
    assert chat["messages"] == [{"role": "user", "content": "Hi?"}]
    sample = out[0][0]
    assert sample.finish_reason == "stop" and sample.num_tokens == len(sample.text.split())
    assert len({r["body"]["seed"] for r in server.requests}) == 6  # a seed per sample


def test_the_same_seed_and_keys_ask_for_the_same_samples():
    with StubServer() as server:
        first = _generator(server).generate(["p", "q"], PARAMS, ["a", "b"])
        second = _generator(server).generate(["q"], PARAMS, ["b"])
    assert [s.text for s in first[1]] == [s.text for s in second[0]]


def test_retries_on_500_429_and_dropped_connections_then_answers():
    with StubServer(["500", "429:0", "drop"]) as server:
        started = time.perf_counter()
        out = _generator(server, concurrency=1).generate(["p"], SamplingParams(n=1, max_new_tokens=20), ["a"])
    assert out[0][0].text and len(server.requests) == 4
    assert time.perf_counter() - started < 5


def test_retry_after_is_honoured(monkeypatch):
    import rlhfctl.generation.server as module

    waits = []
    monkeypatch.setattr(module.time, "sleep", waits.append)
    with StubServer(["429:2"]) as server:
        _generator(server, concurrency=1).generate(["p"], SamplingParams(n=1), ["a"])
    assert waits == [2.0]


def test_a_server_that_keeps_failing_ends_with_one_line_naming_url_and_status():
    with StubServer(["500"] * 10) as server:
        with pytest.raises(ServerError) as err:
            _generator(server, concurrency=1, max_attempts=3).generate(["p"], SamplingParams(n=1), ["a"])
    assert str(err.value) == f"{server.base_url}/completions: no answer after 3 tries; last: HTTP 500 (scripted 500)"
    assert len(server.requests) == 3


def test_client_errors_are_not_retried_and_garbage_is_refused():
    with StubServer(["400"]) as server:
        with pytest.raises(ServerError, match=r"/completions: HTTP 400 \(scripted 400\)$"):
            _generator(server).generate(["p"], SamplingParams(n=1), ["a"])
    assert len(server.requests) == 1
    with StubServer(["garbage"]) as server:
        with pytest.raises(ServerError, match="the answer is not JSON"):
            _generator(server).generate(["p"], SamplingParams(n=1), ["a"])


def test_slow_answers_time_out_and_are_retried():
    with StubServer(["slow:2"]) as server:
        out = _generator(server, timeout_s=0.3, concurrency=1).generate(["p"], SamplingParams(n=1), ["a"])
    assert out[0][0].text and len(server.requests) == 2


def test_concurrency_bounds_the_requests_in_flight():
    for concurrency, answer_s in ((4, 1.0), (1, 0.1)):
        with StubServer([f"slow:{answer_s}"] * 8) as server:
            _generator(server, concurrency=concurrency).generate(["p", "q"], SamplingParams(n=4), ["a", "b"])
        assert server.most_in_flight == concurrency  # slow answers let the pool fill up to its bound, never past it


def test_the_api_key_goes_only_in_the_authorization_header(monkeypatch):
    monkeypatch.setenv("MY_KEY", "sk-secret-123")
    with StubServer() as server:
        generator = _generator(server, api_key_env="MY_KEY")
        generator.generate(["p"], SamplingParams(n=1), ["a"])
    assert server.requests[0]["headers"]["Authorization"] == "Bearer sk-secret-123"
    assert "sk-secret" not in repr(generator.options) and "sk-secret" not in str(generator.options.public())


def test_bad_options_are_config_errors(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    for kwargs, message in [({"base_url": "localhost:8000"}, "expected http://"),
                            ({"served_model": ""}, "needs --served-model"),
                            ({"concurrency": 0}, "--concurrency must be at least 1"),
                            ({"api_key_env": "NO_SUCH_KEY"}, "NO_SUCH_KEY: that environment variable is not set")]:
        with pytest.raises(ConfigError, match=message):
            ServerOptions(**{"base_url": "http://h:1/v1", "served_model": "m", **kwargs})


def test_length_finish_and_logprobs_pass_through():
    def long_text(body):
        return "word " * 100

    with StubServer(text=long_text) as server:
        sample = _generator(server, logprobs=True).generate(["p"], SamplingParams(n=1, max_new_tokens=5), ["a"])[0][0]
    assert sample.finish_reason == "length"
    assert server.requests[0]["body"]["logprobs"] == 1
