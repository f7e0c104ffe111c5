"""Generation through an OpenAI-compatible server (`--backend openai`).

Any server that speaks the OpenAI API - ``vllm serve``, SGLang, TGI,
llama.cpp's server, ``transformers serve``, a hosted API - samples for
rlhfctl. Chat prompts (message lists) go to ``/v1/chat/completions``, where
the server applies its chat template; string prompts, and every text that
rlhfctl has already rendered (label-prm's step prefixes), go to
``/v1/completions`` as they are.

Each sample is one request (no ``n``) with its own seed derived from
``--seed``, the prompt's id and the sample's index, so a rerun asks for the
same samples, and token counts come from the server's ``usage``. Requests run
``concurrency`` at a time. A request that fails with 408/409/429/5xx, a
dropped connection or a timeout is retried with exponential backoff and
jitter (a 429's ``Retry-After`` is honoured); after ``max_attempts`` tries the
run ends with one line naming the URL and the last failure. The API key is
read from the environment variable ``api_key_env`` names and is never
printed, logged or written (docs/design.md §5).
"""

from __future__ import annotations

import http.client
import json
import os
import random
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from rlhfctl.errors import ConfigError, RlhfctlError
from rlhfctl.generation.base import Sample, SamplingParams, derive_seed

RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
MAX_BACKOFF_S = 30.0
MAX_RETRY_AFTER_S = 120.0
SEED_RANGE = 2**31  # servers take a 32-bit signed seed


@dataclass(frozen=True)
class ServerOptions:
    """Where the server is and how to talk to it (``--base-url``, ``--served-model``, ...)."""

    base_url: str
    served_model: str
    api_key_env: str | None = None
    concurrency: int = 8
    timeout_s: float = 600.0  # per request: a long answer on a busy server takes minutes
    max_attempts: int = 6
    backoff_s: float = 1.0  # the first retry's wait before jitter; doubles each retry up to MAX_BACKOFF_S
    stop: tuple[str, ...] = ()
    logprobs: bool = False

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"--base-url {self.base_url!r}: expected http://HOST:PORT/v1 or https://...")
        if not self.served_model:
            raise ConfigError("--backend openai needs --served-model: the model name the server serves")
        if self.concurrency < 1:
            raise ConfigError(f"--concurrency must be at least 1, got {self.concurrency}")
        if self.max_attempts < 1:
            raise ConfigError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.api_key_env is not None and not os.environ.get(self.api_key_env):
            raise ConfigError(f"--api-key-env {self.api_key_env}: that environment variable is not set")

    def public(self) -> dict[str, Any]:
        """What a manifest or a record's generator block may say about the server (never the key)."""
        public = {"base_url": self.base_url, "served_model": self.served_model, "concurrency": self.concurrency}
        return {**public, "stop": list(self.stop)} if self.stop else public


class ServerError(RlhfctlError):
    """The server did not give an answer: one line naming the URL and the last failure."""


class OpenAIGenerator:
    """Samples through an OpenAI-compatible server; see the module docstring.

    `tokenizer` is optional: the server renders chat prompts itself, and a
    local tokenizer is needed only by callers that render text before
    generating (label-prm's step prefixes of chat prompts).
    """

    name = "openai"

    def __init__(self, options: ServerOptions, tokenizer: Any = None):
        self.options = options
        self.tokenizer = tokenizer
        self._key = os.environ.get(options.api_key_env) if options.api_key_env else None
        self._local = threading.local()

    def render(self, prompt: str | list[dict[str, str]]) -> str | list[dict[str, str]]:
        """What `generate` takes for a record's prompt: the prompt itself (the server renders chats)."""
        return prompt

    def generate(self, prompts: list[Any], params: SamplingParams, keys: list[str] | None = None) -> list[list[Sample]]:
        """``params.n`` samples for each prompt, in order, ``concurrency`` requests at a time."""
        keys = keys if keys is not None else [str(i) for i in range(len(prompts))]
        out: list[list[Sample | None]] = [[None] * params.n for _ in prompts]
        with ThreadPoolExecutor(self.options.concurrency, thread_name_prefix="rlhfctl-openai") as pool:
            futures = {pool.submit(self._sample, prompt, params, derive_seed(params.seed, key, j) % SEED_RANGE): (i, j)
                       for i, (prompt, key) in enumerate(zip(prompts, keys)) for j in range(params.n)}
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            for future in pending:
                future.cancel()
            for future in done:
                if future.exception() is not None:
                    raise future.exception()
                i, j = futures[future]
                out[i][j] = future.result()
        return out  # type: ignore[return-value]

    def _sample(self, prompt: Any, params: SamplingParams, seed: int) -> Sample:
        chat = isinstance(prompt, list)
        body: dict[str, Any] = {"model": self.options.served_model, "temperature": params.temperature,
                                "top_p": params.top_p, "max_tokens": params.max_new_tokens, "seed": seed}
        if self.options.stop:
            body["stop"] = list(self.options.stop)
        if chat:
            body["messages"] = prompt
            if self.options.logprobs:
                body["logprobs"] = True
        else:
            body["prompt"] = prompt
            if self.options.logprobs:
                body["logprobs"] = 1
        answer = self._post("chat/completions" if chat else "completions", body)
        return _sample_of(answer, chat, self._url("chat/completions" if chat else "completions"))

    def _url(self, path: str) -> str:
        return f"{self.options.base_url.rstrip('/')}/{path}"

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        url = self._url(path)
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        data = json.dumps(body).encode()
        last = "no answer"
        for attempt in range(self.options.max_attempts):
            try:
                request = urllib.request.Request(url, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.options.timeout_s) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}{_server_message(e)}"
                if e.code not in RETRY_STATUSES:
                    raise ServerError(f"{url}: {last}") from None
                wait_s = _retry_after(e.headers) if e.code == 429 else None
            except (urllib.error.URLError, http.client.HTTPException, ConnectionError, socket.timeout, TimeoutError) as e:
                last = _describe(e)
                wait_s = None
            except json.JSONDecodeError:
                raise ServerError(f"{url}: the answer is not JSON") from None
            if attempt + 1 < self.options.max_attempts:
                time.sleep(wait_s if wait_s is not None else self._backoff(attempt))
        raise ServerError(f"{url}: no answer after {self.options.max_attempts} tries; last: {last}")

    def _backoff(self, attempt: int) -> float:
        return min(MAX_BACKOFF_S, self.options.backoff_s * 2**attempt) * random.uniform(0.5, 1.5)


def _sample_of(answer: Any, chat: bool, url: str) -> Sample:
    """A `Sample` from a completions answer; ServerError when it is not one."""
    try:
        choice = answer["choices"][0]
        text = choice["message"]["content"] if chat else choice["text"]
        finish = "length" if choice.get("finish_reason") == "length" else "stop"
        tokens = answer.get("usage", {}).get("completion_tokens")
        logprobs = _logprobs(choice.get("logprobs"), chat)
    except (KeyError, IndexError, TypeError, AttributeError):
        raise ServerError(f"{url}: the answer is not a completion (no choices[0] with text)") from None
    if not isinstance(text, str):
        raise ServerError(f"{url}: the answer's text is {type(text).__name__}, not a string")
    return Sample(text, [], finish, logprobs, reported_tokens=tokens if isinstance(tokens, int) else None)


def _logprobs(block: Any, chat: bool) -> list[float] | None:
    if not block:
        return None
    if chat:
        return [float(t["logprob"]) for t in block.get("content") or []]
    return [float(x) for x in block.get("token_logprobs") or [] if x is not None]


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return min(MAX_RETRY_AFTER_S, max(0.0, float(value)))
    except (TypeError, ValueError):
        return None  # absent, or an HTTP date: back off as for any failure


def _server_message(error: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(error.read() or b"{}")
        message = body.get("error", {}).get("message") if isinstance(body.get("error"), dict) else body.get("error")
    except (ValueError, AttributeError, OSError):
        return ""
    return f" ({str(message).splitlines()[0][:200]})" if message else ""


def _describe(error: BaseException) -> str:
    reason = getattr(error, "reason", None)
    return f"{type(error).__name__}: {reason or error}".strip()
