"""A small OpenAI-compatible stand-in server on loopback, with scripted faults.

`StubServer(actions)` answers ``/v1/completions`` and ``/v1/chat/completions``;
each request takes the next scripted action (then ``ok`` forever):
``ok``, ``500``, ``400``, ``429:SECONDS`` (with Retry-After), ``drop`` (close
the connection without an answer), ``slow:SECONDS``, ``garbage`` (not JSON).
Every request's body and headers are kept in `requests`.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def default_text(body: dict) -> str:
    prompt = body["messages"][-1]["content"] if "messages" in body else body["prompt"]
    return f" The answer is {len(prompt) % 10}. Answer: {body.get('seed', 0) % 10}"


class StubServer:
    def __init__(self, actions: list[str] | None = None, text=default_text):
        self.actions = list(actions or [])
        self.text = text
        self.requests: list[dict] = []
        self.in_flight = 0
        self.most_in_flight = 0  # the most requests the server held at once
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stub._lock:
                    stub.requests.append({"path": self.path, "body": body, "headers": dict(self.headers)})
                    action = stub.actions.pop(0) if stub.actions else "ok"
                    stub.in_flight += 1
                    stub.most_in_flight = max(stub.most_in_flight, stub.in_flight)
                try:
                    self._answer(action, body)
                finally:
                    with stub._lock:
                        stub.in_flight -= 1

            def _answer(self, action, body):
                kind, _, arg = action.partition(":")
                if kind == "drop":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if kind == "slow":
                    time.sleep(float(arg))
                if kind in ("500", "400", "429"):
                    self.send_response(int(kind))
                    if kind == "429":
                        self.send_header("Retry-After", arg or "0")
                    payload = json.dumps({"error": {"message": f"scripted {kind}"}}).encode()
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                payload = b"{not json" if kind == "garbage" else json.dumps(stub.answer(self.path, body)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def answer(self, path: str, body: dict) -> dict:
        text = self.text(body)[: body.get("max_tokens", 10**9) * 8]
        words = len(text.split())
        finish = "length" if words >= body.get("max_tokens", 10**9) else "stop"
        choice = {"index": 0, "finish_reason": finish}
        if path.endswith("/chat/completions"):
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        return {"id": "x", "object": "text_completion", "model": body["model"], "choices": [choice],
                "usage": {"prompt_tokens": 1, "completion_tokens": words, "total_tokens": words + 1}}

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> "StubServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
